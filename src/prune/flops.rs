//! The FLOPs model of the SD-XL UNet under a pruning schedule (definition in
//! `docs/pruning.md`, "Budgets and FLOPs").
//!
//! FLOPs = 2 x multiply-adds of convolutions, linear layers and attention matmuls (Q K^T, P V)
//! of one UNet forward for one image (classifier-free guidance doubles it), averaged over the
//! denoising steps. Norms, activations and softmax are not counted. The pruning overhead
//! (head-mean map as an extra Q K^T, G-WPR iterations; ToMe's similarity matrices) is a separate
//! figure. Any [`PruneSchedule`] can be counted: the model asks it what every stack does at
//! every step, as the UNet does.

use crate::error::{Error, Result};
use crate::model::config::UNetConfig;
use crate::prune::schedule::{stacks, PruneSchedule, Stack, StackAction, StackPrune};
use crate::prune::settings::Pruning;
use crate::prune::settings::Recovery;
use crate::prune::tome::{grid_roles, merged_count, TomeSettings};

/// Text context length (CLIP's 77 positions).
const CONTEXT_LEN: u64 = 77;

/// Multiply-adds of one `BasicTransformerBlock` on `n` tokens of width `c` (context `cc` wide).
fn block_macs(n: u64, c: u64, cc: u64) -> u64 {
    block_macs_split(n, n, n, c, cc)
}

/// [`block_macs`] with the self-attention, cross-attention and feed-forward on `n1`, `n2`, `n3`
/// tokens (ToMe merges around each separately).
fn block_macs_split(n1: u64, n2: u64, n3: u64, c: u64, cc: u64) -> u64 {
    let self_attn = 4 * n1 * c * c + 2 * n1 * n1 * c;
    let cross_attn = 2 * n2 * c * c + 2 * CONTEXT_LEN * cc * c + 2 * n2 * CONTEXT_LEN * c;
    let ff = 12 * n3 * c * c;
    self_attn + cross_attn + ff
}

/// A stack under ToMe: `(model, overhead)` MACs. The overhead is the cosine-similarity matrix
/// of every block (sources x destinations x C).
fn tome_stack_macs(s: &Stack, cc: u64, t: &TomeSettings) -> (u64, u64) {
    let (n, c) = (s.tokens, s.channels);
    let (h, w) = s.grid;
    let r = merged_count(h, w, t.ratio) as u64;
    let (ndst, nsrc) = grid_roles(h, w);
    let m = n - r;
    let pick = |on: bool| if on { m } else { n };
    let block = block_macs_split(
        pick(t.merge_attn),
        pick(t.merge_crossattn),
        pick(t.merge_mlp),
        c,
        cc,
    );
    let overhead = if r > 0 { (ndst * nsrc) as u64 * c } else { 0 };
    (
        2 * n * c * c + s.depth as u64 * block,
        s.depth as u64 * overhead,
    )
}

/// A stack's multiply-adds at one forward, unpruned (`None`) or pruned as `Some(action)`;
/// `(model, overhead)`.
fn stack_macs(s: &Stack, cc: u64, pruned: Option<&StackPrune>) -> (u64, u64) {
    let (n, c) = (s.tokens, s.channels);
    let proj_in = n * c * c;
    match pruned {
        None => (
            proj_in + s.depth as u64 * block_macs(n, c, cc) + n * c * c,
            0,
        ),
        Some(a) => {
            let (k, p) = (a.keep as u64, a.block);
            let full = (p + 1) as u64 * block_macs(n, c, cc);
            let pruned = (s.depth - p - 1) as u64 * block_macs(k, c, cc);
            // Head-mean map as an extra Q K^T over all heads; G-WPR: T products of an n x n map.
            let overhead = n * n * c + a.iters as u64 * n * n;
            match a.recovery {
                // proj_out on the kept rows; the copy is free.
                Recovery::AttnCopy => (proj_in + full + pruned + k * c * c, overhead),
                // proj_out on every row; the cosine similarity of every token with every kept
                // token (N x k x C, with the kept rows' norms) is overhead.
                Recovery::CosDelta => (proj_in + full + pruned + n * c * c, overhead + n * k * c),
            }
        }
    }
}

fn resnet_macs(cin: u64, cout: u64, px: u64, temb: u64) -> u64 {
    9 * cin * cout * px
        + temb * cout
        + 9 * cout * cout * px
        + if cin != cout { cin * cout * px } else { 0 }
}

/// Everything but the transformer stacks (convolutions, resnets, embeddings), in MACs.
fn convolution_macs(cfg: &UNetConfig, lh: usize, lw: usize) -> u64 {
    let ch: Vec<u64> = cfg.block_out_channels.iter().map(|&c| c as u64).collect();
    let n = ch.len();
    let px = |level: usize| ((lh >> level) * (lw >> level)) as u64;
    let temb = cfg.time_embed_dim() as u64;
    let mut macs =
        9 * cfg.in_channels as u64 * ch[0] * px(0) + 9 * ch[0] * cfg.out_channels as u64 * px(0);
    macs += ch[0] * temb
        + temb * temb
        + cfg.projection_class_embeddings_input_dim as u64 * temb
        + temb * temb;
    let mut prev = ch[0];
    for (i, &c) in ch.iter().enumerate() {
        for j in 0..cfg.layers_per_block[i] {
            macs += resnet_macs(if j == 0 { prev } else { c }, c, px(i), temb);
        }
        if i + 1 < n {
            macs += 9 * c * c * px(i + 1);
        }
        prev = c;
    }
    macs += 2 * resnet_macs(ch[n - 1], ch[n - 1], px(n - 1), temb);
    let mut prev = ch[n - 1];
    for i in 0..n {
        let level = n - 1 - i;
        let out = ch[level];
        let skip_base = ch[level.saturating_sub(1)];
        let count = cfg.layers_per_block[level] + 1;
        for j in 0..count {
            let skip = if j + 1 == count { skip_base } else { out };
            macs += resnet_macs(if j == 0 { prev } else { out } + skip, out, px(level), temb);
        }
        if i + 1 < n {
            macs += 9 * out * out * px(level - 1);
        }
        prev = out;
    }
    macs
}

