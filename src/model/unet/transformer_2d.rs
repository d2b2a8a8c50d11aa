//! `Transformer2DModel` (diffusers `transformer_2d.py`): a stack of transformer blocks on the
//! feature map's tokens, where AT-EDM prunes and ToMe merges.

use crate::error::Result;
use crate::gpu::GpuContext;
use crate::model::config::UNetConfig;
use crate::model::weights::WeightLoader;
use crate::nn::{GroupNorm, Linear};
use crate::ops::elementwise::{self, BinaryOp};
use crate::ops::{gather, layout};
use crate::prune::gwpr;
use crate::prune::schedule::StackPrune;
use crate::prune::tome::{self, TomeSettings};
use crate::prune::Recovery;
use crate::tensor::Tensor;

use super::attention::{AttentionMap, BasicTransformerBlock};

/// What a stack returns: its output, its AT-EDM record when pruned, and ToMe's merged row of
/// every token per merged block.
pub struct StackOutput {
    /// `[B, C, H, W]`, the residual included.
    pub output: Tensor,
    /// AT-EDM's decisions, when the stack was pruned.
    pub record: Option<StackRecord>,
    /// ToMe: `(block index in the stack, slot [B, N] u32)` per merged block.
    pub merges: Vec<(usize, Tensor)>,
}

/// `Transformer2DModel` with linear projections.
pub struct Transformer2DModel {
    /// `norm`: `GroupNorm` (eps 1e-6) on the input feature map.
    pub norm: GroupNorm,
    /// `proj_in`: `C -> C` on the `[B, H*W, C]` tokens.
    pub proj_in: Linear,
    /// `transformer_blocks`, `transformer_layers_per_block` of them for the stack's level.
    pub transformer_blocks: Vec<BasicTransformerBlock>,
    /// `proj_out`: `C -> C`, before the tokens go back to `[B, C, H, W]`.
    pub proj_out: Linear,
}

impl Transformer2DModel {
    pub(crate) fn load(
        l: &mut WeightLoader,
        p: &str,
        cfg: &UNetConfig,
        dim: usize,
        depth: usize,
        heads: usize,
    ) -> Self {
        Transformer2DModel {
            // diffusers hard-codes eps 1e-6 for this GroupNorm.
            norm: GroupNorm::load(l, &format!("{p}.norm"), dim, cfg.norm_num_groups, 1e-6),
            proj_in: Linear::load(l, &format!("{p}.proj_in"), dim, dim, true),
            transformer_blocks: (0..depth)
                .map(|i| {
                    BasicTransformerBlock::load(
                        l,
                        &format!("{p}.transformer_blocks.{i}"),
                        dim,
                        cfg.cross_attention_dim,
                        heads,
                    )
                })
                .collect(),
            proj_out: Linear::load(l, &format!("{p}.proj_out"), dim, dim, true),
        }
    }

