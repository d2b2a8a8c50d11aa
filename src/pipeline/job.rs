//! A generation job, as `atedm generate` and the live viewer run it: load a model, solve the
//! pruning for its size, generate, and write the PNG (with its parameters), the intermediates
//! and the saved run. Every check that can fail after the GPU work (an existing output, a
//! parameters text the PNG cannot hold) is made before it starts, and every file is written
//! atomically after the image is decoded: a failed or cancelled job writes nothing.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::io::{png_rgb8_bytes, safetensors_bytes, write_atomic, HostTensor};
use crate::model::weights::read_all_f32;
use crate::pipeline::dump::{write_run, Rgb8, RunInfo};
use crate::pipeline::generate::{
    GenerateOutput, GenerateRequest, LoadOptions, Record, SdxlPipeline, StepUpdate,
};
use crate::prune::budget::PruneTarget;
use crate::prune::PruneMode;

/// One image to generate and where to put it.
#[derive(Clone, Debug)]
pub struct GenerateJob {
    /// A diffusers SD-XL folder or a single-file checkpoint; `None`: the built-in demo model.
    pub model: Option<PathBuf>,
    /// Dtypes and, for single files, the config folder.
    pub load: LoadOptions,
    /// The prompt (any Unicode text).
    pub prompt: String,
    /// The negative prompt; `None` or empty: zero embeddings.
    pub negative_prompt: Option<String>,
    /// Denoising steps; `None`: the model's own default ([`SdxlPipeline::default_steps`]).
    pub steps: Option<usize>,
    /// Classifier-free guidance scale.
    pub guidance: f32,
    /// diffusers' `guidance_rescale`, in [0, 1].
    pub guidance_rescale: f32,
    /// Seed of the initial noise.
    pub seed: u64,
    /// Image width; `None`: the model's native size.
    pub width: Option<usize>,
    /// Image height; `None`: the model's native size.
    pub height: Option<usize>,
    /// A safetensors file with the initial noise `latents` `[1, 4, H/8, W/8]`.
    pub latents: Option<PathBuf>,
    /// The pruning, or the FLOPs budget it is solved for at this model and size.
    pub prune: PruneTarget,
    /// The PNG to write (`None`: none; the image is still returned).
    pub output: Option<PathBuf>,
    /// Replace an existing output file (otherwise it is an error, raised before any GPU work).
    pub overwrite: bool,
    /// Also write the embeddings, final latents and decoded image to this safetensors file.
    pub save_intermediates: Option<PathBuf>,
    /// Save the run (`run.json`, image, per-step latents and masks) to this folder for the
    /// viewer (see [`crate::pipeline::dump`]).
    pub save_run: Option<PathBuf>,
}

impl Default for GenerateJob {
    fn default() -> Self {
        GenerateJob {
            model: None,
            load: LoadOptions::default(),
            prompt: String::new(),
            negative_prompt: None,
            steps: None,
            guidance: 5.0,
            guidance_rescale: 0.0,
            seed: 0,
            width: None,
            height: None,
            latents: None,
            prune: PruneTarget::default(),
            output: None,
            overwrite: false,
            save_intermediates: None,
            save_run: None,
        }
    }
}

/// What [`run_job`] reports while it runs.
pub enum JobEvent<'a> {
    /// The pipeline is loaded and the run described (its step times still empty).
    Started(&'a RunInfo),
    /// A denoising step finished.
    Step(&'a StepUpdate<'a>),
}

/// The result of [`run_job`]: the run's description (with step times), the image and the
/// generation's full output.
pub struct JobOutput {
    /// The run, as `run.json` holds it.
    pub info: RunInfo,
    /// The image, RGB8.
    pub image: Rgb8,
    /// Embeddings, latents, masks, timings.
    pub output: GenerateOutput,
    /// The parameters text stored in the PNG.
    pub parameters: String,
}

/// How a model is named in messages and metadata (the built-in demo model when `None`).
pub fn model_name(model: Option<&Path>) -> String {
    match model {
        Some(m) => m.display().to_string(),
        None => crate::model::demo::NAME.to_string(),
    }
}

/// Refuses an existing `path` unless `overwrite`.
pub fn check_output(path: &Path, overwrite: bool) -> Result<()> {
    if path.exists() && !overwrite {
        return Err(Error::Invalid(format!(
            "{} exists; pass --overwrite to replace it",
            path.display()
        )));
    }
    Ok(())
}

