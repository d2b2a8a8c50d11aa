//! Benchmarks: UNet step latency of the full model, AT-EDM and ToMe side by side (this module,
//! what `atedm bench` prints) and kernel throughput ([`ops`]).
//!
//! Variants run interleaved (full, AT-EDM, ToMe, full, ...) for several repetitions after one
//! warm-up each, so drift and noise hit them alike. Each timed run is one UNet forward recorded,
//! submitted and waited for. With DSAP, AT-EDM's early (protected) and late steps are timed
//! separately and combined with the schedule's weights, like its FLOPs. Afterwards one step of
//! each variant is profiled (GPU timestamps, or CPU time per dispatch) for the pruning overhead
//! share and, with `--profile`, a per-op breakdown.

pub mod ops;

use std::path::PathBuf;
use std::time::Instant;

use crate::error::{Error, Result};
use crate::gpu::{GpuContext, Profile};
use crate::model::config::UNetConfig;
use crate::model::load::{load_unet, unet_config};
use crate::model::unet::{PruneStep, UNet2DConditionModel, UNetInputs};
use crate::ops::fill::fill_uniform;
use crate::prune::budget::{keep_ratio_for_budget, named_budget, tome_for_budget, PruneTarget};
use crate::prune::flops::unet_flops;
use crate::prune::tome::TomeSettings;
use crate::prune::{AtEdm, PruneMode, Pruning};
use crate::tensor::DType;

/// A benchmarked variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// The unpruned model.
    Full,
    /// AT-EDM (or AT-EDM-dagger).
    Atedm,
    /// ToMe.
    Tome,
}

/// The weights a benchmark runs.
#[derive(Clone, Debug)]
pub enum BenchModel {
    /// A diffusers pipeline or unet folder, or a single file (with an optional config folder).
    File {
        /// The model.
        path: PathBuf,
        /// A diffusers config folder for a single file that is not SD-XL base-sized.
        config: Option<PathBuf>,
    },
    /// Random weights of this config generated on the GPU (no file), named in the report.
    Synthetic {
        /// The UNet config.
        config: Box<UNetConfig>,
        /// Its name in the report.
        name: String,
    },
}

impl Default for BenchModel {
    fn default() -> Self {
        BenchModel::Synthetic {
            config: Box::new(UNetConfig::sdxl_base()),
            name: "SD-XL base".into(),
        }
    }
}

/// The AT-EDM variant's pruning.
#[derive(Clone, Debug)]
pub enum AtEdmVariant {
    /// These settings with the keep ratio of SD-XL's 4.1T setting (c) at 1024 px.
    SdxlSettingC(AtEdm),
    /// Given, or solved for a budget at the bench size.
    Target(PruneTarget),
}

/// The ToMe variant's pruning.
#[derive(Clone, Debug)]
pub enum TomeVariant {
    /// These settings with the merge ratio (and, with `choose_layers`, the layers) solved to
    /// the AT-EDM variant's FLOPs at the bench size.
    EqualFlops {
        /// Every setting but the ratio.
        tome: TomeSettings,
        /// Let the budget choose the layers merged around.
        choose_layers: bool,
    },
    /// Given, or solved for a budget at the bench size.
    Target(PruneTarget),
}

/// What to benchmark.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// The weights (default: synthetic SD-XL base).
    pub model: BenchModel,
    /// Image width (default: 1024 on a GPU, 256 on a CPU adapter such as lavapipe).
    pub width: Option<usize>,
    /// Image height (default as `width`).
    pub height: Option<usize>,
    /// UNet batch (2 = classifier-free guidance).
    pub batch: usize,
    /// Denoising steps of the schedule a step stands for (DSAP's early steps, FLOPs average).
    pub steps: usize,
    /// Timed repetitions of every variant, interleaved, after one warm-up each. 0: only the
    /// warm-up step of each variant runs, for the peak memory of a real run (no timings).
    pub reps: usize,
    /// Compute dtype (default: f16 where the adapter has it, else f32).
    pub dtype: Option<DType>,
    /// Variants to run, in this order.
    pub variants: Vec<Variant>,
    /// The AT-EDM variant.
    pub atedm: AtEdmVariant,
    /// The ToMe variant.
    pub tome: TomeVariant,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            model: BenchModel::default(),
            width: None,
            height: None,
            batch: 2,
            steps: 50,
            reps: 3,
            dtype: None,
            variants: vec![Variant::Full, Variant::Atedm, Variant::Tome],
            atedm: AtEdmVariant::SdxlSettingC(AtEdm::new(1.0).expect("1 is a valid keep ratio")),
            tome: TomeVariant::EqualFlops {
                tome: TomeSettings::default(),
                choose_layers: true,
            },
        }
    }
}

