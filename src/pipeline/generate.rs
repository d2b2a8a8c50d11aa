//! SD-XL text-to-image: load a pipeline once, generate many images.
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

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::model::clip::{ClipTextConfig, ClipTextModel};
use crate::model::keymap::UNET_PREFIX;
use crate::model::load::load_unet;
use crate::model::single_file::{
    clip_l_key, BigGKeyMap, VaeKeyMap, BIG_G_PREFIX, CLIP_L_PREFIX, VAE_PREFIX,
};
use crate::model::tokenizer::{ClipTokenizer, Padding};
use crate::model::unet::{PruneStep, UNet2DConditionModel, UNetInputs};
use crate::model::vae::{VaeConfig, VaeDecoder};
use crate::model::weights::{SafetensorsFile, Transform, WeightLoader, WeightStore};
use crate::ops::{elementwise, guidance, layout};
use crate::pipeline::scheduler::{EulerConfig, EulerSchedule};
use std::ops::ControlFlow;

use crate::prune::schedule::stacks;
use crate::prune::Pruning;
use crate::tensor::{DType, Tensor};

/// How to load a pipeline.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Compute dtype of the text encoders and the UNet.
    pub dtype: DType,
    /// Compute dtype of the VAE decoder. `None`: f32 when the VAE config asks for upcasting
    /// (`force_upcast`, the stock SD-XL VAE, which overflows in f16), else `dtype`.
    pub vae_dtype: Option<DType>,
    /// For a single-file checkpoint: a diffusers SD-XL pipeline folder whose configs
    /// (`text_encoder/`, `text_encoder_2/`, `vae/`, `unet/`, `scheduler/`) and tokenizers
    /// (`tokenizer/`, `tokenizer_2/`, when present) describe the file. `None`: the built-in
    /// SD-XL base configs and the embedded CLIP vocabulary.
    pub config: Option<PathBuf>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            dtype: DType::F16,
            vae_dtype: None,
            config: None,
        }
    }
}

/// One image request.
#[derive(Clone, Debug)]
pub struct GenerateRequest {
    pub prompt: String,
    /// `None` or empty: zero embeddings (diffusers' `force_zeros_for_empty_prompt`).
    pub negative_prompt: Option<String>,
    pub steps: usize,
    pub guidance: f32,
    pub guidance_rescale: f32,
    pub width: usize,
    pub height: usize,
    pub seed: u64,
    /// Initial noise `[1, 4, H/8, W/8]` before scaling by the scheduler's `init_noise_sigma`;
    /// `None`: drawn from a standard normal with `seed`.
    pub latents: Option<Vec<f32>>,
    /// Pruning inside the UNet (default: none): AT-EDM (DSAP follows the step index), ToMe,
    /// or a user-written schedule.
    pub prune: Pruning,
    /// What the run records besides the image (default: nothing).
    pub record: Record,
}

/// What a generation records besides the image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Record {
    /// Nothing: the step loop has no readback.
    #[default]
    Nothing,
    /// Every AT-EDM-pruned stack's kept tokens and G-WPR scores of every step, in
    /// [`GenerateOutput::masks`] (downloaded after the loop, not inside it).
    Masks,
    /// After every step: the latents, the step's prediction of the clean latents (for
    /// previews) and that step's masks, handed to the step callback of
    /// [`SdxlPipeline::generate_with`] and kept in [`GenerateOutput::step_latents`],
    /// [`GenerateOutput::step_denoised`] and [`GenerateOutput::masks`]. Costs one small
    /// readback (a wait for the GPU) per step.
    Steps,
}

impl Record {
    /// Whether masks are recorded.
    pub fn masks(self) -> bool {
        self != Record::Nothing
    }

    /// Whether every step is read back.
    pub fn steps(self) -> bool {
        self == Record::Steps
    }
}

impl Default for GenerateRequest {
    /// diffusers' SD-XL defaults: 50 steps, guidance 5.0, 1024x1024.
    fn default() -> Self {
        GenerateRequest {
            prompt: String::new(),
            negative_prompt: None,
            steps: 50,
            guidance: 5.0,
            guidance_rescale: 0.0,
            width: 1024,
            height: 1024,
            seed: 0,
            latents: None,
            prune: Pruning::None,
            record: Record::Nothing,
        }
    }
}

