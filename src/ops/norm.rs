//! Normalization: GroupNorm over `[B, C, *spatial]` (optionally fused with SiLU, as diffusers'
//! `ResnetBlock2D` applies `norm` then `nonlinearity`) and LayerNorm over the last dimension.
//!
//! Both kernels use one workgroup per normalized set and compute in f32 the mean first, then the
//! (biased) variance of `x - mean`, as torch's `group_norm` / `layer_norm`.

use bytemuck::{Pod, Zeroable};

use super::{dim32, float_dtype};
use crate::error::{Error, Result};
use crate::gpu::{GpuContext, Kernel};
use crate::tensor::Tensor;

crate::shader_family!(pub SHADER, "norm");
const GROUP_NORM: Kernel = SHADER.kernel("group_norm");
const LAYER_NORM: Kernel = SHADER.kernel("layer_norm");

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct GnParams {
    n_groups: u32,
    group_len: u32,
    spatial: u32,
    cpg: u32,
    groups: u32,
    eps: f32,
    silu: u32,
    _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct LnParams {
    rows: u32,
    c: u32,
    eps: f32,
    has_beta: u32,
}

/// Checks that an affine parameter is a vector of length `c`.
fn expect_vec(op: &'static str, name: &str, t: &Tensor, c: usize, x: &Tensor) -> Result<()> {
    if t.shape() != [c] {
        return Err(Error::shape(
            op,
            format!(
                "'{name}' must have shape [{c}] for x {:?}, got {:?}",
                x.shape(),
                t.shape()
            ),
        ));
    }
    Ok(())
}

/// `(batch, channels, spatial)` of a GroupNorm input `[B, C, *spatial]`, validated.
fn gn_dims(op: &'static str, shape: &[usize], groups: usize) -> Result<(usize, usize, usize)> {
    if shape.len() < 2 {
        return Err(Error::shape(
            op,
            format!("x must be [B, C, *spatial] (rank >= 2), got {shape:?}"),
        ));
    }
    let (b, c) = (shape[0], shape[1]);
    if groups == 0 || c % groups != 0 {
        return Err(Error::shape(
            op,
            format!("channels C={c} of x {shape:?} are not divisible by groups={groups}"),
        ));
    }
    Ok((b, c, shape[2..].iter().product()))
}

/// GroupNorm over `x` `[B, C, *spatial]` (rank >= 2) with `groups` groups (`C % groups == 0`):
/// each group of `C / groups` channels x all spatial positions is normalized with its own mean
/// and biased variance, then scaled by `gamma` `[C]` and shifted by `beta` `[C]` per channel.
/// With `silu`, SiLU is applied to the result. Output: the shape and dtype of `x`.
pub fn group_norm(
    ctx: &GpuContext,
    x: &Tensor,
    groups: usize,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f32,
    silu: bool,
) -> Result<Tensor> {
    const OP: &str = "group_norm";
    let dtype = float_dtype(OP, &[("x", x), ("gamma", gamma), ("beta", beta)])?;
    let (b, c, spatial) = gn_dims(OP, x.shape(), groups)?;
    expect_vec(OP, "gamma", gamma, c, x)?;
    expect_vec(OP, "beta", beta, c, x)?;
    dim32(OP, x.numel())?;
    let cpg = c / groups;
    let out = Tensor::empty(ctx, x.shape(), dtype)?;
    let n_groups = b * groups;
    let params = GnParams {
        n_groups: dim32(OP, n_groups)?,
        group_len: dim32(OP, cpg * spatial)?,
        spatial: dim32(OP, spatial)?,
        cpg: dim32(OP, cpg)?,
        groups: dim32(OP, groups)?,
        eps,
        silu: silu as u32,
        _pad: 0,
    };
    ctx.dispatch(
        OP,
        &GROUP_NORM,
        dtype,
        bytemuck::bytes_of(&params),
        &[("x", x), ("gamma", gamma), ("beta", beta), ("out", &out)],
        ctx.grid(n_groups as u64),
    )?;
    Ok(out)
}

/// LayerNorm over the last dimension `C` of `x` `[..., C]` (rank >= 1): each row is normalized
/// with its mean and biased variance, scaled by `gamma` `[C]` and shifted by `beta` `[C]` when
/// given. Output: the shape and dtype of `x`.
pub fn layer_norm(
    ctx: &GpuContext,
    x: &Tensor,
    gamma: &Tensor,
    beta: Option<&Tensor>,
    eps: f32,
) -> Result<Tensor> {
    const OP: &str = "layer_norm";
    let mut named = vec![("x", x), ("gamma", gamma)];
    if let Some(b) = beta {
        named.push(("beta", b));
    }
    let dtype = float_dtype(OP, &named)?;
    let Some(&c) = x.shape().last() else {
        return Err(Error::shape(
            OP,
            format!("x must have rank >= 1, got {:?}", x.shape()),
        ));
    };
    expect_vec(OP, "gamma", gamma, c, x)?;
    if let Some(b) = beta {
        expect_vec(OP, "beta", b, c, x)?;
    }
    dim32(OP, x.numel())?;
    let rows = x.numel() / c;
    let out = Tensor::empty(ctx, x.shape(), dtype)?;
    let params = LnParams {
        rows: dim32(OP, rows)?,
        c: dim32(OP, c)?,
        eps,
        has_beta: beta.is_some() as u32,
    };
    // Without beta the kernel's beta binding aliases gamma (read-only) and is not read.
    ctx.dispatch(
        OP,
        &LAYER_NORM,
        dtype,
        bytemuck::bytes_of(&params),
        &[
            ("x", x),
            ("gamma", gamma),
            ("beta", beta.unwrap_or(gamma)),
            ("out", &out),
        ],
        ctx.grid(rows as u64),
    )?;
    Ok(out)
}

/// Normalizes `v` with its own mean and biased variance (f64), then applies
/// `f(index, normalized)`.
fn cpu_normalize(v: &[f32], eps: f32, mut f: impl FnMut(usize, f64) -> f32) -> Vec<f32> {
    let n = v.len() as f64;
    let mean = v.iter().map(|&a| a as f64).sum::<f64>() / n;
    let var = v.iter().map(|&a| (a as f64 - mean).powi(2)).sum::<f64>() / n;
    let inv = 1.0 / (var + eps as f64).sqrt();
    v.iter()
        .enumerate()
        .map(|(i, &a)| f(i, (a as f64 - mean) * inv))
        .collect()
}

/// CPU reference of [`group_norm`] (f64 statistics): `x` row-major with `shape` `[B, C, *spatial]`.
pub fn cpu_group_norm(
    x: &[f32],
    shape: &[usize],
    groups: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    silu: bool,
) -> Vec<f32> {
    let (_, c, spatial) = gn_dims("cpu_group_norm", shape, groups).expect("valid group_norm shape");
    let cpg = c / groups;
    let glen = cpg * spatial;
    x.chunks(glen)
        .enumerate()
        .flat_map(|(gi, chunk)| {
            let c0 = (gi % groups) * cpg;
            cpu_normalize(chunk, eps, |i, y| {
                let ch = c0 + i / spatial;
                let y = y * gamma[ch] as f64 + beta[ch] as f64;
                (if silu { y / (1.0 + (-y).exp()) } else { y }) as f32
            })
        })
        .collect()
}

/// CPU reference of [`layer_norm`] (f64 statistics): rows of length `gamma.len()`.
pub fn cpu_layer_norm(x: &[f32], gamma: &[f32], beta: Option<&[f32]>, eps: f32) -> Vec<f32> {
    x.chunks(gamma.len())
        .flat_map(|row| {
            cpu_normalize(row, eps, |i, y| {
                (y * gamma[i] as f64 + beta.map_or(0.0, |b| b[i] as f64)) as f32
            })
        })
        .collect()
}
