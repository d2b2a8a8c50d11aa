//! The FLOPs model of the SD-XL UNet with AT-EDM pruning (definition in
//! `../shared/spec/atedm.md`, "Budgets and FLOPs").
//!
//! FLOPs = 2 x multiply-adds of convolutions, linear layers and attention matmuls (Q K^T, P V)
//! of one UNet forward for one image (classifier-free guidance doubles it), averaged over the
//! denoising steps. Norms, activations and softmax are not counted. The pruning overhead
//! (head-mean map as an extra Q K^T, G-WPR iterations) is a separate figure.

use crate::error::{Error, Result};
use crate::model::config::{DownKind, UNetConfig, UpKind};
use crate::prune::tome::{grid_roles, merged_count, TomeSettings};

/// Text context length (CLIP's 77 positions).
const CONTEXT_LEN: u64 = 77;

/// Which pruning runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PruneMode {
    None,
    /// AT-EDM in every transformer stack that has a block after the pruning block.
    AtEdm,
    /// AT-EDM without pruning at the second feature level (the paper's AT-EDM-dagger).
    AtEdmDagger,
    /// The ToMe baseline (token merging in every block of the selected stacks, every step).
    Tome,
}

/// AT-EDM parameters that change the FLOPs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PruneSettings {
    pub mode: PruneMode,
    /// Fraction of tokens kept after the pruning block, in (0, 1].
    pub keep_ratio: f64,
    /// G-WPR iterations T.
    pub gwpr_iters: usize,
    /// Pruning block p (blocks 0..=p run on all tokens).
    pub prune_block: usize,
    /// DSAP on: the first ceil(tau * steps) steps leave the first stack of each down level and
    /// the last stack of each up level unpruned.
    pub dsap: bool,
    pub tau: f64,
    /// ToMe's options (mode [`PruneMode::Tome`]).
    pub tome: TomeSettings,
}

impl Default for PruneSettings {
    fn default() -> Self {
        PruneSettings {
            mode: PruneMode::None,
            keep_ratio: 1.0,
            gwpr_iters: 5,
            prune_block: 0,
            dsap: true,
            tau: 0.25,
            tome: TomeSettings::default(),
        }
    }
}

/// One `Transformer2DModel` of the UNet.
#[derive(Clone, Debug, PartialEq)]
pub struct Stack {
    /// diffusers module name, e.g. `down_blocks.1.attentions.0`.
    pub name: String,
    /// Feature level (1-based as the paper counts: level 1 = full latent resolution).
    pub level: usize,
    pub channels: u64,
    pub tokens: u64,
    /// Token grid (rows, columns).
    pub grid: (usize, usize),
    pub depth: usize,
    /// Skipped by DSAP in early steps.
    pub dsap_protected: bool,
}

/// The transformer stacks of a UNet at a latent size, in forward order.
pub fn stacks(cfg: &UNetConfig, lh: usize, lw: usize) -> Vec<Stack> {
    let n = cfg.block_out_channels.len();
    let tokens = |level: usize| ((lh >> level) * (lw >> level)) as u64;
    let grid = |level: usize| (lh >> level, lw >> level);
    let mut out = Vec::new();
    for i in 0..n {
        if cfg.down_blocks[i] == DownKind::CrossAttn {
            for j in 0..cfg.layers_per_block[i] {
                out.push(Stack {
                    name: format!("down_blocks.{i}.attentions.{j}"),
                    level: i + 1,
                    channels: cfg.block_out_channels[i] as u64,
                    tokens: tokens(i),
                    grid: grid(i),
                    depth: cfg.transformer_layers_per_block[i],
                    dsap_protected: j == 0,
                });
            }
        }
    }
    out.push(Stack {
        name: "mid_block.attentions.0".into(),
        level: n,
        channels: cfg.block_out_channels[n - 1] as u64,
        tokens: tokens(n - 1),
        grid: grid(n - 1),
        depth: cfg.transformer_layers_per_block[n - 1],
        dsap_protected: false,
    });
    for i in 0..n {
        let level = n - 1 - i;
        if cfg.up_blocks[i] == UpKind::CrossAttn {
            let count = cfg.layers_per_block[level] + 1;
            for j in 0..count {
                out.push(Stack {
                    name: format!("up_blocks.{i}.attentions.{j}"),
                    level: level + 1,
                    channels: cfg.block_out_channels[level] as u64,
                    tokens: tokens(level),
                    grid: grid(level),
                    depth: cfg.reverse_transformer_layers_per_block[i],
                    dsap_protected: j + 1 == count,
                });
            }
        }
    }
    out
}