/// Text conditioning of one prompt pair (host copies, for inspection and saving).
pub struct PromptEmbeds {
    pub prompt_embeds: Tensor,
    pub negative_prompt_embeds: Tensor,
    pub pooled_prompt_embeds: Tensor,
    pub negative_pooled_prompt_embeds: Tensor,
    /// Whether either prompt was cut to 75 tokens.
    pub truncated: bool,
}

/// A generated image and what led to it.
pub struct GenerateOutput {
    pub embeds: PromptEmbeds,
    /// Final latents (before the division by the VAE scaling factor), of shape `latent_shape`.
    pub latents_final: Vec<f32>,
    /// `[1, 4, H/8, W/8]` for SD-XL.
    pub latent_shape: [usize; 4],
    /// Decoded image `[1, 3, H, W]`, about -1..1, not clamped.
    pub image: Vec<f32>,
    pub width: usize,
    pub height: usize,
    /// With [`Record::Masks`] or [`Record::Steps`]: per step, per pruned stack.
    pub masks: Vec<StepMask>,
    /// Wall time of each denoising step in ms, from recording its first op to the end of the
    /// step. With `record_latents` the step ends with a readback, so this is the GPU time of the
    /// step plus that (small) readback; without, it is recording and submission only (the GPU
    /// may still be running the step).
    pub step_ms: Vec<f64>,
    /// With [`Record::Steps`]: the latents after each step, each of shape `latent_shape`.
    pub step_latents: Vec<Vec<f32>>,
    /// With [`Record::Steps`]: each step's prediction of the clean latents,
    /// `x0 = x_i - sigma_i * eps` (what previews show; the last one is the final latents).
    pub step_denoised: Vec<Vec<f32>>,
}

/// What the step callback of [`SdxlPipeline::generate_with`] sees after each denoising step.
#[derive(Clone, Copy, Debug)]
pub struct StepUpdate<'a> {
    /// Index of the finished step (0-based).
    pub step: usize,
    pub steps: usize,
    /// Wall time of the step (see [`GenerateOutput::step_ms`]).
    pub ms: f64,
    /// With [`Record::Steps`]: the latents after the step, of shape `latent_shape`.
    pub latents: Option<&'a [f32]>,
    /// With [`Record::Steps`]: the step's prediction of the clean latents.
    pub denoised: Option<&'a [f32]>,
    /// With [`Record::Steps`]: this step's masks (empty otherwise; with [`Record::Masks`] the
    /// masks are downloaded after the loop into [`GenerateOutput::masks`]).
    pub masks: &'a [StepMask],
    /// `[1, 4, H/8, W/8]`.
    pub latent_shape: [usize; 4],
}

/// The pruning decisions of one stack at one step (host copies).
#[derive(Clone, Debug)]
pub struct StepMask {
    pub step: usize,
    /// diffusers module name of the stack.
    pub stack: String,
    /// Kept token indices `[B, k]` (B = 2 with CFG: uncond, cond).
    pub kept: Vec<u32>,
    pub kept_shape: [usize; 2],
    /// G-WPR importance `[B, N]`.
    pub scores: Vec<f32>,
    pub scores_shape: [usize; 2],
}

impl GenerateOutput {
    /// RGB8 pixels, row-major (`clamp(x / 2 + 0.5, 0, 1) * 255`, rounded).
    pub fn rgb8(&self) -> Vec<u8> {
        let plane = self.width * self.height;
        let mut out = Vec::with_capacity(plane * 3);
        for p in 0..plane {
            for c in 0..3 {
                let v = (self.image[c * plane + p] * 0.5 + 0.5).clamp(0.0, 1.0);
                out.push((v * 255.0).round() as u8);
            }
        }
        out
    }
}

/// A loaded SD-XL pipeline.
pub struct SdxlPipeline {
    pub tokenizer: ClipTokenizer,
    pub tokenizer_2: ClipTokenizer,
    pub text_encoder: ClipTextModel,
    pub text_encoder_2: ClipTextModel,
    pub unet: UNet2DConditionModel,
    pub vae: VaeDecoder,
    pub scheduler: EulerConfig,
    pub dtype: DType,
    pub vae_dtype: DType,
    /// Denoising steps when a request names none: diffusers' 50 for SD-XL, the demo model's
    /// own setting for it.
    pub default_steps: usize,
}