/// What a benchmark reports while it runs.
#[derive(Clone, Copy, Debug)]
pub enum BenchEvent<'a> {
    /// The model is loaded: `steps` UNet steps will run in all.
    Loaded {
        /// The model's name.
        model: &'a str,
        /// Seconds to load it.
        load_s: f64,
        /// UNet steps to run (warm-up, timed and profiled).
        steps: usize,
    },
    /// One UNet step finished.
    Step {
        /// The variant.
        variant: Variant,
        /// The schedule step it stands for.
        step: usize,
        /// 0: warm-up; 1..=reps: timed round; `None`: the profiled step.
        round: Option<usize>,
        /// Seconds.
        seconds: f64,
    },
}

/// Peak GPU memory of one variant's step, from the allocation plan.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PlannedMemory {
    /// The variant.
    pub name: String,
    /// Its pruning in words.
    pub settings: String,
    /// Highest pool footprint (weights, inputs, activations, free lists) during the step.
    pub peak_bytes: u64,
    /// The weights' share.
    pub weights_bytes: u64,
}

/// Latency statistics of one variant, per UNet step.
#[derive(Clone, Debug, serde::Serialize)]
pub struct VariantResult {
    /// `full`, `AT-EDM`, `AT-EDM-dagger` or `ToMe`.
    pub name: String,
    /// Its pruning in words.
    pub settings: String,
    /// Median step time, ms (DSAP's early and late steps weighted by the schedule).
    pub median_ms: f64,
    /// Fastest step, ms.
    pub min_ms: f64,
    /// Slowest step, ms.
    pub max_ms: f64,
    /// Model FLOPs of one UNet step for the whole batch, averaged over the schedule.
    pub tflops_per_step: f64,
    /// The full model's FLOPs over this variant's.
    pub flops_ratio: f64,
    /// The full model's median time over this variant's.
    pub speedup: f64,
    /// Speedup over FLOPs ratio.
    pub efficiency: f64,
    /// Pruning overhead share of the step's GPU time (from the profiled step).
    pub overhead_share: f64,
    /// Model FLOPs per second at the median time.
    pub achieved_tflops: f64,
}

/// One profiled step of a variant.
pub struct ProfiledStep {
    /// The variant.
    pub variant: Variant,
    /// The schedule step it stands for.
    pub step: usize,
    /// Per-dispatch GPU (or CPU) times.
    pub profile: Profile,
}

/// A benchmark's results.
pub struct BenchReport {
    /// The model's name.
    pub model: String,
    /// The adapter's name.
    pub adapter: String,
    /// Image width.
    pub width: usize,
    /// Image height.
    pub height: usize,
    /// UNet batch.
    pub batch: usize,
    /// Compute dtype.
    pub dtype: DType,
    /// Schedule steps.
    pub steps: usize,
    /// Timed repetitions.
    pub reps: usize,
    /// Per variant (empty with `reps` 0).
    pub variants: Vec<VariantResult>,
    /// One profiled step per variant and kind of step (empty with `reps` 0).
    pub profiles: Vec<ProfiledStep>,
    /// Peak pool footprint of the whole run (actual allocations).
    pub peak_bytes: u64,
    /// The weights' share.
    pub weights_bytes: u64,
}

impl BenchReport {
    /// The results as JSON (what `atedm bench --json` writes).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "model": self.model,
            "adapter": self.adapter,
            "width": self.width,
            "height": self.height,
            "batch": self.batch,
            "dtype": self.dtype.to_string(),
            "steps": self.steps,
            "reps": self.reps,
            "peak_bytes": self.peak_bytes,
            "weights_bytes": self.weights_bytes,
            "variants": self.variants,
        })
    }
}

/// One timed kind of step of a variant (AT-EDM with DSAP has two).
struct Kind {
    step: usize,
    /// Steps of the schedule this kind stands for.
    weight: usize,
    times: Vec<f64>,
    profile: Option<Profile>,
}

struct Run {
    variant: Variant,
    prune: Pruning,
    kinds: Vec<Kind>,
}

