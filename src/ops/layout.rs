//! Layout ops: concatenation along a dimension (UNet skip connections), nearest-neighbour 2x
//! upsampling, and the transpose of the last two dimensions (NCHW <-> token-major).

use bytemuck::{Pod, Zeroable};

use super::{dim32, expect_rank, float_dtype};
use crate::error::{Error, Result};
use crate::gpu::{GpuContext, Kernel};
use crate::tensor::Tensor;

crate::shader_family!(pub SHADER, "layout");
const CONCAT: Kernel = SHADER.kernel("concat_part");
const UPSAMPLE: Kernel = SHADER.kernel("upsample_nearest2x");
const TRANSPOSE: Kernel = SHADER.kernel("transpose_last2");

/// Transpose tile edge (shader constant `TT`).
const TT: usize = 16;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ConcatParams {
    outer: u32,
    src_row: u32,
    dst_row: u32,
    offset: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct UpParams {
    planes: u32,
    h: u32,
    w: u32,
    _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct TransposeParams {
    batch: u32,
    rows: u32,
    cols: u32,
    row_tiles: u32,
    col_tiles: u32,
    _pad: [u32; 3],
}

/// Shape of the concatenation of `shapes` along `dim`, or a message saying why not.
fn concat_shape(shapes: &[&[usize]], dim: usize) -> std::result::Result<Vec<usize>, String> {
    let first = shapes.first().ok_or("no tensors to concatenate")?;
    if dim >= first.len() {
        return Err(format!(
            "dim {dim} out of range for rank {} (shape {first:?})",
            first.len()
        ));
    }
    let mut out = first.to_vec();
    out[dim] = 0;
    for s in shapes {
        let same_other = s.len() == first.len()
            && s.iter()
                .zip(first.iter())
                .enumerate()
                .all(|(d, (a, b))| d == dim || a == b);
        if !same_other {
            return Err(format!("shapes {shapes:?} differ outside dim {dim}"));
        }
        out[dim] += s[dim];
    }
    Ok(out)
}

/// Concatenates `tensors` (one float dtype, equal shapes except along `dim`) along `dim`,
/// e.g. the UNet skip concat on channels of `[B, C, H, W]` (`dim` 1). Returns a new tensor
/// (also for a single input).
pub fn concat(ctx: &GpuContext, tensors: &[&Tensor], dim: usize) -> Result<Tensor> {
    const OP: &str = "concat";
    if tensors.is_empty() {
        return Err(Error::shape(OP, "no tensors to concatenate"));
    }
    let named: Vec<(String, &Tensor)> = tensors
        .iter()
        .enumerate()
        .map(|(i, t)| (format!("tensors[{i}]"), *t))
        .collect();
    let refs: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (n.as_str(), *t)).collect();
    let dtype = float_dtype(OP, &refs)?;
    let shapes: Vec<&[usize]> = tensors.iter().map(|t| t.shape()).collect();
    let shape = concat_shape(&shapes, dim).map_err(|m| Error::shape(OP, m))?;
    let out = Tensor::empty(ctx, &shape, dtype)?;
    let outer: usize = shape[..dim].iter().product();
    let inner: usize = shape[dim + 1..].iter().product();
    let mut offset = 0;
    for t in tensors {
        let src_row = t.shape()[dim] * inner;
        let p = ConcatParams {
            outer: dim32(OP, outer)?,
            src_row: dim32(OP, src_row)?,
            dst_row: dim32(OP, shape[dim] * inner)?,
            offset: dim32(OP, offset)?,
        };
        ctx.dispatch(
            OP,
            &CONCAT,
            dtype,
            bytemuck::bytes_of(&p),
            &[("src", t), ("out", &out)],
            ctx.grid(t.numel().div_ceil(256) as u64),
        )?;
        offset += src_row;
    }
    Ok(out)
}

/// Nearest-neighbour 2x upsample: `x` `[B, C, H, W]` -> `[B, C, 2H, 2W]`,
/// `out[.., y, x] = x[.., y / 2, x / 2]`.
pub fn upsample_nearest2x(ctx: &GpuContext, x: &Tensor) -> Result<Tensor> {
    const OP: &str = "upsample_nearest2x";
    let dtype = float_dtype(OP, &[("x", x)])?;
    expect_rank(OP, "x", x, 4)?;
    let s = x.shape();
    let out = Tensor::empty(ctx, &[s[0], s[1], 2 * s[2], 2 * s[3]], dtype)?;
    let p = UpParams {
        planes: dim32(OP, s[0] * s[1])?,
        h: dim32(OP, s[2])?,
        w: dim32(OP, s[3])?,
        _pad: 0,
    };
    dim32(OP, out.numel())?;
    ctx.dispatch(
        OP,
        &UPSAMPLE,
        dtype,
        bytemuck::bytes_of(&p),
        &[("x", x), ("out", &out)],
        ctx.grid(out.numel().div_ceil(256) as u64),
    )?;
    Ok(out)
}

/// Swaps the last two dims: `x` `[..., R, C]` -> `[..., C, R]` (rank >= 2), e.g.
/// `[B, C, HW]` <-> `[B, HW, C]`. Tiled through workgroup memory (16 x 16 tiles).
pub fn transpose_last2(ctx: &GpuContext, x: &Tensor) -> Result<Tensor> {
    const OP: &str = "transpose_last2";
    let dtype = float_dtype(OP, &[("x", x)])?;
    let s = x.shape();
    if s.len() < 2 {
        return Err(Error::shape(
            OP,
            format!("'x' must have rank >= 2, got shape {s:?}"),
        ));
    }
    let (rows, cols) = (s[s.len() - 2], s[s.len() - 1]);
    let batch: usize = s[..s.len() - 2].iter().product();
    let mut shape = s.to_vec();
    shape.swap(s.len() - 2, s.len() - 1);
    let out = Tensor::empty(ctx, &shape, dtype)?;
    let p = TransposeParams {
        batch: dim32(OP, batch)?,
        rows: dim32(OP, rows)?,
        cols: dim32(OP, cols)?,
        row_tiles: dim32(OP, rows.div_ceil(TT))?,
        col_tiles: dim32(OP, cols.div_ceil(TT))?,
        _pad: [0; 3],
    };
    dim32(OP, x.numel())?;
    let groups = (batch * rows.div_ceil(TT) * cols.div_ceil(TT)) as u64;
    ctx.dispatch(
        OP,
        &TRANSPOSE,
        dtype,
        bytemuck::bytes_of(&p),
        &[("x", x), ("out", &out)],
        ctx.grid(groups),
    )?;
    Ok(out)
}

/// CPU reference of [`concat`](fn@concat): `parts` are (data, shape) pairs.
pub fn cpu_concat(parts: &[(&[f32], &[usize])], dim: usize) -> Vec<f32> {
    let shapes: Vec<&[usize]> = parts.iter().map(|p| p.1).collect();
    let shape = concat_shape(&shapes, dim).expect("concatenable shapes");
    let outer: usize = shape[..dim].iter().product();
    let inner: usize = shape[dim + 1..].iter().product();
    let mut out = Vec::with_capacity(shape.iter().product());
    for o in 0..outer {
        for (data, s) in parts {
            let row = s[dim] * inner;
            out.extend_from_slice(&data[o * row..][..row]);
        }
    }
    out
}

/// CPU reference of [`upsample_nearest2x`] (`shape` = `[B, C, H, W]`).
pub fn cpu_upsample_nearest2x(x: &[f32], shape: &[usize]) -> Vec<f32> {
    let (h, w) = (shape[2], shape[3]);
    let planes = shape[0] * shape[1];
    let mut out = Vec::with_capacity(planes * 4 * h * w);
    for p in 0..planes {
        for y in 0..2 * h {
            for xx in 0..2 * w {
                out.push(x[(p * h + y / 2) * w + xx / 2]);
            }
        }
    }
    out
}

/// CPU reference of [`transpose_last2`].
pub fn cpu_transpose_last2(x: &[f32], shape: &[usize]) -> Vec<f32> {
    let (rows, cols) = (shape[shape.len() - 2], shape[shape.len() - 1]);
    let mut out = vec![0f32; x.len()];
    for (src, dst) in x.chunks(rows * cols).zip(out.chunks_mut(rows * cols)) {
        for r in 0..rows {
            for c in 0..cols {
                dst[c * rows + r] = src[r * cols + c];
            }
        }
    }
    out
}
