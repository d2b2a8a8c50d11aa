//! SD-XL `UNet2DConditionModel` on the GPU, structured like diffusers' modules so the two can
//! be read side by side (`ResnetBlock2D`, `Transformer2DModel`, `BasicTransformerBlock`, ...).

use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::model::config::{DownKind, UNetConfig, UpKind};
use crate::model::nn::{Conv2d, GroupNorm, LayerNorm, Linear};
use crate::model::weights::{ParamSpec, WeightLoader};
use crate::ops::activation::{self, Activation};
use crate::ops::attention::{self, AttentionOptions};
use crate::ops::elementwise;
use crate::ops::embedding::{self, TimestepEmbedding};
use crate::ops::{gather, layout};
use crate::prune::flops::{self, PruneMode, PruneSettings};
use crate::prune::gwpr;
use crate::prune::tome::{self, TomeSettings};
use crate::tensor::{DType, Tensor};

/// `TimestepEmbedding`: linear_1, SiLU, linear_2.
pub struct TimestepEmbeddingMlp {
    pub linear_1: Linear,
    pub linear_2: Linear,
}

impl TimestepEmbeddingMlp {
    fn load(l: &mut WeightLoader, p: &str, inp: usize, out: usize) -> Self {
        TimestepEmbeddingMlp {
            linear_1: Linear::load(l, &format!("{p}.linear_1"), inp, out, true),
            linear_2: Linear::load(l, &format!("{p}.linear_2"), out, out, true),
        }
    }

    fn forward(&self, ctx: &GpuContext, x: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        let h = self.linear_1.forward(ctx, x, None)?;
        let h = activation::activation(ctx, &h, Activation::Silu)?;
        self.linear_2.forward(ctx, &h, residual)
    }
}

/// `ResnetBlock2D` (time embedding added after conv1, "default" scale-shift).
pub struct ResnetBlock2D {
    pub norm1: GroupNorm,
    pub conv1: Conv2d,
    pub time_emb_proj: Linear,
    pub norm2: GroupNorm,
    pub conv2: Conv2d,
    pub conv_shortcut: Option<Conv2d>,
}

impl ResnetBlock2D {
    fn load(l: &mut WeightLoader, p: &str, cfg: &UNetConfig, inp: usize, out: usize) -> Self {
        let (g, eps) = (cfg.norm_num_groups, cfg.norm_eps);
        ResnetBlock2D {
            norm1: GroupNorm::load(l, &format!("{p}.norm1"), inp, g, eps),
            conv1: Conv2d::load(l, &format!("{p}.conv1"), inp, out, 3, 1, 1),
            time_emb_proj: Linear::load(
                l,
                &format!("{p}.time_emb_proj"),
                cfg.time_embed_dim(),
                out,
                true,
            ),
            norm2: GroupNorm::load(l, &format!("{p}.norm2"), out, g, eps),
            conv2: Conv2d::load(l, &format!("{p}.conv2"), out, out, 3, 1, 1),
            conv_shortcut: (inp != out)
                .then(|| Conv2d::load(l, &format!("{p}.conv_shortcut"), inp, out, 1, 1, 0)),
        }
    }

    /// `x [B, Cin, H, W]`, `emb_silu = SiLU(emb) [B, T]` -> `[B, Cout, H, W]`.
    fn forward(&self, ctx: &GpuContext, x: &Tensor, emb_silu: &Tensor) -> Result<Tensor> {
        let h = self.norm1.forward(ctx, x, true)?;
        let h = self.conv1.forward(ctx, &h, None)?;
        let t = self.time_emb_proj.forward(ctx, emb_silu, None)?;
        let (b, c) = (t.shape()[0], t.shape()[1]);
        let h = elementwise::add(ctx, &h, &t.reshape(&[b, c, 1, 1])?)?;
        let h = self.norm2.forward(ctx, &h, true)?;
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(ctx, x, None)?,
            None => x.clone(),
        };
        self.conv2.forward(ctx, &h, Some(&shortcut))
    }
}

