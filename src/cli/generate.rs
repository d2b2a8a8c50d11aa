//! `atedm generate`: prompt in, PNG out.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;

use crate::cli::flops::PruneArgs;
use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::io::{safetensors_bytes, write_atomic, HostTensor};
use crate::model::weights::read_all_f32;
use crate::pipeline::generate::{GenerateOutput, GenerateRequest, LoadOptions, SdxlPipeline};
use crate::tensor::DType;

#[derive(Args, Debug, Clone)]
pub struct GenerateArgs {
    /// A diffusers SD-XL pipeline folder, or an original single-file SD-XL checkpoint
    /// (`sd_xl_base_1.0.safetensors`).
    #[arg(long)]
    pub model: PathBuf,
    /// With a single-file checkpoint: a diffusers SD-XL pipeline folder holding its configs
    /// (and tokenizers). Default: the built-in SD-XL base configs and CLIP vocabulary.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long)]
    pub prompt: String,
    #[arg(long)]
    pub negative_prompt: Option<String>,
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    #[arg(long, default_value_t = 5.0)]
    pub guidance: f32,
    #[arg(long, default_value_t = 0.0)]
    pub guidance_rescale: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 1024)]
    pub width: usize,
    #[arg(long, default_value_t = 1024)]
    pub height: usize,
    /// Compute dtype of the text encoders and the UNet.
    #[arg(long, default_value = "f16")]
    pub dtype: DType,
    /// Compute dtype of the VAE (default: f32 for VAEs that need upcasting, like SD-XL's).
    #[arg(long)]
    pub vae_dtype: Option<DType>,
    /// Output PNG.
    #[arg(long, default_value = "out.png")]
    pub output: PathBuf,
    /// Replace an existing output file.
    #[arg(long)]
    pub overwrite: bool,
    /// Initial noise: a safetensors file with `latents` [1,4,H/8,W/8] (before scaling by the
    /// scheduler's init_noise_sigma).
    #[arg(long)]
    pub latents: Option<PathBuf>,
    /// Also write embeddings, final latents and the decoded image to this safetensors file.
    #[arg(long)]
    pub save_intermediates: Option<PathBuf>,
    /// Save, per step, the kept tokens and G-WPR scores of every pruned stack
    /// (`step_NNN.safetensors`) and pictures of the masks (`step_NNN_<stack>.png`).
    #[arg(long)]
    pub dump_masks: Option<PathBuf>,
    #[command(flatten)]
    pub prune: PruneArgs,
}

/// Encodes RGB8 pixels as PNG with the generation parameters in a `parameters` text chunk.
pub fn png_bytes(width: usize, height: usize, rgb: &[u8], parameters: &str) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut buf, width as u32, height as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let err = |e: png::EncodingError| Error::Invalid(format!("PNG encoding: {e}"));
        enc.add_text_chunk("parameters".into(), parameters.into())
            .map_err(err)?;
        let mut w = enc.write_header().map_err(err)?;
        w.write_image_data(rgb).map_err(err)?;
        w.finish().map_err(err)?;
    }
    Ok(buf)
}

