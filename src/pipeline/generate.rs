//! SD-XL text-to-image: the prompt encoding and the denoising loop of a loaded
//! [`SdxlPipeline`] (see [`super::load`]); load it once, generate many images.
//!
//! Prompt -> both CLIP tokenizers and text encoders -> Euler denoising with classifier-free
//! guidance (batch [uncond, cond], one UNet forward per step) -> VAE decode, all on the GPU;
//! the only host round trips are the token ids going in and the results coming out.
//!
//! ```no_run
//! use atedm::gpu::GpuContext;
//! use atedm::pipeline::generate::{GenerateRequest, LoadOptions, SdxlPipeline};
//! let ctx = GpuContext::new(&Default::default())?;
//! let pipe = SdxlPipeline::load(&ctx, "path/to/sdxl".as_ref(), &LoadOptions::default())?;
//! for seed in 0..4 {
//!     let req = GenerateRequest { prompt: "a lighthouse at dusk".into(), seed, ..Default::default() };
//!     let image = pipe.generate(&ctx, &req, |step, steps| eprintln!("{step}/{steps}"))?;
//!     let _rgb: Vec<u8> = image.rgb8();
//! }
//! # Ok::<(), atedm::Error>(())
//! ```

use std::ops::ControlFlow;

use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::model::clip::ClipOutputs;
use crate::model::unet::{PruneStep, UNetInputs};
use crate::ops::{elementwise, guidance, layout};
use crate::pipeline::scheduler::EulerSchedule;
use crate::prune::schedule::stacks;
use crate::tensor::Tensor;

pub use super::load::{LoadOptions, SdxlPipeline, DEFAULT_STEPS};
pub use super::request::{
    GenerateOutput, GenerateRequest, PromptEmbeds, Record, StepMask, StepUpdate,
};

/// Both text encoders' output for a list of texts.
struct Encoded {
    /// `[n, 77, C1 + C2]`: the penultimate hidden states of both encoders, side by side.
    context: Tensor,
    /// `[n, P]`: text_encoder_2's projected pooled output.
    pooled: Tensor,
    /// Whether a text was cut to 75 tokens.
    truncated: bool,
}

impl SdxlPipeline {
    /// Encodes `texts` with both encoders: context `[n, 77, C1 + C2]` and pooled `[n, P]`.
    fn encode(&self, ctx: &GpuContext, texts: &[&str]) -> Result<Encoded> {
        let mut ids1 = Vec::new();
        let mut ids2 = Vec::new();
        let mut truncated = false;
        for t in texts {
            let a = self.tokenizer.encode(t)?;
            let b = self.tokenizer_2.encode(t)?;
            truncated |= a.truncated || b.truncated;
            ids1.extend(a.ids);
            ids2.extend(b.ids);
        }
        let n = texts.len();
        let h1 = self
            .text_encoder
            .forward(ctx, &ids1, n, ClipOutputs::Penultimate)?
            .penultimate;
        let out2 = self
            .text_encoder_2
            .forward(ctx, &ids2, n, ClipOutputs::WithPooled)?;
        let context = layout::concat(ctx, &[&h1, &out2.penultimate], 2)?;
        Ok(Encoded {
            context,
            pooled: out2
                .pooled
                .expect("text_encoder_2 has a projection (checked on load)"),
            truncated,
        })
    }

    /// The text conditioning of a prompt and its negative prompt.
    pub fn encode_prompt(
        &self,
        ctx: &GpuContext,
        prompt: &str,
        negative: Option<&str>,
    ) -> Result<PromptEmbeds> {
        let negative = negative.filter(|n| !n.is_empty());
        let Encoded {
            context: ctx_all,
            pooled: pooled_all,
            truncated,
        } = match negative {
            Some(neg) => self.encode(ctx, &[neg, prompt])?,
            None => self.encode(ctx, &[prompt])?,
        };
        let split = |t: &Tensor, row: usize, rows: usize| -> Result<Tensor> {
            if rows == 1 {
                return Ok(t.clone());
            }
            let s = t.shape();
            let width: usize = s[1..].iter().product();
            let flat = t.reshape(&[1, rows, width])?;
            let picked = crate::ops::gather::gather_rows(
                ctx,
                &flat,
                &Tensor::from_u32(ctx, &[row as u32], &[1, 1])?,
            )?;
            let mut shape = s.to_vec();
            shape[0] = 1;
            picked.reshape(&shape)
        };
        let rows = if negative.is_some() { 2 } else { 1 };
        let prompt_embeds = split(&ctx_all, rows - 1, rows)?;
        let pooled = split(&pooled_all, rows - 1, rows)?;
        let (negative_prompt_embeds, negative_pooled) = match negative {
            Some(_) => (split(&ctx_all, 0, 2)?, split(&pooled_all, 0, 2)?),
            None => (
                Tensor::zeros(ctx, prompt_embeds.shape(), self.dtype)?,
                Tensor::zeros(ctx, pooled.shape(), self.dtype)?,
            ),
        };
        Ok(PromptEmbeds {
            prompt_embeds,
            negative_prompt_embeds,
            pooled_prompt_embeds: pooled,
            negative_pooled_prompt_embeds: negative_pooled,
            truncated,
        })
    }

