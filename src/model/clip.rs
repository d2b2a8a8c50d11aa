//! CLIP text encoders as transformers defines them (`CLIPTextModel` for CLIP-L,
//! `CLIPTextModelWithProjection` for OpenCLIP bigG): pre-LN transformer with causal attention.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::model::weights::{WeightLoader, WeightStore};
use crate::nn::{LayerNorm, Linear};
use crate::ops::activation::{self, Activation};
use crate::ops::attention::{self, AttentionOptions};
use crate::ops::{elementwise, gather};
use crate::tensor::{DType, Tensor};

/// `CLIPTextConfig` fields we use (transformers' `config.json`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct ClipTextConfig {
    /// Token vocabulary size (rows of the token embedding).
    pub vocab_size: usize,
    /// Width `C` of the hidden states.
    pub hidden_size: usize,
    /// Width of the MLP's hidden layer (`fc1` out, `fc2` in).
    pub intermediate_size: usize,
    /// Number of encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer; divides `hidden_size`.
    pub num_attention_heads: usize,
    /// Longest token sequence (rows of the position embedding; 77).
    pub max_position_embeddings: usize,
    /// MLP activation: `"quick_gelu"` or `"gelu"` (others are refused).
    pub hidden_act: String,
    /// Epsilon of every layer norm (default 1e-5).
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Width of `text_projection`. transformers writes it for every CLIP text config; only
    /// `CLIPTextModelWithProjection` has the projection (see [`ClipTextModel::build`]).
    #[serde(default)]
    pub projection_dim: Option<usize>,
}

fn default_eps() -> f64 {
    1e-5
}

impl ClipTextConfig {
    /// SD-XL's `text_encoder` (OpenAI CLIP ViT-L/14 text tower).
    pub fn clip_l() -> Self {
        ClipTextConfig {
            vocab_size: 49408,
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            projection_dim: None,
        }
    }

    /// SD-XL's `text_encoder_2` (OpenCLIP ViT-bigG/14 text tower, with projection).
    pub fn open_clip_big_g() -> Self {
        ClipTextConfig {
            vocab_size: 49408,
            hidden_size: 1280,
            intermediate_size: 5120,
            num_hidden_layers: 32,
            num_attention_heads: 20,
            max_position_embeddings: 77,
            hidden_act: "gelu".into(),
            layer_norm_eps: 1e-5,
            projection_dim: Some(1280),
        }
    }

    /// Reads `config.json` (a file or a folder holding one) and validates it.
    pub fn from_file(path: &Path) -> Result<Self> {
        let (file, cfg): (_, ClipTextConfig) = super::read_config(path, "a CLIP text config")?;
        cfg.validate(&file.display().to_string())
    }

    /// Parses and validates a config.json text; `label` names its source in errors.
    pub fn from_json(text: &str, label: &str) -> Result<Self> {
        let cfg: ClipTextConfig = super::parse_config(text, label, "a CLIP text config")?;
        cfg.validate(label)
    }

    fn validate(self, file: &str) -> Result<Self> {
        let cfg = self;
        cfg.activation()?;
        if cfg.num_hidden_layers < 2 {
            return Err(Error::Invalid(format!(
                "{}: num_hidden_layers is {}; SD-XL takes the penultimate layer's states, so a text encoder needs at least 2",
                file, cfg.num_hidden_layers
            )));
        }
        if cfg.num_attention_heads == 0 || cfg.hidden_size % cfg.num_attention_heads != 0 {
            return Err(Error::Invalid(format!(
                "{}: hidden_size {} is not divisible by num_attention_heads {}",
                file, cfg.hidden_size, cfg.num_attention_heads
            )));
        }
        Ok(cfg)
    }

    fn activation(&self) -> Result<Activation> {
        match self.hidden_act.as_str() {
            "quick_gelu" => Ok(Activation::QuickGelu),
            "gelu" => Ok(Activation::Gelu),
            other => Err(Error::Invalid(format!("unsupported CLIP config: 'hidden_act' is \"{other}\"; atedm supports quick_gelu and gelu"))),
        }
    }
}

/// `CLIPEncoderLayer`.
pub struct ClipEncoderLayer {
    /// Layer norm before the self-attention.
    pub layer_norm1: LayerNorm,
    /// `self_attn.q_proj`: `C -> C`, with bias.
    pub q_proj: Linear,
    /// `self_attn.k_proj`: `C -> C`, with bias.
    pub k_proj: Linear,
    /// `self_attn.v_proj`: `C -> C`, with bias.
    pub v_proj: Linear,
    /// `self_attn.out_proj`: `C -> C`, with bias; adds the residual.
    pub out_proj: Linear,
    /// Layer norm before the MLP.
    pub layer_norm2: LayerNorm,
    /// `mlp.fc1`: `C -> intermediate_size`, followed by `hidden_act`.
    pub fc1: Linear,
    /// `mlp.fc2`: `intermediate_size -> C`; adds the residual.
    pub fc2: Linear,
}

