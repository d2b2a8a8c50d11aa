//! `atedm bench`: UNet step latency of the full model, AT-EDM and ToMe side by side
//! (`atedm::bench`).
//!
//! Variants run interleaved (full, AT-EDM, ToMe, full, ...) for several repetitions after one
//! warm-up each, so drift and noise hit them alike. Each timed run is one UNet forward recorded,
//! submitted and waited for. With DSAP, AT-EDM's early (protected) and late steps are timed
//! separately and combined with the schedule's weights, like its FLOPs. Afterwards one step of
//! each variant is profiled (GPU timestamps, or CPU time per dispatch) for the pruning overhead
//! share and, with `--profile`, a per-op breakdown.

use std::path::PathBuf;

use atedm::bench::{
    plan_memory, AtEdmVariant, BenchEvent, BenchModel, BenchOptions, BenchReport, TomeVariant,
    Variant,
};
use atedm::gpu::GpuContext;
use atedm::io::write_atomic;
use atedm::model::config::UNetConfig;
use atedm::model::load::unet_config;
use atedm::{DType, Error, Result};
use clap::{Args, ValueEnum};

use crate::cli::flops::{PruneArg, PruneArgs, RecoveryArg};

/// `--variants` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum VariantArg {
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
    pub variants: Vec<VariantArg>,
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

/// The model `--model` / `--synthetic` name.
fn model(a: &BenchArgs) -> Result<BenchModel> {
    if let Some(m) = &a.model {
        return Ok(BenchModel::File {
            path: m.clone(),
            config: a.config.clone(),
        });
    }
    match a.synthetic.as_deref() {
        None | Some("sdxl") => Ok(BenchModel::default()),
        Some(path) => {
            let p = PathBuf::from(path);
            let config = if p.is_file() {
                UNetConfig::from_file(&p)?
            } else if p.is_dir() {
                unet_config(&p, None)?
            } else {
                return Err(Error::Invalid(format!(
                    "--synthetic '{path}': expected sdxl or a UNet config.json (or its folder)"
                )));
            };
            Ok(BenchModel::Synthetic {
                config: Box::new(config),
                name: path.to_string(),
            })
        }
    }
}

/// The library's options for these flags.
pub fn options(a: &BenchArgs) -> Result<BenchOptions> {
    // AT-EDM: flags, or the keep ratio of SD-XL's 4.1T setting at 1024 px.
    let atedm_args = PruneArgs {
        prune: if a.prune.prune == PruneArg::AtedmDagger {
            PruneArg::AtedmDagger
        } else {
            PruneArg::Atedm
        },
        merge_ratio: None,
        tome_merge: None,
        ..a.prune.clone()
    };
    let atedm = if a.prune.keep_ratio.is_none() && a.prune.flops.is_none() {
        atedm_args.target()?;
        AtEdmVariant::SdxlSettingC(atedm_args.atedm(1.0)?)
    } else {
        AtEdmVariant::Target(atedm_args.target()?)
    };
    // ToMe: flags, or the AT-EDM variant's FLOPs at this size.
    let tome_args = PruneArgs {
        prune: PruneArg::Tome,
        keep_ratio: None,
        recovery: RecoveryArg::AttnCopy,
        ..a.prune.clone()
    };
    let tome = if a.prune.merge_ratio.is_none() && a.prune.flops.is_none() {
        tome_args.target()?;
        TomeVariant::EqualFlops {
            tome: tome_args.tome_settings(tome_args.tome_layers()?)?,
            choose_layers: a.prune.tome_merge.is_none(),
        }
    } else {
        TomeVariant::Target(tome_args.target()?)
    };
    Ok(BenchOptions {
        model: model(a)?,
        width: a.width,
        height: a.height,
        batch: a.batch,
        steps: a.steps,
        reps: a.reps,
        dtype: a.dtype,
        variants: a
            .variants
            .iter()
            .map(|v| match v {
                VariantArg::Full => Variant::Full,
                VariantArg::Atedm => Variant::Atedm,
                VariantArg::Tome => Variant::Tome,
            })
            .collect(),
        atedm,
        tome,
    })
}