impl PruneSettings {
    /// Whether `s` can be pruned at all under these settings (a block after the pruning block;
    /// not at level 2 for AT-EDM-dagger).
    pub fn prunable(&self, s: &Stack) -> bool {
        match self.mode {
            PruneMode::None => false,
            PruneMode::AtEdm => s.depth >= self.prune_block + 2,
            PruneMode::AtEdmDagger => s.depth >= self.prune_block + 2 && s.level != 2,
            PruneMode::Tome => self.tome.selects_level(s.level),
        }
    }

    /// Number of early (DSAP) steps among `steps`.
    pub fn early_steps(&self, steps: usize) -> usize {
        if self.dsap && matches!(self.mode, PruneMode::AtEdm | PruneMode::AtEdmDagger) {
            ((self.tau * steps as f64).ceil() as usize).min(steps)
        } else {
            0
        }
    }

    /// Whether `s` is pruned at step `step` of `steps`.
    pub fn pruned_at(&self, s: &Stack, step: usize, steps: usize) -> bool {
        self.prunable(s) && !(step < self.early_steps(steps) && s.dsap_protected)
    }
}

/// Tokens kept for `n` tokens at `keep_ratio`: round half up, clamped to [1, n].
pub fn kept_tokens(n: u64, keep_ratio: f64) -> u64 {
    ((keep_ratio * n as f64 + 0.5).floor() as u64).clamp(1, n)
}

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