impl ClipEncoderLayer {
    fn load(l: &mut WeightLoader, p: &str, c: &ClipTextConfig) -> Self {
        let (d, eps) = (c.hidden_size, c.layer_norm_eps as f32);
        ClipEncoderLayer {
            layer_norm1: LayerNorm::load(l, &format!("{p}.layer_norm1"), d, eps),
            q_proj: Linear::load(l, &format!("{p}.self_attn.q_proj"), d, d, true),
            k_proj: Linear::load(l, &format!("{p}.self_attn.k_proj"), d, d, true),
            v_proj: Linear::load(l, &format!("{p}.self_attn.v_proj"), d, d, true),
            out_proj: Linear::load(l, &format!("{p}.self_attn.out_proj"), d, d, true),
            layer_norm2: LayerNorm::load(l, &format!("{p}.layer_norm2"), d, eps),
            fc1: Linear::load(l, &format!("{p}.mlp.fc1"), d, c.intermediate_size, true),
            fc2: Linear::load(l, &format!("{p}.mlp.fc2"), c.intermediate_size, d, true),
        }
    }

    fn forward(
        &self,
        ctx: &GpuContext,
        h: &Tensor,
        heads: usize,
        act: Activation,
    ) -> Result<Tensor> {
        let x = self.layer_norm1.forward(ctx, h)?;
        let q = self.q_proj.forward(ctx, &x, None)?;
        let k = self.k_proj.forward(ctx, &x, None)?;
        let v = self.v_proj.forward(ctx, &x, None)?;
        let o = attention::attention(
            ctx,
            &q,
            &k,
            &v,
            &AttentionOptions {
                heads,
                scale: None,
                causal: true,
            },
        )?;
        let h = self.out_proj.forward(ctx, &o, Some(h))?;
        let x = self.layer_norm2.forward(ctx, &h)?;
        let f = activation::activation(ctx, &self.fc1.forward(ctx, &x, None)?, act)?;
        self.fc2.forward(ctx, &f, Some(&h))
    }
}

/// Which transformers class a text encoder is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClipKind {
    /// `CLIPTextModel` (SD-XL's `text_encoder`, CLIP ViT-L): no projection.
    TextModel,
    /// `CLIPTextModelWithProjection` (SD-XL's `text_encoder_2`, OpenCLIP bigG): with
    /// `text_projection`.
    WithProjection,
}

/// What [`ClipTextModel::forward`] computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClipOutputs {
    /// The penultimate layer's states only (the last layer is skipped).
    Penultimate,
    /// Those and the pooled projection (a with-projection model's last layer, final norm and
    /// `text_projection` at the EOS token).
    WithPooled,
}

/// What SD-XL takes from a text encoder.
pub struct ClipOutput {
    /// `hidden_states[-2]`: the output of the penultimate layer, before the final layer norm,
    /// `[B, L, C]`.
    pub penultimate: Tensor,
    /// Final-layer-normed hidden state at the first EOS token, projected: `[B, projection_dim]`
    /// (with-projection models when asked).
    pub pooled: Option<Tensor>,
}

/// Prefixes under which a saved CLIP text model holds its text tower (`embeddings.*`,
/// `encoder.layers.*`, `final_layer_norm.*`): `text_model.` (both classes in transformers 4.x
/// to 5.5, `CLIPTextModelWithProjection` in later ones too) or none (`CLIPTextModel` from
/// transformers 5.6 on). The projection is `text_projection.weight` in every layout
/// (tests/fixtures/clip_layouts/README.md).
pub const TEXT_MODEL_PREFIXES: [&str; 2] = ["text_model.", ""];

/// The tensor whose presence tells the layouts of [`TEXT_MODEL_PREFIXES`] apart.
const LAYOUT_PROBE: &str = "embeddings.token_embedding.weight";

