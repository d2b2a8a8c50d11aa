//! ToMe (token merging), the baseline AT-EDM is compared with at equal FLOPs: tomesd's
//! bipartite soft matching on a 2x2-window grid, made deterministic (definition in
//! `docs/pruning.md`, with the choices fixed here):
//!
//! - Per `BasicTransformerBlock` of the selected stacks (downsample factor `2^(level-1)` at most
//!   `max_downsample`), from the block input `x [B, N, C]` on its `h x w` grid.
//! - Destinations: one token per 2x2 window (`h/2 x w/2` windows; a leftover last row or column
//!   holds sources only). The window's offset `o` is 0 (top-left) in deterministic mode, else
//!   `mix32(seed ^ mix32(block_id ^ mix32(step ^ mix32(window))))  & 3` with `mix32` the
//!   lowbias32 hash and `block_id` the block's index among all transformer blocks in forward
//!   order. The offset picks row `o >> 1`, column `o & 1` of the window. Destination and source
//!   lists are in ascending token order.
//! - Cosine similarity of `x` rows (f32 here, f64 in the Python reference); each source's best
//!   destination is its first argmax. The `r = min(floor(ratio * N), sources)` sources with the
//!   highest best similarity (ties: lower source first) merge into their destinations.
//! - Merged rows: the unmerged sources (ascending), then one row per destination holding the
//!   plain mean of the destination and its merged sources. Unmerge copies each row back to all
//!   of its tokens. A block runs `x = u(attn1(m(norm1(x)))) + x`, and with `merge_crossattn` /
//!   `merge_mlp` the same around attn2 and the feed-forward, all from one plan per block.
//!
//! Everything runs on the GPU: the plan is a slot per token (its merged row) plus a CSR of the
//! tokens of every merged row, so merge is a segment mean and unmerge a gather.

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu::{GpuContext, Kernel};
use crate::ops::fill::mix32;
use crate::ops::matmul::{self, MatmulOptions};
use crate::ops::{dim32, float_dtype};
use crate::tensor::{DType, Tensor};

crate::shader_family!(pub SHADER, "tome");
const ROLES: Kernel = SHADER.kernel("tome_roles");
const METRIC: Kernel = SHADER.kernel("tome_metric");
const MATCH: Kernel = SHADER.kernel("tome_match");
const SLOTS: Kernel = SHADER.kernel("tome_slots");
const OFFSETS: Kernel = SHADER.kernel("tome_offsets");
const MEMBERS: Kernel = SHADER.kernel("tome_members");
const MERGE: Kernel = SHADER.kernel("tome_merge");
const UNMERGE_ADD: Kernel = SHADER.kernel("tome_unmerge_add");

/// ToMe's options (tomesd's names where it has one).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TomeSettings {
    /// Fraction of a block's tokens merged away: `r = floor(ratio * N)`, at most the number of
    /// sources (3/4 of the tokens on an even grid).
    pub ratio: f64,
    /// Merge around the self-attention (tomesd `merge_attn`).
    pub merge_attn: bool,
    /// Merge around the cross-attention (`merge_crossattn`).
    pub merge_crossattn: bool,
    /// Merge around the feed-forward (`merge_mlp`).
    pub merge_mlp: bool,
    /// Stacks whose downsample factor (1 at the latent resolution) is at most this are merged.
    pub max_downsample: usize,
    /// Random destination per window (seeded) instead of the top-left token.
    pub random: bool,
    /// Seed of the destination choice when `random` is set (the `seed` of the offset hash).
    pub seed: u32,
}

impl Default for TomeSettings {
    fn default() -> Self {
        TomeSettings {
            ratio: 0.5,
            merge_attn: true,
            merge_crossattn: false,
            merge_mlp: false,
            max_downsample: 4,
            random: true,
            seed: 0,
        }
    }
}

