//! `AutoencoderKL` decoder (the decode path of SD-XL's VAE), diffusers module names.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::model::weights::WeightLoader;
use crate::nn::{Conv2d, GroupNorm, Linear};
use crate::ops::attention::{self, AttentionOptions, MAX_HEAD_DIM};
use crate::ops::{elementwise, layout, matmul, softmax};
use crate::tensor::{DType, Tensor};

/// `AutoencoderKL` config fields the decoder needs.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct VaeConfig {
    /// Channels of each level, full resolution first (the decoder walks them in reverse).
    pub block_out_channels: Vec<usize>,
    /// Resnets per encoder level; the decoder's up blocks have one more (default 1).
    #[serde(default = "d_layers")]
    pub layers_per_block: usize,
    /// Latent channels (default 4).
    #[serde(default = "d_latent")]
    pub latent_channels: usize,
    /// Image channels (default 3).
    #[serde(default = "d_out")]
    pub out_channels: usize,
    /// Groups of every `GroupNorm` (default 32); divides every entry of `block_out_channels`.
    #[serde(default = "d_groups")]
    pub norm_num_groups: usize,
    /// The latents are divided by it before decoding (default 0.18215; SD-XL 0.13025).
    #[serde(default = "d_scaling")]
    pub scaling_factor: f32,
    /// Latent shift; only absent or 0 is accepted.
    #[serde(default)]
    pub shift_factor: Option<f32>,
    /// Decoder up-block types; only `UpDecoderBlock2D` is accepted.
    #[serde(default)]
    pub up_block_types: Option<Vec<String>>,
    /// Whether the mid block has its self-attention (default true).
    #[serde(default = "d_true")]
    pub mid_block_add_attention: bool,
    /// Whether the 1x1 `post_quant_conv` runs before the decoder (default true).
    #[serde(default = "d_true")]
    pub use_post_quant_conv: bool,
    /// Whether the VAE must run in f32 (default true): the stock SD-XL VAE overflows in f16.
    #[serde(default = "d_true")]
    pub force_upcast: bool,
}

fn d_layers() -> usize {
    1
}
fn d_latent() -> usize {
    4
}
fn d_out() -> usize {
    3
}
fn d_groups() -> usize {
    32
}
fn d_scaling() -> f32 {
    0.18215
}
fn d_true() -> bool {
    true
}

impl VaeConfig {
    /// SD-XL base's VAE.
    pub fn sdxl() -> Self {
        VaeConfig {
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            latent_channels: 4,
            out_channels: 3,
            norm_num_groups: 32,
            scaling_factor: 0.13025,
            shift_factor: None,
            up_block_types: None,
            mid_block_add_attention: true,
            use_post_quant_conv: true,
            force_upcast: true,
        }
    }

    /// Reads and validates `config.json` (a file or a folder holding one).
    pub fn from_file(path: &Path) -> Result<Self> {
        let (file, cfg): (_, VaeConfig) = super::read_config(path, "an AutoencoderKL config")?;
        cfg.validate(&file.display().to_string())
    }

    /// Parses and validates a config.json text; `label` names its source in errors.
    pub fn from_json(text: &str, label: &str) -> Result<Self> {
        let cfg: VaeConfig = super::parse_config(text, label, "an AutoencoderKL config")?;
        cfg.validate(label)
    }

    fn validate(self, file: &str) -> Result<Self> {
        let cfg = self;
        if let Some(types) = &cfg.up_block_types {
            if let Some(t) = types.iter().find(|t| t.as_str() != "UpDecoderBlock2D") {
                return Err(Error::Invalid(format!(
                    "{}: unsupported 'up_block_types' entry \"{t}\"",
                    file
                )));
            }
        }
        if cfg.shift_factor.is_some_and(|s| s != 0.0) {
            return Err(Error::Invalid(format!(
                "{}: unsupported 'shift_factor' (SD-XL's VAE has none)",
                file
            )));
        }
        if cfg.norm_num_groups == 0
            || cfg
                .block_out_channels
                .iter()
                .any(|c| c % cfg.norm_num_groups != 0)
        {
            return Err(Error::Invalid(format!(
                "{}: block_out_channels not divisible by norm_num_groups",
                file
            )));
        }
        Ok(cfg)
    }

