//! Softmax over the last dimension: `softmax(x * scale)`, numerically stable (the row max is
//! subtracted before `exp`).

use bytemuck::{Pod, Zeroable};

use super::{dim32, float_dtype};
use crate::error::{Error, Result};
use crate::gpu::{GpuContext, Kernel};
use crate::tensor::Tensor;

crate::shader_family!(pub SHADER, "softmax");
const SOFTMAX: Kernel = SHADER.kernel("softmax");

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    n: u32,
    scale: f32,
    _pad: u32,
}

/// `softmax(x * scale)` over the last dimension of `x` `[..., N]` (rank >= 1), one workgroup per
/// row, f32 accumulation. Output: the shape and dtype of `x`.
pub fn softmax(ctx: &GpuContext, x: &Tensor, scale: f32) -> Result<Tensor> {
    const OP: &str = "softmax";
    let dtype = float_dtype(OP, &[("x", x)])?;
    let Some(&n) = x.shape().last() else {
        return Err(Error::shape(
            OP,
            format!("x must have rank >= 1, got {:?}", x.shape()),
        ));
    };
    dim32(OP, x.numel())?;
    let rows = x.numel() / n;
    let out = Tensor::empty(ctx, x.shape(), dtype)?;
    let params = Params {
        rows: dim32(OP, rows)?,
        n: dim32(OP, n)?,
        scale,
        _pad: 0,
    };
    ctx.dispatch(
        OP,
        &SOFTMAX,
        dtype,
        bytemuck::bytes_of(&params),
        &[("x", x), ("out", &out)],
        ctx.grid(rows as u64),
    )?;
    Ok(out)
}

/// CPU reference of [`softmax`] (f64): rows of length `n`.
pub fn cpu_softmax(x: &[f32], n: usize, scale: f32) -> Vec<f32> {
    x.chunks(n)
        .flat_map(|row| {
            let v: Vec<f64> = row.iter().map(|&a| a as f64 * scale as f64).collect();
            let m = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = v.iter().map(|a| (a - m).exp()).collect();
            let s: f64 = e.iter().sum();
            e.into_iter().map(move |a| (a / s) as f32)
        })
        .collect()
}