impl TomeSettings {
    /// Checks the ratio and that something is merged.
    pub fn validate(&self) -> Result<()> {
        if !(self.ratio > 0.0 && self.ratio <= 1.0) {
            return Err(Error::Invalid(format!(
                "ToMe merge ratio must be in (0, 1], got {}",
                self.ratio
            )));
        }
        if !(self.merge_attn || self.merge_crossattn || self.merge_mlp) {
            return Err(Error::Invalid(
                "ToMe merges around no layer: enable attn1, attn2 or mlp".into(),
            ));
        }
        Ok(())
    }

    /// Whether a stack at `level` (1 = latent resolution) is merged.
    pub fn selects_level(&self, level: usize) -> bool {
        level >= 1 && (1usize << (level - 1).min(31)) <= self.max_downsample
    }
}

/// `(destinations, sources)` of an `h x w` grid.
pub fn grid_roles(h: usize, w: usize) -> (usize, usize) {
    let ndst = (h / 2) * (w / 2);
    (ndst, h * w - ndst)
}

/// Sources merged in a block of `h x w` tokens: `min(floor(ratio * N), sources)`.
pub fn merged_count(h: usize, w: usize, ratio: f64) -> usize {
    let n = h * w;
    let r = (ratio * n as f64).floor().max(0.0) as usize;
    r.min(grid_roles(h, w).1)
}

/// Where a block sits, for the destination choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockSite {
    /// Height of the block's token grid.
    pub h: usize,
    /// Width of the block's token grid.
    pub w: usize,
    /// Index among all transformer blocks of the UNet, in forward order.
    pub block_id: u32,
    /// Denoising step index.
    pub step: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct TomeParams {
    batch: u32,
    n: u32,
    c: u32,
    h: u32,
    w: u32,
    nsrc: u32,
    ndst: u32,
    r: u32,
    nout: u32,
    seed: u32,
    block_id: u32,
    step: u32,
    random: u32,
    _pad: [u32; 3],
}

/// One block's merge plan, on the GPU.
pub struct MergePlan {
    /// `[B, N]` u32: the merged row of every token.
    pub slot: Tensor,
    /// `[B, n_out + 1]` u32: first member position of every merged row.
    offsets: Tensor,
    /// `[B, N]` u32: tokens grouped by merged row, ascending within a row.
    members: Tensor,
    /// Merged sources.
    pub r: usize,
    /// Merged rows (`N - r`).
    pub n_out: usize,
    params: TomeParams,
}

fn params(
    op: &'static str,
    b: usize,
    c: usize,
    site: &BlockSite,
    s: &TomeSettings,
    r: usize,
) -> Result<TomeParams> {
    let (ndst, nsrc) = grid_roles(site.h, site.w);
    let n = site.h * site.w;
    Ok(TomeParams {
        batch: dim32(op, b)?,
        n: dim32(op, n)?,
        c: dim32(op, c)?,
        h: dim32(op, site.h)?,
        w: dim32(op, site.w)?,
        nsrc: dim32(op, nsrc)?,
        ndst: dim32(op, ndst)?,
        r: dim32(op, r)?,
        nout: dim32(op, n - r)?,
        seed: s.seed,
        block_id: site.block_id,
        step: site.step,
        random: s.random as u32,
        _pad: [0; 3],
    })
}

/// Destination then source token indices `[N]` (u32, each list ascending) of a block.
pub fn roles(ctx: &GpuContext, site: &BlockSite, s: &TomeSettings) -> Result<Tensor> {
    const OP: &str = "tome_roles";
    if site.h == 0 || site.w == 0 {
        return Err(Error::shape(
            OP,
            format!("empty grid {}x{}", site.h, site.w),
        ));
    }
    let p = params(OP, 1, 1, site, s, 0)?;
    let n = site.h * site.w;
    let out = Tensor::empty(ctx, &[n], DType::U32)?;
    ctx.dispatch(
        OP,
        &ROLES,
        DType::F32,
        bytemuck::bytes_of(&p),
        &[("roles", &out)],
        ctx.grid(n.div_ceil(64) as u64),
    )?;
    Ok(out)
}

