//! The fidelity benchmark: generate held-back captions with the full model and with pruned
//! variants from the same noise, and score each image for prompt adherence (the detector), for
//! fidelity to the full model's image (PSNR, SSIM) and for time.

use std::time::Instant;

use crate::error::{Error, Result};
use crate::eval::detect::{check, Adherence};
use crate::eval::metrics::{psnr, ssim};
use crate::eval::spec::DemoSpec;
use crate::gpu::GpuContext;
use crate::model::config::UNetConfig;
use crate::pipeline::generate::{GenerateRequest, SdxlPipeline};
use crate::prune::budget::tome_for_budget;
use crate::prune::flops::unet_flops;
use crate::prune::schedule::stacks;
use crate::prune::tome::TomeSettings;
use crate::prune::{AtEdm, Pruning, Recovery};

/// One configuration to evaluate.
#[derive(Clone, Debug)]
pub struct Variant {
    /// Short name ("full", "AT-EDM 0.50", "ToMe =AT-EDM 0.50").
    pub name: String,
    /// The settings in words.
    pub describe: String,
    /// The pruning.
    pub prune: Pruning,
}

/// What to generate.
#[derive(Clone, Debug)]
pub struct EvalOptions {
    /// Captions to generate, each parsed by [`DemoSpec::parse_caption`] before any run.
    pub captions: Vec<String>,
    /// Denoising steps per image.
    pub steps: usize,
    /// Classifier-free guidance scale (`> 1` runs the `[uncond, cond]` batch).
    pub guidance: f32,
    /// Caption `i` uses seed `seed + i` for every variant (the same noise).
    pub seed: u64,
    /// Image width in pixels.
    pub width: usize,
    /// Image height in pixels.
    pub height: usize,
}

/// One image of one variant.
#[derive(Clone, Debug)]
pub struct ImageResult {
    /// The caption the image was generated from.
    pub caption: String,
    /// The detector's verdict on the image.
    pub adherence: Adherence,
    /// PSNR in dB against the first variant's image of the same caption (infinite when
    /// identical, and for the first variant itself).
    pub psnr: f64,
    /// SSIM against the first variant's image of the same caption (1 for the first variant).
    pub ssim: f64,
    /// Wall-clock seconds of the whole generation (text encoders, denoising, VAE decode).
    pub seconds: f64,
    /// The image, RGB8 `width x height`, row-major.
    pub rgb: Vec<u8>,
}

/// Aggregates of one variant.
#[derive(Clone, Debug, serde::Serialize)]
pub struct VariantSummary {
    /// The variant's short name ([`Variant::name`]).
    pub name: String,
    /// The variant's settings in words ([`Variant::describe`]).
    pub describe: String,
    /// Average UNet FLOPs per step (one image; the CFG batch doubles it).
    pub flops_per_step: f64,
    /// The full model's FLOPs per step divided by `flops_per_step` (1 for the full model).
    pub flops_ratio: f64,
    /// Number of images (one per caption).
    pub images: usize,
    /// Share of caption objects whose colour was found.
    pub color: f64,
    /// Share of caption objects whose position was right.
    pub position: f64,
    /// Share of caption objects whose size was right.
    pub size: f64,
    /// Share of caption objects whose shape was right.
    pub shape: f64,
    /// Share of images showing exactly their caption.
    pub exact: f64,
    /// Mean PSNR (dB) against the reference variant's images (the first variant), identical
    /// images counted as 100 dB; `None` for the reference itself.
    pub psnr: Option<f64>,
    /// Mean SSIM against the reference variant's images; `None` for the reference itself.
    pub ssim: Option<f64>,
    /// Median seconds per image (text encoders, denoising, VAE decode; after one warm-up).
    pub seconds_median: f64,
}

/// The benchmark's result.
#[derive(Debug)]
pub struct EvalReport {
    /// One summary per variant, in the order of the variants given.
    pub variants: Vec<VariantSummary>,
    /// `images[v][c]`: variant `v`, caption `c`.
    pub images: Vec<Vec<ImageResult>>,
}

