//! Sinusoidal timestep embedding, as diffusers' `get_timestep_embedding` (with `scale = 1`).
//!
//! Precision: the frequencies are computed on the host in f64 and rounded to f32; the argument
//! `t * freq` is an f32 product, as in diffusers; the kernel evaluates sin/cos of that f32
//! argument to ~1e-7 with its own range reduction. The f32 argument itself is off the exact
//! `t * freq` by up to `|t * freq| * 2^-23` (two roundings), ~1.2e-4 rad at t = 1000: an error
//! diffusers' f32 computation has too.

use super::{dim32, expect_rank};
use crate::error::{Error, Result};
use crate::gpu::{GpuContext, Kernel};
use crate::tensor::{DType, Tensor};

crate::shader_family!(pub SHADER, "embedding");
const TIMESTEP_EMBEDDING: Kernel = SHADER.kernel("timestep_embedding");

/// Largest `dim / 2` the kernel's frequency table holds.
pub const MAX_HALF: usize = 1024;

/// Configuration of a sinusoidal timestep embedding (diffusers' `Timesteps` module).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TimestepEmbedding {
    /// Output width (`embedding_dim`); odd widths get a zero column at the end.
    pub dim: usize,
    /// `[cos, sin]` instead of `[sin, cos]` (SD-XL: true).
    pub flip_sin_to_cos: bool,
    /// `downscale_freq_shift` (SD-XL: 0).
    pub downscale_freq_shift: f32,
    /// `max_period` (diffusers' default: 10000).
    pub max_period: f32,
}

/// The f32 frequencies `exp(-ln(max_period) * k / (half - shift))`, `k < half`, computed in f64.
fn frequencies(op: &'static str, cfg: &TimestepEmbedding) -> Result<Vec<f32>> {
    let half = cfg.dim / 2;
    let denom = half as f64 - cfg.downscale_freq_shift as f64;
    if half == 0 || half > MAX_HALF {
        return Err(Error::shape(
            op,
            format!("dim {} must be in 2..={}", cfg.dim, 2 * MAX_HALF + 1),
        ));
    }
    if denom == 0.0 || !denom.is_finite() || cfg.max_period.is_nan() || cfg.max_period <= 0.0 {
        return Err(Error::Invalid(format!(
            "{op}: dim {} with downscale_freq_shift {} and max_period {} gives no finite frequencies",
            cfg.dim, cfg.downscale_freq_shift, cfg.max_period
        )));
    }
    let c = -(cfg.max_period as f64).ln() / denom;
    Ok((0..half).map(|k| (c * k as f64).exp() as f32).collect())
}

/// Embeds timesteps `t` `[B]` (an F32 tensor of values such as 981.0) into `[B, dim]` of storage
/// `dtype` (F32 or F16): columns `k < half` hold `sin(t * freq_k)` and `half + k` hold
/// `cos(t * freq_k)` (swapped with `flip_sin_to_cos`), `half = dim / 2`,
/// `freq_k = exp(-ln(max_period) * k / (half - downscale_freq_shift))`.
pub fn timestep_embedding(
    ctx: &GpuContext,
    t: &Tensor,
    cfg: &TimestepEmbedding,
    dtype: DType,
) -> Result<Tensor> {
    const OP: &str = "timestep_embedding";
    if t.dtype() != DType::F32 {
        return Err(Error::dtype(
            OP,
            format!("timesteps t {:?} must be f32, got {}", t.shape(), t.dtype()),
        ));
    }
    if !dtype.is_float() {
        return Err(Error::dtype(
            OP,
            format!("output dtype must be f32 or f16, got {dtype}"),
        ));
    }
    expect_rank(OP, "t", t, 1)?;
    let freq = frequencies(OP, cfg)?;
    let rows = t.shape()[0];
    let out = Tensor::empty(ctx, &[rows, cfg.dim], dtype)?;
    let n = dim32(OP, out.numel())?;
    // Params: rows, dim, half, flip (u32) then the table padded to MAX_HALF f32 (WGSL struct).
    let mut params: Vec<u32> = vec![
        dim32(OP, rows)?,
        dim32(OP, cfg.dim)?,
        freq.len() as u32,
        cfg.flip_sin_to_cos as u32,
    ];
    params.extend(freq.iter().map(|f| f.to_bits()));
    params.resize(4 + MAX_HALF, 0);
    ctx.dispatch(
        OP,
        &TIMESTEP_EMBEDDING,
        dtype,
        bytemuck::cast_slice(&params),
        &[("t", t), ("out", &out)],
        ctx.grid((n as u64).div_ceil(256)),
    )?;
    Ok(out)
}

/// CPU reference of [`timestep_embedding`]: the same f32 frequencies and f32 argument `t * freq`,
/// sin/cos in f64, rounded to f32. Panics on a configuration the GPU op rejects.
pub fn cpu_timestep_embedding(t: &[f32], cfg: &TimestepEmbedding) -> Vec<f32> {
    let freq = frequencies("cpu_timestep_embedding", cfg).expect("valid timestep embedding config");
    let half = freq.len();
    let mut out = vec![0f32; t.len() * cfg.dim];
    for (row, &tv) in out.chunks_mut(cfg.dim).zip(t) {
        for (k, &f) in freq.iter().enumerate() {
            let arg = (tv * f) as f64;
            let (s, c) = (arg.sin() as f32, arg.cos() as f32);
            let (first, second) = if cfg.flip_sin_to_cos { (c, s) } else { (s, c) };
            row[k] = first;
            row[half + k] = second;
        }
    }
    out
}
