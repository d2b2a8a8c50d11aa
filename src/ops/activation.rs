//! Pointwise activations (GELU in its erf form, QuickGELU, SiLU) and diffusers' GEGLU gate.
//!
//! WGSL has no `erf`; the kernel evaluates `erfc` with the Chebyshev fit of Numerical Recipes
//! (relative error < 1.2e-7 for z >= 0), so GELU keeps ~1e-6 relative accuracy even in its
//! negative tail. The CPU reference uses an f64 series.

use bytemuck::{Pod, Zeroable};

use super::{dim32, float_dtype};
use crate::error::{Error, Result};
use crate::gpu::{GpuContext, Kernel};
use crate::tensor::Tensor;

crate::shader_family!(pub SHADER, "activation");
const ACTIVATION: Kernel = SHADER.kernel("activation");
const GEGLU: Kernel = SHADER.kernel("geglu");

/// A pointwise activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `0.5 x (1 + erf(x / sqrt 2))` (torch's default, exact form).
    Gelu,
    /// `x * sigmoid(1.702 x)` (CLIP's `quick_gelu`).
    QuickGelu,
    /// `x * sigmoid(x)`.
    Silu,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    act: u32,
    f: u32,
    _pad: u32,
}

fn launch(
    ctx: &GpuContext,
    op: &'static str,
    kernel: &Kernel,
    x: &Tensor,
    shape: &[usize],
    act: u32,
    f: usize,
) -> Result<Tensor> {
    let dtype = float_dtype(op, &[("x", x)])?;
    dim32(op, x.numel())?;
    let out = Tensor::empty(ctx, shape, dtype)?;
    let n = out.numel();
    let params = Params {
        n: dim32(op, n)?,
        act,
        f: dim32(op, f)?,
        _pad: 0,
    };
    ctx.dispatch(
        op,
        kernel,
        dtype,
        bytemuck::bytes_of(&params),
        &[("x", x), ("out", &out)],
        ctx.grid(n.div_ceil(256) as u64),
    )?;
    Ok(out)
}

/// `act(x)` elementwise; output: the shape and dtype of `x`.
pub fn activation(ctx: &GpuContext, x: &Tensor, act: Activation) -> Result<Tensor> {
    let code = match act {
        Activation::Gelu => 0,
        Activation::QuickGelu => 1,
        Activation::Silu => 2,
    };
    launch(ctx, "activation", &ACTIVATION, x, x.shape(), code, 0)
}

/// GEGLU as diffusers: `x` `[..., 2F]` is split on its last dimension into halves `[a, gate]`;
/// the output `[..., F]` is `a * gelu_erf(gate)`.
pub fn geglu(ctx: &GpuContext, x: &Tensor) -> Result<Tensor> {
    const OP: &str = "geglu";
    let w = x.shape().last().copied().unwrap_or(0);
    if w % 2 != 0 || w == 0 {
        return Err(Error::shape(
            OP,
            format!("last dimension of x {:?} must be even (2F)", x.shape()),
        ));
    }
    let mut shape = x.shape().to_vec();
    *shape.last_mut().unwrap() = w / 2;
    launch(ctx, OP, &GEGLU, x, &shape, 0, w / 2)
}

/// `erf(x)` in f64 (relative error ~1e-15): `erf x = 2/sqrt(pi) e^(-x^2) sum_n 2^n x^(2n+1) /
/// (1*3*...*(2n+1))`, a series of positive terms (no cancellation); `|x| > 6` gives `+-1`
/// (erfc(6) ~ 2e-17).
pub fn erf_f64(x: f64) -> f64 {
    if x.abs() > 6.0 {
        return x.signum();
    }
    let x2 = x * x;
    let (mut term, mut sum, mut k) = (x, x, 0.0);
    while term.abs() > 1e-17 * sum.abs() {
        k += 1.0;
        term *= 2.0 * x2 / (2.0 * k + 1.0);
        sum += term;
    }
    std::f64::consts::FRAC_2_SQRT_PI * (-x2).exp() * sum
}

fn gelu_f64(v: f64) -> f64 {
    0.5 * v * (1.0 + erf_f64(v * std::f64::consts::FRAC_1_SQRT_2))
}

/// CPU reference of [`activation`] (f64).
pub fn cpu_activation(x: &[f32], act: Activation) -> Vec<f32> {
    x.iter()
        .map(|&v| {
            let v = v as f64;
            (match act {
                Activation::Gelu => gelu_f64(v),
                Activation::QuickGelu => v / (1.0 + (-1.702 * v).exp()),
                Activation::Silu => v / (1.0 + (-v).exp()),
            }) as f32
        })
        .collect()
}

/// CPU reference of [`geglu`] (f64): rows of length `2F` = `width`.
pub fn cpu_geglu(x: &[f32], width: usize) -> Vec<f32> {
    let f = width / 2;
    x.chunks(width)
        .flat_map(|row| (0..f).map(move |j| (row[j] as f64 * gelu_f64(row[f + j] as f64)) as f32))
        .collect()
}