/// diffusers `Attention` (no bias on q/k/v, bias on `to_out.0`).
pub struct Attention {
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    pub to_out: Linear,
    pub heads: usize,
}

impl Attention {
    fn load(l: &mut WeightLoader, p: &str, dim: usize, context_dim: usize, heads: usize) -> Self {
        Attention {
            to_q: Linear::load(l, &format!("{p}.to_q"), dim, dim, false),
            to_k: Linear::load(l, &format!("{p}.to_k"), context_dim, dim, false),
            to_v: Linear::load(l, &format!("{p}.to_v"), context_dim, dim, false),
            to_out: Linear::load(l, &format!("{p}.to_out.0"), dim, dim, true),
            heads,
        }
    }

    /// `x [B, N, C]` attends to `context [B, L, Cc]` (itself when `None`); adds `residual`.
    /// With `with_map`, also returns the head-mean attention map `[B, N, L]` (AT-EDM).
    fn forward(
        &self,
        ctx: &GpuContext,
        x: &Tensor,
        context: Option<&Tensor>,
        residual: Option<&Tensor>,
        with_map: bool,
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
        let (o, map) = if with_map {
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
    pub norm1: LayerNorm,
    pub attn1: Attention,
    pub norm2: LayerNorm,
    pub attn2: Attention,
    pub norm3: LayerNorm,
    /// `ff.net.0.proj`: C -> 8C (GEGLU input), `ff.net.2`: 4C -> C.
    pub ff_proj: Linear,
    pub ff_out: Linear,
}

impl BasicTransformerBlock {
    fn load(l: &mut WeightLoader, p: &str, dim: usize, context_dim: usize, heads: usize) -> Self {
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

    /// The block on `h [B, N, C]`; with `with_map`, also the head-mean self-attention map.
    fn forward(
        &self,
        ctx: &GpuContext,
        h: &Tensor,
        context: &Tensor,
        with_map: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let n = self.norm1.forward(ctx, h)?;
        let (h, map) = self.attn1.forward(ctx, &n, None, Some(h), with_map)?;
        let n = self.norm2.forward(ctx, &h)?;
        let (h, _) = self
            .attn2
            .forward(ctx, &n, Some(context), Some(&h), false)?;
        let n = self.norm3.forward(ctx, &h)?;
        let f = self.ff_proj.forward(ctx, &n, None)?;
        let f = activation::geglu(ctx, &f)?;
        Ok((self.ff_out.forward(ctx, &f, Some(&h))?, map))
    }

    /// The block with ToMe: one merge plan from the block input; each chosen sub-layer runs
    /// on the merged tokens, `x = u(layer(m(norm(x)))) + x`.
    fn forward_tome(
        &self,
        ctx: &GpuContext,
        h: &Tensor,
        context: &Tensor,
        site: &tome::BlockSite,
        t: &TomeSettings,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let Some(plan) = tome::plan(ctx, h, site, t)? else {
            return Ok((self.forward(ctx, h, context, false)?.0, None));
        };
        let n = self.norm1.forward(ctx, h)?;
        let h = if t.merge_attn {
            let m = tome::merge(ctx, &n, &plan)?;
            let (a, _) = self.attn1.forward(ctx, &m, None, None, false)?;
            tome::unmerge_add(ctx, &a, &plan, h)?
        } else {
            self.attn1.forward(ctx, &n, None, Some(h), false)?.0
        };
        let n = self.norm2.forward(ctx, &h)?;
        let h = if t.merge_crossattn {
            let m = tome::merge(ctx, &n, &plan)?;
            let (a, _) = self.attn2.forward(ctx, &m, Some(context), None, false)?;
            tome::unmerge_add(ctx, &a, &plan, &h)?
        } else {
            self.attn2
                .forward(ctx, &n, Some(context), Some(&h), false)?
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

/// A stack's output, its AT-EDM record when pruned, and ToMe's slots per merged block index.
type StackOutput = (Tensor, Option<StackRecord>, Vec<(usize, Tensor)>);

/// `Transformer2DModel` with linear projections.
pub struct Transformer2DModel {
    pub norm: GroupNorm,
    pub proj_in: Linear,
    pub transformer_blocks: Vec<BasicTransformerBlock>,
    pub proj_out: Linear,
}

impl Transformer2DModel {
    fn load(
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
    /// atedm.md defines it: block p's head-mean self-attention map gives G-WPR scores and the
    /// kept tokens; blocks after p and `proj_out` run on the kept tokens only; every pruned
    /// token then copies the output of the kept token it attended to most.
    fn forward(
        &self,
        ctx: &GpuContext,
        x: &Tensor,
        context: &Tensor,
        mode: Option<&StackMode>,
    ) -> Result<StackOutput> {
        let s = x.shape();
        let (b, c, hw) = (s[0], s[1], s[2] * s[3]);
        let h = self.norm.forward(ctx, x, false)?;
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
            let at_p = prune.is_some_and(|p| p.block == i);
            let (next, map) = block.forward(ctx, &h, context, at_p)?;
            h = next;
            if let (Some(p), Some(map)) = (prune, map) {
                let _scope = ctx.profile_scope("atedm");
                let scores = gwpr::gwpr(ctx, &map, p.iters)?;
                let kept = gwpr::top_k(ctx, &scores, p.keep)?;
                recover = Some(gwpr::recover_index(ctx, &map, &kept)?);
                h = gather::gather_rows(ctx, &h, &kept)?;
                record = Some(StackRecord { kept, scores });
            }
        }
        let mut h = self.proj_out.forward(ctx, &h, None)?;
        if let Some(r) = &recover {
            let _scope = ctx.profile_scope("atedm");
            h = gather::gather_rows(ctx, &h, r)?;
        }
        let h = layout::transpose_last2(ctx, &h)?.reshape(s)?;
        Ok((elementwise::add(ctx, &h, x)?, record, merges))
    }
}

/// What runs in one stack at this forward.
#[derive(Clone, Copy, Debug)]
pub enum StackMode {
    AtEdm(StackPrune),
    Tome {
        settings: TomeSettings,
        /// Index of the stack's first block among all transformer blocks (forward order).
        first_block: u32,
        step: u32,
    },
}

/// How one stack is pruned at this forward.
#[derive(Clone, Copy, Debug)]
pub struct StackPrune {
    /// Tokens kept.
    pub keep: usize,
    /// G-WPR iterations.
    pub iters: usize,
    /// Pruning block p.
    pub block: usize,
}

/// What a pruned stack decided: kept token indices `[B, k]` (u32, ascending) and the G-WPR
/// importance `[B, N]` (f32). Both stay on the GPU.
pub struct StackRecord {
    pub kept: Tensor,
    pub scores: Tensor,
}

/// What one forward decided: AT-EDM's per pruned stack (diffusers module name) and ToMe's
/// merged row of every token `[B, N]` (u32) per merged block (`<stack>.transformer_blocks.<i>`).
#[derive(Default)]
pub struct PruneRecords {
    pub stacks: Vec<(String, StackRecord)>,
    pub merges: Vec<(String, Tensor)>,
}

/// The pruning of one UNet forward: settings plus the step (for DSAP).
#[derive(Clone, Copy, Debug)]
pub struct PruneStep {
    pub settings: PruneSettings,
    pub step: usize,
    pub steps: usize,
}

impl PruneStep {
    /// No pruning.
    pub fn none() -> Self {
        PruneStep {
            settings: PruneSettings::default(),
            step: 0,
            steps: 1,
        }
    }
}

/// One level of the down path (`DownBlock2D` or `CrossAttnDownBlock2D`).
pub struct DownBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
    pub downsampler: Option<Conv2d>,
}

/// One level of the up path (`UpBlock2D` or `CrossAttnUpBlock2D`).
pub struct UpBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
    pub upsampler: Option<Conv2d>,
}

/// `UNetMidBlock2DCrossAttn`.
pub struct MidBlock {
    pub resnets: [ResnetBlock2D; 2],
    pub attention: Transformer2DModel,
}

/// The conditioning a UNet forward takes besides the latents.
pub struct UNetInputs<'a> {
    /// `sample [B, in_channels, h, w]`.
    pub sample: &'a Tensor,
    /// Discrete timesteps as floats, one per batch element or one for all.
    pub timesteps: &'a [f32],
    /// `encoder_hidden_states [B, L, cross_attention_dim]`.
    pub encoder_hidden_states: &'a Tensor,
    /// Pooled text embeddings `[B, text_embeds_dim]`.
    pub text_embeds: &'a Tensor,
    /// Micro-conditioning `[B, 6]` as host values (original size, crop, target size).
    pub time_ids: &'a [f32],
}

/// SD-XL `UNet2DConditionModel`.
pub struct UNet2DConditionModel {
    pub config: UNetConfig,
    pub dtype: DType,
    pub conv_in: Conv2d,
    pub time_embedding: TimestepEmbeddingMlp,
    pub add_embedding: TimestepEmbeddingMlp,
    pub down_blocks: Vec<DownBlock>,
    pub mid_block: MidBlock,
    pub up_blocks: Vec<UpBlock>,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

impl UNet2DConditionModel {
    /// Builds the model, asking `l` for every weight (diffusers names). Check `l.finish()`
    /// before using the model.
    pub fn build(cfg: &UNetConfig, l: &mut WeightLoader) -> Self {
        let ch = &cfg.block_out_channels;
        let levels = ch.len();
        let temb = cfg.time_embed_dim();
        let conv_in = Conv2d::load(l, "conv_in", cfg.in_channels, ch[0], 3, 1, 1);
        let time_embedding = TimestepEmbeddingMlp::load(l, "time_embedding", ch[0], temb);
        let add_embedding = TimestepEmbeddingMlp::load(
            l,
            "add_embedding",
            cfg.projection_class_embeddings_input_dim,
            temb,
        );
        let mut down_blocks = Vec::new();
        let mut prev = ch[0];
        for (i, &out) in ch.iter().enumerate() {
            let p = format!("down_blocks.{i}");
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for j in 0..cfg.layers_per_block[i] {
                let inp = if j == 0 { prev } else { out };
                resnets.push(ResnetBlock2D::load(
                    l,
                    &format!("{p}.resnets.{j}"),
                    cfg,
                    inp,
                    out,
                ));
                if cfg.down_blocks[i] == DownKind::CrossAttn {
                    attentions.push(Transformer2DModel::load(
                        l,
                        &format!("{p}.attentions.{j}"),
                        cfg,
                        out,
                        cfg.transformer_layers_per_block[i],
                        cfg.heads[i],
                    ));
                }
            }
            let downsampler = (i + 1 < levels)
                .then(|| Conv2d::load(l, &format!("{p}.downsamplers.0.conv"), out, out, 3, 2, 1));
            down_blocks.push(DownBlock {
                resnets,
                attentions,
                downsampler,
            });
            prev = out;
        }
        let top = ch[levels - 1];
        let mid_block = MidBlock {
            resnets: [
                ResnetBlock2D::load(l, "mid_block.resnets.0", cfg, top, top),
                ResnetBlock2D::load(l, "mid_block.resnets.1", cfg, top, top),
            ],
            attention: Transformer2DModel::load(
                l,
                "mid_block.attentions.0",
                cfg,
                top,
                cfg.transformer_layers_per_block[levels - 1],
                cfg.heads[levels - 1],
            ),
        };
        let mut up_blocks = Vec::new();
        let mut prev = top;
        for i in 0..levels {
            let level = levels - 1 - i;
            let out = ch[level];
            let skip_base = ch[level.saturating_sub(1)];
            let n = cfg.layers_per_block[level] + 1;
            let p = format!("up_blocks.{i}");
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for j in 0..n {
                // Skip widths as diffusers: the last resnet of a level takes the previous
                // level's output channels.
                let skip = if j == n - 1 { skip_base } else { out };
                let inp = if j == 0 { prev } else { out };
                resnets.push(ResnetBlock2D::load(
                    l,
                    &format!("{p}.resnets.{j}"),
                    cfg,
                    inp + skip,
                    out,
                ));
                if cfg.up_blocks[i] == UpKind::CrossAttn {
                    attentions.push(Transformer2DModel::load(
                        l,
                        &format!("{p}.attentions.{j}"),
                        cfg,
                        out,
                        cfg.reverse_transformer_layers_per_block[i],
                        cfg.heads[level],
                    ));
                }
            }
            let upsampler = (i + 1 < levels)
                .then(|| Conv2d::load(l, &format!("{p}.upsamplers.0.conv"), out, out, 3, 1, 1));
            up_blocks.push(UpBlock {
                resnets,
                attentions,
                upsampler,
            });
            prev = out;
        }
        UNet2DConditionModel {
            config: cfg.clone(),
            dtype: l.dtype(),
            conv_in,
            time_embedding,
            add_embedding,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: GroupNorm::load(
                l,
                "conv_norm_out",
                ch[0],
                cfg.norm_num_groups,
                cfg.norm_eps,
            ),
            conv_out: Conv2d::load(l, "conv_out", ch[0], cfg.out_channels, 3, 1, 1),
        }
    }

    /// Loads the model from `l`'s store; one error lists every missing, unexpected or wrongly
    /// shaped tensor.
    pub fn load(cfg: &UNetConfig, mut l: WeightLoader) -> Result<Self> {
        let model = Self::build(cfg, &mut l);
        l.finish()?;
        Ok(model)
    }

    /// A model with unloaded weights in a planning context
    /// ([`ContextOptions::plan_only`](crate::gpu::ContextOptions::plan_only)): its forward
    /// validates every op and counts every allocation, weights included, without running.
    pub fn planned(ctx: &GpuContext, cfg: &UNetConfig, dtype: DType) -> Result<Self> {
        if !ctx.is_plan_only() {
            return Err(Error::Invalid(
                "UNet2DConditionModel::planned needs a planning context (plan_only)".into(),
            ));
        }
        let mut l = WeightLoader::plan(ctx, dtype);
        let model = Self::build(cfg, &mut l);
        l.finish()?;
        Ok(model)
    }

    /// The model with synthetic weights generated on the GPU (see
    /// [`WeightLoader::synthetic`]): the real shapes of `cfg` without a checkpoint.
    pub fn synthetic(ctx: &GpuContext, cfg: &UNetConfig, dtype: DType, seed: u32) -> Result<Self> {
        let mut l = WeightLoader::synthetic(ctx, dtype, seed);
        let model = Self::build(cfg, &mut l);
        l.finish()?;
        Ok(model)
    }

    /// The parameters of a config (names and shapes) without loading or allocating weights.
    pub fn parameters(ctx: &GpuContext, cfg: &UNetConfig) -> Result<Vec<ParamSpec>> {
        let mut l = WeightLoader::plan(ctx, DType::F32);
        drop(Self::build(cfg, &mut l));
        l.finish()
    }

    fn check_inputs(&self, x: &UNetInputs) -> Result<usize> {
        let cfg = &self.config;
        let bad = |m: String| Error::shape("unet", m);
        let s = x.sample.shape();
        if s.len() != 4 || s[1] != cfg.in_channels {
            return Err(bad(format!(
                "sample must be [B, {}, h, w], got {s:?}",
                cfg.in_channels
            )));
        }
        let (b, h, w) = (s[0], s[2], s[3]);
        let down = cfg.downsampling();
        if h % down != 0 || w % down != 0 {
            return Err(bad(format!(
                "latent size {h}x{w} is not divisible by the UNet's total downsampling {down} (image size must be a multiple of {})",
                down * 8
            )));
        }
        if x.timesteps.len() != b && x.timesteps.len() != 1 {
            return Err(bad(format!(
                "{} timesteps for batch {b} (give 1 or {b})",
                x.timesteps.len()
            )));
        }
        let e = x.encoder_hidden_states.shape();
        if e.len() != 3 || e[0] != b || e[2] != cfg.cross_attention_dim {
            return Err(bad(format!(
                "encoder_hidden_states must be [{b}, L, {}], got {e:?}",
                cfg.cross_attention_dim
            )));
        }
        let t = x.text_embeds.shape();
        if t != [b, cfg.text_embeds_dim()] {
            return Err(bad(format!(
                "text_embeds must be [{b}, {}], got {t:?}",
                cfg.text_embeds_dim()
            )));
        }
        if x.time_ids.len() != b * 6 {
            return Err(bad(format!(
                "time_ids must hold [{b}, 6] = {} values, got {}",
                b * 6,
                x.time_ids.len()
            )));
        }
        for (name, t) in [
            ("sample", x.sample),
            ("encoder_hidden_states", x.encoder_hidden_states),
            ("text_embeds", x.text_embeds),
        ] {
            if t.dtype() != self.dtype {
                return Err(Error::dtype(
                    "unet",
                    format!(
                        "{name} is {} but the model computes in {}",
                        t.dtype(),
                        self.dtype
                    ),
                ));
            }
        }
        Ok(b)
    }

    /// `emb = time_embedding(t) + add_embedding([text_embeds, time_ids embedding])`, [B, T].
    fn embeddings(&self, ctx: &GpuContext, b: usize, x: &UNetInputs) -> Result<Tensor> {
        let cfg = &self.config;
        let ts: Vec<f32> = if x.timesteps.len() == 1 {
            vec![x.timesteps[0]; b]
        } else {
            x.timesteps.to_vec()
        };
        let sinus = |dim: usize| TimestepEmbedding {
            dim,
            flip_sin_to_cos: cfg.flip_sin_to_cos,
            downscale_freq_shift: cfg.freq_shift,
            max_period: 10000.0,
        };
        let t = Tensor::from_f32(ctx, &ts, &[b], DType::F32)?;
        let t_emb =
            embedding::timestep_embedding(ctx, &t, &sinus(cfg.block_out_channels[0]), self.dtype)?;
        let ids = Tensor::from_f32(ctx, x.time_ids, &[b * 6], DType::F32)?;
        let d = cfg.addition_time_embed_dim;
        let time_embeds = embedding::timestep_embedding(ctx, &ids, &sinus(d), self.dtype)?
            .reshape(&[b, 6 * d])?;
        let add_in = layout::concat(ctx, &[x.text_embeds, &time_embeds], 1)?;
        let aug = self.add_embedding.forward(ctx, &add_in, None)?;
        self.time_embedding.forward(ctx, &t_emb, Some(&aug))
    }

    /// The UNet forward: predicted noise `[B, out_channels, h, w]`.
    pub fn forward(&self, ctx: &GpuContext, x: &UNetInputs) -> Result<Tensor> {
        Ok(self.forward_pruned(ctx, x, &PruneStep::none())?.0)
    }

    /// The UNet forward with AT-EDM pruning or ToMe; also returns what they decided.
    pub fn forward_pruned(
        &self,
        ctx: &GpuContext,
        x: &UNetInputs,
        prune: &PruneStep,
    ) -> Result<(Tensor, PruneRecords)> {
        let b = self.check_inputs(x)?;
        let s = x.sample.shape();
        let plan = flops::stacks(&self.config, s[2], s[3]);
        let ps = &prune.settings;
        if ps.mode == PruneMode::Tome {
            ps.tome.validate()?;
            if !plan.iter().any(|st| ps.prunable(st)) {
                return Err(Error::Invalid(format!(
                    "ToMe asked, but it selects no transformer stack of this model (max downsample {})",
                    ps.tome.max_downsample
                )));
            }
        } else if ps.mode != PruneMode::None {
            if !(ps.keep_ratio > 0.0 && ps.keep_ratio <= 1.0) {
                return Err(Error::Invalid(format!(
                    "keep ratio must be in (0, 1], got {}",
                    ps.keep_ratio
                )));
            }
            if ps.gwpr_iters == 0 {
                return Err(Error::Invalid("G-WPR needs at least one iteration".into()));
            }
            if !plan.iter().any(|st| ps.prunable(st)) {
                return Err(Error::Invalid(format!(
                    "pruning asked, but no transformer stack of this model has a block after block {}",
                    ps.prune_block
                )));
            }
        }
        let mut stack_iter = plan.iter();
        let mut records = PruneRecords::default();
        let mut first_block = 0u32;
        let mut run_stack = |attn: &Transformer2DModel, h: &Tensor| -> Result<Tensor> {
            let st = stack_iter
                .next()
                .expect("the stack plan follows the forward order");
            let sm = ps
                .pruned_at(st, prune.step, prune.steps)
                .then(|| match ps.mode {
                    PruneMode::Tome => StackMode::Tome {
                        settings: ps.tome,
                        first_block,
                        step: prune.step as u32,
                    },
                    _ => StackMode::AtEdm(StackPrune {
                        keep: flops::kept_tokens(st.tokens, ps.keep_ratio) as usize,
                        iters: ps.gwpr_iters,
                        block: ps.prune_block,
                    }),
                });
            first_block += attn.transformer_blocks.len() as u32;
            let (out, rec, merges) = attn.forward(ctx, h, x.encoder_hidden_states, sm.as_ref())?;
            if let Some(rec) = rec {
                records.stacks.push((st.name.clone(), rec));
            }
            records.merges.extend(
                merges
                    .into_iter()
                    .map(|(i, slot)| (format!("{}.transformer_blocks.{i}", st.name), slot)),
            );
            Ok(out)
        };
        let emb = self.embeddings(ctx, b, x)?;
        let emb_silu = activation::activation(ctx, &emb, Activation::Silu)?;
        let mut h = self.conv_in.forward(ctx, x.sample, None)?;
        let mut skips = vec![h.clone()];
        for block in &self.down_blocks {
            for (j, resnet) in block.resnets.iter().enumerate() {
                h = resnet.forward(ctx, &h, &emb_silu)?;
                if let Some(attn) = block.attentions.get(j) {
                    h = run_stack(attn, &h)?;
                }
                skips.push(h.clone());
            }
            if let Some(down) = &block.downsampler {
                h = down.forward(ctx, &h, None)?;
                skips.push(h.clone());
            }
        }
        h = self.mid_block.resnets[0].forward(ctx, &h, &emb_silu)?;
        h = run_stack(&self.mid_block.attention, &h)?;
        h = self.mid_block.resnets[1].forward(ctx, &h, &emb_silu)?;
        for block in &self.up_blocks {
            for (j, resnet) in block.resnets.iter().enumerate() {
                let skip = skips
                    .pop()
                    .expect("one skip per up resnet, by construction");
                h = layout::concat(ctx, &[&h, &skip], 1)?;
                h = resnet.forward(ctx, &h, &emb_silu)?;
                if let Some(attn) = block.attentions.get(j) {
                    h = run_stack(attn, &h)?;
                }
            }
            if let Some(up) = &block.upsampler {
                h = layout::upsample_nearest2x(ctx, &h)?;
                h = up.forward(ctx, &h, None)?;
            }
        }
        let h = self.conv_norm_out.forward(ctx, &h, true)?;
        let out = self.conv_out.forward(ctx, &h, None)?;
        Ok((out, records))
    }
}