    /// Bytes of the largest activation the decoder holds for a `h x w` latent (one image):
    /// what must fit in one storage binding.
    pub fn largest_activation_bytes(&self, h: usize, w: usize, dtype: DType) -> u64 {
        let ch = &self.block_out_channels;
        let mut prev = *ch.last().expect("at least one block");
        let mut px = (h * w) as u64;
        let mut largest = prev as u64 * px;
        for i in 0..ch.len() {
            let out = ch[ch.len() - 1 - i];
            largest = largest.max(prev.max(out) as u64 * px);
            if i + 1 < ch.len() {
                px *= 4;
                largest = largest.max(out as u64 * px);
            }
            prev = out;
        }
        largest * dtype.size() as u64
    }

    /// Spatial upsampling of the decoder (8 for SD-XL).
    pub fn upsampling(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }
}

/// Decoder `ResnetBlock2D` (no time embedding).
pub struct VaeResnet {
    /// `norm1` (eps 1e-6) on the `Cin` input channels, followed by SiLU.
    pub norm1: GroupNorm,
    /// `conv1`: 3x3, `Cin -> Cout`.
    pub conv1: Conv2d,
    /// `norm2` (eps 1e-6) on `Cout` channels, followed by SiLU.
    pub norm2: GroupNorm,
    /// `conv2`: 3x3, `Cout -> Cout`; adds the shortcut.
    pub conv2: Conv2d,
    /// `conv_shortcut`: 1x1, `Cin -> Cout`, when the widths differ; otherwise the identity.
    pub conv_shortcut: Option<Conv2d>,
}

impl VaeResnet {
    fn load(l: &mut WeightLoader, p: &str, groups: usize, inp: usize, out: usize) -> Self {
        VaeResnet {
            norm1: GroupNorm::load(l, &format!("{p}.norm1"), inp, groups, 1e-6),
            conv1: Conv2d::load(l, &format!("{p}.conv1"), inp, out, 3, 1, 1),
            norm2: GroupNorm::load(l, &format!("{p}.norm2"), out, groups, 1e-6),
            conv2: Conv2d::load(l, &format!("{p}.conv2"), out, out, 3, 1, 1),
            conv_shortcut: (inp != out)
                .then(|| Conv2d::load(l, &format!("{p}.conv_shortcut"), inp, out, 1, 1, 0)),
        }
    }

    fn forward(&self, ctx: &GpuContext, x: &Tensor) -> Result<Tensor> {
        let h = self
            .conv1
            .forward(ctx, &self.norm1.forward_silu(ctx, x)?, None)?;
        let h = self.norm2.forward_silu(ctx, &h)?;
        let shortcut = match &self.conv_shortcut {
            Some(c) => c.forward(ctx, x, None)?,
            None => x.clone(),
        };
        self.conv2.forward(ctx, &h, Some(&shortcut))
    }
}

/// The mid block's single-head self-attention over all pixels.
pub struct VaeAttention {
    /// `group_norm` (eps 1e-6) on the input feature map.
    pub group_norm: GroupNorm,
    /// `to_q`: `C -> C`, with bias.
    pub to_q: Linear,
    /// `to_k`: `C -> C`, with bias.
    pub to_k: Linear,
    /// `to_v`: `C -> C`, with bias.
    pub to_v: Linear,
    /// `to_out.0`: `C -> C`, with bias; the input is added back after it.
    pub to_out: Linear,
}

/// Queries per chunk of the explicit (large head dim) attention path.
const QUERY_CHUNK: usize = 1024;

impl VaeAttention {
    fn load(l: &mut WeightLoader, p: &str, groups: usize, c: usize) -> Self {
        VaeAttention {
            group_norm: GroupNorm::load(l, &format!("{p}.group_norm"), c, groups, 1e-6),
            to_q: Linear::load(l, &format!("{p}.to_q"), c, c, true),
            to_k: Linear::load(l, &format!("{p}.to_k"), c, c, true),
            to_v: Linear::load(l, &format!("{p}.to_v"), c, c, true),
            to_out: Linear::load(l, &format!("{p}.to_out.0"), c, c, true),
        }
    }

