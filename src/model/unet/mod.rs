//! SD-XL `UNet2DConditionModel` on the GPU, one file per diffusers module so the two can be read
//! side by side: [`embeddings`] (`TimestepEmbedding`), [`resnet`] (`ResnetBlock2D`),
//! [`attention`] (`Attention`, `BasicTransformerBlock`), [`transformer_2d`]
//! (`Transformer2DModel`, where pruning acts) and [`blocks`] (the down, mid and up levels).
//!
//! The forward asks a [`PruneSchedule`] what every transformer stack does at this step (run
//! full, AT-EDM with k kept tokens, ToMe); it decides nothing about pruning itself.

pub mod attention;
pub mod blocks;
pub mod embeddings;
pub mod resnet;
pub mod transformer_2d;

use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::model::config::{DownKind, UNetConfig, UpKind};
use crate::model::weights::{ParamSpec, WeightLoader};
use crate::nn::{Conv2d, GroupNorm};
use crate::ops::activation::{self, Activation};
use crate::ops::embedding::{self, TimestepEmbedding};
use crate::ops::layout;
use crate::prune::schedule::{stacks, PruneSchedule, StackAction};
use crate::prune::Pruning;
use crate::tensor::{DType, Tensor};

pub use attention::{Attention, AttentionMap, BasicTransformerBlock};
pub use blocks::{DownBlock, MidBlock, UpBlock};
pub use embeddings::TimestepEmbeddingMlp;
pub use resnet::ResnetBlock2D;
pub use transformer_2d::{StackMode, StackOutput, StackRecord, Transformer2DModel};

/// A UNet forward's result (diffusers' `UNet2DConditionOutput`, plus the pruning decisions).
pub struct UNetOutput {
    /// The predicted noise `[B, out_channels, h, w]`.
    pub sample: Tensor,
    /// What AT-EDM and ToMe decided in this forward.
    pub records: PruneRecords,
}

/// What one forward decided: AT-EDM's per pruned stack (diffusers module name) and ToMe's
/// merged row of every token `[B, N]` (u32) per merged block (`<stack>.transformer_blocks.<i>`).
#[derive(Default)]
pub struct PruneRecords {
    /// AT-EDM's record of each pruned stack, by stack name, in forward order.
    pub stacks: Vec<(String, StackRecord)>,
    /// ToMe's merged row of every token `[B, N]` (u32), by block name, in forward order.
    pub merges: Vec<(String, Tensor)>,
}

/// The pruning of one UNet forward: the schedule plus the step it is asked about.
#[derive(Clone, Copy, Debug)]
pub struct PruneStep<'a> {
    /// What every stack does at every step ([`Pruning`] or a user-written schedule).
    pub schedule: &'a dyn PruneSchedule,
    /// This forward's denoising step (0-based).
    pub step: usize,
    /// Denoising steps of the run.
    pub steps: usize,
}

/// No pruning, for [`PruneStep::none`].
static NO_PRUNING: Pruning = Pruning::None;

impl PruneStep<'static> {
    /// No pruning.
    pub fn none() -> Self {
        PruneStep {
            schedule: &NO_PRUNING,
            step: 0,
            steps: 1,
        }
    }
}

impl<'a> PruneStep<'a> {
    /// Step `step` of `steps` under `schedule`.
    pub fn new(schedule: &'a dyn PruneSchedule, step: usize, steps: usize) -> Self {
        PruneStep {
            schedule,
            step,
            steps,
        }
    }
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
    /// The configuration the model was built from.
    pub config: UNetConfig,
    /// The dtype the weights are stored in and the forward computes in.
    pub dtype: DType,
    /// `conv_in`: 3x3, `in_channels -> block_out_channels[0]`.
    pub conv_in: Conv2d,
    /// `time_embedding`: sinusoidal timestep embedding (`block_out_channels[0]` wide) ->
    /// `time_embed_dim`.
    pub time_embedding: TimestepEmbeddingMlp,
    /// `add_embedding`: pooled text embedding and embedded time ids
    /// (`projection_class_embeddings_input_dim`) -> `time_embed_dim`, added to the time
    /// embedding.
    pub add_embedding: TimestepEmbeddingMlp,
    /// `down_blocks`, one per level, full resolution first.
    pub down_blocks: Vec<DownBlock>,
    /// `mid_block`, at the lowest resolution.
    pub mid_block: MidBlock,
    /// `up_blocks`, one per level, lowest resolution first.
    pub up_blocks: Vec<UpBlock>,
    /// `conv_norm_out` on `block_out_channels[0]` channels, followed by SiLU.
    pub conv_norm_out: GroupNorm,
    /// `conv_out`: 3x3, `block_out_channels[0] -> out_channels`.
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
        Ok(self.forward_pruned(ctx, x, &PruneStep::none())?.sample)
    }

    /// The UNet forward with the pruning `prune`'s schedule asks for at its step; also returns
    /// what AT-EDM and ToMe decided. An action a user schedule gives for a stack it cannot fit
    /// (too many kept tokens, no block after the pruning block) is an error naming the stack.
    pub fn forward_pruned(
        &self,
        ctx: &GpuContext,
        x: &UNetInputs,
        prune: &PruneStep,
    ) -> Result<UNetOutput> {
        let b = self.check_inputs(x)?;
        let s = x.sample.shape();
        let plan = stacks(&self.config, s[2], s[3]);
        let mut stack_iter = plan.iter();
        let mut records = PruneRecords::default();
        let mut first_block = 0u32;
        let mut run_stack = |attn: &Transformer2DModel, h: &Tensor| -> Result<Tensor> {
            let st = stack_iter
                .next()
                .expect("the stack plan follows the forward order");
            let action = prune.schedule.action(st, prune.step, prune.steps);
            action.check(st)?;
            let mode = match action {
                StackAction::Full => None,
                StackAction::AtEdm(p) => Some(StackMode::AtEdm(p)),
                StackAction::Tome(settings) => Some(StackMode::Tome {
                    settings,
                    first_block,
                    step: prune.step as u32,
                }),
            };
            first_block += attn.transformer_blocks.len() as u32;
            let out = attn.forward(ctx, h, x.encoder_hidden_states, mode.as_ref())?;
            if let Some(rec) = out.record {
                records.stacks.push((st.name.clone(), rec));
            }
            records.merges.extend(
                out.merges
                    .into_iter()
                    .map(|(i, slot)| (format!("{}.transformer_blocks.{i}", st.name), slot)),
            );
            Ok(out.output)
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
        let h = self.conv_norm_out.forward_silu(ctx, &h)?;
        let out = self.conv_out.forward(ctx, &h, None)?;
        Ok(UNetOutput {
            sample: out,
            records,
        })
    }
}