/// The merge plan of a block with input `x [B, N, C]` (N = h w), or `None` when nothing is
/// merged (`r = 0`: too few tokens or a tiny ratio).
pub fn plan(
    ctx: &GpuContext,
    x: &Tensor,
    site: &BlockSite,
    s: &TomeSettings,
) -> Result<Option<MergePlan>> {
    const OP: &str = "tome_plan";
    let _scope = ctx.profile_scope("tome");
    let dtype = float_dtype(OP, &[("x", x)])?;
    let sh = x.shape();
    if sh.len() != 3 || sh[1] != site.h * site.w {
        return Err(Error::shape(
            OP,
            format!(
                "x must be [B, {}, C] for a {}x{} grid, got {sh:?}",
                site.h * site.w,
                site.h,
                site.w
            ),
        ));
    }
    s.validate()?;
    let (b, n, c) = (sh[0], sh[1], sh[2]);
    let r = merged_count(site.h, site.w, s.ratio);
    if r == 0 {
        return Ok(None);
    }
    let (ndst, nsrc) = grid_roles(site.h, site.w);
    let p = params(OP, b, c, site, s, r)?;
    let pb = bytemuck::bytes_of(&p);
    let roles = roles(ctx, site, s)?;
    let md = Tensor::empty(ctx, &[b, ndst, c], DType::F32)?;
    let ms = Tensor::empty(ctx, &[b, nsrc, c], DType::F32)?;
    ctx.dispatch(
        OP,
        &METRIC,
        dtype,
        pb,
        &[("x", x), ("roles", &roles), ("dst", &md), ("src", &ms)],
        ctx.grid((b * n) as u64),
    )?;
    let scores = matmul::matmul(
        ctx,
        &ms,
        &md,
        &MatmulOptions {
            trans_b: true,
            ..Default::default()
        },
    )?;
    let best = Tensor::empty(ctx, &[b, nsrc], DType::F32)?;
    let idx = Tensor::empty(ctx, &[b, nsrc], DType::U32)?;
    ctx.dispatch(
        OP,
        &MATCH,
        DType::F32,
        pb,
        &[("scores", &scores), ("best", &best), ("idx", &idx)],
        ctx.grid((b * nsrc).div_ceil(64) as u64),
    )?;
    let flags = super::gwpr::top_k_flags(ctx, &best, r)?;
    let slot = Tensor::empty(ctx, &[b, n], DType::U32)?;
    ctx.dispatch(
        OP,
        &SLOTS,
        DType::F32,
        pb,
        &[
            ("roles", &roles),
            ("flags", &flags),
            ("idx", &idx),
            ("slot", &slot),
        ],
        ctx.grid((b * n).div_ceil(64) as u64),
    )?;
    let n_out = n - r;
    let offsets = Tensor::empty(ctx, &[b, n_out + 1], DType::U32)?;
    ctx.dispatch(
        OP,
        &OFFSETS,
        DType::F32,
        pb,
        &[("slot", &slot), ("offsets", &offsets)],
        ctx.grid((b * (n_out + 1)).div_ceil(64) as u64),
    )?;
    let members = Tensor::empty(ctx, &[b, n], DType::U32)?;
    ctx.dispatch(
        OP,
        &MEMBERS,
        DType::F32,
        pb,
        &[
            ("slot", &slot),
            ("offsets", &offsets),
            ("members", &members),
        ],
        ctx.grid((b * n).div_ceil(64) as u64),
    )?;
    Ok(Some(MergePlan {
        slot,
        offsets,
        members,
        r,
        n_out,
        params: p,
    }))
}

