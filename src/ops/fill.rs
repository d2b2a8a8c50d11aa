//! Deterministic pseudo-random fills on the GPU: synthetic weights for `atedm bench`, so the
//! real SD-XL shapes run without a checkpoint and without uploading gigabytes from the host.

use bytemuck::{Pod, Zeroable};

use super::dim32;
use crate::error::{Error, Result};
use crate::gpu::{GpuContext, Kernel};
use crate::tensor::{DType, Tensor};

crate::shader_family!(pub SHADER, "fill");
const FILL_UNIFORM: Kernel = SHADER.kernel("fill_uniform");

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct FillParams {
    n: u32,
    seed: u32,
    offset: f32,
    scale: f32,
}

/// A new tensor of `shape` with `offset + scale * (2u - 1)`, `u` uniform in [0, 1) from a hash
/// of (element index, `seed`).
pub fn fill_uniform(
    ctx: &GpuContext,
    shape: &[usize],
    dtype: DType,
    seed: u32,
    offset: f32,
    scale: f32,
) -> Result<Tensor> {
    const OP: &str = "fill_uniform";
    if !dtype.is_float() {
        return Err(Error::dtype(OP, format!("fills are float, got {dtype}")));
    }
    let out = Tensor::empty(ctx, shape, dtype)?;
    let n = out.numel();
    let p = FillParams {
        n: dim32(OP, n)?,
        seed,
        offset,
        scale,
    };
    ctx.dispatch(
        OP,
        &FILL_UNIFORM,
        dtype,
        bytemuck::bytes_of(&p),
        &[("out", &out)],
        ctx.grid((n as u64).div_ceil(256)),
    )?;
    Ok(out)
}

/// CPU reference of [`fill_uniform`] (f32).
pub fn cpu_fill_uniform(n: usize, seed: u32, offset: f32, scale: f32) -> Vec<f32> {
    let s = mix32(seed);
    (0..n as u32)
        .map(|i| {
            let u = (mix32(i ^ s) >> 8) as f32 * (1.0 / 16_777_216.0);
            offset + scale * (2.0 * u - 1.0)
        })
        .collect()
}

/// lowbias32, the integer hash of `fill_uniform` and of ToMe's destination choice (the WGSL
/// `mix32` of `shaders/include/common.wgsl`).
pub fn mix32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}
