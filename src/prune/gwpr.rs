//! AT-EDM's per-stack pruning decisions on the GPU: G-WPR importance from the head-mean
//! attention map, top-k kept-token indices, and the recovery index of every token.
//! No readback: the results stay on the GPU for the gather/scatter that follow.

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu::{GpuContext, Kernel};
use crate::ops::{dim32, float_dtype};
use crate::tensor::{DType, Tensor};

crate::shader_family!(pub SHADER, "prune");
const GWPR_STEP: Kernel = SHADER.kernel("gwpr_step");
const TOPK_FLAGS: Kernel = SHADER.kernel("topk_flags");
const TOPK_COMPACT: Kernel = SHADER.kernel("topk_compact");
const RECOVER_INDEX: Kernel = SHADER.kernel("recover_index");
const COS_RECOVER_INDEX: Kernel = SHADER.kernel("cos_recover_index");

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct PruneParams {
    n: u32,
    batch: u32,
    k: u32,
    /// Channels (`cos_recover_index` only).
    c: u32,
}

fn map_dims(op: &'static str, map: &Tensor) -> Result<(usize, usize)> {
    float_dtype(op, &[("map", map)])?;
    let s = map.shape();
    if s.len() != 3 || s[1] != s[2] {
        return Err(Error::shape(
            op,
            format!("map must be [B, N, N], got {s:?}"),
        ));
    }
    Ok((s[0], s[1]))
}

/// Checks kept indices `[b, k]` (u32, 1 <= k <= n) and returns k.
fn kept_count(op: &'static str, kept: &Tensor, b: usize, n: usize) -> Result<usize> {
    let ks = kept.shape();
    if kept.dtype() != DType::U32 || ks.len() != 2 || ks[0] != b || ks[1] == 0 || ks[1] > n {
        return Err(Error::shape(
            op,
            format!(
                "kept must be u32 [{b}, k <= {n}], got {ks:?} {}",
                kept.dtype()
            ),
        ));
    }
    Ok(ks[1])
}

fn params(op: &'static str, b: usize, n: usize, k: usize) -> Result<PruneParams> {
    Ok(PruneParams {
        n: dim32(op, n)?,
        batch: dim32(op, b)?,
        k: dim32(op, k)?,
        c: 0,
    })
}

/// G-WPR importance `[B, N]` (f32): `s0 = 1/N`, `s(t+1)[j] = sum_i A[b,i,j] s(t)[i]`, `iters`
/// times (1 = the column mean).
pub fn gwpr(ctx: &GpuContext, map: &Tensor, iters: usize) -> Result<Tensor> {
    const OP: &str = "gwpr";
    let (b, n) = map_dims(OP, map)?;
    if iters == 0 {
        return Err(Error::Invalid("G-WPR needs at least one iteration".into()));
    }
    let p = params(OP, b, n, n)?;
    let mut s = Tensor::from_f32(ctx, &vec![1.0 / n as f32; b * n], &[b, n], DType::F32)?;
    for _ in 0..iters {
        let next = Tensor::empty(ctx, &[b, n], DType::F32)?;
        let grid = ctx.grid((b * n).div_ceil(64) as u64);
        ctx.dispatch(
            OP,
            &GWPR_STEP,
            map.dtype(),
            bytemuck::bytes_of(&p),
            &[("map", map), ("s", &s), ("out", &next)],
            grid,
        )?;
        s = next;
    }
    Ok(s)
}

/// Indices `[B, k]` (u32, ascending) of the `k` highest scores per row of `scores [B, N]`
/// (f32); ties go to the lower index.
pub fn top_k(ctx: &GpuContext, scores: &Tensor, k: usize) -> Result<Tensor> {
    const OP: &str = "top_k";
    let s = scores.shape();
    if scores.dtype() != DType::F32 || s.len() != 2 {
        return Err(Error::shape(
            OP,
            format!("scores must be f32 [B, N], got {s:?} {}", scores.dtype()),
        ));
    }
    let (b, n) = (s[0], s[1]);
    if k == 0 || k > n {
        return Err(Error::Invalid(format!("top_k: k = {k} outside 1..={n}")));
    }
    let p = params(OP, b, n, k)?;
    let flags = top_k_flags(ctx, scores, k)?;
    let idx = Tensor::empty(ctx, &[b, k], DType::U32)?;
    let grid = ctx.grid((b * n).div_ceil(64) as u64);
    ctx.dispatch(
        OP,
        &TOPK_COMPACT,
        DType::F32,
        bytemuck::bytes_of(&p),
        &[("flags", &flags), ("idx", &idx)],
        grid,
    )?;
    Ok(idx)
}

/// Flags `[B, N]` (u32, 1 = among the `k` highest of `scores [B, N]` f32, ties to the lower
/// index); the first pass of [`top_k`]. Shapes are the caller's to check.
pub(crate) fn top_k_flags(ctx: &GpuContext, scores: &Tensor, k: usize) -> Result<Tensor> {
    const OP: &str = "top_k";
    let (b, n) = (scores.shape()[0], scores.shape()[1]);
    let p = params(OP, b, n, k)?;
    let flags = Tensor::empty(ctx, &[b, n], DType::U32)?;
    ctx.dispatch(
        OP,
        &TOPK_FLAGS,
        DType::F32,
        bytemuck::bytes_of(&p),
        &[("scores", scores), ("flags", &flags)],
        ctx.grid((b * n).div_ceil(64) as u64),
    )?;
    Ok(flags)
}

