//! Loading an SD-XL pipeline: a diffusers folder, an original single-file checkpoint, or the
//! built-in demo model, into an [`SdxlPipeline`] (tokenizers, text encoders, UNet, VAE decoder,
//! scheduler config). Generation is in [`super::generate`].

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::model::clip::{ClipKind, ClipTextConfig, ClipTextModel};
use crate::model::keymap::UNET_PREFIX;
use crate::model::load::load_unet;
use crate::model::single_file::{
    clip_l_key, BigGKeyMap, VaeKeyMap, BIG_G_PREFIX, CLIP_L_PREFIX, VAE_PREFIX,
};
use crate::model::tokenizer::{ClipTokenizer, Padding};
use crate::model::unet::UNet2DConditionModel;
use crate::model::vae::{VaeConfig, VaeDecoder};
use crate::model::weights::{SafetensorsFile, Transform, WeightLoader, WeightStore};
use crate::pipeline::scheduler::EulerConfig;
use crate::tensor::DType;

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

/// A loaded SD-XL pipeline.
pub struct SdxlPipeline {
    /// CLIP ViT-L tokenizer (diffusers `tokenizer`), padding with `<|endoftext|>`.
    pub tokenizer: ClipTokenizer,
    /// OpenCLIP ViT-bigG tokenizer (diffusers `tokenizer_2`), padding with `!`.
    pub tokenizer_2: ClipTokenizer,
    /// CLIP ViT-L text encoder (diffusers `text_encoder`, `CLIPTextModel`).
    pub text_encoder: ClipTextModel,
    /// OpenCLIP ViT-bigG text encoder with its projection (diffusers `text_encoder_2`,
    /// `CLIPTextModelWithProjection`).
    pub text_encoder_2: ClipTextModel,
    /// The denoising UNet (diffusers `unet`).
    pub unet: UNet2DConditionModel,
    /// The VAE decoder (diffusers `vae`, decoder half only).
    pub vae: VaeDecoder,
    /// Euler scheduler settings (diffusers `scheduler`, `EulerDiscreteScheduler`).
    pub scheduler: EulerConfig,
    /// Compute dtype of the text encoders and the UNet.
    pub dtype: DType,
    /// Compute dtype of the VAE decoder (resolved from [`LoadOptions::vae_dtype`]).
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
    kind: ClipKind,
    what: &str,
) -> Result<ClipTextModel> {
    let mut l = WeightLoader::new(ctx, store, dtype);
    let model = ClipTextModel::build(cfg, &mut l, kind)
        .map_err(|e| Error::Invalid(format!("{what}: {e}")))?;
    l.finish()
        .map_err(|e| Error::Invalid(format!("{what}: {e}")))?;
    Ok(model)
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
        let text_encoder = ClipTextModel::load(
            ctx,
            &part(path, "text_encoder")?,
            opts.dtype,
            ClipKind::TextModel,
        )?;
        let text_encoder_2 = ClipTextModel::load(
            ctx,
            &part(path, "text_encoder_2")?,
            opts.dtype,
            ClipKind::WithProjection,
        )?;
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
        let clip = |p: &Part, kind: ClipKind| -> Result<ClipTextModel> {
            let cfg =
                ClipTextConfig::from_json(p.config, &label(&format!("{}/config.json", p.name)))?;
            build_clip(ctx, &cfg, &store(p)?, opts.dtype, kind, &label(p.name))
        };
        let text_encoder = clip(&demo::TEXT_ENCODER, ClipKind::TextModel)?;
        let text_encoder_2 = clip(&demo::TEXT_ENCODER_2, ClipKind::WithProjection)?;
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
            ClipKind::TextModel,
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
            ClipKind::WithProjection,
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
}
