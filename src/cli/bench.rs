//! `atedm bench`: UNet step latency of the full model, AT-EDM and ToMe side by side.
//!
//! Variants run interleaved (full, AT-EDM, ToMe, full, ...) for several repetitions after one
//! warm-up each, so drift and noise hit them alike. Each timed run is one UNet forward recorded,
//! submitted and waited for. With DSAP, AT-EDM's early (protected) and late steps are timed
//! separately and combined with the schedule's weights, like its FLOPs. Afterwards one step of
//! each variant is profiled (GPU timestamps, or CPU time per dispatch) for the pruning overhead
//! share and, with `--profile`, a per-op breakdown.

use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, ValueEnum};

use crate::cli::flops::{describe_prune, PruneArg, PruneArgs};
use crate::error::{Error, Result};
use crate::gpu::{GpuContext, Profile};
use crate::io::write_atomic;
use crate::model::config::UNetConfig;
use crate::model::load::{load_unet, unet_config};
use crate::model::unet::{PruneStep, UNet2DConditionModel, UNetInputs};
use crate::ops::fill::fill_uniform;
use crate::prune::flops::{
    keep_ratio_for_budget, named_budget, tome_for_budget, unet_flops, PruneMode, PruneSettings,
};
use crate::tensor::DType;

/// A benchmarked variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Variant {
    Full,
    Atedm,
    Tome,
}

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// A model: diffusers pipeline or unet folder, or a single-file checkpoint.
    #[arg(long, conflicts_with = "synthetic")]
    pub model: Option<PathBuf>,
    /// Diffusers config folder for a single file that is not SD-XL base-sized.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Synthetic random weights generated on the GPU, no file needed: `sdxl` (SD-XL base
    /// shapes) or a UNet config.json. The default when no --model is given.
    #[arg(long)]
    pub synthetic: Option<String>,
    /// Image width (default: 1024 on a GPU, 256 on a CPU adapter such as lavapipe).
    #[arg(long)]
    pub width: Option<usize>,
    /// Image height (default as --width).
    #[arg(long)]
    pub height: Option<usize>,
    /// UNet batch (2 = classifier-free guidance).
    #[arg(long, default_value_t = 2)]
    pub batch: usize,
    /// Denoising steps of the schedule a step stands for (DSAP's early steps, FLOPs average).
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// Timed repetitions of every variant, interleaved, after one warm-up each. 0: only the
    /// warm-up step of each variant runs, for the peak memory of a real run (no timings).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Compute dtype (default: f16 where the adapter has it, else f32).
    #[arg(long)]
    pub dtype: Option<DType>,
    /// Variants to run. The AT-EDM variant defaults to the keep ratio of the paper's 4.1T
    /// setting at 1024 px (`--prune atedm-dagger` makes it dagger); ToMe defaults to the
    /// AT-EDM variant's FLOPs. `--keep-ratio`, `--merge-ratio` and `--flops` override.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "full,atedm,tome"
    )]
    pub variants: Vec<Variant>,
    /// Print a per-op breakdown (time share, GFLOP/s) of one step of each variant.
    #[arg(long)]
    pub profile: bool,
    /// Also write the results as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Report each variant's peak GPU memory for one step from the allocation plan, without
    /// running anything (for sizes too slow to run on this adapter, e.g. 1024 px on lavapipe).
    #[arg(long)]
    pub plan_memory: bool,
    #[command(flatten)]
    pub prune: PruneArgs,
}

/// Peak GPU memory of one variant's step, from the allocation plan.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PlannedMemory {
    pub name: String,
    pub settings: String,
    /// Highest pool footprint (weights, inputs, activations, free lists) during the step.
    pub peak_bytes: u64,
    pub weights_bytes: u64,
}