/// For every token `i` of `map [B, N, N]`, the position in `kept [B, k]` (ascending) of the
/// kept token it attended to most (its own position when kept; ties: the lower index).
/// Recovery is then `gather_rows(kept_rows, index)`.
pub fn recover_index(ctx: &GpuContext, map: &Tensor, kept: &Tensor) -> Result<Tensor> {
    const OP: &str = "recover_index";
    let (b, n) = map_dims(OP, map)?;
    let k = kept_count(OP, kept, b, n)?;
    let p = params(OP, b, n, k)?;
    let out = Tensor::empty(ctx, &[b, n], DType::U32)?;
    let grid = ctx.grid((b * n).div_ceil(64) as u64);
    ctx.dispatch(
        OP,
        &RECOVER_INDEX,
        map.dtype(),
        bytemuck::bytes_of(&p),
        &[("map", map), ("kept", kept), ("out", &out)],
        grid,
    )?;
    Ok(out)
}

/// The recovery index of recovery [`Recovery::CosDelta`](crate::prune::Recovery::CosDelta):
/// for every token of `h [B, N, C]` (the states after the pruning block), the position in
/// `kept [B, k]` of the kept token whose state is most cosine-similar to its own (itself when
/// kept; ties: the lower position). `[B, N]` u32.
pub fn cos_recover_index(ctx: &GpuContext, h: &Tensor, kept: &Tensor) -> Result<Tensor> {
    const OP: &str = "cos_recover_index";
    float_dtype(OP, &[("h", h)])?;
    let hs = h.shape();
    if hs.len() != 3 {
        return Err(Error::shape(OP, format!("h must be [B, N, C], got {hs:?}")));
    }
    let (b, n, c) = (hs[0], hs[1], hs[2]);
    let k = kept_count(OP, kept, b, n)?;
    let p = PruneParams {
        c: dim32(OP, c)?,
        ..params(OP, b, n, k)?
    };
    let out = Tensor::empty(ctx, &[b, n], DType::U32)?;
    let grid = ctx.grid((b * n).div_ceil(64) as u64);
    ctx.dispatch(
        OP,
        &COS_RECOVER_INDEX,
        h.dtype(),
        bytemuck::bytes_of(&p),
        &[("h", h), ("kept", kept), ("out", &out)],
        grid,
    )?;
    Ok(out)
}

/// CPU reference of [`cos_recover_index`] (f64 sums).
pub fn cpu_cos_recover_index(
    h: &[f32],
    b: usize,
    n: usize,
    c: usize,
    kept: &[u32],
    k: usize,
) -> Vec<u32> {
    let mut out = Vec::with_capacity(b * n);
    for bi in 0..b {
        let kb = &kept[bi * k..(bi + 1) * k];
        let row = |i: usize| &h[(bi * n + i) * c..(bi * n + i + 1) * c];
        for i in 0..n {
            if let Some(q) = kb.iter().position(|&j| j as usize == i) {
                out.push(q as u32);
                continue;
            }
            let (mut best, mut best_v) = (0u32, f64::NEG_INFINITY);
            for (q, &j) in kb.iter().enumerate() {
                let (hi, hj) = (row(i), row(j as usize));
                let dot: f64 = hi.iter().zip(hj).map(|(a, b)| *a as f64 * *b as f64).sum();
                let nn: f64 = hj.iter().map(|v| *v as f64 * *v as f64).sum();
                let v = if nn > 0.0 { dot / nn.sqrt() } else { 0.0 };
                if v > best_v {
                    best_v = v;
                    best = q as u32;
                }
            }
            out.push(best);
        }
    }
    out
}

/// CPU reference of [`gwpr`] (f64 sums).
pub fn cpu_gwpr(map: &[f32], b: usize, n: usize, iters: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(b * n);
    for bi in 0..b {
        let a = &map[bi * n * n..(bi + 1) * n * n];
        let mut s = vec![1.0 / n as f64; n];
        for _ in 0..iters {
            let mut next = vec![0f64; n];
            for i in 0..n {
                for j in 0..n {
                    next[j] += a[i * n + j] as f64 * s[i];
                }
            }
            s = next;
        }
        out.extend(s.iter().map(|&v| v as f32));
    }
    out
}

/// CPU reference of [`top_k`].
pub fn cpu_top_k(scores: &[f32], b: usize, n: usize, k: usize) -> Vec<u32> {
    let mut out = Vec::with_capacity(b * k);
    for bi in 0..b {
        let s = &scores[bi * n..(bi + 1) * n];
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&x, &y| s[y].total_cmp(&s[x]).then(x.cmp(&y)));
        let mut kept: Vec<u32> = order[..k].iter().map(|&i| i as u32).collect();
        kept.sort_unstable();
        out.extend(kept);
    }
    out
}

/// CPU reference of [`recover_index`].
pub fn cpu_recover_index(map: &[f32], b: usize, n: usize, kept: &[u32], k: usize) -> Vec<u32> {
    let mut out = Vec::with_capacity(b * n);
    for bi in 0..b {
        let kk = &kept[bi * k..(bi + 1) * k];
        for i in 0..n {
            let r = match kk.iter().position(|&j| j as usize == i) {
                Some(q) => q,
                None => {
                    let row = &map[(bi * n + i) * n..(bi * n + i + 1) * n];
                    let mut best = 0;
                    for q in 1..k {
                        if row[kk[q] as usize] > row[kk[best] as usize] {
                            best = q;
                        }
                    }
                    best
                }
            };
            out.push(r as u32);
        }
    }
    out
}
