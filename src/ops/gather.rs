//! Row gather and scatter along the token axis: AT-EDM's pruning (keep the selected tokens)
//! and recovery (put the processed tokens back in place).
//!
//! Tensors are token-major `[B, N, C]`; index tensors are `U32 [B, k]`, one index set per batch.

use bytemuck::{Pod, Zeroable};

use super::{dim32, expect_rank, float_dtype};
use crate::error::{Error, Result};
use crate::gpu::{GpuContext, Kernel};
use crate::tensor::{DType, Tensor};

crate::shader_family!(pub SHADER, "gather");
const GATHER: Kernel = SHADER.kernel("gather_rows");
const SCATTER: Kernel = SHADER.kernel("scatter_rows");

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct RowParams {
    batch: u32,
    n: u32,
    k: u32,
    c: u32,
}

/// Checks `full` `[B, N, C]`, `idx` `U32 [B, k]`, and (when given) `compact` `[B, k, C]`.
/// Returns the params.
fn check(
    op: &'static str,
    full: (&str, &Tensor),
    idx: &Tensor,
    compact: Option<(&str, &Tensor)>,
) -> Result<RowParams> {
    let (full_name, f) = full;
    expect_rank(op, full_name, f, 3)?;
    expect_rank(op, "idx", idx, 2)?;
    if idx.dtype() != DType::U32 {
        return Err(Error::dtype(
            op,
            format!(
                "'idx' must be u32, got {} (shape {:?})",
                idx.dtype(),
                idx.shape()
            ),
        ));
    }
    let (b, n, c) = (f.shape()[0], f.shape()[1], f.shape()[2]);
    if idx.shape()[0] != b {
        return Err(Error::shape(
            op,
            format!(
                "batch of idx {:?} differs from {full_name} {:?}",
                idx.shape(),
                f.shape()
            ),
        ));
    }
    let k = idx.shape()[1];
    if let Some((name, t)) = compact {
        expect_rank(op, name, t, 3)?;
        if t.shape() != [b, k, c] {
            return Err(Error::shape(
                op,
                format!(
                    "{name} {:?} must be [B, k, C] = {:?} for {full_name} {:?} and idx {:?}",
                    t.shape(),
                    [b, k, c],
                    f.shape(),
                    idx.shape()
                ),
            ));
        }
    }
    Ok(RowParams {
        batch: dim32(op, b)?,
        n: dim32(op, n)?,
        k: dim32(op, k)?,
        c: dim32(op, c)?,
    })
}

/// `out[b, j, :] = src[b, idx[b, j], :]`: `src` `[B, N, C]` (float), `idx` `U32 [B, k]` ->
/// `[B, k, C]`. Indices may repeat. An index `>= N` yields a zero row (no out-of-bounds read).
pub fn gather_rows(ctx: &GpuContext, src: &Tensor, idx: &Tensor) -> Result<Tensor> {
    const OP: &str = "gather_rows";
    let dtype = float_dtype(OP, &[("src", src)])?;
    let p = check(OP, ("src", src), idx, None)?;
    let out = Tensor::empty(
        ctx,
        &[src.shape()[0], idx.shape()[1], src.shape()[2]],
        dtype,
    )?;
    let n = out.numel() as u64;
    ctx.dispatch(
        OP,
        &GATHER,
        dtype,
        bytemuck::bytes_of(&p),
        &[("src", src), ("idx", idx), ("out", &out)],
        ctx.grid(n.div_ceil(256)),
    )?;
    Ok(out)
}

/// `dst[b, idx[b, j], :] = src[b, j, :]`, in place on `dst` `[B, N, C]`; `src` `[B, k, C]`
/// (same float dtype), `idx` `U32 [B, k]`. Rows of `dst` not named by `idx` are unchanged.
/// Indices `>= N` are skipped by the kernel. With duplicate indices in one batch, which source
/// row lands is unspecified. `dst` must not share storage with `src` or `idx`.
pub fn scatter_rows(ctx: &GpuContext, dst: &Tensor, idx: &Tensor, src: &Tensor) -> Result<()> {
    const OP: &str = "scatter_rows";
    let dtype = float_dtype(OP, &[("dst", dst), ("src", src)])?;
    let p = check(OP, ("dst", dst), idx, Some(("src", src)))?;
    if dst.same_storage(src) || dst.same_storage(idx) {
        return Err(Error::shape(
            OP,
            format!("dst {:?} shares its buffer with src or idx", dst.shape()),
        ));
    }
    let n = src.numel() as u64;
    ctx.dispatch(
        OP,
        &SCATTER,
        dtype,
        bytemuck::bytes_of(&p),
        &[("dst", dst), ("idx", idx), ("src", src)],
        ctx.grid(n.div_ceil(256)),
    )
}

/// CPU reference of [`gather_rows`]: `src` `[batch, n, c]`, `idx` `[batch, k]` -> `[batch, k, c]`.
pub fn cpu_gather_rows(src: &[f32], batch: usize, n: usize, c: usize, idx: &[u32]) -> Vec<f32> {
    let k = idx.len() / batch;
    let mut out = vec![0f32; batch * k * c];
    for (row, &i) in idx.iter().enumerate() {
        let i = i as usize;
        if i < n {
            let b = row / k;
            out[row * c..][..c].copy_from_slice(&src[(b * n + i) * c..][..c]);
        }
    }
    out
}

/// CPU reference of [`scatter_rows`]: writes `src` `[batch, k, c]` into `dst` `[batch, n, c]`
/// at rows `idx` `[batch, k]` (skipping indices `>= n`; later rows win on duplicates).
pub fn cpu_scatter_rows(
    dst: &mut [f32],
    batch: usize,
    n: usize,
    c: usize,
    idx: &[u32],
    src: &[f32],
) {
    let k = idx.len() / batch;
    for (row, &i) in idx.iter().enumerate() {
        let i = i as usize;
        if i < n {
            let b = row / k;
            dst[(b * n + i) * c..][..c].copy_from_slice(&src[row * c..][..c]);
        }
    }
}