    fn forward(&self, ctx: &GpuContext, x: &Tensor) -> Result<Tensor> {
        let s = x.shape();
        let (b, c, hw) = (s[0], s[1], s[2] * s[3]);
        let h = self.group_norm.forward(ctx, x)?;
        let h = layout::transpose_last2(ctx, &h.reshape(&[b, c, hw])?)?;
        let q = self.to_q.forward(ctx, &h, None)?;
        let k = self.to_k.forward(ctx, &h, None)?;
        let v = self.to_v.forward(ctx, &h, None)?;
        let o = if c <= MAX_HEAD_DIM {
            attention::attention(
                ctx,
                &q,
                &k,
                &v,
                &AttentionOptions {
                    heads: 1,
                    scale: None,
                    causal: false,
                },
            )?
        } else {
            explicit_attention(ctx, &q, &k, &v)?
        };
        let o = self.to_out.forward(ctx, &o, None)?;
        let o = layout::transpose_last2(ctx, &o)?.reshape(s)?;
        elementwise::add(ctx, &o, x)
    }
}

/// Single-head attention for head widths above the fused kernel's limit (SD-XL's VAE: 512):
/// softmax(Q K^T / sqrt(d)) V with explicit scores, over chunks of queries so the score
/// matrix stays within the adapter's binding limit.
fn explicit_attention(ctx: &GpuContext, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let (b, n, d) = (q.shape()[0], q.shape()[1], q.shape()[2]);
    let scale = 1.0 / (d as f32).sqrt();
    let mut parts = Vec::new();
    for start in (0..n).step_by(QUERY_CHUNK) {
        let len = QUERY_CHUNK.min(n - start);
        let qc = if len == n {
            q.clone()
        } else {
            let idx: Vec<u32> = (0..b)
                .flat_map(|_| (start..start + len).map(|i| i as u32))
                .collect();
            crate::ops::gather::gather_rows(ctx, q, &Tensor::from_u32(ctx, &idx, &[b, len])?)?
        };
        let scores = matmul::matmul(
            ctx,
            &qc,
            k,
            &matmul::MatmulOptions {
                trans_b: true,
                ..Default::default()
            },
        )?;
        let probs = softmax::softmax(ctx, &scores, scale)?;
        parts.push(matmul::matmul(ctx, &probs, v, &Default::default())?);
    }
    if parts.len() == 1 {
        return Ok(parts.pop().expect("one part"));
    }
    layout::concat(ctx, &parts.iter().collect::<Vec<_>>(), 1)
}

/// `AutoencoderKL`'s decode path: `post_quant_conv` and the `Decoder`.
pub struct VaeDecoder {
    /// The configuration the decoder was built from.
    pub config: VaeConfig,
    /// `post_quant_conv`: 1x1, `latent_channels -> latent_channels`, when
    /// [`VaeConfig::use_post_quant_conv`].
    pub post_quant_conv: Option<Conv2d>,
    /// `decoder.conv_in`: 3x3, `latent_channels ->` the last `block_out_channels` entry.
    pub conv_in: Conv2d,
    /// `decoder.mid_block.resnets.0` and `.1`.
    pub mid_resnets: [VaeResnet; 2],
    /// `decoder.mid_block.attentions.0`, between the two mid resnets, when
    /// [`VaeConfig::mid_block_add_attention`].
    pub mid_attention: Option<VaeAttention>,
    /// `decoder.up_blocks`, lowest resolution first: `layers_per_block + 1` resnets each, then
    /// `upsamplers.0.conv` (3x3 after a nearest 2x upsample) on every level but the last.
    pub up_blocks: Vec<(Vec<VaeResnet>, Option<Conv2d>)>,
    /// `decoder.conv_norm_out` (eps 1e-6) on `block_out_channels[0]` channels, followed by SiLU.
    pub conv_norm_out: GroupNorm,
    /// `decoder.conv_out`: 3x3, `block_out_channels[0] -> out_channels`.
    pub conv_out: Conv2d,
}