/// diffusers' default number of denoising steps for SD-XL.
pub const DEFAULT_STEPS: usize = 50;

fn part(root: &Path, name: &str) -> Result<PathBuf> {
    let p = root.join(name);
    if p.is_dir() {
        Ok(p)
    } else {
        Err(Error::Invalid(format!(
            "{}: missing model part '{name}/' (expected a diffusers SD-XL pipeline folder)",
            root.display()
        )))
    }
}

/// Builds a text encoder from `store` (transformers names); `what` names the source in errors.
fn build_clip(
    ctx: &GpuContext,
    cfg: &ClipTextConfig,
    store: &WeightStore,
    dtype: DType,
    with_projection: bool,
    what: &str,
) -> Result<ClipTextModel> {
    let mut l = WeightLoader::new(ctx, store, dtype);
    // Some exports carry transformers' position_ids buffer: not a weight.
    l.ignore_prefix("text_model.embeddings.position_ids");
    let model = ClipTextModel::build(cfg, &mut l, with_projection)
        .map_err(|e| Error::Invalid(format!("{what}: {e}")))?;
    l.finish()
        .map_err(|e| Error::Invalid(format!("{what}: {e}")))?;
    Ok(model)
}

fn load_clip(
    ctx: &GpuContext,
    dir: &Path,
    dtype: DType,
    with_projection: bool,
) -> Result<ClipTextModel> {
    let cfg = ClipTextConfig::from_file(dir)?;
    let store = WeightStore::open_diffusers(dir, "model", dtype == DType::F16)?;
    build_clip(
        ctx,
        &cfg,
        &store,
        dtype,
        with_projection,
        &dir.display().to_string(),
    )
}

/// The VAE's compute dtype: `opts.vae_dtype`, else f32 when the config asks for upcasting.
fn vae_dtype(cfg: &VaeConfig, opts: &LoadOptions) -> DType {
    opts.vae_dtype.unwrap_or(if cfg.force_upcast {
        DType::F32
    } else {
        opts.dtype
    })
}

/// Builds the VAE decoder from `store` (diffusers names; encoder tensors are ignored).
fn build_vae(
    ctx: &GpuContext,
    cfg: &VaeConfig,
    store: &WeightStore,
    dtype: DType,
    what: &str,
) -> Result<VaeDecoder> {
    let mut l = WeightLoader::new(ctx, store, dtype);
    l.ignore_prefix("encoder.");
    l.ignore_prefix("quant_conv.");
    let vae = VaeDecoder::build(cfg, &mut l);
    l.finish()
        .map_err(|e| Error::Invalid(format!("{what}: {e}")))?;
    Ok(vae)
}

fn read_scheduler(dir: &Path) -> Result<EulerConfig> {
    let sched_file = part(dir, "scheduler")?.join("scheduler_config.json");
    let text = std::fs::read_to_string(&sched_file).map_err(|source| Error::Io {
        path: sched_file.display().to_string(),
        source,
    })?;
    EulerConfig::from_json(&text)
}

/// Checks that the text encoders' widths fit the UNet.
fn check_fit(
    path: &Path,
    te1: &ClipTextModel,
    te2: &ClipTextModel,
    unet: &UNet2DConditionModel,
) -> Result<()> {
    let cross = te1.config.hidden_size + te2.config.hidden_size;
    if unet.config.cross_attention_dim != cross
        || Some(unet.config.text_embeds_dim()) != te2.config.projection_dim
    {
        return Err(Error::Invalid(format!(
            "{}: the text encoders (hidden {} + {}, projection {:?}) do not fit the UNet (cross_attention_dim {}, text embeds {}): not an SD-XL pipeline",
            path.display(),
            te1.config.hidden_size,
            te2.config.hidden_size,
            te2.config.projection_dim,
            unet.config.cross_attention_dim,
            unet.config.text_embeds_dim()
        )));
    }
    Ok(())
}

