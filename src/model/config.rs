//! `UNet2DConditionModel` configuration, parsed from a diffusers `unet/config.json`.
//!
//! Only the SD-XL family is supported: the checks below refuse any other setting with a
//! message naming the field, instead of running a model we would compute wrongly.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

/// A config value that diffusers accepts as a number or a per-block list.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum PerBlock<T> {
    /// One value for every block.
    One(T),
    /// One value per block, in down-block order.
    Each(Vec<T>),
}

impl<T: Clone> PerBlock<T> {
    fn expand(&self, n: usize, field: &str) -> Result<Vec<T>> {
        match self {
            PerBlock::One(v) => Ok(vec![v.clone(); n]),
            PerBlock::Each(v) if v.len() == n => Ok(v.clone()),
            PerBlock::Each(v) => Err(Error::Invalid(format!(
                "unet config: '{field}' has {} entries but there are {n} blocks",
                v.len()
            ))),
        }
    }
}

/// The raw `config.json` fields we read (others are ignored only if harmless; see `validate`).
#[derive(Clone, Debug, Deserialize)]
#[allow(missing_docs)]
pub struct RawUNetConfig {
    #[serde(default = "d_channels")]
    pub in_channels: usize,
    #[serde(default = "d_channels")]
    pub out_channels: usize,
    #[serde(default)]
    pub center_input_sample: bool,
    #[serde(default = "d_true")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f64,
    pub down_block_types: Vec<String>,
    #[serde(default = "d_mid")]
    pub mid_block_type: Option<String>,
    pub up_block_types: Vec<String>,
    #[serde(default)]
    pub only_cross_attention: PerBlockBool,
    pub block_out_channels: Vec<usize>,
    #[serde(default = "d_layers")]
    pub layers_per_block: PerBlock<usize>,
    #[serde(default = "d_one_f")]
    pub downsample_padding: f64,
    #[serde(default = "d_one_f")]
    pub mid_block_scale_factor: f64,
    #[serde(default = "d_act")]
    pub act_fn: String,
    #[serde(default = "d_groups")]
    pub norm_num_groups: Option<usize>,
    #[serde(default = "d_eps")]
    pub norm_eps: f64,
    pub cross_attention_dim: PerBlock<usize>,
    #[serde(default = "d_one")]
    pub transformer_layers_per_block: PerBlock<usize>,
    #[serde(default)]
    pub reverse_transformer_layers_per_block: Option<serde_json::Value>,
    #[serde(default)]
    pub encoder_hid_dim: Option<serde_json::Value>,
    #[serde(default)]
    pub encoder_hid_dim_type: Option<serde_json::Value>,
    #[serde(default = "d_head_dim")]
    pub attention_head_dim: PerBlock<usize>,
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock<usize>>,
    #[serde(default)]
    pub dual_cross_attention: bool,
    #[serde(default)]
    pub use_linear_projection: bool,
    #[serde(default)]
    pub class_embed_type: Option<serde_json::Value>,
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    #[serde(default)]
    pub addition_time_embed_dim: Option<usize>,
    #[serde(default)]
    pub num_class_embeds: Option<serde_json::Value>,
    #[serde(default)]
    pub upcast_attention: Option<bool>,
    #[serde(default = "d_shift")]
    pub resnet_time_scale_shift: String,
    #[serde(default)]
    pub resnet_skip_time_act: bool,
    #[serde(default = "d_one_f")]
    pub resnet_out_scale_factor: f64,
    #[serde(default = "d_positional")]
    pub time_embedding_type: String,
    #[serde(default)]
    pub time_embedding_dim: Option<serde_json::Value>,
    #[serde(default)]
    pub time_embedding_act_fn: Option<serde_json::Value>,
    #[serde(default)]
    pub timestep_post_act: Option<serde_json::Value>,
    #[serde(default)]
    pub time_cond_proj_dim: Option<serde_json::Value>,
    #[serde(default = "d_kernel")]
    pub conv_in_kernel: usize,
    #[serde(default = "d_kernel")]
    pub conv_out_kernel: usize,
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<usize>,
    #[serde(default)]
    pub attention_type: Option<String>,
    #[serde(default)]
    pub class_embeddings_concat: bool,
    #[serde(default)]
    pub mid_block_only_cross_attention: Option<serde_json::Value>,
    #[serde(default)]
    pub cross_attention_norm: Option<serde_json::Value>,
    #[serde(default)]
    pub addition_embed_type_num_heads: Option<usize>,
    #[serde(default)]
    pub sample_size: Option<serde_json::Value>,
}