fn check_rows(op: &'static str, name: &str, t: &Tensor, b: u32, rows: u32, c: u32) -> Result<()> {
    if t.shape() != [b as usize, rows as usize, c as usize] {
        return Err(Error::shape(
            op,
            format!("'{name}' must be [{b}, {rows}, {c}], got {:?}", t.shape()),
        ));
    }
    Ok(())
}

/// `m(y)`: `y [B, N, C]` -> `[B, N - r, C]`, every merged row the mean of its tokens.
pub fn merge(ctx: &GpuContext, y: &Tensor, plan: &MergePlan) -> Result<Tensor> {
    const OP: &str = "tome_merge";
    let _scope = ctx.profile_scope("tome");
    let dtype = float_dtype(OP, &[("y", y)])?;
    let mut p = plan.params;
    p.c = dim32(OP, y.shape().last().copied().unwrap_or(0))?;
    check_rows(OP, "y", y, p.batch, p.n, p.c)?;
    let out = Tensor::empty(ctx, &[y.shape()[0], plan.n_out, y.shape()[2]], dtype)?;
    ctx.dispatch(
        OP,
        &MERGE,
        dtype,
        bytemuck::bytes_of(&p),
        &[
            ("y", y),
            ("offsets", &plan.offsets),
            ("members", &plan.members),
            ("out", &out),
        ],
        ctx.grid((out.numel() as u64).div_ceil(64)),
    )?;
    Ok(out)
}