/// A store over the single file `path` seen through `map`.
fn single_store(
    path: &Path,
    map: impl Fn(&str) -> Vec<(String, Transform)>,
) -> Result<WeightStore> {
    WeightStore::from_files_transformed(vec![SafetensorsFile::open(path)?], map)
}

impl SdxlPipeline {
    /// Loads a diffusers SD-XL pipeline folder (`model_index.json`, `tokenizer/`,
    /// `tokenizer_2/`, `text_encoder/`, `text_encoder_2/`, `unet/`, `vae/`, `scheduler/`), or
    /// an original single-file SD-XL checkpoint (see [`LoadOptions::config`]).
    pub fn load(ctx: &GpuContext, path: &Path, opts: &LoadOptions) -> Result<Self> {
        if opts.dtype == DType::U32 || opts.vae_dtype == Some(DType::U32) {
            return Err(Error::Invalid("dtype must be f32 or f16".into()));
        }
        if path.is_file() {
            return Self::load_single_file(ctx, path, opts);
        }
        if !path.exists() {
            return Err(Error::Invalid(format!(
                "{}: no such file or folder",
                path.display()
            )));
        }
        if let Some(c) = &opts.config {
            return Err(Error::Invalid(format!(
                "--config {}: a config folder is only for single-file checkpoints; {} is a folder",
                c.display(),
                path.display()
            )));
        }
        if !path.join("model_index.json").is_file() {
            return Err(Error::Invalid(format!(
                "{}: not a diffusers pipeline folder (no model_index.json)",
                path.display()
            )));
        }
        let tokenizer = ClipTokenizer::from_dir(&part(path, "tokenizer")?, Padding::Eos)?;
        let tokenizer_2 = ClipTokenizer::from_dir(&part(path, "tokenizer_2")?, Padding::BANG)?;
        let text_encoder = load_clip(ctx, &part(path, "text_encoder")?, opts.dtype, false)?;
        let text_encoder_2 = load_clip(ctx, &part(path, "text_encoder_2")?, opts.dtype, true)?;
        let unet = load_unet(ctx, &part(path, "unet")?, None, opts.dtype)?;
        check_fit(path, &text_encoder, &text_encoder_2, &unet)?;
        let vae_dir = part(path, "vae")?;
        let vae_cfg = VaeConfig::from_file(&vae_dir)?;
        let vae_dtype = vae_dtype(&vae_cfg, opts);
        let store = WeightStore::open_diffusers(
            &vae_dir,
            "diffusion_pytorch_model",
            vae_dtype == DType::F16,
        )?;
        let vae = build_vae(
            ctx,
            &vae_cfg,
            &store,
            vae_dtype,
            &vae_dir.display().to_string(),
        )?;
        let scheduler = read_scheduler(path)?;
        Ok(SdxlPipeline {
            tokenizer,
            tokenizer_2,
            text_encoder,
            text_encoder_2,
            unet,
            vae,
            scheduler,
            dtype: opts.dtype,
            vae_dtype,
            default_steps: DEFAULT_STEPS,
        })
    }