/// Runs `job` on `ctx`. With `record` [`Record::Steps`] (or a `save_run` folder), every step's
/// latents and masks are read back right after the step and reported through `on_event`;
/// returning [`ControlFlow::Break`] from it stops the run with [`Error::Cancelled`] and writes
/// nothing.
pub fn run_job(
    ctx: &GpuContext,
    job: &GenerateJob,
    record: Record,
    mut on_event: impl FnMut(JobEvent<'_>) -> ControlFlow<()>,
) -> Result<JobOutput> {
    for p in [&job.output, &job.save_intermediates].into_iter().flatten() {
        check_output(p, job.overwrite)?;
    }
    let latents = match &job.latents {
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
    let pipe = match &job.model {
        Some(m) => SdxlPipeline::load(ctx, m, &job.load)?,
        None => SdxlPipeline::load_demo(ctx, &job.load)?,
    };
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let down = pipe.vae.config.upsampling();
    let native = pipe.native_size();
    let (width, height) = (job.width.unwrap_or(native), job.height.unwrap_or(native));
    let steps = job.steps.unwrap_or(pipe.default_steps());
    pipe.check_size_and_steps(width, height, steps)?;
    let prune = job
        .prune
        .resolve(&pipe.unet.config, height / down, width / down, steps)?;
    let prune_text = prune.describe_solved(job.prune.budget());
    let record = if job.save_run.is_some() {
        Record::Steps
    } else {
        record
    };
    let parameters = format!(
        "{}\nNegative prompt: {}\nSteps: {}, Sampler: Euler, CFG scale: {}, Guidance rescale: {}, Seed: {}, Size: {}x{}, Model: {}, Pruning: {}, Engine: atedm {}",
        job.prompt,
        job.negative_prompt.as_deref().unwrap_or(""),
        steps,
        job.guidance,
        job.guidance_rescale,
        job.seed,
        width,
        height,
        model_name(job.model.as_deref()),
        prune_text,
        env!("CARGO_PKG_VERSION")
    );
    // The PNG encoder's checks, before the GPU work rather than after it.
    png_rgb8_bytes(1, 1, &[0, 0, 0], &parameters)?;
    let req = GenerateRequest {
        prompt: job.prompt.clone(),
        negative_prompt: job.negative_prompt.clone(),
        steps,
        guidance: job.guidance,
        guidance_rescale: job.guidance_rescale,
        width,
        height,
        seed: job.seed,
        latents,
        prune,
        record,
    };
    let latent_shape = [1, pipe.unet.config.in_channels, height / down, width / down];
    let mut info = RunInfo::new(
        &pipe.unet.config,
        &req,
        latent_shape,
        &prune_text,
        &parameters,
    )?;
    info.load_ms = load_ms;
    if on_event(JobEvent::Started(&info)).is_break() {
        return Err(Error::Cancelled);
    }
    let t1 = Instant::now();
    let out = pipe.generate_with(ctx, &req, |u| on_event(JobEvent::Step(u)))?;
    info.generate_ms = t1.elapsed().as_secs_f64() * 1e3;
    info.step_ms = out.step_ms.clone();
    if let Some(p) = &job.save_intermediates {
        write_atomic(p, &intermediates(ctx, &out)?)?;
    }
    let rgb = out.rgb8();
    if let Some(dir) = &job.save_run {
        write_run(dir, &info, &out, &rgb, &parameters)?;
    }
    if let Some(p) = &job.output {
        write_atomic(p, &png_rgb8_bytes(width, height, &rgb, &parameters)?)?;
    }
    Ok(JobOutput {
        info,
        image: Rgb8 {
            width,
            height,
            pixels: rgb,
        },
        output: out,
        parameters,
    })
}

/// Whether `prune` can record masks (ToMe merges tokens and has none).
pub fn has_masks(prune: &PruneTarget) -> bool {
    prune.mode() != PruneMode::Tome
}

/// The `--save-intermediates` file: embeddings, final latents and the decoded image.
fn intermediates(ctx: &GpuContext, out: &GenerateOutput) -> Result<Vec<u8>> {
    let e = &out.embeds;
    let host = |t: &crate::tensor::Tensor| -> Result<(Vec<usize>, Vec<f32>)> {
        Ok((t.shape().to_vec(), t.to_f32_vec(ctx)?))
    };
    let (s0, v0) = host(&e.prompt_embeds)?;
    let (s1, v1) = host(&e.negative_prompt_embeds)?;
    let (s2, v2) = host(&e.pooled_prompt_embeds)?;
    let (s3, v3) = host(&e.negative_pooled_prompt_embeds)?;
    safetensors_bytes(&[
        HostTensor::F32("prompt_embeds", s0, &v0),
        HostTensor::F32("negative_prompt_embeds", s1, &v1),
        HostTensor::F32("pooled_prompt_embeds", s2, &v2),
        HostTensor::F32("negative_pooled_prompt_embeds", s3, &v3),
        HostTensor::F32(
            "latents_final",
            out.latent_shape.to_vec(),
            &out.latents_final,
        ),
        HostTensor::F32("image", vec![1, 3, out.height, out.width], &out.image),
    ])
}
