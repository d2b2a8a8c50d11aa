//! Multi-head scaled dot-product attention (flash style) and the head-mean attention map that
//! AT-EDM prunes with.
//!
//! Layout: `q` is `[B, Nq, H*D]`, `k` and `v` are `[B, Nk, H*D]`, token-major with the heads
//! interleaved as in diffusers' reshape (channel = `head * D + c`). The output is `[B, Nq, H*D]`.
//!
//! The flash kernel runs one workgroup per (batch, head, tile of 64 queries); each invocation
//! keeps its query row and a `D`-float accumulator and runs an online softmax over key tiles
//! staged in workgroup memory (16 KiB in all), so no `Nq x Nk` buffer is ever stored.
//! The map pass ([`attention_with_map`]) recomputes `q.k` per head from the row
//! log-sum-exp of the flash pass and accumulates the head mean tile by tile.

use bytemuck::{Pod, Zeroable};

use super::{dim32, expect_rank, float_dtype};
use crate::error::{Error, Result};
use crate::gpu::{GpuContext, Kernel};
use crate::tensor::{DType, Tensor};

crate::shader_family!(pub SHADER, "attention");
const FLASH: Kernel = SHADER.kernel("flash_attention");
const FLASH_Q8: Kernel = SHADER.kernel("flash_attention_q8");
const FLASH_D64: Kernel = SHADER.kernel("flash_attention_d64");
const FLASH_D64_Q8: Kernel = SHADER.kernel("flash_attention_d64_q8");
const FLASH_D64_LSE: Kernel = SHADER.kernel("flash_attention_d64_lse");
const FLASH_LSE: Kernel = SHADER.kernel("flash_attention_lse");
const MAP: Kernel = SHADER.kernel("head_mean_map");
const MAP_REG8: Kernel = SHADER.kernel("head_mean_map_reg8");

/// Which kernel computes the head-mean map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MapKernel {
    /// `Registers8` on CPU adapters (lavapipe), `Staged` on GPUs.
    #[default]
    Auto,
    /// 16x16 map tiles, each head's q and k rows staged in workgroup memory.
    Staged,
    /// 64x64 map tiles of 8x8 register blocks, q and k read from storage: 4 multiply-adds per
    /// load (the staged pass makes 2 workgroup loads per multiply-add).
    Registers8,
}

/// Largest head dimension the kernels support.
pub const MAX_HEAD_DIM: usize = 128;
/// Queries per flash workgroup (shader constant `TQ`).
const TQ: usize = 64;
/// Queries per workgroup of `flash_attention_q8` (shader constant `TQ_SMALL`).
const TQ_SMALL: usize = 8;

/// Queries per workgroup of the flash pass for `nq` queries: on CPU adapters 8 when that pads
/// `nq` less than 64-query tiles (a pruned layer's 25 or 98 queries), else 64.
pub fn flash_query_tile(ctx: &GpuContext, nq: usize) -> usize {
    let padded = |t: usize| nq.div_ceil(t) * t;
    if ctx.is_cpu_adapter() && padded(TQ_SMALL) < padded(TQ) {
        TQ_SMALL
    } else {
        TQ
    }
}
/// Floats per workgroup tile (shader constant `TILE_FLOATS`).
const TILE_FLOATS: usize = 2048;
/// Query/key tile of the map pass (shader constant `MT`).
const MT: usize = 16;

/// Attention options.
#[derive(Clone, Copy, Debug)]
pub struct AttentionOptions {
    /// Number of heads `H`; the width of q/k/v must be a multiple of it.
    pub heads: usize,
    /// Score scale; `None` means `1 / sqrt(head_dim)`.
    pub scale: Option<f32>,
    /// Causal mask (CLIP text encoders): key `j > i` is masked for query `i`. Needs `Nq == Nk`.
    pub causal: bool,
}