/// Runs every variant on every caption. The first variant is the reference for PSNR/SSIM.
/// `progress(done, total)` is called after each image.
pub fn evaluate(
    ctx: &GpuContext,
    pipe: &SdxlPipeline,
    spec: &DemoSpec,
    variants: &[Variant],
    opts: &EvalOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<EvalReport> {
    if variants.is_empty() || opts.captions.is_empty() {
        return Err(Error::Invalid(
            "eval needs at least one variant and one caption".into(),
        ));
    }
    for c in &opts.captions {
        spec.parse_caption(c)?;
    }
    let down = pipe.vae.config.upsampling();
    let (lh, lw) = (opts.height / down, opts.width / down);
    let cfg = &pipe.unet.config;
    let full = unet_flops(cfg, lh, lw, opts.steps, &Pruning::None)?.full;
    let request = |caption: &str, i: usize, prune: &Pruning| GenerateRequest {
        prompt: caption.to_string(),
        negative_prompt: None,
        steps: opts.steps,
        guidance: opts.guidance,
        guidance_rescale: 0.0,
        width: opts.width,
        height: opts.height,
        seed: opts.seed + i as u64,
        latents: None,
        prune: prune.clone(),
        record: Default::default(),
    };
    // One warm-up per variant so that pipeline creation is not timed.
    for v in variants {
        pipe.generate(ctx, &request(&opts.captions[0], 0, &v.prune), |_, _| {})?;
    }
    let total = variants.len() * opts.captions.len();
    let mut images: Vec<Vec<ImageResult>> = vec![Vec::new(); variants.len()];
    // Caption-major, variants interleaved: drift in machine load hits every variant alike.
    for (i, caption) in opts.captions.iter().enumerate() {
        for (vi, v) in variants.iter().enumerate() {
            let t = Instant::now();
            let out = pipe.generate(ctx, &request(caption, i, &v.prune), |_, _| {})?;
            let seconds = t.elapsed().as_secs_f64();
            let rgb = out.rgb8();
            let adherence = check(spec, caption, &rgb, opts.width, opts.height)?;
            let (p, s) = match images[0].get(i) {
                Some(r) if vi > 0 => (
                    psnr(&r.rgb, &rgb)?,
                    ssim(&r.rgb, &rgb, opts.width, opts.height)?,
                ),
                _ => (f64::INFINITY, 1.0),
            };
            images[vi].push(ImageResult {
                caption: caption.clone(),
                adherence,
                psnr: p,
                ssim: s,
                seconds,
                rgb,
            });
            progress(i * variants.len() + vi + 1, total);
        }
    }
    let mut summaries = Vec::new();
    for (vi, v) in variants.iter().enumerate() {
        let f = unet_flops(cfg, lh, lw, opts.steps, &v.prune)?.model;
        let res = &images[vi];
        let objects: Vec<_> = res.iter().flat_map(|r| &r.adherence.objects).collect();
        let share = |pred: &dyn Fn(&crate::eval::detect::ObjectCheck) -> bool| {
            objects.iter().filter(|o| pred(o)).count() as f64 / objects.len().max(1) as f64
        };
        let mut secs: Vec<f64> = res.iter().map(|r| r.seconds).collect();
        secs.sort_by(f64::total_cmp);
        let mean = |x: &dyn Fn(&ImageResult) -> f64| {
            res.iter().map(x).sum::<f64>() / res.len().max(1) as f64
        };
        summaries.push(VariantSummary {
            name: v.name.clone(),
            describe: v.describe.clone(),
            flops_per_step: f,
            flops_ratio: full / f,
            images: res.len(),
            color: share(&|o| o.color),
            position: share(&|o| o.position),
            size: share(&|o| o.size),
            shape: share(&|o| o.shape),
            exact: res.iter().filter(|r| r.adherence.exact()).count() as f64
                / res.len().max(1) as f64,
            // Identical images (infinite PSNR) are capped at 100 dB for the mean.
            psnr: (vi > 0).then(|| mean(&|r| r.psnr.min(100.0))),
            ssim: (vi > 0).then(|| mean(&|r| r.ssim)),
            seconds_median: secs[secs.len() / 2],
        });
    }
    Ok(EvalReport {
        variants: summaries,
        images,
    })
}

/// A pruned method compared with the full model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// AT-EDM at the keep ratio.
    AtEdm,
    /// ToMe solved to AT-EDM's FLOPs at the keep ratio.
    Tome,
}

/// The variants of a comparison: the full model first (the reference), then per keep ratio
/// AT-EDM (DSAP with `dsap_tau`, or none; each of `recoveries`) and ToMe at the FLOPs of the
/// first of them (its merge ratio and layers solved), as `methods` ask.
#[allow(clippy::too_many_arguments)]
pub fn comparison_variants(
    cfg: &UNetConfig,
    lh: usize,
    lw: usize,
    steps: usize,
    keep_ratios: &[f64],
    methods: &[Method],
    dsap_tau: Option<f64>,
    recoveries: &[Recovery],
) -> Result<Vec<Variant>> {
    let mut out = vec![Variant {
        name: "full".into(),
        describe: Pruning::None.describe(),
        prune: Pruning::None,
    }];
    let recoveries = if recoveries.is_empty() {
        &[Recovery::AttnCopy][..]
    } else {
        recoveries
    };
    for &k in keep_ratios {
        let base = AtEdm::new(k)?.with_dsap(dsap_tau)?;
        let at = Pruning::AtEdm(base.with_recovery(recoveries[0]));
        at.check_stacks(&stacks(cfg, lh, lw))?;
        if methods.contains(&Method::AtEdm) {
            for &r in recoveries {
                let v = Pruning::AtEdm(base.with_recovery(r));
                out.push(Variant {
                    name: match r {
                        Recovery::AttnCopy => format!("AT-EDM {k}"),
                        r => format!("AT-EDM {k} {}", r.name()),
                    },
                    describe: v.describe(),
                    prune: v,
                });
            }
        }
        if methods.contains(&Method::Tome) {
            let budget = unet_flops(cfg, lh, lw, steps, &at)?.model;
            let tome = Pruning::tome(tome_for_budget(
                cfg,
                lh,
                lw,
                steps,
                &TomeSettings::default(),
                budget,
                true,
            )?)?;
            out.push(Variant {
                name: format!("ToMe (= AT-EDM {k})"),
                describe: tome.describe_solved(Some(budget)),
                prune: tome,
            });
        }
    }
    Ok(out)
}

/// `n` held-back captions: the first half from the one-shape list, the rest from the two-shape
/// list, each taken evenly spread over its list (`n = 0`: all of them).
pub fn pick_captions(spec: &DemoSpec, n: usize) -> Vec<String> {
    let (one, two) = (&spec.held_back_one, &spec.held_back_two);
    if n == 0 {
        return one.iter().chain(two).cloned().collect();
    }
    let spread = |list: &Vec<String>, k: usize| -> Vec<String> {
        let k = k.min(list.len());
        (0..k).map(|i| list[i * list.len() / k].clone()).collect()
    };
    let n1 = n.div_ceil(2);
    let mut out = spread(one, n1);
    out.extend(spread(two, n - out.len()));
    out
}