/// `only_cross_attention` may be a bool or a per-block list of bools.
pub type PerBlockBool = PerBlock<bool>;

impl Default for PerBlock<bool> {
    fn default() -> Self {
        PerBlock::One(false)
    }
}

fn d_channels() -> usize {
    4
}
fn d_true() -> bool {
    true
}
fn d_mid() -> Option<String> {
    Some("UNetMidBlock2DCrossAttn".into())
}
fn d_layers() -> PerBlock<usize> {
    PerBlock::One(2)
}
fn d_one() -> PerBlock<usize> {
    PerBlock::One(1)
}
fn d_one_f() -> f64 {
    1.0
}
fn d_act() -> String {
    "silu".into()
}
fn d_groups() -> Option<usize> {
    Some(32)
}
fn d_eps() -> f64 {
    1e-5
}
fn d_head_dim() -> PerBlock<usize> {
    PerBlock::One(8)
}
fn d_shift() -> String {
    "default".into()
}
fn d_positional() -> String {
    "positional".into()
}
fn d_kernel() -> usize {
    3
}

/// Kind of a down block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DownKind {
    /// `DownBlock2D`: resnets only.
    Plain,
    /// `CrossAttnDownBlock2D`: resnets each followed by a `Transformer2DModel`.
    CrossAttn,
}

/// Kind of an up block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpKind {
    /// `UpBlock2D`: resnets only.
    Plain,
    /// `CrossAttnUpBlock2D`: resnets each followed by a `Transformer2DModel`.
    CrossAttn,
}

/// A validated SD-XL-family UNet configuration, with per-block lists expanded.
#[derive(Clone, Debug, PartialEq)]
pub struct UNetConfig {
    /// Latent channels in (`in_channels`; 4).
    pub in_channels: usize,
    /// Latent channels out (`out_channels`; 4).
    pub out_channels: usize,
    /// Channels of each level, in down-block order (`block_out_channels`).
    pub block_out_channels: Vec<usize>,
    /// Kind of each down block (`down_block_types`).
    pub down_blocks: Vec<DownKind>,
    /// Kind of each up block, in up-block order (`up_block_types`).
    pub up_blocks: Vec<UpKind>,
    /// Resnets per down block (up blocks have one more).
    pub layers_per_block: Vec<usize>,
    /// `BasicTransformerBlock`s per down block's `Transformer2DModel`.
    pub transformer_layers_per_block: Vec<usize>,
    /// Same for the up blocks, in up-block order.
    pub reverse_transformer_layers_per_block: Vec<usize>,
    /// Attention heads per down block (diffusers: `num_attention_heads or attention_head_dim`).
    pub heads: Vec<usize>,
    /// Width of the text embeddings the cross-attention reads (`cross_attention_dim`; one
    /// value for all blocks).
    pub cross_attention_dim: usize,
    /// Groups of every `GroupNorm` (`norm_num_groups`).
    pub norm_num_groups: usize,
    /// Epsilon of every `GroupNorm` (`norm_eps`).
    pub norm_eps: f32,
    /// Sinusoidal timestep embedding order: cosines first when set (`flip_sin_to_cos`).
    pub flip_sin_to_cos: bool,
    /// `downscale_freq_shift` of the sinusoidal timestep embedding (`freq_shift`).
    pub freq_shift: f32,
    /// Width of the sinusoidal embedding of each of the 6 time ids (`addition_time_embed_dim`).
    pub addition_time_embed_dim: usize,
    /// Input width of `add_embedding`: the pooled text embedding and the 6 embedded time ids
    /// (`projection_class_embeddings_input_dim`).
    pub projection_class_embeddings_input_dim: usize,
    /// Padding of the downsampling convolutions (`downsample_padding`; always 1).
    pub downsample_padding: usize,
    /// Latent size the model was trained at (`sample_size`; 128 for SD-XL, whose images are
    /// 1024 px). Only the default image size depends on it.
    pub sample_size: usize,
}

