//! `atedm generate`: prompt in, PNG out (`atedm::pipeline::job`).

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use atedm::gpu::GpuContext;
use atedm::pipeline::generate::{LoadOptions, Record};
use atedm::pipeline::job::{has_masks, model_name, run_job, GenerateJob, JobEvent};
use atedm::prune::PruneMode;
use atedm::{DType, Result};
use clap::Args;

use crate::cli::flops::PruneArgs;

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
    /// What to draw (any text; over 75 CLIP tokens is truncated with a warning). For the demo
    /// model: "a {small|large} {colour} {circle|square|triangle} at the {position}", joined
    /// by " and " for two shapes.
    #[arg(long)]
    pub prompt: String,
    /// What to steer away from (default: none, zero embeddings as SD-XL's
    /// force_zeros_for_empty_prompt).
    #[arg(long)]
    pub negative_prompt: Option<String>,
    /// Denoising steps (default: the model's own setting: 50 for SD-XL, 20 for the demo model).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Classifier-free guidance scale (1 or below: no guidance, one UNet batch).
    #[arg(long, default_value_t = 5.0)]
    pub guidance: f32,
    /// diffusers' guidance_rescale, in [0, 1].
    #[arg(long, default_value_t = 0.0)]
    pub guidance_rescale: f32,
    /// Seed of the initial noise.
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
    /// Replace existing output files.
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

impl GenerateArgs {
    /// The library's job for these flags.
    pub fn job(&self) -> Result<GenerateJob> {
        Ok(GenerateJob {
            model: self.model.clone(),
            load: LoadOptions {
                dtype: self.dtype,
                vae_dtype: self.vae_dtype,
                config: self.config.clone(),
            },
            prompt: self.prompt.clone(),
            negative_prompt: self.negative_prompt.clone(),
            steps: self.steps,
            guidance: self.guidance,
            guidance_rescale: self.guidance_rescale,
            seed: self.seed,
            width: self.width,
            height: self.height,
            latents: self.latents.clone(),
            prune: self.prune.target()?,
            output: Some(self.output.clone()),
            overwrite: self.overwrite,
            save_intermediates: self.save_intermediates.clone(),
            save_run: self.dump_masks.clone(),
        })
    }
}

/// Set by Ctrl-C: the run stops after the current step and writes nothing.
fn interrupted() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    // A second handler cannot be installed (a test harness calling twice): Ctrl-C then
    // keeps its default behaviour, which also leaves no partial file (writes are atomic).
    let _ = ctrlc::set_handler(move || f.store(true, Ordering::SeqCst));
    flag
}

pub fn run(ctx: &GpuContext, a: &GenerateArgs) -> Result<()> {
    let job = a.job()?;
    if a.dump_masks.is_some() && !has_masks(&job.prune) {
        eprintln!(
            "note: ToMe merges tokens and has no masks; --dump-masks saves the run, the step previews and the image"
        );
    }
    let stop = interrupted();
    let t0 = Instant::now();
    let bar = indicatif::ProgressBar::hidden();
    let out = run_job(ctx, &job, Record::Nothing, |ev| {
        match ev {
            JobEvent::Started(info) => {
                eprintln!(
                    "loaded {} in {:.1} s",
                    model_name(job.model.as_deref()),
                    info.load_ms / 1e3
                );
                if info.prune_mode != PruneMode::None.name() {
                    eprintln!("pruning: {}", info.prune);
                }
                bar.set_length(info.steps as u64);
                bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{bar:40} {pos}/{len} steps  {per_sec}  eta {eta}",
                    )
                    .expect("static template"),
                );
            }
            JobEvent::Step(u) => bar.set_position(u.step as u64 + 1),
        }
        if stop.load(Ordering::SeqCst) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    bar.finish();
    let out = out?;
    if out.output.embeds.truncated {
        eprintln!("warning: the prompt was longer than 75 tokens and was truncated");
    }
    if let Some(dir) = &a.dump_masks {
        eprintln!("saved the run to {}", dir.display());
    }
    eprintln!(
        "wrote {} in {:.1} s",
        a.output.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