    /// Checks an image size and step count for this model: positive multiples of
    /// [`SdxlPipeline::size_multiple`], at least one step.
    pub fn check_size_and_steps(&self, width: usize, height: usize, steps: usize) -> Result<()> {
        let m = self.size_multiple();
        if width == 0 || height == 0 || width % m != 0 || height % m != 0 {
            return Err(Error::Invalid(format!(
                "image size {width}x{height} is not a positive multiple of {m} (VAE x UNet downsampling of this model)"
            )));
        }
        if steps == 0 {
            return Err(Error::Invalid("steps must be at least 1".into()));
        }
        Ok(())
    }

    fn check_request(&self, req: &GenerateRequest) -> Result<()> {
        self.check_size_and_steps(req.width, req.height, req.steps)?;
        if !req.guidance.is_finite() || req.guidance < 0.0 {
            return Err(Error::Invalid(format!(
                "guidance must be a finite number >= 0, got {}",
                req.guidance
            )));
        }
        if !(0.0..=1.0).contains(&req.guidance_rescale) {
            return Err(Error::Invalid(format!(
                "guidance rescale must be in [0, 1], got {}",
                req.guidance_rescale
            )));
        }
        let down = self.vae.config.upsampling();
        let plan = stacks(&self.unet.config, req.height / down, req.width / down);
        req.prune.check_stacks(&plan)?;
        Ok(())
    }