fn resolve_dtype(ctx: &GpuContext, d: Option<DType>) -> Result<DType> {
    match d {
        Some(DType::U32) => Err(Error::Invalid("--dtype must be f32 or f16".into())),
        Some(d) => Ok(d),
        None if ctx.supports_f16() => Ok(DType::F16),
        None => Ok(DType::F32),
    }
}

impl BenchModel {
    fn config(&self) -> Result<UNetConfig> {
        match self {
            BenchModel::File { path, config } => unet_config(path, config.as_deref()),
            BenchModel::Synthetic { config, .. } => Ok(config.as_ref().clone()),
        }
    }

    fn load(&self, ctx: &GpuContext, dtype: DType) -> Result<(UNet2DConditionModel, String)> {
        match self {
            BenchModel::File { path, config } => {
                let unet = load_unet(ctx, path, config.as_deref(), dtype)?;
                Ok((unet, path.display().to_string()))
            }
            BenchModel::Synthetic { config, name } => {
                let unet = UNet2DConditionModel::synthetic(ctx, config, dtype, 0x5d_1e55)?;
                Ok((unet, format!("{name} (synthetic weights)")))
            }
        }
    }
}

/// The bench's image size: `a.width`/`a.height`, defaulting to 1024 on a GPU and 256 on a CPU
/// adapter.
pub fn image_size(ctx: &GpuContext, a: &BenchOptions) -> (usize, usize) {
    let default_size = if ctx.is_cpu_adapter() { 256 } else { 1024 };
    (
        a.width.unwrap_or(default_size),
        a.height.or(a.width).unwrap_or(default_size),
    )
}

/// Time ids `[h, w, 0, 0, h, w]` for each of `batch` images.
fn time_ids(batch: usize, width: usize, height: usize) -> Vec<f32> {
    let (hf, wf) = (height as f32, width as f32);
    (0..batch)
        .flat_map(|_| [hf, wf, 0.0, 0.0, hf, wf])
        .collect()
}

/// The pruning of each variant, in the order asked, each once.
fn variant_pruning(
    a: &BenchOptions,
    cfg: &UNetConfig,
    lh: usize,
    lw: usize,
) -> Result<Vec<(Variant, Pruning)>> {
    let steps = a.steps;
    // AT-EDM: given, or the keep ratio of SD-XL's 4.1T setting at 1024 px.
    let atedm = match &a.atedm {
        AtEdmVariant::SdxlSettingC(settings) => {
            let c = named_budget("c").expect("named setting c") * 1e12;
            let r = keep_ratio_for_budget(&UNetConfig::sdxl_base(), 128, 128, steps, settings, c)?;
            Pruning::AtEdm(settings.with_keep_ratio(r)?)
        }
        AtEdmVariant::Target(t) => t.resolve(cfg, lh, lw, steps)?,
    };
    // ToMe: given, or the AT-EDM variant's FLOPs at this size.
    let tome = match &a.tome {
        TomeVariant::EqualFlops {
            tome,
            choose_layers,
        } => {
            let target = unet_flops(cfg, lh, lw, steps, &atedm)?.model;
            Pruning::tome(tome_for_budget(
                cfg,
                lh,
                lw,
                steps,
                tome,
                target,
                *choose_layers,
            )?)?
        }
        TomeVariant::Target(t) => t.resolve(cfg, lh, lw, steps)?,
    };
    let mut out: Vec<(Variant, Pruning)> = Vec::new();
    for v in &a.variants {
        if out.iter().any(|(w, _)| w == v) {
            continue;
        }
        let p = match v {
            Variant::Full => Pruning::None,
            Variant::Atedm => atedm.clone(),
            Variant::Tome => tome.clone(),
        };
        out.push((*v, p));
    }
    Ok(out)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    }
}

/// The size and latent size of a benchmark, checked against the model.
fn checked_size(
    ctx: &GpuContext,
    a: &BenchOptions,
    cfg: &UNetConfig,
) -> Result<(usize, usize, usize, usize)> {
    let (width, height) = image_size(ctx, a);
    let m = 8 * cfg.downsampling();
    if a.batch == 0 || a.steps == 0 {
        return Err(Error::Invalid(
            "--batch and --steps must be at least 1".into(),
        ));
    }
    if width == 0 || height == 0 || width % m != 0 || height % m != 0 {
        return Err(Error::Invalid(format!(
            "image size {width}x{height} is not a positive multiple of {m}"
        )));
    }
    Ok((width, height, height / 8, width / 8))
}

