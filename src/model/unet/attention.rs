//! `Attention` and `BasicTransformerBlock` (diffusers `attention_processor.py`,
//! `attention.py`), with ToMe's merged variant of the block.

use crate::error::Result;
use crate::gpu::GpuContext;
use crate::model::weights::WeightLoader;
use crate::nn::{LayerNorm, Linear};
use crate::ops::activation;
use crate::ops::attention::{self, AttentionOptions};
use crate::prune::tome::{self, TomeSettings};
use crate::tensor::Tensor;

/// Whether an attention layer also returns its head-mean attention map (AT-EDM's input).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionMap {
    /// Only the attention output.
    Skip,
    /// The output and the head-mean map `[B, N, L]`.
    HeadMean,
}

/// diffusers `Attention` (no bias on q/k/v, bias on `to_out.0`).
pub struct Attention {
    /// `to_q`: `C -> C`, no bias.
    pub to_q: Linear,
    /// `to_k`: context width -> `C`, no bias.
    pub to_k: Linear,
    /// `to_v`: context width -> `C`, no bias.
    pub to_v: Linear,
    /// `to_out.0`: `C -> C`, with bias.
    pub to_out: Linear,
    /// Attention heads; the head width is `C / heads`.
    pub heads: usize,
}

impl Attention {
    pub(crate) fn load(
        l: &mut WeightLoader,
        p: &str,
        dim: usize,
        context_dim: usize,
        heads: usize,
    ) -> Self {
        Attention {
            to_q: Linear::load(l, &format!("{p}.to_q"), dim, dim, false),
            to_k: Linear::load(l, &format!("{p}.to_k"), context_dim, dim, false),
            to_v: Linear::load(l, &format!("{p}.to_v"), context_dim, dim, false),
            to_out: Linear::load(l, &format!("{p}.to_out.0"), dim, dim, true),
            heads,
        }
    }

    /// `x [B, N, C]` attends to `context [B, L, Cc]` (itself when `None`); adds `residual`.
    /// With [`AttentionMap::HeadMean`], also returns the head-mean attention map `[B, N, L]`.
    pub(crate) fn forward(
        &self,
        ctx: &GpuContext,
        x: &Tensor,
        context: Option<&Tensor>,
        residual: Option<&Tensor>,
        map: AttentionMap,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let kv = context.unwrap_or(x);
        let q = self.to_q.forward(ctx, x, None)?;
        let k = self.to_k.forward(ctx, kv, None)?;
        let v = self.to_v.forward(ctx, kv, None)?;
        let opts = AttentionOptions {
            heads: self.heads,
            scale: None,
            causal: false,
        };
        let (o, map) = if map == AttentionMap::HeadMean {
            let (o, map) = attention::attention_with_map(ctx, &q, &k, &v, &opts)?;
            (o, Some(map))
        } else {
            (attention::attention(ctx, &q, &k, &v, &opts)?, None)
        };
        Ok((self.to_out.forward(ctx, &o, residual)?, map))
    }
}

/// `BasicTransformerBlock`: self-attention, cross-attention, GEGLU feed-forward, each pre-LN
/// with a residual.
pub struct BasicTransformerBlock {
    /// `norm1` (eps 1e-5), before the self-attention.
    pub norm1: LayerNorm,
    /// `attn1`: self-attention.
    pub attn1: Attention,
    /// `norm2` (eps 1e-5), before the cross-attention.
    pub norm2: LayerNorm,
    /// `attn2`: cross-attention to the text embeddings (`cross_attention_dim` wide).
    pub attn2: Attention,
    /// `norm3` (eps 1e-5), before the feed-forward.
    pub norm3: LayerNorm,
    /// `ff.net.0.proj`: C -> 8C (GEGLU input, value and gate halves).
    pub ff_proj: Linear,
    /// `ff.net.2`: 4C -> C.
    pub ff_out: Linear,
}