/// The text-tower prefix `store` uses (one of [`TEXT_MODEL_PREFIXES`]); an error naming the
/// expected tensor and some of the stored names when none or several match.
pub fn text_model_prefix(store: &WeightStore) -> Result<&'static str> {
    let found: Vec<&'static str> = TEXT_MODEL_PREFIXES
        .into_iter()
        .filter(|p| store.contains(&format!("{p}{LAYOUT_PROBE}")))
        .collect();
    let expected = || {
        TEXT_MODEL_PREFIXES
            .iter()
            .map(|p| format!("'{p}{LAYOUT_PROBE}'"))
            .collect::<Vec<_>>()
            .join(" or ")
    };
    match found.as_slice() {
        [p] => Ok(p),
        [] => {
            let names: Vec<&str> = store.names().take(5).collect();
            Err(Error::Invalid(format!(
                "not a CLIP text model in a known layout: no {} (the transformers layouts with and without the 'text_model.' prefix); the file has {} tensors{}{}",
                expected(),
                store.names().count(),
                if names.is_empty() { "" } else { ", e.g. " },
                names.join(", ")
            )))
        }
        _ => Err(Error::Invalid(format!(
            "ambiguous CLIP text model layout: the file has both {}",
            expected().replace(" or ", " and ")
        ))),
    }
}

/// `CLIPTextModel` / `CLIPTextModelWithProjection`.
pub struct ClipTextModel {
    /// The configuration the model was built from.
    pub config: ClipTextConfig,
    /// `embeddings.token_embedding.weight`, `[vocab_size, C]`.
    pub token_embedding: Tensor,
    /// `embeddings.position_embedding.weight`, `[max_position_embeddings, C]`.
    pub position_embedding: Tensor,
    /// `encoder.layers`, `num_hidden_layers` of them.
    pub layers: Vec<ClipEncoderLayer>,
    /// `final_layer_norm`, applied after the last layer.
    pub final_layer_norm: LayerNorm,
    /// `text_projection`: `C -> projection_dim`, no bias; `Some` only for
    /// `CLIPTextModelWithProjection`.
    pub text_projection: Option<Linear>,
    act: Activation,
}

impl ClipTextModel {
    /// Loads a transformers text encoder folder (`config.json` and `model.safetensors`, its
    /// `.fp16` variant, preferred for f16, or a sharded index) in any layout of
    /// [`TEXT_MODEL_PREFIXES`]; `kind` says which class it is. Errors
    /// name the folder.
    pub fn load(ctx: &GpuContext, dir: &Path, dtype: DType, kind: ClipKind) -> Result<Self> {
        let cfg = ClipTextConfig::from_file(dir)?;
        let store = WeightStore::open_diffusers(dir, "model", dtype == DType::F16)?;
        let what = |e: Error| Error::Invalid(format!("{}: {e}", dir.display()));
        let mut l = WeightLoader::new(ctx, &store, dtype);
        let model = Self::build(&cfg, &mut l, kind).map_err(what)?;
        l.finish().map_err(what)?;
        Ok(model)
    }

    /// Builds the model from `l` (transformers names, under the `text_model.` prefix or without
    /// it: whichever the store holds, see [`text_model_prefix`]); `kind` says which class
    /// `CLIPTextModelWithProjection` (SD-XL's `text_encoder_2`). Check `l.finish()` before use.
    pub fn build(cfg: &ClipTextConfig, l: &mut WeightLoader, kind: ClipKind) -> Result<Self> {
        let projection = match (kind == ClipKind::WithProjection, cfg.projection_dim) {
            (false, _) => None,
            (true, Some(p)) => Some(p),
            (true, None) => {
                return Err(Error::Invalid(
                    "CLIP config: a with-projection text model needs 'projection_dim'".into(),
                ))
            }
        };
        let act = cfg.activation()?;
        let d = cfg.hidden_size;
        // Planning and synthetic loaders have no file: transformers' canonical names.
        let root = match l.store() {
            Some(store) => text_model_prefix(store)?,
            None => TEXT_MODEL_PREFIXES[0],
        };
        // Older exports carry transformers' position_ids buffer: not a weight.
        l.ignore_prefix(&format!("{root}embeddings.position_ids"));
        Ok(ClipTextModel {
            token_embedding: l.get(
                &format!("{root}embeddings.token_embedding.weight"),
                &[cfg.vocab_size, d],
            ),
            position_embedding: l.get(
                &format!("{root}embeddings.position_embedding.weight"),
                &[cfg.max_position_embeddings, d],
            ),
            layers: (0..cfg.num_hidden_layers)
                .map(|i| ClipEncoderLayer::load(l, &format!("{root}encoder.layers.{i}"), cfg))
                .collect(),
            final_layer_norm: LayerNorm::load(
                l,
                &format!("{root}final_layer_norm"),
                d,
                cfg.layer_norm_eps as f32,
            ),
            text_projection: projection.map(|p| Linear::load(l, "text_projection", d, p, false)),
            config: cfg.clone(),
            act,
        })
    }