/// `u(z) + residual`: `z [B, N - r, C]` copied back to every token, plus `residual [B, N, C]`.
pub fn unmerge_add(
    ctx: &GpuContext,
    z: &Tensor,
    plan: &MergePlan,
    residual: &Tensor,
) -> Result<Tensor> {
    const OP: &str = "tome_unmerge_add";
    let _scope = ctx.profile_scope("tome");
    let dtype = float_dtype(OP, &[("z", z), ("residual", residual)])?;
    let mut p = plan.params;
    p.c = dim32(OP, z.shape().last().copied().unwrap_or(0))?;
    check_rows(OP, "z", z, p.batch, p.nout, p.c)?;
    check_rows(OP, "residual", residual, p.batch, p.n, p.c)?;
    let out = Tensor::empty(ctx, residual.shape(), dtype)?;
    ctx.dispatch(
        OP,
        &UNMERGE_ADD,
        dtype,
        bytemuck::bytes_of(&p),
        &[
            ("z", z),
            ("slot", &plan.slot),
            ("residual", residual),
            ("out", &out),
        ],
        ctx.grid((out.numel() as u64).div_ceil(64)),
    )?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// CPU references
// ---------------------------------------------------------------------------------------------

/// CPU reference of [`roles`].
pub fn cpu_roles(site: &BlockSite, s: &TomeSettings) -> Vec<u32> {
    let (h, w) = (site.h, site.w);
    let (hs, ws) = (h / 2, w / 2);
    let mut is_dst = vec![false; h * w];
    for wy in 0..hs {
        for wx in 0..ws {
            let o = if s.random {
                let win = (wy * ws + wx) as u32;
                mix32(s.seed ^ mix32(site.block_id ^ mix32(site.step ^ mix32(win)))) & 3
            } else {
                0
            } as usize;
            is_dst[(2 * wy + (o >> 1)) * w + 2 * wx + (o & 1)] = true;
        }
    }
    let dst = (0..h * w).filter(|&t| is_dst[t]);
    let src = (0..h * w).filter(|&t| !is_dst[t]);
    dst.chain(src).map(|t| t as u32).collect()
}

/// CPU reference of [`plan`]: the slot of every token `[B, N]` (decisions in f64), plus the
/// smallest relative gap of any decision (best vs second-best destination of a merged source,
/// and the r-th vs (r+1)-th best score) so callers can tell near-ties.
pub fn cpu_slots(
    x: &[f32],
    b: usize,
    c: usize,
    site: &BlockSite,
    s: &TomeSettings,
) -> (Vec<u32>, f64) {
    let n = site.h * site.w;
    let (ndst, nsrc) = grid_roles(site.h, site.w);
    let r = merged_count(site.h, site.w, s.ratio);
    let roles = cpu_roles(site, s);
    let (dst, src) = roles.split_at(ndst);
    let mut slots = Vec::with_capacity(b * n);
    let mut min_gap = f64::INFINITY;
    for bi in 0..b {
        let row = |t: u32| -> Vec<f64> {
            let v = &x[(bi * n + t as usize) * c..(bi * n + t as usize + 1) * c];
            let norm = v
                .iter()
                .map(|&a| a as f64 * a as f64)
                .sum::<f64>()
                .sqrt()
                .max(1e-12);
            v.iter().map(|&a| a as f64 / norm).collect()
        };
        let md: Vec<Vec<f64>> = dst.iter().map(|&t| row(t)).collect();
        let mut best = vec![(f64::NEG_INFINITY, 0usize, f64::NEG_INFINITY); nsrc];
        for (si, &t) in src.iter().enumerate() {
            let m = row(t);
            for (d, dv) in md.iter().enumerate() {
                let v: f64 = m.iter().zip(dv).map(|(a, b)| a * b).sum();
                let e = &mut best[si];
                if v > e.0 {
                    *e = (v, d, e.0);
                } else if v > e.2 {
                    e.2 = v;
                }
            }
        }
        let mut order: Vec<usize> = (0..nsrc).collect();
        order.sort_by(|&p, &q| best[q].0.total_cmp(&best[p].0).then(p.cmp(&q)));
        let mut merged = vec![false; nsrc];
        for &si in &order[..r] {
            merged[si] = true;
            if ndst > 1 {
                min_gap =
                    min_gap.min((best[si].0 - best[si].2).abs() / best[si].0.abs().max(1e-12));
            }
        }
        if r > 0 && r < nsrc {
            let (a, z) = (best[order[r - 1]].0, best[order[r]].0);
            min_gap = min_gap.min((a - z).abs() / a.abs().max(1e-12));
        }
        let nunm = nsrc - r;
        let mut slot = vec![0u32; n];
        for (d, &t) in dst.iter().enumerate() {
            slot[t as usize] = (nunm + d) as u32;
        }
        let mut u = 0;
        for (si, &t) in src.iter().enumerate() {
            slot[t as usize] = if merged[si] {
                (nunm + best[si].1) as u32
            } else {
                u += 1;
                (u - 1) as u32
            };
        }
        slots.extend(slot);
    }
    (slots, min_gap)
}

/// CPU reference of [`merge`] from slots: `y [B, N, C]` -> `[B, n_out, C]`.
pub fn cpu_merge(y: &[f32], b: usize, n: usize, c: usize, slot: &[u32], n_out: usize) -> Vec<f32> {
    let mut out = vec![0f64; b * n_out * c];
    let mut count = vec![0usize; b * n_out];
    for bi in 0..b {
        for t in 0..n {
            let o = bi * n_out + slot[bi * n + t] as usize;
            count[o] += 1;
            for ch in 0..c {
                out[o * c + ch] += y[(bi * n + t) * c + ch] as f64;
            }
        }
    }
    out.iter()
        .enumerate()
        .map(|(i, &v)| (v / count[i / c].max(1) as f64) as f32)
        .collect()
}

/// CPU reference of [`unmerge_add`].
pub fn cpu_unmerge_add(
    z: &[f32],
    b: usize,
    n: usize,
    c: usize,
    slot: &[u32],
    n_out: usize,
    residual: &[f32],
) -> Vec<f32> {
    let mut out = Vec::with_capacity(b * n * c);
    for bi in 0..b {
        for t in 0..n {
            let o = bi * n_out + slot[bi * n + t] as usize;
            for ch in 0..c {
                out.push(z[o * c + ch] + residual[(bi * n + t) * c + ch]);
            }
        }
    }
    out
}