/// Every variant's step (the late one, and with DSAP the early one too) run in a planning
/// context: the same code path and allocations as a real run, counted by the pool, with no
/// kernel run and no memory allocated. What `atedm bench --plan-memory` prints.
pub fn plan_memory(ctx: &GpuContext, a: &BenchOptions) -> Result<Vec<PlannedMemory>> {
    let plan = GpuContext::new(&crate::gpu::ContextOptions {
        backend: Some(ctx.adapter().backend.to_lowercase()),
        adapter: Some(ctx.adapter().name.clone()),
        plan_only: true,
    })?;
    let dtype = resolve_dtype(ctx, a.dtype)?;
    let cfg = a.model.config()?;
    let (width, height, lh, lw) = checked_size(ctx, a, &cfg)?;
    let unet = UNet2DConditionModel::planned(&plan, &cfg, dtype)?;
    let weights_bytes = plan.pool_stats().live_bytes;
    let b = a.batch;
    let z = |s: &[usize]| crate::tensor::Tensor::zeros(&plan, s, dtype);
    let (sample, context, text) = (
        z(&[b, cfg.in_channels, lh, lw])?,
        z(&[b, 77, cfg.cross_attention_dim])?,
        z(&[b, cfg.text_embeds_dim()])?,
    );
    let time_ids = time_ids(b, width, height);
    let mut out = Vec::new();
    for (variant, prune) in variant_pruning(a, &cfg, lh, lw)? {
        plan.reset_peak_memory();
        let mut steps = vec![a.steps - 1];
        if prune.early_steps(a.steps) > 0 {
            steps.push(0);
        }
        for step in steps {
            let x = UNetInputs {
                sample: &sample,
                timesteps: &[500.0],
                encoder_hidden_states: &context,
                text_embeds: &text,
                time_ids: &time_ids,
            };
            drop(unet.forward_pruned(&plan, &x, &PruneStep::new(&prune, step, a.steps))?);
        }
        out.push(PlannedMemory {
            name: format!("{variant:?}"),
            settings: prune.describe(),
            peak_bytes: plan.pool_stats().peak_bytes,
            weights_bytes,
        });
    }
    Ok(out)
}