fn write_json(path: &std::path::Path, doc: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(doc)
        .map_err(|e| Error::Invalid(format!("encoding the results: {e}")))?;
    write_atomic(path, text.as_bytes())
}

fn gib(v: u64) -> f64 {
    v as f64 / (1u64 << 30) as f64
}

fn memory_line(peak: u64, weights: u64) -> String {
    format!(
        "peak GPU memory (pool, actual allocations): {:.3} GiB, of which weights {:.3} GiB",
        gib(peak),
        gib(weights)
    )
}

pub fn run(ctx: &GpuContext, a: &BenchArgs) -> Result<()> {
    let opts = options(a)?;
    if a.plan_memory {
        let out = plan_memory(ctx, &opts)?;
        let (width, height) = atedm::bench::image_size(ctx, &opts);
        println!(
            "planned peak GPU memory of one UNet step, {width}x{height}, batch {}, {} (allocation plan: nothing run or allocated)",
            a.batch,
            a.dtype.map_or("default dtype".into(), |d| d.to_string())
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
            write_json(
                path,
                &serde_json::json!({
                    "width": width, "height": height, "batch": a.batch,
                    "planned_memory": out,
                }),
            )?;
        }
        return Ok(());
    }
    let bar = indicatif::ProgressBar::hidden();
    // Without a terminal (logs, CI) the bar is hidden: print a line per step instead.
    let log = !std::io::IsTerminal::is_terminal(&std::io::stderr());
    let report = atedm::bench::run(ctx, &opts, |ev| match ev {
        BenchEvent::Loaded {
            model,
            load_s,
            steps,
        } => {
            eprintln!(
                "atedm bench: {model}, batch {}, {}-step schedule, {} reps; adapter {}; loaded in {load_s:.1} s",
                a.batch,
                a.steps,
                a.reps,
                ctx.adapter().name,
            );
            bar.set_length(steps as u64);
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} UNet steps  {msg}  eta {eta}",
                )
                .expect("static template"),
            );
        }
        BenchEvent::Step {
            variant,
            step,
            round,
            seconds,
        } => {
            bar.set_message(format!("{variant:?} step {step}"));
            bar.inc(1);
            if log {
                let what = match round {
                    Some(0) => "warm-up".to_string(),
                    Some(r) => format!("rep {r}"),
                    None => "profiled".to_string(),
                };
                eprintln!("bench: {variant:?} step {step} ({what}): {seconds:.2} s");
            }
        }
    })?;
    bar.finish_and_clear();
    print_report(a, &report);
    if let Some(path) = &a.json {
        let mut doc = report.to_json();
        if a.reps == 0 {
            doc["variants"] = serde_json::json!(a
                .variants
                .iter()
                .map(|v| format!("{v:?}"))
                .collect::<Vec<_>>());
        }
        write_json(path, &doc)?;
    }
    Ok(())
}

fn print_report(a: &BenchArgs, r: &BenchReport) {
    println!(
        "{}x{} (latent {}x{}), batch {}, {}",
        r.width,
        r.height,
        r.height / 8,
        r.width / 8,
        r.batch,
        r.dtype
    );
    if r.reps == 0 {
        // One untimed step per variant: the memory of a real run where timing is out of reach
        // (SD-XL at 1024 px on a CPU adapter).
        println!("--reps 0: one untimed step per variant ran, no timings");
        println!("{}", memory_line(r.peak_bytes, r.weights_bytes));
        return;
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
    for v in &r.variants {
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
    for v in &r.variants {
        println!("  {}: {}", v.name, v.settings);
    }
    println!("{}", memory_line(r.peak_bytes, r.weights_bytes));
    println!(
        "per-step figures weight DSAP's early and late steps by the schedule; overhead = share of the profiled step's GPU time in the head-mean map pass, G-WPR, top-k, recovery and ToMe's plan/merge/unmerge"
    );
    if a.profile {
        for p in &r.profiles {
            println!(
                "\n{:?}, step {} of {}:\n{}",
                p.variant,
                p.step,
                r.steps,
                p.profile.table()
            );
        }
    }
}
