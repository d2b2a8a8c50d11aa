//! Pruning settings for a FLOPs budget: AT-EDM's keep ratio or ToMe's merge ratio that makes
//! the average model FLOPs per step equal a budget, and the paper's named budgets.

use crate::error::{Error, Result};
use crate::model::config::UNetConfig;
use crate::prune::flops::unet_flops;
use crate::prune::settings::{AtEdm, PruneMode, Pruning};
use crate::prune::tome::TomeSettings;

/// The keep ratio that makes the average model FLOPs per step equal `budget` (FLOPs), by
/// bisection. Errors when the budget is below what pruning can reach (one token kept) or the
/// mode prunes nothing.
pub fn keep_ratio_for_budget(
    cfg: &UNetConfig,
    lh: usize,
    lw: usize,
    steps: usize,
    prune: &AtEdm,
    budget: f64,
) -> Result<f64> {
    let at = |r: f64| {
        unet_flops(
            cfg,
            lh,
            lw,
            steps,
            &Pruning::AtEdm(prune.with_keep_ratio(r)?),
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
            if prune.dsap_tau().is_some() { "; DSAP keeps early steps denser: try --dsap off" } else { "" }
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
/// (bisection; `r` is a floor, so FLOPs fall in steps) with the layers of `tome`, or, when
/// `escalate`, with the first of [`TOME_ESCALATION`] that can reach the budget.
pub fn tome_for_budget(
    cfg: &UNetConfig,
    lh: usize,
    lw: usize,
    steps: usize,
    tome: &TomeSettings,
    budget: f64,
    escalate: bool,
) -> Result<TomeSettings> {
    let at = |t: TomeSettings| unet_flops(cfg, lh, lw, steps, &Pruning::tome(t)?).map(|f| f.model);
    let sets: Vec<(bool, bool, bool)> = if escalate {
        TOME_ESCALATION.to_vec()
    } else {
        let t = tome;
        vec![(t.merge_attn, t.merge_crossattn, t.merge_mlp)]
    };
    let mut floor = f64::INFINITY;
    for (a, x, m) in sets {
        let base = TomeSettings {
            merge_attn: a,
            merge_crossattn: x,
            merge_mlp: m,
            ..*tome
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

/// Pruning given as it is, or by a FLOPs budget that a model and size turn into a ratio.
#[derive(Clone, Debug)]
pub enum PruneTarget {
    /// This pruning, as it is.
    Fixed(Pruning),
    /// AT-EDM with these settings but the keep ratio, which is solved for `flops` per step.
    AtEdmBudget {
        /// Every setting but the keep ratio.
        atedm: AtEdm,
        /// Average model FLOPs per step (one image).
        flops: f64,
    },
    /// ToMe with these settings but the merge ratio, which is solved for `flops` per step;
    /// with `choose_layers`, also the merged layers ([`TOME_ESCALATION`]).
    TomeBudget {
        /// Every setting but the ratio (and the layers, with `choose_layers`).
        tome: TomeSettings,
        /// Average model FLOPs per step (one image).
        flops: f64,
        /// Let the budget choose the layers merged around.
        choose_layers: bool,
    },
}

impl Default for PruneTarget {
    fn default() -> Self {
        PruneTarget::Fixed(Pruning::None)
    }
}

impl PruneTarget {
    /// The pruning for `steps` steps of `cfg` on a `lh x lw` latent, checked to act on some
    /// stack of the model.
    pub fn resolve(&self, cfg: &UNetConfig, lh: usize, lw: usize, steps: usize) -> Result<Pruning> {
        let p = match self {
            PruneTarget::Fixed(p) => p.clone(),
            PruneTarget::AtEdmBudget { atedm, flops } => Pruning::AtEdm(
                atedm.with_keep_ratio(keep_ratio_for_budget(cfg, lh, lw, steps, atedm, *flops)?)?,
            ),
            PruneTarget::TomeBudget {
                tome,
                flops,
                choose_layers,
            } => Pruning::tome(tome_for_budget(
                cfg,
                lh,
                lw,
                steps,
                tome,
                *flops,
                *choose_layers,
            )?)?,
        };
        p.check_stacks(&crate::prune::schedule::stacks(cfg, lh, lw))?;
        Ok(p)
    }

    /// The budget in FLOPs per step, when one was given.
    pub fn budget(&self) -> Option<f64> {
        match self {
            PruneTarget::Fixed(_) => None,
            PruneTarget::AtEdmBudget { flops, .. } | PruneTarget::TomeBudget { flops, .. } => {
                Some(*flops)
            }
        }
    }

    /// The method, without parameters.
    pub fn mode(&self) -> PruneMode {
        match self {
            PruneTarget::Fixed(p) => p.mode(),
            PruneTarget::AtEdmBudget { atedm, .. } if atedm.dagger() => PruneMode::AtEdmDagger,
            PruneTarget::AtEdmBudget { .. } => PruneMode::AtEdm,
            PruneTarget::TomeBudget { .. } => PruneMode::Tome,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prune::schedule::stacks;

    fn sdxl() -> UNetConfig {
        UNetConfig::sdxl_base()
    }

    fn atedm(keep: f64, dsap: bool) -> AtEdm {
        AtEdm::new(keep)
            .unwrap()
            .with_dsap(dsap.then_some(0.25))
            .unwrap()
    }

    fn p(a: AtEdm) -> Pruning {
        Pruning::AtEdm(a)
    }

    // Expected figures: the independent count in atedm.md ("An independent count of this
    // definition ... gives: full 6.761 TFLOPs; ...") and the paper's 6.7 / 4.5 TFLOPs.
    #[test]
    fn full_sdxl_is_6_76_tflops() {
        let f = unet_flops(&sdxl(), 128, 128, 50, &Pruning::None).unwrap();
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
        let f = unet_flops(&sdxl(), 128, 128, 50, &p(atedm(0.319, true))).unwrap();
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
        let dagger = atedm(0.319, true).with_dagger(true);
        let f = unet_flops(&sdxl(), 128, 128, 50, &p(dagger)).unwrap();
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
        let f = unet_flops(&sdxl(), 128, 128, 50, &p(atedm(0.319, true))).unwrap();
        assert!(
            (f.overhead / 1e12 - 0.11).abs() < 0.005,
            "{}",
            f.overhead / 1e12
        );
        // G-WPR's share: 5 iterations against 1 differ by 4 iterations' FLOPs.
        let one_iter = unet_flops(
            &sdxl(),
            128,
            128,
            50,
            &p(atedm(0.319, true).with_gwpr_iters(1).unwrap()),
        )
        .unwrap();
        let gwpr = (f.overhead - one_iter.overhead) * 5.0 / 4.0 / 1e12;
        assert!(gwpr > 0.0 && gwpr < 0.001, "{gwpr}");
        assert_eq!(
            f.model, one_iter.model,
            "overhead never enters the model figure"
        );
    }

    #[test]
    fn invalid_settings_are_errors() {
        assert!(AtEdm::new(0.0).is_err());
        assert!(AtEdm::new(1.5).is_err());
        let deep = atedm(0.5, true).with_prune_block(9);
        let e = unet_flops(&sdxl(), 128, 128, 50, &p(deep))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no transformer stack"), "{e}");
    }

    fn tome(ratio: f64, attn2: bool, mlp: bool) -> TomeSettings {
        TomeSettings {
            ratio,
            merge_crossattn: attn2,
            merge_mlp: mlp,
            ..Default::default()
        }
    }

    fn pt(t: TomeSettings) -> Pruning {
        Pruning::tome(t).unwrap()
    }

    #[test]
    fn tome_flops_follow_the_merged_token_counts() {
        // SD-XL at 1024 px: 60 blocks at level 3 (N 1024 = 32x32, C 1280; 256 destinations,
        // 768 sources) and 10 at level 2 (N 4096, C 640; 1024 / 3072). Ratio 0.75 merges all
        // sources, so attn1 runs on N/4 tokens: 4 N C^2 + 2 N^2 C multiply-adds per block.
        let full = unet_flops(&sdxl(), 128, 128, 50, &Pruning::None)
            .unwrap()
            .model;
        let f = unet_flops(&sdxl(), 128, 128, 50, &pt(tome(0.75, false, false))).unwrap();
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
        let g = unet_flops(&sdxl(), 128, 128, 50, &pt(tome(0.75, false, true))).unwrap();
        let ff = |n: f64, c: f64| 2.0 * 12.0 * n * c * c;
        let saved_ff = 60.0 * (ff(1024.0, 1280.0) - ff(256.0, 1280.0))
            + 10.0 * (ff(4096.0, 640.0) - ff(1024.0, 640.0));
        assert!((f.model - g.model - saved_ff).abs() < 1e3);
        // A ratio that merges nothing costs the full model and no overhead.
        let z = unet_flops(&sdxl(), 128, 128, 50, &pt(tome(1e-6, true, true))).unwrap();
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
                unet_flops(&sdxl(), 128, 128, 50, &pt(TomeSettings { ratio, ..t }))
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