/// Latency statistics of one variant, per UNet step.
#[derive(Clone, Debug, serde::Serialize)]
pub struct VariantResult {
    pub name: String,
    pub settings: String,
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    /// Model FLOPs of one UNet step for the whole batch, averaged over the schedule.
    pub tflops_per_step: f64,
    pub flops_ratio: f64,
    pub speedup: f64,
    pub efficiency: f64,
    /// Pruning overhead share of the step's GPU time (from the profiled step).
    pub overhead_share: f64,
    pub achieved_tflops: f64,
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
    settings: PruneSettings,
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

fn load_model(
    ctx: &GpuContext,
    a: &BenchArgs,
    dtype: DType,
) -> Result<(UNet2DConditionModel, String)> {
    if let Some(m) = &a.model {
        let unet = load_unet(ctx, m, a.config.as_deref(), dtype)?;
        return Ok((unet, m.display().to_string()));
    }
    let (cfg, name) = synthetic_config(a)?;
    let unet = UNet2DConditionModel::synthetic(ctx, &cfg, dtype, 0x5d_1e55)?;
    Ok((unet, format!("{name} (synthetic weights)")))
}

/// The config named by `--synthetic` (SD-XL base by default) and its name for the report.
fn synthetic_config(a: &BenchArgs) -> Result<(UNetConfig, String)> {
    match a.synthetic.as_deref() {
        None | Some("sdxl") => Ok((UNetConfig::sdxl_base(), "SD-XL base".to_string())),
        Some(path) => {
            let p = PathBuf::from(path);
            let cfg = if p.is_file() {
                UNetConfig::from_file(&p)?
            } else if p.is_dir() {
                unet_config(&p, None)?
            } else {
                return Err(Error::Invalid(format!(
                    "--synthetic '{path}': expected sdxl or a UNet config.json (or its folder)"
                )));
            };
            Ok((cfg, path.to_string()))
        }
    }
}

/// `--width`/`--height`, defaulting to 1024 on a GPU and 256 on a CPU adapter.
fn image_size(ctx: &GpuContext, a: &BenchArgs) -> (usize, usize) {
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

/// The settings of each variant.
fn variant_settings(
    a: &BenchArgs,
    cfg: &UNetConfig,
    lh: usize,
    lw: usize,
) -> Result<Vec<(Variant, PruneSettings)>> {
    let steps = a.steps;
    // AT-EDM: flags, or the keep ratio of SD-XL's 4.1T setting at 1024 px.
    let atedm_mode = if a.prune.prune == PruneArg::AtedmDagger {
        PruneArg::AtedmDagger
    } else {
        PruneArg::Atedm
    };
    let atedm_args = PruneArgs {
        prune: atedm_mode,
        merge_ratio: None,
        tome_merge: None,
        ..a.prune.clone()
    };
    let (mut atedm, _) = atedm_args.settings(cfg, lh, lw, steps)?;
    if a.prune.keep_ratio.is_none() && a.prune.flops.is_none() {
        let c = named_budget("c").expect("named setting c") * 1e12;
        atedm.keep_ratio =
            keep_ratio_for_budget(&UNetConfig::sdxl_base(), 128, 128, steps, &atedm, c)?;
    }
    // ToMe: flags, or the AT-EDM variant's FLOPs at this size.
    let tome_args = PruneArgs {
        prune: PruneArg::Tome,
        keep_ratio: None,
        ..a.prune.clone()
    };
    let (mut tome, _) = tome_args.settings(cfg, lh, lw, steps)?;
    if a.prune.merge_ratio.is_none() && a.prune.flops.is_none() {
        let target = unet_flops(cfg, lh, lw, steps, &atedm)?.model;
        tome.tome = tome_for_budget(
            cfg,
            lh,
            lw,
            steps,
            &tome,
            target,
            a.prune.tome_merge.is_none(),
        )?;
    }
    let mut out = Vec::new();
    for v in &a.variants {
        if out.iter().any(|(w, _)| w == v) {
            continue;
        }
        let s = match v {
            Variant::Full => PruneSettings::default(),
            Variant::Atedm => atedm,
            Variant::Tome => tome,
        };
        out.push((*v, s));
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

/// `bench --plan-memory`: every variant's step (the late one, and with DSAP the early one too)
/// run in a planning context: the same code path and allocations as a real run, counted by the
/// pool, with no kernel run and no memory allocated.
pub fn plan_memory(ctx: &GpuContext, a: &BenchArgs) -> Result<Vec<PlannedMemory>> {
    let plan = GpuContext::new(&crate::gpu::ContextOptions {
        backend: Some(ctx.adapter().backend.to_lowercase()),
        adapter: Some(ctx.adapter().name.clone()),
        plan_only: true,
    })?;
    let dtype = resolve_dtype(ctx, a.dtype)?;
    let (width, height) = image_size(ctx, a);
    let cfg = match &a.model {
        Some(m) => unet_config(m, a.config.as_deref())?,
        None => synthetic_config(a)?.0,
    };
    let m = 8 * cfg.downsampling();
    if a.batch == 0 || width == 0 || height == 0 || width % m != 0 || height % m != 0 {
        return Err(Error::Invalid(format!(
            "--batch must be at least 1 and the image size {width}x{height} a positive multiple of {m}"
        )));
    }
    let (lh, lw) = (height / 8, width / 8);
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
    for (variant, settings) in variant_settings(a, &cfg, lh, lw)? {
        plan.reset_peak_memory();
        let mut steps = vec![a.steps - 1];
        if settings.early_steps(a.steps) > 0 {
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
            let prune = PruneStep {
                settings,
                step,
                steps: a.steps,
            };
            drop(unet.forward_pruned(&plan, &x, &prune)?);
        }
        out.push(PlannedMemory {
            name: format!("{variant:?}"),
            settings: describe_prune(&settings, None),
            peak_bytes: plan.pool_stats().peak_bytes,
            weights_bytes,
        });
    }
    let gib = |v: u64| v as f64 / (1u64 << 30) as f64;
    println!(
        "planned peak GPU memory of one UNet step, {width}x{height}, batch {b}, {dtype} (allocation plan: nothing run or allocated)"
    );
    println!("{:<8} {:>10} {:>12}", "variant", "peak GiB", "weights GiB");
    for p in &out {
        println!(
            "{:<8} {:>10.3} {:>12.3}",
            p.name,
            gib(p.peak_bytes),
            gib(p.weights_bytes)
        );
    }
    if let Some(path) = &a.json {
        let doc = serde_json::json!({
            "width": width, "height": height, "batch": b, "dtype": dtype.to_string(),
            "planned_memory": out,
        });
        let text = serde_json::to_string_pretty(&doc)
            .map_err(|e| Error::Invalid(format!("encoding the results: {e}")))?;
        write_atomic(path, text.as_bytes())?;
    }
    Ok(out)
}

pub fn run(ctx: &GpuContext, a: &BenchArgs) -> Result<Vec<VariantResult>> {
    if a.plan_memory {
        plan_memory(ctx, a)?;
        return Ok(Vec::new());
    }
    if a.batch == 0 || a.steps == 0 {
        return Err(Error::Invalid(
            "--batch and --steps must be at least 1".into(),
        ));
    }
    if a.variants.is_empty() {
        return Err(Error::Invalid("--variants is empty".into()));
    }
    let dtype = resolve_dtype(ctx, a.dtype)?;
    let (width, height) = image_size(ctx, a);
    let t_load = Instant::now();
    let (unet, name) = load_model(ctx, a, dtype)?;
    let cfg = unet.config.clone();
    let m = 8 * cfg.downsampling();
    if width == 0 || height == 0 || width % m != 0 || height % m != 0 {
        return Err(Error::Invalid(format!(
            "image size {width}x{height} is not a positive multiple of {m}"
        )));
    }
    let (lh, lw) = (height / 8, width / 8);
    let runs = variant_settings(a, &cfg, lh, lw)?;
    ctx.wait()?;
    let weights_bytes = ctx.pool_stats().live_bytes;
    eprintln!(
        "atedm bench: {name}, {width}x{height} (latent {lh}x{lw}), batch {}, {dtype}, {}-step schedule, {} reps; adapter {}; loaded in {:.1} s",
        a.batch,
        a.steps,
        a.reps,
        ctx.adapter().name,
        t_load.elapsed().as_secs_f64()
    );

    // Inputs: random latents and text conditioning, generated on the GPU.
    let b = a.batch;
    let sample = fill_uniform(ctx, &[b, cfg.in_channels, lh, lw], dtype, 1, 0.0, 1.7)?;
    let context = fill_uniform(ctx, &[b, 77, cfg.cross_attention_dim], dtype, 2, 0.0, 1.7)?;
    let text = fill_uniform(ctx, &[b, cfg.text_embeds_dim()], dtype, 3, 0.0, 1.7)?;
    let time_ids = time_ids(b, width, height);

    let mut runs: Vec<Run> = runs
        .into_iter()
        .map(|(variant, settings)| {
            let early = settings.early_steps(a.steps);
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
                settings,
                kinds,
            }
        })
        .collect();
    let forward = |settings: &PruneSettings, step: usize| -> Result<f64> {
        let t0 = Instant::now();
        let x = UNetInputs {
            sample: &sample,
            timesteps: &[500.0],
            encoder_hidden_states: &context,
            text_embeds: &text,
            time_ids: &time_ids,
        };
        let (out, _) = unet.forward_pruned(
            ctx,
            &x,
            &PruneStep {
                settings: *settings,
                step,
                steps: a.steps,
            },
        )?;
        ctx.wait()?;
        drop(out);
        Ok(t0.elapsed().as_secs_f64())
    };

    let per_round: usize = runs.iter().map(|r| r.kinds.len()).sum();
    let profiled = if a.reps == 0 { 0 } else { 1 };
    let bar = indicatif::ProgressBar::new((per_round * (a.reps + 1 + profiled)) as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} UNet steps  {msg}  eta {eta}",
        )
        .expect("static template"),
    );
    // Without a terminal (logs, CI) the bar is hidden: print a line per step instead.
    let log = !std::io::IsTerminal::is_terminal(&std::io::stderr());
    // Warm-up (pipeline compilation, pool), then interleaved timed rounds.
    for round in 0..=a.reps {
        for r in runs.iter_mut() {
            for k in r.kinds.iter_mut() {
                bar.set_message(format!("{:?} step {}", r.variant, k.step));
                let t = forward(&r.settings, k.step)?;
                if round > 0 {
                    k.times.push(t);
                }
                if log {
                    let what = if round == 0 {
                        "warm-up".to_string()
                    } else {
                        format!("rep {round}")
                    };
                    eprintln!(
                        "bench: {:?} step {} ({what}): {:.2} s",
                        r.variant, k.step, t
                    );
                }
                bar.inc(1);
            }
        }
    }
    let memory_line = |peak: u64| {
        format!(
            "peak GPU memory (pool, actual allocations): {:.3} GiB, of which weights {:.3} GiB",
            peak as f64 / (1u64 << 30) as f64,
            weights_bytes as f64 / (1u64 << 30) as f64
        )
    };
    if a.reps == 0 {
        let stats = ctx.pool_stats();
        // One untimed step per variant: the memory of a real run where timing is out of reach
        // (SD-XL at 1024 px on a CPU adapter).
        bar.finish_and_clear();
        println!("--reps 0: one untimed step per variant ran, no timings");
        println!("{}", memory_line(stats.peak_bytes));
        if let Some(path) = &a.json {
            let doc = serde_json::json!({
                "model": name, "adapter": ctx.adapter().name, "width": width, "height": height,
                "batch": b, "dtype": dtype.to_string(), "steps": a.steps, "reps": 0,
                "variants": runs.iter().map(|r| format!("{:?}", r.variant)).collect::<Vec<_>>(),
                "peak_bytes": stats.peak_bytes, "weights_bytes": weights_bytes,
            });
            let text = serde_json::to_string_pretty(&doc)
                .map_err(|e| Error::Invalid(format!("encoding the results: {e}")))?;
            write_atomic(path, text.as_bytes())?;
        }
        return Ok(Vec::new());
    }
    // One profiled step per kind.
    for r in runs.iter_mut() {
        for k in r.kinds.iter_mut() {
            bar.set_message(format!("profiling {:?} step {}", r.variant, k.step));
            ctx.profile_begin()?;
            let res = forward(&r.settings, k.step);
            let profile = ctx.profile_end()?;
            res?;
            k.profile = Some(profile);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();

    // Per-step figures, weighted over the schedule.
    let flops_of =
        |s: &PruneSettings| unet_flops(&cfg, lh, lw, a.steps, s).map(|f| f.model * b as f64);
    let full_flops = flops_of(&PruneSettings::default())?;
    let stat = |r: &Run, f: &dyn Fn(&Kind) -> f64| {
        r.kinds.iter().map(|k| f(k) * k.weight as f64).sum::<f64>() / a.steps as f64
    };
    let mut results = Vec::new();
    let mut full_ms = None;
    for r in &runs {
        let med = stat(r, &|k| median(&k.times)) * 1e3;
        if r.variant == Variant::Full {
            full_ms = Some(med);
        }
    }
    for r in &runs {
        let med = stat(r, &|k| median(&k.times)) * 1e3;
        let min = stat(r, &|k| {
            k.times.iter().cloned().fold(f64::INFINITY, f64::min)
        }) * 1e3;
        let max = stat(r, &|k| k.times.iter().cloned().fold(0.0, f64::max)) * 1e3;
        let flops = flops_of(&r.settings)?;
        let overhead = stat(r, &|k| {
            let p = k.profile.as_ref().expect("profiled");
            p.overhead() / p.total().max(1e-30)
        });
        let (speedup, ratio) = (full_ms.map_or(f64::NAN, |f| f / med), full_flops / flops);
        results.push(VariantResult {
            name: match r.variant {
                Variant::Full => "full".into(),
                Variant::Atedm if r.settings.mode == PruneMode::AtEdmDagger => {
                    "AT-EDM-dagger".into()
                }
                Variant::Atedm => "AT-EDM".into(),
                Variant::Tome => "ToMe".into(),
            },
            settings: describe_prune(&r.settings, None),
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

    println!(
        "{:<14} {:>11} {:>11} {:>11} {:>12} {:>8} {:>8} {:>10} {:>9} {:>9}",
        "variant",
        "median ms",
        "min ms",
        "max ms",
        "GFLOPs/step",
        "FLOPs x",
        "speedup",
        "efficiency",
        "overhead",
        "GFLOP/s"
    );
    for v in &results {
        println!(
            "{:<14} {:>11.1} {:>11.1} {:>11.1} {:>12.2} {:>8.3} {:>8.3} {:>10.3} {:>8.1}% {:>9.2}",
            v.name,
            v.median_ms,
            v.min_ms,
            v.max_ms,
            v.tflops_per_step * 1e3,
            v.flops_ratio,
            v.speedup,
            v.efficiency,
            100.0 * v.overhead_share.max(0.0),
            v.achieved_tflops * 1e3
        );
    }
    for v in &results {
        println!("  {}: {}", v.name, v.settings);
    }
    let stats = ctx.pool_stats();
    println!("{}", memory_line(stats.peak_bytes));
    println!(
        "per-step figures weight DSAP's early and late steps by the schedule; overhead = share of the profiled step's GPU time in the head-mean map pass, G-WPR, top-k, recovery and ToMe's plan/merge/unmerge"
    );
    if a.profile {
        for r in &runs {
            for k in &r.kinds {
                let p = k.profile.as_ref().expect("profiled");
                println!(
                    "\n{:?}, step {} of {}:\n{}",
                    r.variant,
                    k.step,
                    a.steps,
                    p.table()
                );
            }
        }
    }
    if let Some(path) = &a.json {
        let doc = serde_json::json!({
            "model": name,
            "adapter": ctx.adapter().name,
            "width": width,
            "height": height,
            "batch": b,
            "dtype": dtype.to_string(),
            "steps": a.steps,
            "reps": a.reps,
            "peak_bytes": stats.peak_bytes,
            "weights_bytes": weights_bytes,
            "variants": results,
        });
        let text = serde_json::to_string_pretty(&doc)
            .map_err(|e| Error::Invalid(format!("encoding the results: {e}")))?;
        write_atomic(path, text.as_bytes())?;
    }
    Ok(results)
}
