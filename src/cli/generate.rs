//! `atedm generate`: prompt in, PNG out.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;

use crate::cli::flops::PruneArgs;
use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::io::{png_rgb8_bytes, safetensors_bytes, write_atomic, HostTensor};
use crate::model::weights::read_all_f32;
use crate::pipeline::dump::{write_run, Rgb8, RunInfo};
use crate::pipeline::generate::{GenerateRequest, LoadOptions, SdxlPipeline, StepUpdate};
use crate::prune::flops::PruneMode;
use crate::tensor::DType;

#[derive(Args, Debug, Clone)]
pub struct GenerateArgs {
    /// A diffusers SD-XL pipeline folder, or an original single-file SD-XL checkpoint
    /// (`sd_xl_base_1.0.safetensors`). Default: the built-in demo model (coloured shapes at
    /// 128x128; prompts like "a large red circle at the top left").
    #[arg(long)]
    pub model: Option<PathBuf>,
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
    /// Image width (default: the model's native size, 1024 for SD-XL, 128 for the demo model).
    #[arg(long)]
    pub width: Option<usize>,
    /// Image height (default: the model's native size).
    #[arg(long)]
    pub height: Option<usize>,
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
    /// Save the run to this folder for `atedm view`: `run.json` (settings, per-step time and
    /// FLOPs, stacks), `image.png`, per-step latents (`latents_NNN.safetensors`), and per
    /// step the kept tokens and G-WPR scores of every pruned stack (`step_NNN.safetensors`)
    /// with pictures of the masks (`step_NNN_<stack>.png`). Works for unpruned and ToMe runs
    /// too (no masks then).
    #[arg(long)]
    pub dump_masks: Option<PathBuf>,
    #[command(flatten)]
    pub prune: PruneArgs,
}

/// Encodes RGB8 pixels as PNG with the generation parameters in a `parameters` text chunk.
pub fn png_bytes(width: usize, height: usize, rgb: &[u8], parameters: &str) -> Result<Vec<u8>> {
    png_rgb8_bytes(width, height, rgb, parameters)
}

/// How a model argument is named in messages and metadata (the built-in demo model when none).
pub fn model_name(model: Option<&std::path::Path>) -> String {
    match model {
        Some(m) => m.display().to_string(),
        None => crate::model::demo::NAME.to_string(),
    }
}

/// What [`run_observed`] reports while it runs.
pub enum GenerateEvent<'a> {
    /// The pipeline is loaded and the run described (its step times still empty).
    Started(&'a RunInfo),
    /// A denoising step finished.
    Step(&'a StepUpdate<'a>),
}

/// The result of [`run_observed`]: the run's description (with step times) and its image.
pub struct Generated {
    pub info: RunInfo,
    pub image: Rgb8,
}

pub fn run(ctx: &GpuContext, a: &GenerateArgs) -> Result<()> {
    run_observed(ctx, a, false, |_| {}).map(|_| ())
}

/// `atedm generate` reporting its progress to `on_event`. With `record`, every step's latents
/// and masks are downloaded right after the step (as `--dump-masks` does) and reported.
pub fn run_observed(
    ctx: &GpuContext,
    a: &GenerateArgs,
    record: bool,
    mut on_event: impl FnMut(GenerateEvent<'_>),
) -> Result<Generated> {
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
    let opts = LoadOptions {
        dtype: a.dtype,
        vae_dtype: a.vae_dtype,
        config: a.config.clone(),
    };
    let pipe = match &a.model {
        Some(m) => SdxlPipeline::load(ctx, m, &opts)?,
        None => SdxlPipeline::load_demo(ctx, &opts)?,
    };
    let model_name = model_name(a.model.as_deref());
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    eprintln!("loaded {model_name} in {:.1} s", load_ms / 1e3);
    let down = pipe.vae.config.upsampling();
    let native = pipe.native_size();
    let a = &GenerateArgs {
        width: Some(a.width.unwrap_or(native)),
        height: Some(a.height.unwrap_or(native)),
        ..a.clone()
    };
    let (width, height) = (a.width.unwrap_or(native), a.height.unwrap_or(native));
    let (prune, budget) =
        a.prune
            .settings(&pipe.unet.config, height / down, width / down, a.steps)?;
    let tome = prune.mode == PruneMode::Tome;
    if a.dump_masks.is_some() && tome {
        eprintln!(
            "note: ToMe merges tokens and has no masks; --dump-masks saves the run, the step previews and the image"
        );
    }
    let prune_text = crate::cli::flops::describe_prune(&prune, budget);
    if prune.mode != PruneMode::None {
        eprintln!("pruning: {prune_text}");
    }
    let record = record || a.dump_masks.is_some();
    let req = GenerateRequest {
        prompt: a.prompt.clone(),
        negative_prompt: a.negative_prompt.clone(),
        steps: a.steps,
        guidance: a.guidance,
        guidance_rescale: a.guidance_rescale,
        width,
        height,
        seed: a.seed,
        latents,
        prune,
        record_masks: record && !tome,
        record_latents: record,
    };
    let params = format!(
        "{}\nNegative prompt: {}\nSteps: {}, Sampler: Euler, CFG scale: {}, Guidance rescale: {}, Seed: {}, Size: {}x{}, Model: {}, Pruning: {}, Engine: atedm {}",
        a.prompt,
        a.negative_prompt.as_deref().unwrap_or(""),
        a.steps,
        a.guidance,
        a.guidance_rescale,
        a.seed,
        width,
        height,
        model_name,
        prune_text,
        env!("CARGO_PKG_VERSION")
    );
    let latent_shape = [1, pipe.unet.config.in_channels, height / down, width / down];
    let mut info = RunInfo::new(&pipe.unet.config, &req, latent_shape, &prune_text, &params)?;
    info.load_ms = load_ms;
    on_event(GenerateEvent::Started(&info));
    let bar = indicatif::ProgressBar::new(a.steps as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} steps  {per_sec}  eta {eta}")
            .expect("static template"),
    );
    let t1 = Instant::now();
    let out = pipe.generate_with(ctx, &req, |u| {
        bar.set_position(u.step as u64 + 1);
        on_event(GenerateEvent::Step(u));
    })?;
    bar.finish();
    info.generate_ms = t1.elapsed().as_secs_f64() * 1e3;
    info.step_ms = out.step_ms.clone();
    if out.embeds.truncated {
        eprintln!("warning: the prompt was longer than 75 tokens and was truncated");
    }
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
            HostTensor::F32("image", vec![1, 3, height, width], &out.image),
        ])?;
        write_atomic(p, &bytes)?;
    }
    let rgb = out.rgb8();
    if let Some(dir) = &a.dump_masks {
        write_run(dir, &info, &out, &rgb, &params)?;
        eprintln!("saved the run to {}", dir.display());
    }
    write_atomic(&a.output, &png_bytes(width, height, &rgb, &params)?)?;
    eprintln!(
        "wrote {} in {:.1} s",
        a.output.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(Generated {
        info,
        image: Rgb8 {
            width,
            height,
            pixels: rgb,
        },
    })
}