impl AttentionOptions {
    /// `heads` heads, default scale, no mask.
    pub fn new(heads: usize) -> Self {
        AttentionOptions {
            heads,
            scale: None,
            causal: false,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct AttnParams {
    batch: u32,
    nq: u32,
    nk: u32,
    heads: u32,
    head_dim: u32,
    width: u32,
    key_tile: u32,
    causal: u32,
    scale: f32,
    q_tiles: u32,
    k_tiles: u32,
    _pad: u32,
}

/// Validated problem size.
struct Dims {
    batch: usize,
    nq: usize,
    nk: usize,
    width: usize,
    head_dim: usize,
    dtype: DType,
}

impl Dims {
    /// FLOPs of Q K^T and P V over all heads.
    fn flops(&self) -> f64 {
        4.0 * (self.batch * self.nq * self.nk) as f64 * self.width as f64
    }
}

const OP: &str = "attention";

fn check(q: &Tensor, k: &Tensor, v: &Tensor, opts: &AttentionOptions) -> Result<Dims> {
    let dtype = float_dtype(OP, &[("q", q), ("k", k), ("v", v)])?;
    expect_rank(OP, "q", q, 3)?;
    expect_rank(OP, "k", k, 3)?;
    expect_rank(OP, "v", v, 3)?;
    let (qs, ks, vs) = (q.shape(), k.shape(), v.shape());
    let shapes = || format!("q {qs:?}, k {ks:?}, v {vs:?}");
    if ks != vs {
        return Err(Error::shape(
            OP,
            format!("k and v must have one shape: {}", shapes()),
        ));
    }
    if qs[0] != ks[0] {
        return Err(Error::shape(
            OP,
            format!("batch sizes differ: {}", shapes()),
        ));
    }
    if qs[2] != ks[2] {
        return Err(Error::shape(
            OP,
            format!("widths (H*D) differ: {}", shapes()),
        ));
    }
    let width = qs[2];
    if opts.heads == 0 || width % opts.heads != 0 {
        return Err(Error::shape(
            OP,
            format!(
                "width {width} is not divisible by heads {}: {}",
                opts.heads,
                shapes()
            ),
        ));
    }
    let head_dim = width / opts.heads;
    if head_dim > MAX_HEAD_DIM {
        return Err(Error::shape(
            OP,
            format!(
                "head_dim {head_dim} (width {width} / {} heads) above {MAX_HEAD_DIM}",
                opts.heads
            ),
        ));
    }
    if opts.causal && qs[1] != ks[1] {
        return Err(Error::shape(
            OP,
            format!("causal attention needs Nq == Nk: {}", shapes()),
        ));
    }
    Ok(Dims {
        batch: qs[0],
        nq: qs[1],
        nk: ks[1],
        width,
        head_dim,
        dtype,
    })
}

fn params(d: &Dims, opts: &AttentionOptions, q_tile: usize, k_tiles: usize) -> Result<AttnParams> {
    Ok(AttnParams {
        batch: dim32(OP, d.batch)?,
        nq: dim32(OP, d.nq)?,
        nk: dim32(OP, d.nk)?,
        heads: dim32(OP, opts.heads)?,
        head_dim: dim32(OP, d.head_dim)?,
        width: dim32(OP, d.width)?,
        key_tile: (TILE_FLOATS / d.head_dim).min(256) as u32,
        causal: opts.causal as u32,
        scale: opts.scale.unwrap_or(1.0 / (d.head_dim as f32).sqrt()),
        q_tiles: dim32(OP, d.nq.div_ceil(q_tile))?,
        k_tiles: dim32(OP, k_tiles)?,
        _pad: 0,
    })
}

/// Whether the flash pass runs the head_dim-64 kernels (q and the accumulator in registers,
/// 4 keys per softmax rescale): head_dim 64 without a causal mask (SD-XL's UNet).
fn uses_d64(d: &Dims, opts: &AttentionOptions) -> bool {
    d.head_dim == 64 && !opts.causal
}

/// Multi-head attention `softmax(Q K^T * scale) V` per head.
///
/// `q` `[B, Nq, H*D]`, `k` and `v` `[B, Nk, H*D]` (one float dtype), `D <= 128`.
/// Returns `[B, Nq, H*D]` in the input dtype.
pub fn attention(
    ctx: &GpuContext,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    opts: &AttentionOptions,
) -> Result<Tensor> {
    // q's rank is checked by `attention_with_tile`; a bad one picks either tile.
    let nq = q.shape().get(1).copied().unwrap_or(0);
    attention_with_tile(ctx, q, k, v, opts, flash_query_tile(ctx, nq))
}

/// [`attention`] with `query_tile` queries per workgroup: 64, or 8 (see
/// [`flash_query_tile`]; for tests and comparisons).
pub fn attention_with_tile(
    ctx: &GpuContext,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    opts: &AttentionOptions,
    query_tile: usize,
) -> Result<Tensor> {
    let d = check(q, k, v, opts)?;
    let d64 = uses_d64(&d, opts);
    let kernel = match query_tile {
        TQ if d64 => &FLASH_D64,
        TQ => &FLASH,
        TQ_SMALL if d64 => &FLASH_D64_Q8,
        TQ_SMALL => &FLASH_Q8,
        t => {
            return Err(Error::shape(
                OP,
                format!("query tile {t}: must be {TQ} or {TQ_SMALL}"),
            ))
        }
    };
    let p = params(&d, opts, query_tile, 0)?;
    let out = Tensor::empty(ctx, q.shape(), d.dtype)?;
    let groups = (d.batch * opts.heads * d.nq.div_ceil(query_tile)) as u64;
    ctx.note_flops(d.flops());
    ctx.dispatch(
        OP,
        kernel,
        d.dtype,
        bytemuck::bytes_of(&p),
        &[("q", q), ("k", k), ("v", v), ("out", &out)],
        ctx.grid(groups),
    )?;
    Ok(out)
}

/// [`attention`] plus the head-mean attention map
/// `A[b, i, j] = mean_h softmax(Q_h K_h^T * scale)[b, i, j]`, shape `[B, Nq, Nk]` in the
/// input dtype (rows sum to 1; masked entries are 0).
///
/// Per-head maps are never stored: the flash pass also writes the per-(b, h, i) row
/// log-sum-exp (an f32 `[B, H, Nq]` scratch tensor), then a second kernel recomputes `q.k`
/// per head for each `16 x 16` tile of the map and accumulates `exp(s - lse) / H`.
pub fn attention_with_map(
    ctx: &GpuContext,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    opts: &AttentionOptions,
) -> Result<(Tensor, Tensor)> {
    attention_with_map_kernel(ctx, q, k, v, opts, MapKernel::Auto)
}

/// [`attention_with_map`] with a chosen map kernel.
pub fn attention_with_map_kernel(
    ctx: &GpuContext,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    opts: &AttentionOptions,
    kernel: MapKernel,
) -> Result<(Tensor, Tensor)> {
    let d = check(q, k, v, opts)?;
    let out = Tensor::empty(ctx, q.shape(), d.dtype)?;
    let lse = Tensor::empty(ctx, &[d.batch, opts.heads, d.nq], DType::F32)?;
    let p = params(&d, opts, TQ, 0)?;
    let groups = (d.batch * opts.heads * d.nq.div_ceil(TQ)) as u64;
    ctx.note_flops(d.flops());
    ctx.dispatch(
        OP,
        if uses_d64(&d, opts) {
            &FLASH_D64_LSE
        } else {
            &FLASH_LSE
        },
        d.dtype,
        bytemuck::bytes_of(&p),
        &[("q", q), ("k", k), ("v", v), ("out", &out), ("lse", &lse)],
        ctx.grid(groups),
    )?;
    let map = Tensor::empty(ctx, &[d.batch, d.nq, d.nk], d.dtype)?;
    let registers = match kernel {
        MapKernel::Auto => ctx.is_cpu_adapter(),
        k => k == MapKernel::Registers8,
    };
    let tile = if registers { 64 } else { MT };
    let k_tiles = d.nk.div_ceil(tile);
    let p = params(&d, opts, tile, k_tiles)?;
    let groups = (d.batch * d.nq.div_ceil(tile) * k_tiles) as u64;
    // The map pass recomputes Q K^T over all heads.
    ctx.note_flops(d.flops() / 2.0);
    ctx.dispatch(
        OP,
        if registers { &MAP_REG8 } else { &MAP },
        d.dtype,
        bytemuck::bytes_of(&p),
        &[("q", q), ("k", k), ("lse", &lse), ("map", &map)],
        ctx.grid(groups),
    )?;
    Ok((out, map))
}

/// CPU reference of [`attention_with_map`] by explicit softmax in f64.
///
/// `q` is `[batch, nq, width]`, `k` and `v` `[batch, nk, width]` (row-major slices). Returns the
/// output `[batch, nq, width]` and the head-mean map `[batch, nq, nk]`.
#[allow(clippy::too_many_arguments)]
pub fn cpu_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    batch: usize,
    nq: usize,
    nk: usize,
    width: usize,
    opts: &AttentionOptions,
) -> (Vec<f32>, Vec<f32>) {
    let heads = opts.heads;
    let hd = width / heads;
    let scale = opts.scale.unwrap_or(1.0 / (hd as f32).sqrt()) as f64;
    let mut out = vec![0f32; batch * nq * width];
    let mut map = vec![0f64; batch * nq * nk];
    let mut p = vec![0f64; nk];
    for b in 0..batch {
        for h in 0..heads {
            for i in 0..nq {
                let qr = &q[(b * nq + i) * width + h * hd..][..hd];
                let jn = if opts.causal { (i + 1).min(nk) } else { nk };
                let mut mx = f64::NEG_INFINITY;
                for (j, pj) in p.iter_mut().enumerate().take(jn) {
                    let kr = &k[(b * nk + j) * width + h * hd..][..hd];
                    *pj = qr
                        .iter()
                        .zip(kr)
                        .map(|(&a, &c)| a as f64 * c as f64)
                        .sum::<f64>()
                        * scale;
                    mx = mx.max(*pj);
                }
                let mut sum = 0.0;
                for pj in &mut p[..jn] {
                    *pj = (*pj - mx).exp();
                    sum += *pj;
                }
                for c in 0..hd {
                    let acc: f64 = (0..jn)
                        .map(|j| p[j] * v[(b * nk + j) * width + h * hd + c] as f64)
                        .sum();
                    out[(b * nq + i) * width + h * hd + c] = (acc / sum) as f32;
                }
                for j in 0..jn {
                    map[(b * nq + i) * nk + j] += p[j] / sum / heads as f64;
                }
            }
        }
    }
    (out, map.into_iter().map(|x| x as f32).collect())
}