    /// Generates one image. `progress(step, steps)` is called after every denoising step.
    pub fn generate(
        &self,
        ctx: &GpuContext,
        req: &GenerateRequest,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<GenerateOutput> {
        self.generate_with(ctx, req, |u| {
            progress(u.step + 1, u.steps);
            ControlFlow::Continue(())
        })
    }

    /// Generates one image, calling `on_step` after every denoising step with the step's time
    /// and, with [`Record::Steps`], its latents, prediction and masks. When `on_step` returns
    /// [`ControlFlow::Break`], the run stops there and returns [`Error::Cancelled`].
    pub fn generate_with(
        &self,
        ctx: &GpuContext,
        req: &GenerateRequest,
        mut on_step: impl FnMut(&StepUpdate<'_>) -> ControlFlow<()>,
    ) -> Result<GenerateOutput> {
        self.check_request(req)?;
        let down = self.vae.config.upsampling();
        let (lh, lw) = (req.height / down, req.width / down);
        let lc = self.unet.config.in_channels;
        let latent_shape = [1, lc, lh, lw];
        let plan = stacks(&self.unet.config, lh, lw);
        let n = lc * lh * lw;
        let noise = match &req.latents {
            Some(v) if v.len() == n => v.clone(),
            Some(v) => {
                return Err(Error::Invalid(format!(
                    "initial latents have {} values; {latent_shape:?} needs {n}",
                    v.len()
                )));
            }
            None => standard_normal(req.seed, n),
        };
        let schedule = EulerSchedule::new(&self.scheduler, req.steps)?;
        let embeds = self.encode_prompt(ctx, &req.prompt, req.negative_prompt.as_deref())?;
        check_finite(ctx, "text encoders", &embeds.prompt_embeds)?;

        let cfg = req.guidance > 1.0;
        let (context, text_embeds, batch) = if cfg {
            (
                layout::concat(
                    ctx,
                    &[&embeds.negative_prompt_embeds, &embeds.prompt_embeds],
                    0,
                )?,
                layout::concat(
                    ctx,
                    &[
                        &embeds.negative_pooled_prompt_embeds,
                        &embeds.pooled_prompt_embeds,
                    ],
                    0,
                )?,
                2,
            )
        } else {
            (
                embeds.prompt_embeds.clone(),
                embeds.pooled_prompt_embeds.clone(),
                1,
            )
        };
        let (h, w) = (req.height as f32, req.width as f32);
        let time_ids: Vec<f32> = (0..batch).flat_map(|_| [h, w, 0.0, 0.0, h, w]).collect();

        let init: Vec<f32> = noise
            .iter()
            .map(|v| v * schedule.init_noise_sigma)
            .collect();
        let mut x = Tensor::from_f32(ctx, &init, &latent_shape, self.dtype)?;
        let mut recorded = Vec::new();
        let mut masks = Vec::new();
        let mut step_ms = Vec::with_capacity(req.steps);
        let mut step_latents = Vec::new();
        let mut step_denoised = Vec::new();
        for i in 0..req.steps {
            let t0 = std::time::Instant::now();
            let xin = if cfg {
                layout::concat(ctx, &[&x, &x], 0)?
            } else {
                x.clone()
            };
            let xin = elementwise::scale(ctx, &xin, schedule.input_scale(i), 0.0)?;
            let out = self.unet.forward_pruned(
                ctx,
                &UNetInputs {
                    sample: &xin,
                    timesteps: &[schedule.timesteps[i]],
                    encoder_hidden_states: &context,
                    text_embeds: &text_embeds,
                    time_ids: &time_ids,
                },
                &PruneStep::new(&req.prune, i, req.steps),
            )?;
            let eps = out.sample;
            if req.record.masks() {
                recorded.extend(out.records.stacks.into_iter().map(|(name, r)| (i, name, r)));
            }
            let eps = if cfg {
                guidance::guidance(ctx, &eps, req.guidance, req.guidance_rescale)?
            } else {
                eps
            };
            let denoised = if req.record.steps() {
                let x0 = elementwise::binary(
                    ctx,
                    &x,
                    &eps,
                    elementwise::BinaryOp::Add {
                        alpha: -schedule.sigmas[i],
                    },
                )?;
                Some(x0)
            } else {
                None
            };
            x = elementwise::binary(
                ctx,
                &x,
                &eps,
                elementwise::BinaryOp::Add {
                    alpha: schedule.dt(i),
                },
            )?;
            ctx.flush()?;
            let first_mask = masks.len();
            if let Some(x0) = denoised {
                step_denoised.push(x0.to_f32_vec(ctx)?);
                step_latents.push(x.to_f32_vec(ctx)?);
                masks.extend(download_masks(ctx, &plan, std::mem::take(&mut recorded))?);
            }
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            step_ms.push(ms);
            let flow = on_step(&StepUpdate {
                step: i,
                steps: req.steps,
                ms,
                latents: step_latents.last().map(|v| v.as_slice()),
                denoised: step_denoised.last().map(|v| v.as_slice()),
                masks: &masks[first_mask..],
                latent_shape,
            });
            if flow.is_break() {
                return Err(Error::Cancelled);
            }
        }
        let latents_final = x.to_f32_vec(ctx)?;
        if let Some(i) = latents_final.iter().position(|v| !v.is_finite()) {
            return Err(Error::Invalid(format!(
                "the denoising loop (UNet) produced a non-finite latent at index {i}"
            )));
        }
        drop(x);
        // Whole or tiled, whichever fits the adapter's binding limit (1024 px in f32 is tiled).
        let image = self
            .vae
            .decode_host(ctx, &latents_final, latent_shape, self.vae_dtype)?;
        if let Some(i) = image.iter().position(|v| !v.is_finite()) {
            return Err(Error::Invalid(format!(
                "the VAE decoder produced a non-finite value at index {i} (with an f16 VAE, use --vae-dtype f32)"
            )));
        }
        masks.extend(download_masks(ctx, &plan, recorded)?);
        Ok(GenerateOutput {
            embeds,
            latents_final,
            latent_shape,
            image,
            width: req.width,
            height: req.height,
            masks,
            step_ms,
            step_latents,
            step_denoised,
        })
    }
}

/// Host copies of recorded masks (one readback per tensor); `plan` gives each stack's grid.
fn download_masks(
    ctx: &GpuContext,
    plan: &[crate::prune::Stack],
    recorded: Vec<(usize, String, crate::model::unet::StackRecord)>,
) -> Result<Vec<StepMask>> {
    recorded
        .into_iter()
        .map(|(step, stack, r)| {
            let (ks, ss) = (r.kept.shape(), r.scores.shape());
            let grid = plan
                .iter()
                .find(|s| s.name == stack)
                .map_or([0, ss[1]], |s| [s.grid.0, s.grid.1]);
            Ok(StepMask {
                step,
                stack,
                grid,
                kept_shape: [ks[0], ks[1]],
                kept: r.kept.to_u32_vec(ctx)?,
                scores_shape: [ss[0], ss[1]],
                scores: r.scores.to_f32_vec(ctx)?,
            })
        })
        .collect()
}

fn check_finite(ctx: &GpuContext, stage: &str, t: &Tensor) -> Result<()> {
    let v = t.to_f32_vec(ctx)?;
    match v.iter().position(|x| !x.is_finite()) {
        Some(i) => Err(Error::Invalid(format!(
            "the {stage} produced a non-finite value at index {i}"
        ))),
        None => Ok(()),
    }
}

/// `n` standard-normal values from `seed` (Box-Muller over a seeded ChaCha stream).
pub fn standard_normal(seed: u64, n: usize) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let u1: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
            let u2: f64 = rng.random();
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
        })
        .collect()
}