/// FLOPs figures of one denoising run.
#[derive(Clone, Debug, PartialEq)]
pub struct FlopsReport {
    /// Model FLOPs per step (one image), averaged over the steps.
    pub model: f64,
    /// Pruning overhead FLOPs per step, averaged (map Q K^T + G-WPR), not in `model`.
    pub overhead: f64,
    /// Model FLOPs of an unpruned step.
    pub full: f64,
    /// Model FLOPs of the first step (an early, DSAP-protected one when pruning).
    pub early: f64,
    /// Model FLOPs of the last step (a late one when pruning).
    pub late: f64,
    /// Steps counted as early.
    pub early_steps: usize,
}
/// FLOPs of `steps` denoising steps of `cfg` on a `lh x lw` latent with `prune` (checked to
/// act on some stack of the model).
pub fn unet_flops(
    cfg: &UNetConfig,
    lh: usize,
    lw: usize,
    steps: usize,
    prune: &Pruning,
) -> Result<FlopsReport> {
    prune.check_stacks(&stacks(cfg, lh, lw))?;
    let mut report = schedule_flops(cfg, lh, lw, steps, prune)?;
    report.early_steps = prune.early_steps(steps);
    Ok(report)
}

/// Model and overhead FLOPs of one denoising step (one image).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepFlops {
    /// Model FLOPs.
    pub model: f64,
    /// Pruning overhead FLOPs (not in `model`).
    pub overhead: f64,
}

/// FLOPs of each of `steps` denoising steps under `schedule` (every action checked against
/// its stack).
pub fn step_flops(
    cfg: &UNetConfig,
    lh: usize,
    lw: usize,
    steps: usize,
    schedule: &dyn PruneSchedule,
) -> Result<Vec<StepFlops>> {
    if steps == 0 {
        return Err(Error::Invalid("steps must be at least 1".into()));
    }
    let cc = cfg.cross_attention_dim as u64;
    let base = convolution_macs(cfg, lh, lw);
    let all = stacks(cfg, lh, lw);
    (0..steps)
        .map(|step| {
            let mut macs = base;
            let mut over = 0;
            for s in &all {
                let action = schedule.action(s, step, steps);
                action.check(s)?;
                let (m, o) = action_macs(s, cc, &action);
                macs += m;
                over += o;
            }
            Ok(StepFlops {
                model: 2.0 * macs as f64,
                overhead: 2.0 * over as f64,
            })
        })
        .collect()
}

/// FLOPs of `steps` denoising steps under any schedule. `early` is step 0's model FLOPs,
/// `late` the last step's, `early_steps` 0.
pub fn schedule_flops(
    cfg: &UNetConfig,
    lh: usize,
    lw: usize,
    steps: usize,
    schedule: &dyn PruneSchedule,
) -> Result<FlopsReport> {
    let per_step = step_flops(cfg, lh, lw, steps, schedule)?;
    // Each distinct step with how many steps have it, in order of first appearance (an AT-EDM
    // run has two: the early steps', then the late ones'), so that the average is
    // `(early * E + late * (S - E)) / S`.
    let mut distinct: Vec<(StepFlops, usize)> = Vec::new();
    for f in &per_step {
        match distinct.iter_mut().find(|d| d.0 == *f) {
            Some(d) => d.1 += 1,
            None => distinct.push((*f, 1)),
        }
    }
    let avg = |pick: fn(&StepFlops) -> f64| {
        distinct
            .iter()
            .map(|(f, n)| pick(f) * *n as f64)
            .sum::<f64>()
            / steps as f64
    };
    Ok(FlopsReport {
        model: avg(|f| f.model),
        overhead: avg(|f| f.overhead),
        full: full_flops(cfg, lh, lw),
        early: per_step[0].model,
        late: per_step[steps - 1].model,
        early_steps: 0,
    })
}

/// Model FLOPs of one unpruned step (one image).
pub fn full_flops(cfg: &UNetConfig, lh: usize, lw: usize) -> f64 {
    let cc = cfg.cross_attention_dim as u64;
    step_full(cfg, lh, lw, convolution_macs(cfg, lh, lw), cc)
}

/// `(model, overhead)` multiply-adds of one stack doing `action`.
fn action_macs(s: &Stack, cc: u64, action: &StackAction) -> (u64, u64) {
    match action {
        StackAction::Full => stack_macs(s, cc, None),
        StackAction::AtEdm(p) => stack_macs(s, cc, Some(p)),
        StackAction::Tome(t) => tome_stack_macs(s, cc, t),
    }
}

fn step_full(cfg: &UNetConfig, lh: usize, lw: usize, base: u64, cc: u64) -> f64 {
    let stacks_macs: u64 = stacks(cfg, lh, lw)
        .iter()
        .map(|s| stack_macs(s, cc, None).0)
        .sum();
    2.0 * (base + stacks_macs) as f64
}
