//! `atedm eval`: the fidelity benchmark of pruning on the demo model's shapes world.

use std::path::PathBuf;

use atedm::eval::run::{
    comparison_variants, evaluate, pick_captions, EvalOptions, Method, Variant,
};
use atedm::eval::spec::{demo_spec, DemoSpec};
use atedm::gpu::GpuContext;
use atedm::io::{png_rgb8_bytes, write_atomic};
use atedm::pipeline::generate::{LoadOptions, SdxlPipeline};
use atedm::pipeline::job::model_name;
use atedm::{DType, Error, Result};
use clap::Args;

use crate::cli::flops::{OnOff, RecoveryArg};

#[derive(Args, Debug, Clone)]
pub struct EvalArgs {
    /// A shapes-world pipeline folder holding `atedm_demo.json` (written by
    /// `tools/train_demo.py`). Default: the built-in demo model.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Held-back captions to generate: half one-shape, half two-shape (0: all of them).
    #[arg(long, default_value_t = 16)]
    pub captions: usize,
    /// Evaluate these captions instead of the held-back ones (repeatable).
    #[arg(long = "caption")]
    pub caption: Vec<String>,
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    #[arg(long, default_value_t = 5.0)]
    pub guidance: f32,
    /// Caption i uses seed + i, the same for every variant.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// AT-EDM keep ratios; for each, ToMe runs at the same FLOPs (its merge ratio solved).
    #[arg(long, value_delimiter = ',', default_value = "0.5,0.3")]
    pub keep_ratios: Vec<f64>,
    /// Which pruned methods to run beside the full model.
    #[arg(long, value_delimiter = ',', default_value = "atedm,tome")]
    pub methods: Vec<String>,
    /// AT-EDM's recoveries to compare (each a variant; ToMe matches the first one's FLOPs).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "attn-copy")]
    pub recovery: Vec<RecoveryArg>,
    /// AT-EDM's denoising-steps-aware pruning.
    #[arg(long, value_enum, default_value = "on")]
    pub dsap: OnOff,
    #[arg(long, default_value = "f32")]
    pub dtype: DType,
    /// Write every image (`<dir>/<variant>/<NN>.png`) and the captions (`captions.txt`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write the summary as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Full, then per keep ratio AT-EDM and ToMe at AT-EDM's FLOPs.
fn variants(a: &EvalArgs, pipe: &SdxlPipeline, lh: usize, lw: usize) -> Result<Vec<Variant>> {
    let methods = a
        .methods
        .iter()
        .map(|m| match m.as_str() {
            "atedm" => Ok(Method::AtEdm),
            "tome" => Ok(Method::Tome),
            _ => Err(Error::Invalid(format!(
                "--methods '{m}': expected a comma list of atedm, tome"
            ))),
        })
        .collect::<Result<Vec<_>>>()?;
    comparison_variants(
        &pipe.unet.config,
        lh,
        lw,
        a.steps,
        &a.keep_ratios,
        &methods,
        (a.dsap == OnOff::On).then_some(atedm::prune::settings::DEFAULT_TAU),
        &a.recovery
            .iter()
            .map(|r| match r {
                RecoveryArg::AttnCopy => atedm::Recovery::AttnCopy,
                RecoveryArg::CosDelta => atedm::Recovery::CosDelta,
            })
            .collect::<Vec<_>>(),
    )
}

/// Runs the benchmark and prints its table.
pub fn run(ctx: &GpuContext, a: &EvalArgs) -> Result<()> {
    let opts = LoadOptions {
        dtype: a.dtype,
        vae_dtype: None,
        config: None,
    };
    let (pipe, spec) = match &a.model {
        None => (SdxlPipeline::load_demo(ctx, &opts)?, demo_spec()?),
        Some(m) => {
            let f = m.join("atedm_demo.json");
            let text = std::fs::read_to_string(&f).map_err(|e| {
                Error::Invalid(format!(
                    "{}: eval needs a shapes-world model with its dataset definition ({e})",
                    f.display()
                ))
            })?;
            let spec = DemoSpec::from_json(&text, &f.display().to_string())?;
            (SdxlPipeline::load(ctx, m, &opts)?, spec)
        }
    };
    let size = pipe.native_size();
    let down = pipe.vae.config.upsampling();
    let variants = variants(a, &pipe, size / down, size / down)?;
    let captions = if a.caption.is_empty() {
        pick_captions(&spec, a.captions)
    } else {
        a.caption.clone()
    };
    let eval_opts = EvalOptions {
        captions: captions.clone(),
        steps: a.steps,
        guidance: a.guidance,
        seed: a.seed,
        width: size,
        height: size,
    };
    for v in &variants {
        eprintln!("{}: {}", v.name, v.describe);
    }
    let bar = indicatif::ProgressBar::new((variants.len() * captions.len()) as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} images  eta {eta}")
            .expect("static template"),
    );
    let report = evaluate(ctx, &pipe, &spec, &variants, &eval_opts, |d, _| {
        bar.set_position(d as u64)
    })?;
    bar.finish_and_clear();
    println!(
        "{} captions, {} steps, guidance {}, {}x{}, {}, seeds {}..{}",
        captions.len(),
        a.steps,
        a.guidance,
        size,
        size,
        a.dtype,
        a.seed,
        a.seed + captions.len() as u64 - 1
    );
    println!(
        "{:<22} {:>9} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>7} {:>6} {:>7}",
        "variant",
        "GFLOP/st",
        "ratio",
        "colour",
        "pos",
        "size",
        "shape",
        "exact",
        "PSNR",
        "SSIM",
        "s/img"
    );
    for v in &report.variants {
        println!(
            "{:<22} {:>9.3} {:>6.3} {:>5.1}% {:>5.1}% {:>5.1}% {:>5.1}% {:>5.1}% {:>7} {:>6} {:>7.2}",
            v.name,
            v.flops_per_step / 1e9,
            v.flops_ratio,
            100.0 * v.color,
            100.0 * v.position,
            100.0 * v.size,
            100.0 * v.shape,
            100.0 * v.exact,
            v.psnr.map_or("-".into(), |p| format!("{p:.2}")),
            v.ssim.map_or("-".into(), |s| format!("{s:.4}")),
            v.seconds_median
        );
    }
    if let Some(dir) = &a.out {
        let mut list = String::new();
        for (i, c) in captions.iter().enumerate() {
            list.push_str(&format!("{i:02} {c}\n"));
        }
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.display().to_string(),
            source,
        })?;
        write_atomic(&dir.join("captions.txt"), list.as_bytes())?;
        for (v, imgs) in report.variants.iter().zip(&report.images) {
            let sub = dir.join(slug(&v.name));
            std::fs::create_dir_all(&sub).map_err(|source| Error::Io {
                path: sub.display().to_string(),
                source,
            })?;
            for (i, r) in imgs.iter().enumerate() {
                let params = format!("{}\nVariant: {} ({})", r.caption, v.name, v.describe);
                write_atomic(
                    &sub.join(format!("{i:02}.png")),
                    &png_rgb8_bytes(size, size, &r.rgb, &params)?,
                )?;
            }
        }
        eprintln!("wrote the images to {}", dir.display());
    }
    if let Some(p) = &a.json {
        let doc = serde_json::json!({
            "model": model_name(a.model.as_deref()),
            "captions": captions,
            "steps": a.steps,
            "guidance": a.guidance,
            "seed": a.seed,
            "size": size,
            "dtype": a.dtype.to_string(),
            "variants": report.variants,
            "per_image": report.images.iter().map(|imgs| imgs.iter().map(|r| serde_json::json!({
                "exact": r.adherence.exact(),
                "extra": r.adherence.extra,
                "objects": r.adherence.objects.iter().map(|o| serde_json::json!({
                    "color": o.color, "position": o.position, "size": o.size, "shape": o.shape,
                    "read": o.read,
                })).collect::<Vec<_>>(),
                "psnr": if r.psnr.is_finite() { serde_json::json!(r.psnr) } else { serde_json::Value::Null },
                "ssim": r.ssim,
                "seconds": r.seconds,
            })).collect::<Vec<_>>()).collect::<Vec<_>>(),
        });
        let text = serde_json::to_string_pretty(&doc)
            .map_err(|e| Error::Invalid(format!("eval: json: {e}")))?;
        write_atomic(p, text.as_bytes())?;
    }
    Ok(())
}

/// A folder name for a variant ("AT-EDM 0.5" -> "at-edm-0.5").
fn slug(name: &str) -> String {
    let mut s = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() || c == '.' {
            s.push(c.to_ascii_lowercase());
        } else if !s.ends_with('-') {
            s.push('-');
        }
    }
    s.trim_matches('-').to_string()
}