    /// The demo model built into the engine ([`crate::model::demo`]): a tiny SD-XL-family
    /// pipeline trained on coloured shapes at 128x128, used when no model is given.
    pub fn load_demo(ctx: &GpuContext, opts: &LoadOptions) -> Result<Self> {
        use crate::model::config::UNetConfig;
        use crate::model::demo::{self, label, Part};
        if opts.dtype == DType::U32 || opts.vae_dtype == Some(DType::U32) {
            return Err(Error::Invalid("dtype must be f32 or f16".into()));
        }
        if let Some(c) = &opts.config {
            return Err(Error::Invalid(format!(
                "--config {}: a config folder is only for single-file checkpoints, not the built-in demo model",
                c.display()
            )));
        }
        let store = |p: &Part| -> Result<WeightStore> {
            WeightStore::from_files(vec![SafetensorsFile::from_static(
                &label(p.weights_name),
                p.weights,
            )?])
        };
        let clip = |p: &Part, with_projection: bool| -> Result<ClipTextModel> {
            let cfg =
                ClipTextConfig::from_json(p.config, &label(&format!("{}/config.json", p.name)))?;
            build_clip(
                ctx,
                &cfg,
                &store(p)?,
                opts.dtype,
                with_projection,
                &label(p.name),
            )
        };
        let text_encoder = clip(&demo::TEXT_ENCODER, false)?;
        let text_encoder_2 = clip(&demo::TEXT_ENCODER_2, true)?;
        let unet_cfg = UNetConfig::from_json(demo::UNET.config)
            .map_err(|e| Error::Invalid(format!("{}: {e}", label("unet/config.json"))))?;
        let unet = UNet2DConditionModel::load(
            &unet_cfg,
            WeightLoader::new(ctx, &store(&demo::UNET)?, opts.dtype),
        )
        .map_err(|e| Error::Invalid(format!("{}: {e}", label("unet"))))?;
        check_fit(Path::new(demo::NAME), &text_encoder, &text_encoder_2, &unet)?;
        let vae_cfg = VaeConfig::from_json(demo::VAE.config, &label("vae/config.json"))?;
        let vae_dtype = vae_dtype(&vae_cfg, opts);
        let vae = build_vae(ctx, &vae_cfg, &store(&demo::VAE)?, vae_dtype, &label("vae"))?;
        Ok(SdxlPipeline {
            tokenizer: ClipTokenizer::embedded(Padding::Eos)?,
            tokenizer_2: ClipTokenizer::embedded(Padding::BANG)?,
            text_encoder,
            text_encoder_2,
            unet,
            vae,
            scheduler: EulerConfig::from_json(demo::SCHEDULER_CONFIG)?,
            dtype: opts.dtype,
            vae_dtype,
            default_steps: demo::DEFAULT_STEPS,
        })
    }

    /// An original single-file SD-XL checkpoint: UNet `model.diffusion_model.`, CLIP-L
    /// `conditioner.embedders.0.transformer.`, OpenCLIP bigG `conditioner.embedders.1.model.`,
    /// VAE `first_stage_model.`.
    fn load_single_file(ctx: &GpuContext, path: &Path, opts: &LoadOptions) -> Result<Self> {
        let names = SafetensorsFile::open(path)?.names();
        let parts = [
            (UNET_PREFIX, "UNet"),
            (CLIP_L_PREFIX, "CLIP-L text encoder"),
            (BIG_G_PREFIX, "OpenCLIP bigG text encoder"),
            (VAE_PREFIX, "VAE"),
        ];
        let missing: Vec<String> = parts
            .iter()
            .filter(|(p, _)| !names.iter().any(|n| n.starts_with(p)))
            .map(|(p, what)| format!("{what} ('{p}*')"))
            .collect();
        if !missing.is_empty() {
            return Err(Error::Invalid(format!(
                "{}: not an SD-XL single-file checkpoint: it has no tensors of the {}",
                path.display(),
                missing.join(", ")
            )));
        }
        let (te1_cfg, te2_cfg, vae_cfg, scheduler, tokenizer, tokenizer_2) = match &opts.config {
            Some(dir) => {
                if !dir.is_dir() {
                    return Err(Error::Invalid(format!(
                        "--config {}: not a folder (expected a diffusers SD-XL pipeline folder with the configs)",
                        dir.display()
                    )));
                }
                let tok = |name: &str, pad: Padding| {
                    let d = dir.join(name);
                    if d.is_dir() {
                        ClipTokenizer::from_dir(&d, pad)
                    } else {
                        ClipTokenizer::embedded(pad)
                    }
                };
                (
                    ClipTextConfig::from_file(&part(dir, "text_encoder")?)?,
                    ClipTextConfig::from_file(&part(dir, "text_encoder_2")?)?,
                    VaeConfig::from_file(&part(dir, "vae")?)?,
                    read_scheduler(dir)?,
                    tok("tokenizer", Padding::Eos)?,
                    tok("tokenizer_2", Padding::BANG)?,
                )
            }
            None => (
                ClipTextConfig::clip_l(),
                ClipTextConfig::open_clip_big_g(),
                VaeConfig::sdxl(),
                EulerConfig::default(),
                ClipTokenizer::embedded(Padding::Eos)?,
                ClipTokenizer::embedded(Padding::BANG)?,
            ),
        };
        let what = |part: &str| format!("{} ({part})", path.display());
        let store = single_store(path, clip_l_key)?;
        let text_encoder = build_clip(
            ctx,
            &te1_cfg,
            &store,
            opts.dtype,
            false,
            &what("text_encoder"),
        )?;
        drop(store);
        let big_g = BigGKeyMap::new(&te2_cfg);
        let store = single_store(path, |k| big_g.map(k))?;
        let text_encoder_2 = build_clip(
            ctx,
            &te2_cfg,
            &store,
            opts.dtype,
            true,
            &what("text_encoder_2"),
        )?;
        drop(store);
        let unet = load_unet(ctx, path, opts.config.as_deref(), opts.dtype)?;
        check_fit(path, &text_encoder, &text_encoder_2, &unet)?;
        let vae_dtype = vae_dtype(&vae_cfg, opts);
        let vae_map = VaeKeyMap::new(&vae_cfg);
        let store = single_store(path, |k| vae_map.map(k))?;
        let vae = build_vae(ctx, &vae_cfg, &store, vae_dtype, &what("vae"))?;
        Ok(SdxlPipeline {
            tokenizer,
            tokenizer_2,
            text_encoder,
            text_encoder_2,
            unet,
            vae,
            scheduler,
            dtype: opts.dtype,
            vae_dtype,
            default_steps: DEFAULT_STEPS,
        })
    }