impl UNetConfig {
    /// SD-XL base 1.0 (stabilityai/stable-diffusion-xl-base-1.0, unet/config.json).
    pub fn sdxl_base() -> Self {
        UNetConfig {
            in_channels: 4,
            out_channels: 4,
            block_out_channels: vec![320, 640, 1280],
            down_blocks: vec![DownKind::Plain, DownKind::CrossAttn, DownKind::CrossAttn],
            up_blocks: vec![UpKind::CrossAttn, UpKind::CrossAttn, UpKind::Plain],
            layers_per_block: vec![2, 2, 2],
            transformer_layers_per_block: vec![1, 2, 10],
            reverse_transformer_layers_per_block: vec![10, 2, 1],
            heads: vec![5, 10, 20],
            cross_attention_dim: 2048,
            norm_num_groups: 32,
            norm_eps: 1e-5,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            addition_time_embed_dim: 256,
            projection_class_embeddings_input_dim: 2816,
            downsample_padding: 1,
            sample_size: 128,
        }
    }

    /// Reads and validates `path` (a `config.json` file, or a folder holding one).
    pub fn from_file(path: &Path) -> Result<Self> {
        let (file, raw): (_, RawUNetConfig) =
            super::read_config(path, "a UNet2DConditionModel config")?;
        raw.validate()
            .map_err(|e| Error::Invalid(format!("{}: {e}", file.display())))
    }

    /// Parses and validates a config.json text.
    pub fn from_json(text: &str) -> Result<Self> {
        let raw: RawUNetConfig = serde_json::from_str(text)
            .map_err(|e| Error::Invalid(format!("unet config is not valid: {e}")))?;
        raw.validate()
    }

    /// Total spatial downsampling of the UNet (2^(levels - 1)).
    pub fn downsampling(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }

    /// Width of the time embedding (4 x the first block's channels).
    pub fn time_embed_dim(&self) -> usize {
        self.block_out_channels[0] * 4
    }

    /// Width of the pooled text embedding the added conditioning expects.
    pub fn text_embeds_dim(&self) -> usize {
        self.projection_class_embeddings_input_dim - 6 * self.addition_time_embed_dim
    }
}

fn unsupported(field: &str, value: impl std::fmt::Debug, want: &str) -> Error {
    Error::Invalid(format!(
        "unsupported unet config: '{field}' is {value:?}; atedm supports {want}"
    ))
}