impl VaeDecoder {
    /// Builds the decoder from `l` (diffusers names); the encoder's tensors are not loaded
    /// (mark them with [`WeightLoader::ignore_prefix`]). Check `l.finish()` before use.
    pub fn build(cfg: &VaeConfig, l: &mut WeightLoader) -> Self {
        let ch = &cfg.block_out_channels;
        let g = cfg.norm_num_groups;
        let top = *ch.last().expect("at least one block");
        let lat = cfg.latent_channels;
        let post_quant_conv = cfg
            .use_post_quant_conv
            .then(|| Conv2d::load(l, "post_quant_conv", lat, lat, 1, 1, 0));
        let conv_in = Conv2d::load(l, "decoder.conv_in", lat, top, 3, 1, 1);
        let mid_resnets = [
            VaeResnet::load(l, "decoder.mid_block.resnets.0", g, top, top),
            VaeResnet::load(l, "decoder.mid_block.resnets.1", g, top, top),
        ];
        let mid_attention = cfg
            .mid_block_add_attention
            .then(|| VaeAttention::load(l, "decoder.mid_block.attentions.0", g, top));
        let mut up_blocks = Vec::new();
        let mut prev = top;
        for i in 0..ch.len() {
            let out = ch[ch.len() - 1 - i];
            let resnets = (0..cfg.layers_per_block + 1)
                .map(|j| {
                    VaeResnet::load(
                        l,
                        &format!("decoder.up_blocks.{i}.resnets.{j}"),
                        g,
                        if j == 0 { prev } else { out },
                        out,
                    )
                })
                .collect();
            let up = (i + 1 < ch.len()).then(|| {
                Conv2d::load(
                    l,
                    &format!("decoder.up_blocks.{i}.upsamplers.0.conv"),
                    out,
                    out,
                    3,
                    1,
                    1,
                )
            });
            up_blocks.push((resnets, up));
            prev = out;
        }
        VaeDecoder {
            config: cfg.clone(),
            post_quant_conv,
            conv_in,
            mid_resnets,
            mid_attention,
            up_blocks,
            conv_norm_out: GroupNorm::load(l, "decoder.conv_norm_out", ch[0], g, 1e-6),
            conv_out: Conv2d::load(l, "decoder.conv_out", ch[0], cfg.out_channels, 3, 1, 1),
        }
    }

    /// Decodes host latents `[1, C, h, w]` to a host image `[1, 3, 8h, 8w]`, whole when the
    /// largest activation fits the adapter's storage-binding limit, else in overlapping tiles
    /// blended as diffusers' `AutoencoderKL.tiled_decode` does (tiles of the largest latent size
    /// that fits, overlap factor 0.25). Tiling normalizes each tile on its own, so a tiled image
    /// differs slightly from a whole decode, as in diffusers.
    pub fn decode_host(
        &self,
        ctx: &GpuContext,
        latents: &[f32],
        shape: [usize; 4],
        dtype: DType,
    ) -> Result<Vec<f32>> {
        let (h, w) = (shape[2], shape[3]);
        let limit = ctx.limits().max_storage_buffer_binding_size;
        if self.config.largest_activation_bytes(h, w, dtype) <= limit {
            let z = Tensor::from_f32(ctx, latents, &shape, dtype)?;
            return self.decode(ctx, &z)?.to_f32_vec(ctx);
        }
        // Multiples of 4 keep diffusers' tile stride (0.75 tile) equal to its crop size.
        let mut tile = h.max(w).div_ceil(4) * 4;
        while tile > 4 && self.config.largest_activation_bytes(tile, tile, dtype) > limit {
            tile -= 4;
        }
        if self.config.largest_activation_bytes(tile, tile, dtype) > limit {
            return Err(Error::TooLarge {
                op: "vae",
                tensor: "the smallest decoder tile".into(),
                bytes: self.config.largest_activation_bytes(tile, tile, dtype),
                limit_name: "max_storage_buffer_binding_size",
                limit,
            });
        }
        self.decode_tiled(ctx, latents, shape, tile, dtype)
    }