    /// `x [B, C, H, W]` -> `[B, C, H, W]` (with the residual `x`). With `prune`, AT-EDM as
    /// docs/pruning.md defines it: block p's head-mean self-attention map gives G-WPR scores and
    /// the kept tokens; blocks after p run on the kept tokens only. Recovery
    /// [`Recovery::AttnCopy`]: `proj_out` on the kept rows, and every pruned token copies the
    /// output of the kept token it attended to most. [`Recovery::CosDelta`]: every pruned token
    /// keeps its state after block p plus the update of its most cosine-similar kept token,
    /// and `proj_out` runs on all tokens.
    pub(crate) fn forward(
        &self,
        ctx: &GpuContext,
        x: &Tensor,
        context: &Tensor,
        mode: Option<&StackMode>,
    ) -> Result<StackOutput> {
        let s = x.shape();
        let (b, c, hw) = (s[0], s[1], s[2] * s[3]);
        let h = self.norm.forward(ctx, x)?;
        let h = layout::transpose_last2(ctx, &h.reshape(&[b, c, hw])?)?;
        let mut h = self.proj_in.forward(ctx, &h, None)?;
        let mut record = None;
        let mut recover = None;
        let mut merges = Vec::new();
        let prune = match mode {
            Some(StackMode::AtEdm(p)) => Some(p),
            _ => None,
        };
        for (i, block) in self.transformer_blocks.iter().enumerate() {
            if let Some(StackMode::Tome {
                settings,
                first_block,
                step,
            }) = mode
            {
                let site = tome::BlockSite {
                    h: s[2],
                    w: s[3],
                    block_id: first_block + i as u32,
                    step: *step,
                };
                let (next, slot) = block.forward_tome(ctx, &h, context, &site, settings)?;
                h = next;
                merges.extend(slot.map(|s| (i, s)));
                continue;
            }
            let map = if prune.is_some_and(|p| p.block == i) {
                AttentionMap::HeadMean
            } else {
                AttentionMap::Skip
            };
            let (next, map) = block.forward(ctx, &h, context, map)?;
            h = next;
            if let (Some(p), Some(map)) = (prune, map) {
                let _scope = ctx.profile_scope("atedm");
                let scores = gwpr::gwpr(ctx, &map, p.iters)?;
                let kept = gwpr::top_k(ctx, &scores, p.keep)?;
                let kept_h = gather::gather_rows(ctx, &h, &kept)?;
                recover = Some(match p.recovery {
                    Recovery::AttnCopy => Recover::Copy(gwpr::recover_index(ctx, &map, &kept)?),
                    Recovery::CosDelta => Recover::Delta {
                        index: gwpr::cos_recover_index(ctx, &h, &kept)?,
                        all: h,
                        kept: kept.clone(),
                        kept_before: kept_h.clone(),
                    },
                });
                h = kept_h;
                record = Some(StackRecord { kept, scores });
            }
        }
        let h = match recover {
            None => self.proj_out.forward(ctx, &h, None)?,
            Some(Recover::Copy(index)) => {
                let h = self.proj_out.forward(ctx, &h, None)?;
                let _scope = ctx.profile_scope("atedm");
                gather::gather_rows(ctx, &h, &index)?
            }
            Some(Recover::Delta {
                index,
                all,
                kept,
                kept_before,
            }) => {
                let full = {
                    let _scope = ctx.profile_scope("atedm");
                    // Each token's own state plus its nearest kept token's update; the kept
                    // rows then get their updated states exactly.
                    let update = elementwise::binary(ctx, &h, &kept_before, BinaryOp::Sub)?;
                    let update = gather::gather_rows(ctx, &update, &index)?;
                    let full =
                        elementwise::binary(ctx, &all, &update, BinaryOp::Add { alpha: 1.0 })?;
                    gather::scatter_rows(ctx, &full, &kept, &h)?;
                    full
                };
                self.proj_out.forward(ctx, &full, None)?
            }
        };
        let h = layout::transpose_last2(ctx, &h)?.reshape(s)?;
        Ok(StackOutput {
            output: elementwise::add(ctx, &h, x)?,
            record,
            merges,
        })
    }
}

/// How the pruned tokens of a stack get their output back (see [`Recovery`]).
enum Recover {
    /// Copy the output row at these positions of the kept rows, `[B, N]`.
    Copy(Tensor),
    /// Cos-delta: `all` (every token after block p) plus the update of the kept row at
    /// `index` (`[B, N]`), the update being the later blocks' output minus `kept_before`.
    Delta {
        index: Tensor,
        all: Tensor,
        kept: Tensor,
        kept_before: Tensor,
    },
}

/// What runs in one stack at this forward.
#[derive(Clone, Copy, Debug)]
pub enum StackMode {
    /// AT-EDM: after pruning block `p` ([`StackPrune::block`]), keep the tokens its
    /// self-attention map ranks highest.
    AtEdm(StackPrune),
    /// ToMe: merge tokens around the chosen sub-layers of each block it acts on.
    Tome {
        /// What to merge and how much.
        settings: TomeSettings,
        /// Index of the stack's first block among all transformer blocks (forward order).
        first_block: u32,
        /// Denoising step index (0-based), mixed into the seed of random destinations.
        step: u32,
    },
}

/// What a pruned stack decided: kept token indices `[B, k]` (u32, ascending) and the G-WPR
/// importance `[B, N]` (f32). Both stay on the GPU.
pub struct StackRecord {
    /// Kept token indices `[B, k]` (u32, ascending).
    pub kept: Tensor,
    /// G-WPR importance of every token `[B, N]` (f32).
    pub scores: Tensor,
}