/// Runs the benchmark: one warm-up step per variant and kind of step, `reps` interleaved timed
/// rounds, then one profiled step each. `on_event` hears of every step.
pub fn run(
    ctx: &GpuContext,
    a: &BenchOptions,
    mut on_event: impl FnMut(BenchEvent<'_>),
) -> Result<BenchReport> {
    if a.variants.is_empty() {
        return Err(Error::Invalid("--variants is empty".into()));
    }
    let dtype = resolve_dtype(ctx, a.dtype)?;
    let cfg = a.model.config()?;
    let (width, height, lh, lw) = checked_size(ctx, a, &cfg)?;
    let runs = variant_pruning(a, &cfg, lh, lw)?;
    let t_load = Instant::now();
    let (unet, name) = a.model.load(ctx, dtype)?;
    ctx.wait()?;
    let weights_bytes = ctx.pool_stats().live_bytes;

    // Inputs: random latents and text conditioning, generated on the GPU.
    let b = a.batch;
    let sample = fill_uniform(ctx, &[b, cfg.in_channels, lh, lw], dtype, 1, 0.0, 1.7)?;
    let context = fill_uniform(ctx, &[b, 77, cfg.cross_attention_dim], dtype, 2, 0.0, 1.7)?;
    let text = fill_uniform(ctx, &[b, cfg.text_embeds_dim()], dtype, 3, 0.0, 1.7)?;
    let time_ids = time_ids(b, width, height);

    let mut runs: Vec<Run> = runs
        .into_iter()
        .map(|(variant, prune)| {
            let early = prune.early_steps(a.steps);
            let mut kinds = Vec::new();
            if early > 0 {
                kinds.push(Kind {
                    step: 0,
                    weight: early,
                    times: Vec::new(),
                    profile: None,
                });
            }
            if early < a.steps {
                kinds.push(Kind {
                    step: a.steps - 1,
                    weight: a.steps - early,
                    times: Vec::new(),
                    profile: None,
                });
            }
            Run {
                variant,
                prune,
                kinds,
            }
        })
        .collect();
    let forward = |prune: &Pruning, step: usize| -> Result<f64> {
        let t0 = Instant::now();
        let x = UNetInputs {
            sample: &sample,
            timesteps: &[500.0],
            encoder_hidden_states: &context,
            text_embeds: &text,
            time_ids: &time_ids,
        };
        let out = unet.forward_pruned(ctx, &x, &PruneStep::new(prune, step, a.steps))?;
        ctx.wait()?;
        drop(out);
        Ok(t0.elapsed().as_secs_f64())
    };

    let per_round: usize = runs.iter().map(|r| r.kinds.len()).sum();
    let profiled = if a.reps == 0 { 0 } else { 1 };
    on_event(BenchEvent::Loaded {
        model: &name,
        load_s: t_load.elapsed().as_secs_f64(),
        steps: per_round * (a.reps + 1 + profiled),
    });
    // Warm-up (pipeline compilation, pool), then interleaved timed rounds.
    for round in 0..=a.reps {
        for r in runs.iter_mut() {
            for k in r.kinds.iter_mut() {
                let t = forward(&r.prune, k.step)?;
                if round > 0 {
                    k.times.push(t);
                }
                on_event(BenchEvent::Step {
                    variant: r.variant,
                    step: k.step,
                    round: Some(round),
                    seconds: t,
                });
            }
        }
    }
    let mut report = BenchReport {
        model: name.clone(),
        adapter: ctx.adapter().name.clone(),
        width,
        height,
        batch: b,
        dtype,
        steps: a.steps,
        reps: a.reps,
        variants: Vec::new(),
        profiles: Vec::new(),
        peak_bytes: 0,
        weights_bytes,
    };
    if a.reps == 0 {
        // One untimed step per variant: the memory of a real run where timing is out of reach
        // (SD-XL at 1024 px on a CPU adapter).
        report.peak_bytes = ctx.pool_stats().peak_bytes;
        return Ok(report);
    }
    // One profiled step per kind.
    for r in runs.iter_mut() {
        for k in r.kinds.iter_mut() {
            ctx.profile_begin()?;
            let res = forward(&r.prune, k.step);
            let profile = ctx.profile_end()?;
            let t = res?;
            on_event(BenchEvent::Step {
                variant: r.variant,
                step: k.step,
                round: None,
                seconds: t,
            });
            k.profile = Some(profile);
        }
    }

    // Per-step figures, weighted over the schedule.
    let flops_of = |p: &Pruning| unet_flops(&cfg, lh, lw, a.steps, p).map(|f| f.model * b as f64);
    let full_flops = flops_of(&Pruning::None)?;
    let stat = |r: &Run, f: &dyn Fn(&Kind) -> f64| {
        r.kinds.iter().map(|k| f(k) * k.weight as f64).sum::<f64>() / a.steps as f64
    };
    let full_ms = runs
        .iter()
        .find(|r| r.variant == Variant::Full)
        .map(|r| stat(r, &|k| median(&k.times)) * 1e3);
    for r in &runs {
        let med = stat(r, &|k| median(&k.times)) * 1e3;
        let min = stat(r, &|k| {
            k.times.iter().cloned().fold(f64::INFINITY, f64::min)
        }) * 1e3;
        let max = stat(r, &|k| k.times.iter().cloned().fold(0.0, f64::max)) * 1e3;
        let flops = flops_of(&r.prune)?;
        let overhead = stat(r, &|k| {
            let p = k.profile.as_ref().expect("profiled");
            p.overhead() / p.total().max(1e-30)
        });
        let (speedup, ratio) = (full_ms.map_or(f64::NAN, |f| f / med), full_flops / flops);
        report.variants.push(VariantResult {
            name: match r.variant {
                Variant::Full => "full".into(),
                Variant::Atedm if r.prune.mode() == PruneMode::AtEdmDagger => {
                    "AT-EDM-dagger".into()
                }
                Variant::Atedm => "AT-EDM".into(),
                Variant::Tome => "ToMe".into(),
            },
            settings: r.prune.describe(),
            median_ms: med,
            min_ms: min,
            max_ms: max,
            tflops_per_step: flops / 1e12,
            flops_ratio: ratio,
            speedup,
            efficiency: speedup / ratio,
            overhead_share: overhead,
            achieved_tflops: flops / (med * 1e-3) / 1e12,
        });
    }
    for r in runs {
        for k in r.kinds {
            report.profiles.push(ProfiledStep {
                variant: r.variant,
                step: k.step,
                profile: k.profile.expect("profiled"),
            });
        }
    }
    report.peak_bytes = ctx.pool_stats().peak_bytes;
    Ok(report)
}