    /// diffusers' tiled decode with latent tiles of `tile` and overlap factor 0.25.
    pub fn decode_tiled(
        &self,
        ctx: &GpuContext,
        latents: &[f32],
        shape: [usize; 4],
        tile: usize,
        dtype: DType,
    ) -> Result<Vec<f32>> {
        let [b, c, h, w] = shape;
        if b != 1 || tile == 0 || tile % 4 != 0 {
            return Err(Error::shape("vae", format!("tiled decoding takes one image and a tile that is a multiple of 4, got {shape:?}, tile {tile}")));
        }
        let up = self.config.upsampling();
        // diffusers: overlap_size = int(tile * (1 - 0.25)), blend_extent = int(sample_tile * 0.25).
        let overlap = ((tile as f64 * 0.75) as usize).max(1);
        let sample_tile = tile * up;
        let blend = sample_tile / 4;
        let row_limit = sample_tile - blend;
        // Decode every tile (host copies: a tile image is small).
        let mut rows: Vec<Vec<(usize, usize, Vec<f32>)>> = Vec::new();
        for i in (0..h).step_by(overlap) {
            let mut row = Vec::new();
            for j in (0..w).step_by(overlap) {
                let (th, tw) = (tile.min(h - i), tile.min(w - j));
                let mut t = Vec::with_capacity(c * th * tw);
                for ch in 0..c {
                    for y in i..i + th {
                        let base = (ch * h + y) * w;
                        t.extend_from_slice(&latents[base + j..base + j + tw]);
                    }
                }
                let z = Tensor::from_f32(ctx, &t, &[1, c, th, tw], dtype)?;
                row.push((th * up, tw * up, self.decode(ctx, &z)?.to_f32_vec(ctx)?));
            }
            rows.push(row);
        }
        let oc = self.config.out_channels;
        let (out_h, out_w) = (h * up, w * up);
        let mut out = vec![0f32; oc * out_h * out_w];
        // As diffusers: blend each tile in place with its (already blended) upper and left
        // neighbours, in row-major order, then keep its top-left row_limit x row_limit.
        for ri in 0..rows.len() {
            for ci in 0..rows[ri].len() {
                let (th, tw) = (rows[ri][ci].0, rows[ri][ci].1);
                let mut cur = std::mem::take(&mut rows[ri][ci].2);
                if ri > 0 {
                    let (ah, _, ref above) = rows[ri - 1][ci];
                    let ext = blend.min(ah).min(th);
                    for ch in 0..oc {
                        for y in 0..ext {
                            let f = y as f32 / ext as f32;
                            for x in 0..tw {
                                let a = above[(ch * ah + ah - ext + y) * tw + x];
                                let v = &mut cur[(ch * th + y) * tw + x];
                                *v = a * (1.0 - f) + *v * f;
                            }
                        }
                    }
                }
                if ci > 0 {
                    let (_, lw, ref left) = rows[ri][ci - 1];
                    let ext = blend.min(lw).min(tw);
                    for ch in 0..oc {
                        for y in 0..th {
                            for x in 0..ext {
                                let f = x as f32 / ext as f32;
                                let a = left[(ch * th + y) * lw + lw - ext + x];
                                let v = &mut cur[(ch * th + y) * tw + x];
                                *v = a * (1.0 - f) + *v * f;
                            }
                        }
                    }
                }
                let (y0, x0) = (ri * overlap * up, ci * overlap * up);
                for ch in 0..oc {
                    for y in 0..th.min(row_limit).min(out_h - y0) {
                        for x in 0..tw.min(row_limit).min(out_w - x0) {
                            out[(ch * out_h + y0 + y) * out_w + x0 + x] =
                                cur[(ch * th + y) * tw + x];
                        }
                    }
                }
                rows[ri][ci].2 = cur;
            }
        }
        Ok(out)
    }

    /// Decodes latents `[B, latent_channels, h, w]` (as the denoiser produces them, before the
    /// division by the scaling factor) to images `[B, 3, 8h, 8w]` in about -1..1 (unclamped).
    pub fn decode(&self, ctx: &GpuContext, latents: &Tensor) -> Result<Tensor> {
        let s = latents.shape();
        if s.len() != 4 || s[1] != self.config.latent_channels {
            return Err(Error::shape(
                "vae",
                format!(
                    "latents must be [B, {}, h, w], got {s:?}",
                    self.config.latent_channels
                ),
            ));
        }
        let z = elementwise::scale(ctx, latents, 1.0 / self.config.scaling_factor, 0.0)?;
        let z = match &self.post_quant_conv {
            Some(c) => c.forward(ctx, &z, None)?,
            None => z,
        };
        let mut h = self.conv_in.forward(ctx, &z, None)?;
        h = self.mid_resnets[0].forward(ctx, &h)?;
        if let Some(a) = &self.mid_attention {
            h = a.forward(ctx, &h)?;
        }
        h = self.mid_resnets[1].forward(ctx, &h)?;
        for (resnets, up) in &self.up_blocks {
            for r in resnets {
                h = r.forward(ctx, &h)?;
            }
            if let Some(conv) = up {
                h = conv.forward(ctx, &layout::upsample_nearest2x(ctx, &h)?, None)?;
            }
        }
        let h = self.conv_norm_out.forward_silu(ctx, &h)?;
        self.conv_out.forward(ctx, &h, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_groups_are_an_error_not_a_division_by_zero() {
        let mut v: serde_json::Value =
            serde_json::from_str(crate::model::demo::VAE.config).unwrap();
        VaeConfig::from_json(&v.to_string(), "vae/config.json").unwrap();
        v["norm_num_groups"] = 0.into();
        let e = VaeConfig::from_json(&v.to_string(), "vae/config.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("norm_num_groups"), "{e}");
    }
}