pub fn run(ctx: &GpuContext, a: &GenerateArgs) -> Result<()> {
    if a.output.exists() && !a.overwrite {
        return Err(Error::Invalid(format!(
            "{} exists; pass --overwrite to replace it",
            a.output.display()
        )));
    }
    let latents = match &a.latents {
        Some(p) => {
            let mut m = read_all_f32(p)?;
            let (_, v) = m
                .remove("latents")
                .ok_or_else(|| Error::Invalid(format!("{}: no tensor 'latents'", p.display())))?;
            Some(v)
        }
        None => None,
    };
    let t0 = Instant::now();
    let pipe = SdxlPipeline::load(
        ctx,
        &a.model,
        &LoadOptions {
            dtype: a.dtype,
            vae_dtype: a.vae_dtype,
            config: a.config.clone(),
        },
    )?;
    eprintln!(
        "loaded {} in {:.1} s",
        a.model.display(),
        t0.elapsed().as_secs_f64()
    );
    let down = pipe.vae.config.upsampling();
    let (prune, budget) =
        a.prune
            .settings(&pipe.unet.config, a.height / down, a.width / down, a.steps)?;
    if a.dump_masks.is_some() && prune.mode == crate::prune::flops::PruneMode::Tome {
        return Err(Error::Invalid(
            "--dump-masks saves AT-EDM's token masks; ToMe merges tokens and has none (use --prune atedm)"
                .into(),
        ));
    }
    let prune_text = crate::cli::flops::describe_prune(&prune, budget);
    if prune.mode != crate::prune::flops::PruneMode::None {
        eprintln!("pruning: {prune_text}");
    }
    let req = GenerateRequest {
        prompt: a.prompt.clone(),
        negative_prompt: a.negative_prompt.clone(),
        steps: a.steps,
        guidance: a.guidance,
        guidance_rescale: a.guidance_rescale,
        width: a.width,
        height: a.height,
        seed: a.seed,
        latents,
        prune,
        record_masks: a.dump_masks.is_some(),
    };
    let bar = indicatif::ProgressBar::new(a.steps as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} steps  {per_sec}  eta {eta}")
            .expect("static template"),
    );
    let out = pipe.generate(ctx, &req, |i, _| bar.set_position(i as u64))?;
    bar.finish();
    if out.embeds.truncated {
        eprintln!("warning: the prompt was longer than 75 tokens and was truncated");
    }
    let params = format!(
        "{}\nNegative prompt: {}\nSteps: {}, Sampler: Euler, CFG scale: {}, Guidance rescale: {}, Seed: {}, Size: {}x{}, Model: {}, Pruning: {}, Engine: atedm {}",
        a.prompt,
        a.negative_prompt.as_deref().unwrap_or(""),
        a.steps,
        a.guidance,
        a.guidance_rescale,
        a.seed,
        a.width,
        a.height,
        a.model.display(),
        prune_text,
        env!("CARGO_PKG_VERSION")
    );
    if let Some(p) = &a.save_intermediates {
        let e = &out.embeds;
        let host = |t: &crate::tensor::Tensor| -> Result<(Vec<usize>, Vec<f32>)> {
            Ok((t.shape().to_vec(), t.to_f32_vec(ctx)?))
        };
        let (s0, v0) = host(&e.prompt_embeds)?;
        let (s1, v1) = host(&e.negative_prompt_embeds)?;
        let (s2, v2) = host(&e.pooled_prompt_embeds)?;
        let (s3, v3) = host(&e.negative_pooled_prompt_embeds)?;
        let bytes = safetensors_bytes(&[
            HostTensor::F32("prompt_embeds", s0, &v0),
            HostTensor::F32("negative_prompt_embeds", s1, &v1),
            HostTensor::F32("pooled_prompt_embeds", s2, &v2),
            HostTensor::F32("negative_pooled_prompt_embeds", s3, &v3),
            HostTensor::F32(
                "latents_final",
                out.latent_shape.to_vec(),
                &out.latents_final,
            ),
            HostTensor::F32("image", vec![1, 3, a.height, a.width], &out.image),
        ])?;
        write_atomic(p, &bytes)?;
    }
    if let Some(dir) = &a.dump_masks {
        dump_masks(dir, &pipe, &out, a.height / down, a.width / down)?;
    }
    write_atomic(
        &a.output,
        &png_bytes(a.width, a.height, &out.rgb8(), &params)?,
    )?;
    eprintln!(
        "wrote {} in {:.1} s",
        a.output.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Writes `step_NNN.safetensors` (`kept.<stack>` int64 [B,k], `score.<stack>` f32 [B,N]) and
/// `step_NNN_<stack>.png` (the conditional image's tokens on the stack's grid: kept white,
/// pruned black, scaled up to at least 64 px wide).
fn dump_masks(
    dir: &std::path::Path,
    pipe: &SdxlPipeline,
    out: &GenerateOutput,
    lh: usize,
    lw: usize,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let stacks = crate::prune::flops::stacks(&pipe.unet.config, lh, lw);
    let steps: std::collections::BTreeSet<usize> = out.masks.iter().map(|m| m.step).collect();
    for step in steps {
        let masks: Vec<_> = out.masks.iter().filter(|m| m.step == step).collect();
        let kept: Vec<(String, Vec<i64>)> = masks
            .iter()
            .map(|m| {
                (
                    format!("kept.{}", m.stack),
                    m.kept.iter().map(|&v| v as i64).collect(),
                )
            })
            .collect();
        let names: Vec<String> = masks.iter().map(|m| format!("score.{}", m.stack)).collect();
        let mut tensors = Vec::new();
        for (m, (kn, kv)) in masks.iter().zip(&kept) {
            tensors.push(HostTensor::I64(kn, m.kept_shape.to_vec(), kv));
        }
        for (m, sn) in masks.iter().zip(&names) {
            tensors.push(HostTensor::F32(sn, m.scores_shape.to_vec(), &m.scores));
        }
        write_atomic(
            &dir.join(format!("step_{step:03}.safetensors")),
            &safetensors_bytes(&tensors)?,
        )?;
        for m in &masks {
            let Some(st) = stacks.iter().find(|s| s.name == m.stack) else {
                continue;
            };
            let (gh, gw) = (lh >> (st.level - 1), lw >> (st.level - 1));
            let b = m.kept_shape[0] - 1; // the conditional half with CFG
            let k = m.kept_shape[1];
            let mut on = vec![false; gh * gw];
            for &j in &m.kept[b * k..(b + 1) * k] {
                on[j as usize] = true;
            }
            let scale = (64 / gw.max(1)).max(1);
            let (w, h) = (gw * scale, gh * scale);
            let mut rgb = Vec::with_capacity(w * h * 3);
            for y in 0..h {
                for x in 0..w {
                    let v = if on[(y / scale) * gw + x / scale] {
                        255
                    } else {
                        24
                    };
                    rgb.extend([v, v, v]);
                }
            }
            let file = dir.join(format!("step_{step:03}_{}.png", m.stack));
            write_atomic(
                &file,
                &png_bytes(
                    w,
                    h,
                    &rgb,
                    &format!("kept tokens of {} at step {step}", m.stack),
                )?,
            )?;
        }
    }
    Ok(())
}