impl BasicTransformerBlock {
    pub(crate) fn load(
        l: &mut WeightLoader,
        p: &str,
        dim: usize,
        context_dim: usize,
        heads: usize,
    ) -> Self {
        BasicTransformerBlock {
            norm1: LayerNorm::load(l, &format!("{p}.norm1"), dim, 1e-5),
            attn1: Attention::load(l, &format!("{p}.attn1"), dim, dim, heads),
            norm2: LayerNorm::load(l, &format!("{p}.norm2"), dim, 1e-5),
            attn2: Attention::load(l, &format!("{p}.attn2"), dim, context_dim, heads),
            norm3: LayerNorm::load(l, &format!("{p}.norm3"), dim, 1e-5),
            ff_proj: Linear::load(l, &format!("{p}.ff.net.0.proj"), dim, dim * 8, true),
            ff_out: Linear::load(l, &format!("{p}.ff.net.2"), dim * 4, dim, true),
        }
    }

    /// The block on `h [B, N, C]`; with [`AttentionMap::HeadMean`], also the head-mean
    /// self-attention map.
    pub(crate) fn forward(
        &self,
        ctx: &GpuContext,
        h: &Tensor,
        context: &Tensor,
        map: AttentionMap,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let n = self.norm1.forward(ctx, h)?;
        let (h, map) = self.attn1.forward(ctx, &n, None, Some(h), map)?;
        let n = self.norm2.forward(ctx, &h)?;
        let (h, _) = self
            .attn2
            .forward(ctx, &n, Some(context), Some(&h), AttentionMap::Skip)?;
        let n = self.norm3.forward(ctx, &h)?;
        let f = self.ff_proj.forward(ctx, &n, None)?;
        let f = activation::geglu(ctx, &f)?;
        Ok((self.ff_out.forward(ctx, &f, Some(&h))?, map))
    }

    /// The block with ToMe: one merge plan from the block input; each chosen sub-layer runs
    /// on the merged tokens, `x = u(layer(m(norm(x)))) + x`.
    pub(crate) fn forward_tome(
        &self,
        ctx: &GpuContext,
        h: &Tensor,
        context: &Tensor,
        site: &tome::BlockSite,
        t: &TomeSettings,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let Some(plan) = tome::plan(ctx, h, site, t)? else {
            return Ok((self.forward(ctx, h, context, AttentionMap::Skip)?.0, None));
        };
        let n = self.norm1.forward(ctx, h)?;
        let h = if t.merge_attn {
            let m = tome::merge(ctx, &n, &plan)?;
            let (a, _) = self
                .attn1
                .forward(ctx, &m, None, None, AttentionMap::Skip)?;
            tome::unmerge_add(ctx, &a, &plan, h)?
        } else {
            self.attn1
                .forward(ctx, &n, None, Some(h), AttentionMap::Skip)?
                .0
        };
        let n = self.norm2.forward(ctx, &h)?;
        let h = if t.merge_crossattn {
            let m = tome::merge(ctx, &n, &plan)?;
            let (a, _) = self
                .attn2
                .forward(ctx, &m, Some(context), None, AttentionMap::Skip)?;
            tome::unmerge_add(ctx, &a, &plan, &h)?
        } else {
            self.attn2
                .forward(ctx, &n, Some(context), Some(&h), AttentionMap::Skip)?
                .0
        };
        let n = self.norm3.forward(ctx, &h)?;
        let ff = |x: &Tensor, residual: Option<&Tensor>| -> Result<Tensor> {
            let f = self.ff_proj.forward(ctx, x, None)?;
            let f = activation::geglu(ctx, &f)?;
            self.ff_out.forward(ctx, &f, residual)
        };
        let out = if t.merge_mlp {
            let f = ff(&tome::merge(ctx, &n, &plan)?, None)?;
            tome::unmerge_add(ctx, &f, &plan, &h)?
        } else {
            ff(&n, Some(&h))?
        };
        Ok((out, Some(plan.slot)))
    }
}