impl RawUNetConfig {
    /// Checks every field that changes the computation and expands per-block lists.
    pub fn validate(self) -> Result<UNetConfig> {
        let n = self.block_out_channels.len();
        if n < 2 {
            return Err(unsupported(
                "block_out_channels",
                &self.block_out_channels,
                "2 or more levels",
            ));
        }
        if self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(Error::Invalid(format!(
                "unet config: {} down_block_types and {} up_block_types for {n} block_out_channels",
                self.down_block_types.len(),
                self.up_block_types.len()
            )));
        }
        let down_blocks = self
            .down_block_types
            .iter()
            .map(|t| match t.as_str() {
                "DownBlock2D" => Ok(DownKind::Plain),
                "CrossAttnDownBlock2D" => Ok(DownKind::CrossAttn),
                other => Err(unsupported(
                    "down_block_types",
                    other,
                    "DownBlock2D and CrossAttnDownBlock2D",
                )),
            })
            .collect::<Result<Vec<_>>>()?;
        let up_blocks = self
            .up_block_types
            .iter()
            .map(|t| match t.as_str() {
                "UpBlock2D" => Ok(UpKind::Plain),
                "CrossAttnUpBlock2D" => Ok(UpKind::CrossAttn),
                other => Err(unsupported(
                    "up_block_types",
                    other,
                    "UpBlock2D and CrossAttnUpBlock2D",
                )),
            })
            .collect::<Result<Vec<_>>>()?;
        if self.mid_block_type.as_deref() != Some("UNetMidBlock2DCrossAttn") {
            return Err(unsupported(
                "mid_block_type",
                &self.mid_block_type,
                "UNetMidBlock2DCrossAttn",
            ));
        }
        if self.act_fn != "silu" {
            return Err(unsupported("act_fn", &self.act_fn, "silu"));
        }
        if self.center_input_sample {
            return Err(unsupported("center_input_sample", true, "false"));
        }
        if self.only_cross_attention != PerBlock::One(false)
            && self.only_cross_attention != PerBlock::Each(vec![false; n])
        {
            return Err(unsupported(
                "only_cross_attention",
                &self.only_cross_attention,
                "false",
            ));
        }
        if self.dual_cross_attention {
            return Err(unsupported("dual_cross_attention", true, "false"));
        }
        if !self.use_linear_projection {
            return Err(unsupported(
                "use_linear_projection",
                false,
                "true (linear proj_in/proj_out, as SD-XL)",
            ));
        }
        if let Some(v) = &self.class_embed_type {
            if !v.is_null() {
                return Err(unsupported("class_embed_type", v, "null"));
            }
        }
        for (field, v) in [
            ("num_class_embeds", &self.num_class_embeds),
            ("encoder_hid_dim", &self.encoder_hid_dim),
            ("encoder_hid_dim_type", &self.encoder_hid_dim_type),
            ("time_embedding_dim", &self.time_embedding_dim),
            ("time_embedding_act_fn", &self.time_embedding_act_fn),
            ("timestep_post_act", &self.timestep_post_act),
            ("time_cond_proj_dim", &self.time_cond_proj_dim),
            ("cross_attention_norm", &self.cross_attention_norm),
        ] {
            if let Some(v) = v {
                if !v.is_null() {
                    return Err(unsupported(field, v, "null"));
                }
            }
        }
        if self.addition_embed_type.as_deref() != Some("text_time") {
            return Err(unsupported(
                "addition_embed_type",
                &self.addition_embed_type,
                "\"text_time\" (SD-XL)",
            ));
        }
        if self.resnet_time_scale_shift != "default" {
            return Err(unsupported(
                "resnet_time_scale_shift",
                &self.resnet_time_scale_shift,
                "\"default\"",
            ));
        }
        if self.resnet_skip_time_act {
            return Err(unsupported("resnet_skip_time_act", true, "false"));
        }
        if self.resnet_out_scale_factor != 1.0 {
            return Err(unsupported(
                "resnet_out_scale_factor",
                self.resnet_out_scale_factor,
                "1.0",
            ));
        }
        if self.mid_block_scale_factor != 1.0 {
            return Err(unsupported(
                "mid_block_scale_factor",
                self.mid_block_scale_factor,
                "1.0",
            ));
        }
        if self.time_embedding_type != "positional" {
            return Err(unsupported(
                "time_embedding_type",
                &self.time_embedding_type,
                "\"positional\"",
            ));
        }
        if self.conv_in_kernel != 3 || self.conv_out_kernel != 3 {
            return Err(unsupported(
                "conv_in_kernel/conv_out_kernel",
                (self.conv_in_kernel, self.conv_out_kernel),
                "3",
            ));
        }
        if self.downsample_padding != 1.0 {
            return Err(unsupported(
                "downsample_padding",
                self.downsample_padding,
                "1",
            ));
        }
        if self.class_embeddings_concat {
            return Err(unsupported("class_embeddings_concat", true, "false"));
        }
        if let Some(t) = &self.attention_type {
            if t != "default" {
                return Err(unsupported("attention_type", t, "\"default\""));
            }
        }
        if self
            .reverse_transformer_layers_per_block
            .as_ref()
            .is_some_and(|v| !v.is_null())
        {
            return Err(unsupported(
                "reverse_transformer_layers_per_block",
                &self.reverse_transformer_layers_per_block,
                "null (the reverse of transformer_layers_per_block)",
            ));
        }
        let cross_attention_dim = match &self.cross_attention_dim {
            PerBlock::One(v) => *v,
            PerBlock::Each(v) if !v.is_empty() && v.iter().all(|x| *x == v[0]) => v[0],
            other => {
                return Err(unsupported(
                    "cross_attention_dim",
                    other,
                    "one value for all blocks",
                ))
            }
        };
        let groups = self
            .norm_num_groups
            .ok_or_else(|| unsupported("norm_num_groups", "null", "a number"))?;
        if groups == 0 {
            return Err(unsupported("norm_num_groups", "0", "at least 1"));
        }
        let layers_per_block = self.layers_per_block.expand(n, "layers_per_block")?;
        let transformer_layers_per_block = self
            .transformer_layers_per_block
            .expand(n, "transformer_layers_per_block")?;
        let heads = self
            .num_attention_heads
            .as_ref()
            .unwrap_or(&self.attention_head_dim)
            .expand(n, "attention_head_dim")?;
        for (i, (&c, &h)) in self.block_out_channels.iter().zip(&heads).enumerate() {
            if c % groups != 0 {
                return Err(Error::Invalid(format!(
                    "unet config: block_out_channels[{i}] = {c} is not divisible by norm_num_groups = {groups}"
                )));
            }
            if down_blocks[i] == DownKind::CrossAttn && (h == 0 || c % h != 0) {
                return Err(Error::Invalid(format!(
                    "unet config: block_out_channels[{i}] = {c} is not divisible by its {h} attention heads"
                )));
            }
        }
        for i in 0..n {
            let down_attn = down_blocks[i] == DownKind::CrossAttn;
            let up_attn = up_blocks[n - 1 - i] == UpKind::CrossAttn;
            if down_attn != up_attn {
                return Err(Error::Invalid(format!(
                    "unet config: down block {i} and up block {} must both have attention or both not",
                    n - 1 - i
                )));
            }
        }
        let addition_time_embed_dim = self.addition_time_embed_dim.ok_or_else(|| {
            unsupported("addition_time_embed_dim", "null", "a number (text_time)")
        })?;
        let proj = self.projection_class_embeddings_input_dim.ok_or_else(|| {
            unsupported(
                "projection_class_embeddings_input_dim",
                "null",
                "a number (text_time)",
            )
        })?;
        if proj <= 6 * addition_time_embed_dim {
            return Err(Error::Invalid(format!(
                "unet config: projection_class_embeddings_input_dim = {proj} leaves no room for text embeds after 6 x {addition_time_embed_dim} time ids"
            )));
        }
        let mut reverse = transformer_layers_per_block.clone();
        reverse.reverse();
        // diffusers allows a number or [height, width]; a square default size needs one number.
        let sample_size = match &self.sample_size {
            None | Some(serde_json::Value::Null) => 128,
            Some(v) => v
                .as_u64()
                .or_else(|| {
                    v.as_array()
                        .and_then(|a| a.first())
                        .and_then(|x| x.as_u64())
                })
                .filter(|&n| n > 0)
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "unet config: 'sample_size' {v} is not a positive size"
                    ))
                })? as usize,
        };
        Ok(UNetConfig {
            in_channels: self.in_channels,
            out_channels: self.out_channels,
            block_out_channels: self.block_out_channels,
            down_blocks,
            up_blocks,
            layers_per_block,
            transformer_layers_per_block,
            reverse_transformer_layers_per_block: reverse,
            heads,
            cross_attention_dim,
            norm_num_groups: groups,
            norm_eps: self.norm_eps as f32,
            flip_sin_to_cos: self.flip_sin_to_cos,
            freq_shift: self.freq_shift as f32,
            addition_time_embed_dim,
            projection_class_embeddings_input_dim: proj,
            downsample_padding: 1,
            sample_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SD-XL base's config.json as published (stabilityai/stable-diffusion-xl-base-1.0).
    pub(crate) const SDXL_CONFIG: &str = r#"{
      "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.19.0.dev0",
      "act_fn": "silu", "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64,
      "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20],
      "block_out_channels": [320, 640, 1280], "center_input_sample": false,
      "class_embed_type": null, "class_embeddings_concat": false, "conv_in_kernel": 3,
      "conv_out_kernel": 3, "cross_attention_dim": 2048, "cross_attention_norm": null,
      "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
      "downsample_padding": 1, "dual_cross_attention": false, "encoder_hid_dim": null,
      "encoder_hid_dim_type": null, "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4,
      "layers_per_block": 2, "mid_block_only_cross_attention": null, "mid_block_scale_factor": 1,
      "mid_block_type": "UNetMidBlock2DCrossAttn", "norm_eps": 1e-05, "norm_num_groups": 32,
      "num_attention_heads": null, "num_class_embeds": null, "only_cross_attention": false,
      "out_channels": 4, "projection_class_embeddings_input_dim": 2816,
      "resnet_out_scale_factor": 1.0, "resnet_skip_time_act": false,
      "resnet_time_scale_shift": "default", "sample_size": 128, "time_cond_proj_dim": null,
      "time_embedding_act_fn": null, "time_embedding_dim": null,
      "time_embedding_type": "positional", "timestep_post_act": null,
      "transformer_layers_per_block": [1, 2, 10],
      "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
      "upcast_attention": null, "use_linear_projection": true
    }"#;

    #[test]
    fn parses_sdxl_base() {
        let c = UNetConfig::from_json(SDXL_CONFIG).unwrap();
        assert_eq!(c, UNetConfig::sdxl_base());
        assert_eq!(c.downsampling(), 4);
        assert_eq!(c.text_embeds_dim(), 1280);
        assert_eq!(c.time_embed_dim(), 1280);
    }

    #[test]
    fn refuses_unsupported_fields_by_name() {
        for (from, to, field) in [
            (
                "\"use_linear_projection\": true",
                "\"use_linear_projection\": false",
                "use_linear_projection",
            ),
            (
                "\"addition_embed_type\": \"text_time\"",
                "\"addition_embed_type\": \"text\"",
                "addition_embed_type",
            ),
            ("\"act_fn\": \"silu\"", "\"act_fn\": \"gelu\"", "act_fn"),
            (
                "\"class_embed_type\": null",
                "\"class_embed_type\": \"timestep\"",
                "class_embed_type",
            ),
            (
                "\"resnet_time_scale_shift\": \"default\"",
                "\"resnet_time_scale_shift\": \"scale_shift\"",
                "resnet_time_scale_shift",
            ),
            (
                "\"CrossAttnUpBlock2D\", \"UpBlock2D\"]",
                "\"CrossAttnUpBlock2D\", \"SimpleUpBlock\"]",
                "up_block_types",
            ),
            (
                "\"transformer_layers_per_block\": [1, 2, 10]",
                "\"transformer_layers_per_block\": [1, 2]",
                "transformer_layers_per_block",
            ),
            (
                "\"norm_num_groups\": 32",
                "\"norm_num_groups\": 7",
                "norm_num_groups",
            ),
            (
                "\"norm_num_groups\": 32",
                "\"norm_num_groups\": 0",
                "norm_num_groups",
            ),
        ] {
            let text = SDXL_CONFIG.replace(from, to);
            assert_ne!(text, SDXL_CONFIG, "{from}");
            let msg = UNetConfig::from_json(&text).unwrap_err().to_string();
            assert!(msg.contains(field), "{field}: {msg}");
        }
        let msg = UNetConfig::from_json("{\"in_channels\": 4}")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("down_block_types"), "{msg}");
    }

    #[test]
    fn num_attention_heads_overrides_attention_head_dim() {
        let text = SDXL_CONFIG.replace(
            "\"num_attention_heads\": null",
            "\"num_attention_heads\": [4, 8, 16]",
        );
        assert_eq!(UNetConfig::from_json(&text).unwrap().heads, vec![4, 8, 16]);
        let text = SDXL_CONFIG.replace(
            "\"attention_head_dim\": [5, 10, 20]",
            "\"attention_head_dim\": 10",
        );
        assert_eq!(
            UNetConfig::from_json(&text).unwrap().heads,
            vec![10, 10, 10]
        );
    }
}