/// FLOPs of one forward at one step; `(model, overhead)`.
fn stack_macs(s: &Stack, cc: u64, kept: Option<u64>, p: usize, iters: usize) -> (u64, u64) {
    let (n, c) = (s.tokens, s.channels);
    let proj_in = n * c * c;
    match kept {
        None => (
            proj_in + s.depth as u64 * block_macs(n, c, cc) + n * c * c,
            0,
        ),
        Some(k) => {
            let full = (p + 1) as u64 * block_macs(n, c, cc);
            let pruned = (s.depth - p - 1) as u64 * block_macs(k, c, cc);
            // Head-mean map as an extra Q K^T over all heads; G-WPR: T products of an n x n map.
            let overhead = n * n * c + iters as u64 * n * n;
            (proj_in + full + pruned + k * c * c, overhead)
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
    /// Model FLOPs of an early (DSAP-protected) and a late step, when pruning.
    pub early: f64,
    pub late: f64,
    /// Steps counted as early.
    pub early_steps: usize,
}

/// FLOPs of `steps` denoising steps of `cfg` on a `lh x lw` latent with `prune`.
pub fn unet_flops(
    cfg: &UNetConfig,
    lh: usize,
    lw: usize,
    steps: usize,
    prune: &PruneSettings,
) -> Result<FlopsReport> {
    if steps == 0 {
        return Err(Error::Invalid("steps must be at least 1".into()));
    }
    if prune.mode == PruneMode::Tome {
        prune.tome.validate()?;
    } else if !(prune.keep_ratio > 0.0 && prune.keep_ratio <= 1.0) {
        return Err(Error::Invalid(format!(
            "keep ratio must be in (0, 1], got {}",
            prune.keep_ratio
        )));
    }
    let cc = cfg.cross_attention_dim as u64;
    let base = convolution_macs(cfg, lh, lw);
    let all = stacks(cfg, lh, lw);
    if prune.mode != PruneMode::None && !all.iter().any(|s| prune.prunable(s)) {
        return Err(Error::Invalid(if prune.mode == PruneMode::Tome {
            format!(
                "ToMe selects no transformer stack of this model (max downsample {})",
                prune.tome.max_downsample
            )
        } else {
            format!(
                "no transformer stack of this model can be pruned at block {} (each needs a block after it)",
                prune.prune_block
            )
        }));
    }
    let step = |early: bool| {
        let mut macs = base;
        let mut over = 0;
        for s in &all {
            let pruned = prune.prunable(s) && !(early && prune.dsap && s.dsap_protected);
            let (m, o) = if prune.mode == PruneMode::Tome {
                if prune.prunable(s) {
                    tome_stack_macs(s, cc, &prune.tome)
                } else {
                    stack_macs(s, cc, None, 0, 0)
                }
            } else {
                let kept = pruned.then(|| kept_tokens(s.tokens, prune.keep_ratio));
                stack_macs(s, cc, kept, prune.prune_block, prune.gwpr_iters)
            };
            macs += m;
            over += o;
        }
        (2.0 * macs as f64, 2.0 * over as f64)
    };
    let full = step_full(cfg, lh, lw, base, cc);
    let early_steps = prune.early_steps(steps);
    let (early, early_over) = step(true);
    let (late, late_over) = step(false);
    let avg =
        |a: f64, b: f64| (a * early_steps as f64 + b * (steps - early_steps) as f64) / steps as f64;
    Ok(FlopsReport {
        model: avg(early, late),
        overhead: avg(early_over, late_over),
        full,
        early,
        late,
        early_steps,
    })
}

fn step_full(cfg: &UNetConfig, lh: usize, lw: usize, base: u64, cc: u64) -> f64 {
    let stacks_macs: u64 = stacks(cfg, lh, lw)
        .iter()
        .map(|s| stack_macs(s, cc, None, 0, 0).0)
        .sum();
    2.0 * (base + stacks_macs) as f64
}

/// The keep ratio that makes the average model FLOPs per step equal `budget` (FLOPs), by
/// bisection. Errors when the budget is below what pruning can reach (one token kept) or the
/// mode prunes nothing.
pub fn keep_ratio_for_budget(
    cfg: &UNetConfig,
    lh: usize,
    lw: usize,
    steps: usize,
    prune: &PruneSettings,
    budget: f64,
) -> Result<f64> {
    let at = |r: f64| {
        unet_flops(
            cfg,
            lh,
            lw,
            steps,
            &PruneSettings {
                keep_ratio: r,
                ..*prune
            },
        )
        .map(|f| f.model)
    };
    let floor = at(1e-9)?;
    let full = at(1.0)?;
    if budget >= full {
        return Ok(1.0);
    }
    if budget < floor {
        return Err(Error::Invalid(format!(
            "a budget of {:.3} TFLOPs is below what this pruning can reach ({:.3} TFLOPs with one token kept{})",
            budget / 1e12,
            floor / 1e12,
            if prune.dsap { "; DSAP keeps early steps denser: try --dsap off" } else { "" }
        )));
    }
    // FLOPs grow with the keep ratio: the largest ratio at or under the budget.
    Ok(bisect(|r| Ok(at(r)? > budget))?.0)
}

/// Bisection on (0, 1) for the switch point of a monotone predicate that is false at 0 and true
/// at 1; returns `(last false, first true)` to 2^-60.
fn bisect(mut pred: impl FnMut(f64) -> Result<bool>) -> Result<(f64, f64)> {
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if pred(mid)? {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Ok((lo, hi))
}

/// The paper's named budgets (TFLOPs per step at 1024 px): a 2.9, b 3.6, c 4.1, d 4.5.
pub fn named_budget(name: &str) -> Option<f64> {
    match name {
        "a" => Some(2.9),
        "b" => Some(3.6),
        "c" => Some(4.1),
        "d" => Some(4.5),
        _ => None,
    }
}

/// [`named_budget`] for a mode: the paper ran ToMe's setting d at 4.6 TFLOPs, AT-EDM's at 4.5.
pub fn named_budget_for(mode: PruneMode, name: &str) -> Option<f64> {
    match (mode, name) {
        (PruneMode::Tome, "d") => Some(4.6),
        _ => named_budget(name),
    }
}

/// The layer sets ToMe tries, in order, when solving a budget without a fixed choice: tomesd's
/// default (self-attention only), then with the feed-forward, then everything.
pub const TOME_ESCALATION: [(bool, bool, bool); 3] = [
    (true, false, false),
    (true, false, true),
    (true, true, true),
];

/// ToMe settings that meet `budget` (average model FLOPs per step): the smallest merge ratio
/// (bisection; `r` is a floor, so FLOPs fall in steps) with the layers of `prune.tome`, or, when
/// `escalate`, with the first of [`TOME_ESCALATION`] that can reach the budget.
pub fn tome_for_budget(
    cfg: &UNetConfig,
    lh: usize,
    lw: usize,
    steps: usize,
    prune: &PruneSettings,
    budget: f64,
    escalate: bool,
) -> Result<TomeSettings> {
    let at = |t: TomeSettings| {
        unet_flops(
            cfg,
            lh,
            lw,
            steps,
            &PruneSettings {
                mode: PruneMode::Tome,
                tome: t,
                ..*prune
            },
        )
        .map(|f| f.model)
    };
    let sets: Vec<(bool, bool, bool)> = if escalate {
        TOME_ESCALATION.to_vec()
    } else {
        let t = prune.tome;
        vec![(t.merge_attn, t.merge_crossattn, t.merge_mlp)]
    };
    let mut floor = f64::INFINITY;
    for (a, x, m) in sets {
        let base = TomeSettings {
            merge_attn: a,
            merge_crossattn: x,
            merge_mlp: m,
            ..prune.tome
        };
        let with = |ratio: f64| TomeSettings { ratio, ..base };
        let lowest = at(with(1.0))?;
        floor = floor.min(lowest);
        if lowest > budget {
            continue;
        }
        if at(with(1e-9))? <= budget {
            return Ok(with(1e-9));
        }
        // FLOPs fall as the merge ratio grows: the smallest ratio at or under the budget.
        return Ok(with(bisect(|r| Ok(at(with(r))? <= budget))?.1));
    }
    Err(Error::Invalid(format!(
        "a budget of {:.3} TFLOPs is below what ToMe can reach ({:.3} TFLOPs merging the most{})",
        budget / 1e12,
        floor / 1e12,
        if escalate {
            " around self-attention, cross-attention and feed-forward"
        } else {
            " with these layers; leave out --tome-merge to let the budget choose them"
        }
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sdxl() -> UNetConfig {
        UNetConfig::sdxl_base()
    }

    fn atedm(keep: f64, dsap: bool) -> PruneSettings {
        PruneSettings {
            mode: PruneMode::AtEdm,
            keep_ratio: keep,
            dsap,
            ..Default::default()
        }
    }

    // Expected figures: the independent count in atedm.md ("An independent count of this
    // definition ... gives: full 6.761 TFLOPs; ...") and the paper's 6.7 / 4.5 TFLOPs.
    #[test]
    fn full_sdxl_is_6_76_tflops() {
        let f = unet_flops(&sdxl(), 128, 128, 50, &PruneSettings::default()).unwrap();
        assert!((f.model / 1e12 - 6.761).abs() < 0.005, "{}", f.model / 1e12);
        assert_eq!(f.model, f.full);
        assert_eq!(stacks(&sdxl(), 128, 128).len(), 11);
    }

    #[test]
    fn budget_c_solves_to_the_spec_keep_ratios() {
        let c = named_budget("c").unwrap() * 1e12;
        let with = keep_ratio_for_budget(&sdxl(), 128, 128, 50, &atedm(1.0, true), c).unwrap();
        let without = keep_ratio_for_budget(&sdxl(), 128, 128, 50, &atedm(1.0, false), c).unwrap();
        assert!((with - 0.319).abs() < 0.002, "{with}");
        assert!((without - 0.384).abs() < 0.002, "{without}");
        let f = unet_flops(&sdxl(), 128, 128, 50, &atedm(0.319, true)).unwrap();
        assert_eq!(f.early_steps, 13);
        assert!((f.early / 1e12 - 4.84).abs() < 0.01, "{}", f.early / 1e12);
        assert!((f.late / 1e12 - 3.84).abs() < 0.01, "{}", f.late / 1e12);
    }

    #[test]
    fn other_budgets_and_dagger_match_the_spec() {
        for (name, on, off) in [("b", 0.178, 0.258), ("d", 0.429, 0.483)] {
            let b = named_budget(name).unwrap() * 1e12;
            let r_on = keep_ratio_for_budget(&sdxl(), 128, 128, 50, &atedm(1.0, true), b).unwrap();
            let r_off =
                keep_ratio_for_budget(&sdxl(), 128, 128, 50, &atedm(1.0, false), b).unwrap();
            assert!(
                (r_on - on).abs() < 0.002 && (r_off - off).abs() < 0.002,
                "{name}: {r_on} {r_off}"
            );
        }
        let dagger = PruneSettings {
            mode: PruneMode::AtEdmDagger,
            ..atedm(0.319, true)
        };
        let f = unet_flops(&sdxl(), 128, 128, 50, &dagger).unwrap();
        assert!((f.model / 1e12 - 4.47).abs() < 0.01, "{}", f.model / 1e12);
        // Budget a is below DSAP's floor (3.0T): an error that suggests DSAP off; off, it solves.
        let a = named_budget("a").unwrap() * 1e12;
        let e = keep_ratio_for_budget(&sdxl(), 128, 128, 50, &atedm(1.0, true), a)
            .unwrap_err()
            .to_string();
        assert!(e.contains("below") && e.contains("--dsap off"), "{e}");
        let r = keep_ratio_for_budget(&sdxl(), 128, 128, 50, &atedm(1.0, false), a).unwrap();
        assert!((r - 0.074).abs() < 0.003, "{r}");
    }

    #[test]
    fn overhead_is_reported_separately() {
        // atedm.md: the head-mean map as an extra Q K^T is about 0.11 TFLOPs per step, G-WPR
        // under 0.001T (the 4.1T setting, DSAP on: protected stacks cost nothing early).
        let f = unet_flops(&sdxl(), 128, 128, 50, &atedm(0.319, true)).unwrap();
        assert!(
            (f.overhead / 1e12 - 0.11).abs() < 0.005,
            "{}",
            f.overhead / 1e12
        );
        let no_gwpr = unet_flops(
            &sdxl(),
            128,
            128,
            50,
            &PruneSettings {
                gwpr_iters: 0,
                ..atedm(0.319, true)
            },
        )
        .unwrap();
        let gwpr = (f.overhead - no_gwpr.overhead) / 1e12;
        assert!(gwpr > 0.0 && gwpr < 0.001, "{gwpr}");
        assert_eq!(
            f.model, no_gwpr.model,
            "overhead never enters the model figure"
        );
    }

    #[test]
    fn kept_tokens_round_half_up_and_clamp() {
        assert_eq!(kept_tokens(1024, 0.5), 512);
        assert_eq!(kept_tokens(3, 0.5), 2);
        assert_eq!(kept_tokens(10, 1e-6), 1);
        assert_eq!(kept_tokens(10, 1.0), 10);
    }

    #[test]
    fn invalid_settings_are_errors() {
        assert!(unet_flops(&sdxl(), 128, 128, 50, &atedm(0.0, true)).is_err());
        assert!(unet_flops(&sdxl(), 128, 128, 50, &atedm(1.5, true)).is_err());
        let p = PruneSettings {
            prune_block: 9,
            ..atedm(0.5, true)
        };
        let e = unet_flops(&sdxl(), 128, 128, 50, &p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no transformer stack"), "{e}");
    }

    fn tome(ratio: f64, attn2: bool, mlp: bool) -> PruneSettings {
        PruneSettings {
            mode: PruneMode::Tome,
            tome: TomeSettings {
                ratio,
                merge_crossattn: attn2,
                merge_mlp: mlp,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn tome_flops_follow_the_merged_token_counts() {
        // SD-XL at 1024 px: 60 blocks at level 3 (N 1024 = 32x32, C 1280; 256 destinations,
        // 768 sources) and 10 at level 2 (N 4096, C 640; 1024 / 3072). Ratio 0.75 merges all
        // sources, so attn1 runs on N/4 tokens: 4 N C^2 + 2 N^2 C multiply-adds per block.
        let full = unet_flops(&sdxl(), 128, 128, 50, &PruneSettings::default())
            .unwrap()
            .model;
        let f = unet_flops(&sdxl(), 128, 128, 50, &tome(0.75, false, false)).unwrap();
        let attn1 = |n: f64, c: f64| 2.0 * (4.0 * n * c * c + 2.0 * n * n * c);
        let saved = 60.0 * (attn1(1024.0, 1280.0) - attn1(256.0, 1280.0))
            + 10.0 * (attn1(4096.0, 640.0) - attn1(1024.0, 640.0));
        assert!(
            (full - f.model - saved).abs() < 1e3,
            "{} vs {saved}",
            full - f.model
        );
        // Overhead: one similarity matrix per block, sources x destinations x C.
        let over = 2.0 * (60.0 * 768.0 * 256.0 * 1280.0 + 10.0 * 3072.0 * 1024.0 * 640.0);
        assert!((f.overhead - over).abs() < 1e3, "{} vs {over}", f.overhead);
        // No DSAP for ToMe: every step the same.
        assert_eq!((f.early_steps, f.early, f.late), (0, f.model, f.model));
        // The feed-forward on N' tokens: 12 N C^2 per block.
        let g = unet_flops(&sdxl(), 128, 128, 50, &tome(0.75, false, true)).unwrap();
        let ff = |n: f64, c: f64| 2.0 * 12.0 * n * c * c;
        let saved_ff = 60.0 * (ff(1024.0, 1280.0) - ff(256.0, 1280.0))
            + 10.0 * (ff(4096.0, 640.0) - ff(1024.0, 640.0));
        assert!((f.model - g.model - saved_ff).abs() < 1e3);
        // A ratio that merges nothing costs the full model and no overhead.
        let z = unet_flops(&sdxl(), 128, 128, 50, &tome(1e-6, true, true)).unwrap();
        assert_eq!((z.model, z.overhead), (full, 0.0));
    }

    #[test]
    fn tome_budgets_meet_the_named_settings() {
        // ToMe's d is 4.6T (the paper's table); each solution is the smallest merge ratio at
        // or under the budget, with the fewest layers that can reach it.
        assert_eq!(named_budget_for(PruneMode::Tome, "d"), Some(4.6));
        assert_eq!(named_budget_for(PruneMode::AtEdm, "d"), Some(4.5));
        for name in ["a", "b", "c", "d"] {
            let b = named_budget_for(PruneMode::Tome, name).unwrap() * 1e12;
            let t =
                tome_for_budget(&sdxl(), 128, 128, 50, &tome(0.5, false, false), b, true).unwrap();
            let at = |ratio| {
                unet_flops(
                    &sdxl(),
                    128,
                    128,
                    50,
                    &PruneSettings {
                        tome: TomeSettings { ratio, ..t },
                        ..tome(0.5, false, false)
                    },
                )
                .unwrap()
                .model
            };
            assert!(
                at(t.ratio) <= b && at(t.ratio) > b - 0.02e12,
                "{name}: {}",
                at(t.ratio)
            );
            // One merged token fewer per block would exceed the budget.
            assert!(
                at(t.ratio - 1.0 / 4096.0) > b,
                "{name}: not the smallest ratio"
            );
            // attn1 alone cannot reach any of them (5.35T at most); a needs every layer.
            assert!(t.merge_attn && t.merge_mlp);
            assert_eq!(t.merge_crossattn, name == "a", "{name}");
        }
        let e = tome_for_budget(
            &sdxl(),
            128,
            128,
            50,
            &tome(0.5, false, false),
            4.1e12,
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("below what ToMe can reach"), "{e}");
        let e = tome_for_budget(&sdxl(), 128, 128, 50, &tome(0.5, true, true), 2.0e12, true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("below"), "{e}");
    }
}
