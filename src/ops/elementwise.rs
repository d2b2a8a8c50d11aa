//! Elementwise ops with numpy-style broadcasting: add (with a scale on the second operand),
//! mul, sub; and the affine `scale` (y = x * s + b).

use bytemuck::{Pod, Zeroable};

use super::{dim32, float_dtype};
use crate::error::{Error, Result};
use crate::gpu::{GpuContext, Kernel};
use crate::tensor::Tensor;

crate::shader_family!(pub SHADER, "elementwise");
const BINARY: Kernel = SHADER.kernel("binary");
const SCALE: Kernel = SHADER.kernel("scale");

/// Highest rank the broadcasting kernel handles.
pub const MAX_RANK: usize = 8;

/// Binary operation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BinaryOp {
    /// `a + alpha * b`
    Add {
        /// Scale applied to `b` before the add.
        alpha: f32,
    },
    /// `a * b`
    Mul,
    /// `a - b`
    Sub,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct BinaryParams {
    shape: [u32; MAX_RANK],
    a_strides: [u32; MAX_RANK],
    b_strides: [u32; MAX_RANK],
    n: u32,
    op: u32,
    alpha: f32,
    _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ScaleParams {
    n: u32,
    scale: f32,
    bias: f32,
    _pad: u32,
}

/// The broadcast shape of `a` and `b` (numpy rules), or `None` if they do not broadcast.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let r = a.len().max(b.len());
    let mut out = vec![0; r];
    for i in 0..r {
        let da = if i + a.len() >= r {
            a[i + a.len() - r]
        } else {
            1
        };
        let db = if i + b.len() >= r {
            b[i + b.len() - r]
        } else {
            1
        };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return None,
        };
    }
    Some(out)
}

/// Element strides of `shape` seen inside `out` (rank-padded on the left to MAX_RANK; 0 where
/// broadcast).
fn broadcast_strides(shape: &[usize], out_rank: usize) -> [u32; MAX_RANK] {
    let mut strides = [0u32; MAX_RANK];
    let mut s = 1usize;
    for (i, &d) in shape.iter().enumerate().rev() {
        let slot = MAX_RANK - (shape.len() - i);
        let _ = out_rank;
        strides[slot] = if d == 1 { 0 } else { s as u32 };
        s *= d;
    }
    strides
}

/// `op(a, b)` with broadcasting; the output has the broadcast shape.
pub fn binary(ctx: &GpuContext, a: &Tensor, b: &Tensor, op: BinaryOp) -> Result<Tensor> {
    const OP: &str = "elementwise";
    let dtype = float_dtype(OP, &[("a", a), ("b", b)])?;
    let shape = broadcast_shape(a.shape(), b.shape()).ok_or_else(|| {
        Error::shape(
            OP,
            format!(
                "shapes {:?} and {:?} do not broadcast",
                a.shape(),
                b.shape()
            ),
        )
    })?;
    if shape.len() > MAX_RANK {
        return Err(Error::shape(
            OP,
            format!("rank {} above {MAX_RANK}", shape.len()),
        ));
    }
    let out = Tensor::empty(ctx, &shape, dtype)?;
    let mut padded = [1u32; MAX_RANK];
    for (i, &d) in shape.iter().enumerate() {
        padded[MAX_RANK - shape.len() + i] = dim32(OP, d)?;
    }
    let (code, alpha) = match op {
        BinaryOp::Add { alpha } => (0, alpha),
        BinaryOp::Mul => (1, 1.0),
        BinaryOp::Sub => (2, 1.0),
    };
    let n = out.numel();
    let params = BinaryParams {
        shape: padded,
        a_strides: broadcast_strides(a.shape(), shape.len()),
        b_strides: broadcast_strides(b.shape(), shape.len()),
        n: dim32(OP, n)?,
        op: code,
        alpha,
        _pad: 0,
    };
    ctx.dispatch(
        OP,
        &BINARY,
        dtype,
        bytemuck::bytes_of(&params),
        &[("a", a), ("b", b), ("out", &out)],
        ctx.grid(n.div_ceil(256) as u64),
    )?;
    Ok(out)
}

/// `a + b` with broadcasting.
pub fn add(ctx: &GpuContext, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(ctx, a, b, BinaryOp::Add { alpha: 1.0 })
}

/// `a * b` with broadcasting.
pub fn mul(ctx: &GpuContext, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(ctx, a, b, BinaryOp::Mul)
}

/// `x * scale + bias`.
pub fn scale(ctx: &GpuContext, x: &Tensor, scale: f32, bias: f32) -> Result<Tensor> {
    const OP: &str = "scale";
    let dtype = float_dtype(OP, &[("x", x)])?;
    let out = Tensor::empty(ctx, x.shape(), dtype)?;
    let n = x.numel();
    let params = ScaleParams {
        n: dim32(OP, n)?,
        scale,
        bias,
        _pad: 0,
    };
    ctx.dispatch(
        OP,
        &SCALE,
        dtype,
        bytemuck::bytes_of(&params),
        &[("x", x), ("out", &out)],
        ctx.grid(n.div_ceil(256) as u64),
    )?;
    Ok(out)
}

/// CPU reference of [`binary`].
pub fn cpu_binary(
    a: &[f32],
    a_shape: &[usize],
    b: &[f32],
    b_shape: &[usize],
    op: BinaryOp,
) -> Vec<f32> {
    let shape = broadcast_shape(a_shape, b_shape).expect("shapes broadcast");
    let n: usize = shape.iter().product();
    let sa = broadcast_strides(a_shape, shape.len());
    let sb = broadcast_strides(b_shape, shape.len());
    (0..n)
        .map(|i| {
            let (mut rem, mut ia, mut ib) = (i, 0usize, 0usize);
            for d in (0..shape.len()).rev() {
                let c = rem % shape[d];
                rem /= shape[d];
                let slot = MAX_RANK - shape.len() + d;
                ia += c * sa[slot] as usize;
                ib += c * sb[slot] as usize;
            }
            match op {
                BinaryOp::Add { alpha } => a[ia] + alpha * b[ib],
                BinaryOp::Mul => a[ia] * b[ib],
                BinaryOp::Sub => a[ia] - b[ib],
            }
        })
        .collect()
}

/// CPU reference of [`scale`].
pub fn cpu_scale(x: &[f32], scale: f32, bias: f32) -> Vec<f32> {
    x.iter().map(|&v| v * scale + bias).collect()
}
