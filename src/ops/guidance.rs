//! Classifier-free guidance with optional guidance rescale (diffusers' `rescale_noise_cfg`),
//! on the GPU so a denoising step needs no readback.

use bytemuck::{Pod, Zeroable};

use super::{dim32, float_dtype};
use crate::error::{Error, Result};
use crate::gpu::{GpuContext, Kernel};
use crate::tensor::Tensor;

crate::shader_family!(pub SHADER, "guidance");
const CFG: Kernel = SHADER.kernel("cfg");
const CFG_RESCALE: Kernel = SHADER.kernel("cfg_rescale");

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct GuidanceParams {
    n: u32,
    images: u32,
    scale: f32,
    rescale: f32,
}

/// `eps [2B, ...]` (the uncond half first, as diffusers batches CFG) -> `[B, ...]`:
/// `u + scale * (c - u)`, then when `rescale > 0`
/// `rescale * cfg * std(c) / std(cfg) + (1 - rescale) * cfg` with per-image unbiased std.
pub fn guidance(ctx: &GpuContext, eps: &Tensor, scale: f32, rescale: f32) -> Result<Tensor> {
    const OP: &str = "guidance";
    let dtype = float_dtype(OP, &[("eps", eps)])?;
    let s = eps.shape();
    if s.is_empty() || s[0] % 2 != 0 {
        return Err(Error::shape(
            OP,
            format!("eps must have an even batch [uncond; cond], got {s:?}"),
        ));
    }
    if !(0.0..=1.0).contains(&rescale) {
        return Err(Error::Invalid(format!(
            "guidance rescale must be in [0, 1], got {rescale}"
        )));
    }
    let images = s[0] / 2;
    let n = eps.numel() / s[0];
    let mut out_shape = s.to_vec();
    out_shape[0] = images;
    let out = Tensor::empty(ctx, &out_shape, dtype)?;
    let params = GuidanceParams {
        n: dim32(OP, n)?,
        images: dim32(OP, images)?,
        scale,
        rescale,
    };
    let (kernel, grid) = if rescale > 0.0 {
        (&CFG_RESCALE, [dim32(OP, images)?, 1, 1])
    } else {
        (&CFG, ctx.grid((n * images).div_ceil(256) as u64))
    };
    ctx.dispatch(
        OP,
        kernel,
        dtype,
        bytemuck::bytes_of(&params),
        &[("eps", eps), ("out", &out)],
        grid,
    )?;
    Ok(out)
}

/// CPU reference of [`guidance`] (`eps` holds 2B images of `n` values each).
pub fn cpu_guidance(eps: &[f32], n: usize, scale: f32, rescale: f32) -> Vec<f32> {
    let images = eps.len() / n / 2;
    let mut out = Vec::with_capacity(images * n);
    for b in 0..images {
        let u = &eps[b * n..(b + 1) * n];
        let c = &eps[(images + b) * n..(images + b + 1) * n];
        let cfg: Vec<f64> = u
            .iter()
            .zip(c)
            .map(|(&u, &c)| u as f64 + scale as f64 * (c as f64 - u as f64))
            .collect();
        let std = |v: &mut dyn Iterator<Item = f64>| {
            let v: Vec<f64> = v.collect();
            let m = v.iter().sum::<f64>() / v.len() as f64;
            (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len().max(2) - 1) as f64).sqrt()
        };
        let ratio = if rescale > 0.0 {
            std(&mut c.iter().map(|&x| x as f64)) / std(&mut cfg.iter().copied())
        } else {
            1.0
        };
        let r = rescale as f64;
        out.extend(cfg.iter().map(|&g| (r * g * ratio + (1.0 - r) * g) as f32));
    }
    out
}