    /// Encodes token ids `[B, L]` (row-major). With [`ClipOutputs::WithPooled`], also the
    /// pooled projection (skipped work otherwise: the last layer only feeds it).
    pub fn forward(
        &self,
        ctx: &GpuContext,
        ids: &[u32],
        batch: usize,
        outputs: ClipOutputs,
    ) -> Result<ClipOutput> {
        let (mut h, len) = self.embed(ctx, ids, batch)?;
        let d = self.config.hidden_size;
        let n = self.layers.len();
        let heads = self.config.num_attention_heads;
        for layer in &self.layers[..n - 1] {
            h = layer.forward(ctx, &h, heads, self.act)?;
        }
        let penultimate = h.clone();
        let pooled = match (&self.text_projection, outputs) {
            (Some(proj), ClipOutputs::WithPooled) => {
                let last = self.layers[n - 1].forward(ctx, &h, heads, self.act)?;
                let normed = self.final_layer_norm.forward(ctx, &last)?;
                // The first occurrence of the highest id (EOS = 49407), as transformers' argmax.
                let eos: Vec<u32> = ids
                    .chunks(len)
                    .map(|row| {
                        let max = *row.iter().max().expect("len > 0");
                        row.iter()
                            .position(|&t| t == max)
                            .expect("max is in the row") as u32
                    })
                    .collect();
                let rows =
                    gather::gather_rows(ctx, &normed, &Tensor::from_u32(ctx, &eos, &[batch, 1])?)?;
                Some(proj.forward(ctx, &rows.reshape(&[batch, d])?, None)?)
            }
            _ => None,
        };
        Ok(ClipOutput {
            penultimate,
            pooled,
        })
    }

    /// transformers' `last_hidden_state` of token ids `[B, L]`: every layer, then the final
    /// layer norm, `[B, L, C]`. SD-XL does not use it; it checks the last layer's and the final
    /// norm's weights of `CLIPTextModel`, which [`forward`](Self::forward) never reads.
    pub fn last_hidden_state(&self, ctx: &GpuContext, ids: &[u32], batch: usize) -> Result<Tensor> {
        let (mut h, _) = self.embed(ctx, ids, batch)?;
        for layer in &self.layers {
            h = layer.forward(ctx, &h, self.config.num_attention_heads, self.act)?;
        }
        self.final_layer_norm.forward(ctx, &h)
    }

    /// Checks the ids and returns the token plus position embeddings `[B, L, C]` and `L`.
    fn embed(&self, ctx: &GpuContext, ids: &[u32], batch: usize) -> Result<(Tensor, usize)> {
        let cfg = &self.config;
        let d = cfg.hidden_size;
        if batch == 0 || ids.len() % batch != 0 {
            return Err(Error::shape(
                "clip",
                format!("{} token ids for batch {batch}", ids.len()),
            ));
        }
        let len = ids.len() / batch;
        if len == 0 || len > cfg.max_position_embeddings {
            return Err(Error::shape(
                "clip",
                format!(
                    "sequence length {len} outside 1..={}",
                    cfg.max_position_embeddings
                ),
            ));
        }
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= cfg.vocab_size) {
            return Err(Error::Invalid(format!(
                "token id {bad} is outside the vocabulary ({} entries)",
                cfg.vocab_size
            )));
        }
        let idx = Tensor::from_u32(ctx, ids, &[1, batch * len])?;
        let tok = gather::gather_rows(
            ctx,
            &self.token_embedding.reshape(&[1, cfg.vocab_size, d])?,
            &idx,
        )?;
        let pos_idx: Vec<u32> = (0..len as u32).collect();
        let pos = gather::gather_rows(
            ctx,
            &self
                .position_embedding
                .reshape(&[1, cfg.max_position_embeddings, d])?,
            &Tensor::from_u32(ctx, &pos_idx, &[1, len])?,
        )?;
        let h = elementwise::add(ctx, &tok.reshape(&[batch, len, d])?, &pos)?;
        Ok((h, len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The demo model's text encoder config with `field` set to `value`.
    fn config_with(field: &str, value: &str) -> Result<ClipTextConfig> {
        let mut v: serde_json::Value =
            serde_json::from_str(crate::model::demo::TEXT_ENCODER.config).unwrap();
        v[field] = serde_json::from_str(value).unwrap();
        ClipTextConfig::from_json(&v.to_string(), "text_encoder/config.json")
    }

    #[test]
    fn configs_that_cannot_run_are_errors_not_panics() {
        config_with("num_hidden_layers", "3").unwrap();
        let e = config_with("num_hidden_layers", "1")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("num_hidden_layers") && e.contains("penultimate"),
            "{e}"
        );
        let e = config_with("num_attention_heads", "0")
            .unwrap_err()
            .to_string();
        assert!(e.contains("num_attention_heads"), "{e}");
        let e = config_with("hidden_act", "\"relu\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("hidden_act"), "{e}");
    }
}