    /// The image size the model was made for (diffusers' default: the UNet's `sample_size`
    /// times the VAE's downsampling; 1024 for SD-XL).
    pub fn native_size(&self) -> usize {
        self.unet.config.sample_size * self.vae.config.upsampling()
    }

    /// Denoising steps when a request names none ([`SdxlPipeline::default_steps`] field).
    pub fn default_steps(&self) -> usize {
        self.default_steps
    }

    /// Image sizes must be multiples of this (VAE x UNet downsampling).
    pub fn size_multiple(&self) -> usize {
        self.vae.config.upsampling() * self.unet.config.downsampling()
    }

    /// Encodes `texts` with both encoders: context `[n, 77, C1 + C2]` and pooled `[n, P]`.
    fn encode(&self, ctx: &GpuContext, texts: &[&str]) -> Result<(Tensor, Tensor, bool)> {
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
        let h1 = self.text_encoder.forward(ctx, &ids1, n, false)?.penultimate;
        let out2 = self.text_encoder_2.forward(ctx, &ids2, n, true)?;
        let context = layout::concat(ctx, &[&h1, &out2.penultimate], 2)?;
        Ok((
            context,
            out2.pooled
                .expect("text_encoder_2 has a projection (checked on load)"),
            truncated,
        ))
    }

    /// The text conditioning of a prompt and its negative prompt.
    pub fn encode_prompt(
        &self,
        ctx: &GpuContext,
        prompt: &str,
        negative: Option<&str>,
    ) -> Result<PromptEmbeds> {
        let negative = negative.filter(|n| !n.is_empty());
        let (ctx_all, pooled_all, truncated) = match negative {
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

    fn check_request(&self, req: &GenerateRequest) -> Result<()> {
        let m = self.size_multiple();
        if req.width == 0 || req.height == 0 || req.width % m != 0 || req.height % m != 0 {
            return Err(Error::Invalid(format!(
                "image size {}x{} is not a positive multiple of {m} (VAE x UNet downsampling of this model)",
                req.width, req.height
            )));
        }
        if req.steps == 0 {
            return Err(Error::Invalid("steps must be at least 1".into()));
        }
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
                masks.extend(download_masks(ctx, std::mem::take(&mut recorded))?);
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
        masks.extend(download_masks(ctx, recorded)?);
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

/// Host copies of recorded masks (one readback per tensor).
fn download_masks(
    ctx: &GpuContext,
    recorded: Vec<(usize, String, crate::model::unet::StackRecord)>,
) -> Result<Vec<StepMask>> {
    recorded
        .into_iter()
        .map(|(step, stack, r)| {
            let (ks, ss) = (r.kept.shape(), r.scores.shape());
            Ok(StepMask {
                step,
                stack,
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
