//! `atedm flops`: the FLOPs model (per-step TFLOPs, pruning overhead, keep ratio for a budget).

use std::path::PathBuf;

use atedm::model::config::UNetConfig;
use atedm::prune::budget::{named_budget_for, PruneTarget};
use atedm::prune::flops::unet_flops;
use atedm::prune::settings::describe_tome;
use atedm::prune::tome::TomeSettings;
use atedm::prune::{AtEdm, PruneMode, Pruning, Recovery, Tome};
use atedm::{Error, Result};
use clap::{Args, ValueEnum};

/// `--prune` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PruneArg {
    None,
    Atedm,
    AtedmDagger,
    Tome,
}

/// `--dsap` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

/// Pruning flags (shared by the commands that prune).
#[derive(Args, Debug, Clone)]
pub struct PruneArgs {
    /// Pruning method.
    #[arg(long, value_enum, default_value = "none")]
    pub prune: PruneArg,
    /// Fraction of tokens kept after the pruning block, in (0, 1].
    #[arg(long)]
    pub keep_ratio: Option<f64>,
    /// FLOPs budget per step: TFLOPs (e.g. 4.1) or the paper's settings a, b, c, d (2.9, 3.6, 4.1, 4.5 TFLOPs; ToMe's d is 4.6).
    #[arg(long)]
    pub flops: Option<String>,
    /// ToMe: fraction of each block's tokens merged away, in (0, 1] (capped at the sources, 3/4 of the tokens).
    #[arg(long)]
    pub merge_ratio: Option<f64>,
    /// ToMe: layers merged around, a comma list of attn1, attn2, mlp (default attn1; with --flops, the fewest that reach the budget).
    #[arg(long)]
    pub tome_merge: Option<String>,
    /// ToMe: merge in stacks whose downsample factor is at most this (SD-XL: 2 = level 2, 4 = levels 2 and 3).
    #[arg(long, default_value_t = 4)]
    pub tome_max_downsample: usize,
    /// ToMe: random destination per 2x2 window (seeded), or the top-left token when off.
    #[arg(long, value_enum, default_value = "on")]
    pub tome_random: OnOff,
    /// ToMe: seed of the destination choice.
    #[arg(long, default_value_t = 0)]
    pub tome_seed: u32,
    /// G-WPR iterations.
    #[arg(long, default_value_t = 5)]
    pub gwpr_iters: usize,
    /// Pruning block p.
    #[arg(long, default_value_t = 0)]
    pub prune_block: usize,
    /// Denoising-steps-aware pruning.
    #[arg(long, value_enum, default_value = "on")]
    pub dsap: OnOff,
    /// DSAP's early fraction of the steps.
    #[arg(long, default_value_t = 0.25)]
    pub tau: f64,
    /// AT-EDM: how pruned tokens get their output back: attn-copy (the paper's: copy the
    /// kept token attended to most) or cos-delta (own state plus the update of the most
    /// cosine-similar kept token).
    #[arg(long, value_enum, default_value = "attn-copy")]
    pub recovery: RecoveryArg,
}

/// `--recovery` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RecoveryArg {
    AttnCopy,
    CosDelta,
}

impl Default for PruneArgs {
    /// No pruning (the command-line defaults).
    fn default() -> Self {
        PruneArgs {
            prune: PruneArg::None,
            keep_ratio: None,
            flops: None,
            merge_ratio: None,
            tome_merge: None,
            tome_max_downsample: 4,
            tome_random: OnOff::On,
            tome_seed: 0,
            gwpr_iters: 5,
            prune_block: 0,
            dsap: OnOff::On,
            tau: 0.25,
            recovery: RecoveryArg::AttnCopy,
        }
    }
}

impl PruneArgs {
    /// The pruning these flags ask for, checked without a model: given, or a budget the model
    /// and size turn into a ratio ([`PruneTarget::resolve`]).
    pub fn target(&self) -> Result<PruneTarget> {
        if !(0.0..=1.0).contains(&self.tau) {
            return Err(Error::Invalid(format!(
                "--tau must be in [0, 1], got {}",
                self.tau
            )));
        }
        let tome_layers = self.tome_layers()?;
        if self.prune == PruneArg::None && (self.keep_ratio.is_some() || self.flops.is_some()) {
            return Err(Error::Invalid(
                "--keep-ratio and --flops need --prune atedm, atedm-dagger or tome".into(),
            ));
        }
        if self.prune == PruneArg::Tome {
            if self.keep_ratio.is_some() {
                return Err(Error::Invalid(
                    "ToMe takes --merge-ratio (the fraction of tokens merged away), not --keep-ratio"
                        .into(),
                ));
            }
            if self.merge_ratio.is_some() && self.flops.is_some() {
                return Err(Error::Invalid(
                    "give --merge-ratio or --flops, not both".into(),
                ));
            }
        } else if self.merge_ratio.is_some() || self.tome_merge.is_some() {
            return Err(Error::Invalid(
                "--merge-ratio and --tome-merge are ToMe options: add --prune tome".into(),
            ));
        }
        if self.recovery != RecoveryArg::AttnCopy
            && !matches!(self.prune, PruneArg::Atedm | PruneArg::AtedmDagger)
        {
            return Err(Error::Invalid(
                "--recovery is an AT-EDM option: add --prune atedm".into(),
            ));
        }
        let mode = match self.prune {
            PruneArg::None => return Ok(PruneTarget::Fixed(Pruning::None)),
            PruneArg::Atedm => PruneMode::AtEdm,
            PruneArg::AtedmDagger => PruneMode::AtEdmDagger,
            PruneArg::Tome => PruneMode::Tome,
        };
        let budget = match &self.flops {
            None => None,
            Some(_) if self.keep_ratio.is_some() => {
                return Err(Error::Invalid(
                    "give --keep-ratio or --flops, not both".into(),
                ));
            }
            Some(b) => {
                let t = named_budget_for(mode, b)
                    .or_else(|| b.parse::<f64>().ok())
                    .ok_or_else(|| {
                        Error::Invalid(format!(
                            "--flops '{b}': expected TFLOPs (e.g. 4.1) or one of a, b, c, d"
                        ))
                    })?;
                if t.is_nan() || t <= 0.0 {
                    return Err(Error::Invalid(format!("--flops must be positive, got {t}")));
                }
                Some(t * 1e12)
            }
        };
        if mode == PruneMode::Tome {
            let tome = self.tome_settings(tome_layers)?;
            return Ok(match budget {
                Some(flops) => PruneTarget::TomeBudget {
                    tome,
                    flops,
                    choose_layers: tome_layers.is_none(),
                },
                None => PruneTarget::Fixed(Pruning::Tome(Tome::new(tome)?)),
            });
        }
        let atedm = self.atedm(self.keep_ratio.unwrap_or(1.0))?;
        Ok(match budget {
            Some(flops) => PruneTarget::AtEdmBudget { atedm, flops },
            None => PruneTarget::Fixed(Pruning::AtEdm(atedm)),
        })
    }

    /// AT-EDM with these flags' settings at `keep_ratio` (dagger with `--prune atedm-dagger`).
    pub fn atedm(&self, keep_ratio: f64) -> Result<AtEdm> {
        Ok(AtEdm::new(keep_ratio)?
            .with_gwpr_iters(self.gwpr_iters)?
            .with_prune_block(self.prune_block)
            .with_dagger(self.prune == PruneArg::AtedmDagger)
            .with_dsap((self.dsap == OnOff::On).then_some(self.tau))?
            .with_recovery(match self.recovery {
                RecoveryArg::AttnCopy => Recovery::AttnCopy,
                RecoveryArg::CosDelta => Recovery::CosDelta,
            }))
    }

    /// ToMe's settings from these flags (`layers`: from `--tome-merge`; default attn1).
    pub fn tome_settings(&self, layers: Option<(bool, bool, bool)>) -> Result<TomeSettings> {
        let t = TomeSettings {
            ratio: self.merge_ratio.unwrap_or(TomeSettings::default().ratio),
            merge_attn: layers.is_none_or(|l| l.0),
            merge_crossattn: layers.is_some_and(|l| l.1),
            merge_mlp: layers.is_some_and(|l| l.2),
            max_downsample: self.tome_max_downsample,
            random: self.tome_random == OnOff::On,
            seed: self.tome_seed,
        };
        t.validate()?;
        Ok(t)
    }

    /// The pruning for `steps` steps of `cfg` on a `lh x lw` latent, and the budget in FLOPs
    /// when one was given.
    pub fn settings(
        &self,
        cfg: &UNetConfig,
        lh: usize,
        lw: usize,
        steps: usize,
    ) -> Result<(Pruning, Option<f64>)> {
        let target = self.target()?;
        Ok((target.resolve(cfg, lh, lw, steps)?, target.budget()))
    }

    /// `--tome-merge` as (attn1, attn2, mlp); `None` when not given.
    pub fn tome_layers(&self) -> Result<Option<(bool, bool, bool)>> {
        let Some(list) = &self.tome_merge else {
            return Ok(None);
        };
        let mut l = (false, false, false);
        for part in list.split(',').map(str::trim) {
            match part {
                "attn1" => l.0 = true,
                "attn2" => l.1 = true,
                "mlp" => l.2 = true,
                _ => {
                    return Err(Error::Invalid(format!(
                        "--tome-merge '{part}': expected a comma list of attn1, attn2, mlp"
                    )))
                }
            }
        }
        Ok(Some(l))
    }
}

#[derive(Args, Debug)]
pub struct FlopsArgs {
    /// A model (pipeline folder, unet folder, or single file); default: SD-XL base.
    #[arg(long, conflicts_with = "sdxl")]
    pub model: Option<PathBuf>,
    /// Diffusers config folder for a single file that is not SD-XL base-sized.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// SD-XL base (the default).
    #[arg(long)]
    pub sdxl: bool,
    #[arg(long, default_value_t = 1024)]
    pub width: usize,
    #[arg(long, default_value_t = 1024)]
    pub height: usize,
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    #[command(flatten)]
    pub prune: PruneArgs,
}

pub fn run(a: &FlopsArgs) -> Result<()> {
    let cfg = match &a.model {
        Some(m) => atedm::model::load::unet_config(m, a.config.as_deref())?,
        None => UNetConfig::sdxl_base(),
    };
    // The VAE's factor: a pipeline folder's own (the demo model's may differ from SD-XL's 8).
    let vae = match &a.model {
        Some(m) if m.join("vae").join("config.json").is_file() => {
            atedm::model::vae::VaeConfig::from_file(&m.join("vae"))?.upsampling()
        }
        _ => 8,
    };
    let m = vae * cfg.downsampling();
    if a.width == 0 || a.height == 0 || a.width % m != 0 || a.height % m != 0 {
        return Err(Error::Invalid(format!(
            "image size {}x{} is not a positive multiple of {m}",
            a.width, a.height
        )));
    }
    let (lh, lw) = (a.height / vae, a.width / vae);
    let (s, budget) = a.prune.settings(&cfg, lh, lw, a.steps)?;
    let f = unet_flops(&cfg, lh, lw, a.steps, &s)?;
    // GFLOPs for small models (the demo model), TFLOPs for SD-XL.
    let (unit, scale) = if f.full >= 1e11 {
        ("TFLOPs", 1e12)
    } else {
        ("GFLOPs", 1e9)
    };
    let name = a
        .model
        .as_ref()
        .map_or("SD-XL base".to_string(), |p| p.display().to_string());
    println!(
        "model: {name}, {}x{} (latent {lh}x{lw}), {} steps",
        a.width, a.height, a.steps
    );
    if let Pruning::Tome(t) = &s {
        let how = match budget {
            Some(b) => format!(" (solved for {:.3} {unit})", b / scale),
            None => String::new(),
        };
        println!("pruning: {}{how}", describe_tome(t.settings()));
    } else if let Pruning::AtEdm(at) = &s {
        let how = match budget {
            Some(b) => format!("solved for {:.3} {unit}", b / scale),
            None => "given".into(),
        };
        let dsap = if let Some(tau) = at.dsap_tau() {
            format!(
                "DSAP on (tau {}: {} early steps at {:.3} {unit}, {} at {:.3})",
                tau,
                f.early_steps,
                f.early / scale,
                a.steps - f.early_steps,
                f.late / scale
            )
        } else {
            "DSAP off".into()
        };
        let mode = if at.dagger() {
            "AT-EDM-dagger (no level-2 pruning)"
        } else {
            "AT-EDM"
        };
        println!(
            "pruning: {mode}, keep ratio {:.4} ({how}), G-WPR T={}, pruning block {}, {dsap}",
            at.keep_ratio(),
            at.gwpr_iters(),
            at.prune_block()
        );
    } else {
        println!("pruning: {}", s.describe());
    }
    println!(
        "model {unit}/step: {:.3} (full {:.3}; {:.1}% saved, FLOPs ratio {:.2}x)",
        f.model / scale,
        f.full / scale,
        100.0 * (1.0 - f.model / f.full),
        f.full / f.model
    );
    println!(
        "pruning overhead {unit}/step: {:.4} ({}; not in the figure above)",
        f.overhead / scale,
        if s.mode() == PruneMode::Tome {
            "ToMe's similarity matrices"
        } else {
            "head-mean map + G-WPR"
        }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(prune: PruneArg, keep: Option<f64>, flops: Option<&str>) -> PruneArgs {
        PruneArgs {
            prune,
            keep_ratio: keep,
            flops: flops.map(String::from),
            merge_ratio: None,
            tome_merge: None,
            tome_max_downsample: 4,
            tome_random: OnOff::On,
            tome_seed: 0,
            gwpr_iters: 5,
            prune_block: 0,
            dsap: OnOff::On,
            tau: 0.25,
            recovery: RecoveryArg::AttnCopy,
        }
    }

    #[test]
    fn named_and_numeric_budgets_solve_the_same() {
        let cfg = UNetConfig::sdxl_base();
        let (a, _) = args(PruneArg::Atedm, None, Some("c"))
            .settings(&cfg, 128, 128, 50)
            .unwrap();
        let (b, _) = args(PruneArg::Atedm, None, Some("4.1"))
            .settings(&cfg, 128, 128, 50)
            .unwrap();
        let (a, b) = (a.as_atedm().unwrap(), b.as_atedm().unwrap());
        assert_eq!(a, b);
        assert!((a.keep_ratio() - 0.319).abs() < 0.002);
    }

    #[test]
    fn conflicting_or_bad_flags_are_errors() {
        let cfg = UNetConfig::sdxl_base();
        let e = |a: PruneArgs| a.settings(&cfg, 128, 128, 50).unwrap_err().to_string();
        assert!(e(args(PruneArg::Atedm, Some(0.5), Some("c"))).contains("not both"));
        assert!(e(args(PruneArg::None, Some(0.5), None)).contains("--prune"));
        assert!(e(args(PruneArg::Atedm, None, Some("z"))).contains("a, b, c, d"));
        assert!(e(args(PruneArg::Atedm, None, Some("-1"))).contains("positive"));
        assert!(e(args(PruneArg::Atedm, None, Some("a"))).contains("below"));
        assert!(e(args(PruneArg::Tome, Some(0.5), None)).contains("--merge-ratio"));
        let tome_layers = |l: &str| PruneArgs {
            tome_merge: Some(l.into()),
            ..args(PruneArg::Tome, None, None)
        };
        assert!(e(tome_layers("attn1,ff")).contains("'ff'"));
        assert!(e(PruneArgs {
            merge_ratio: Some(0.5),
            ..args(PruneArg::Atedm, None, None)
        })
        .contains("--prune tome"));
        assert!(e(PruneArgs {
            recovery: RecoveryArg::CosDelta,
            ..args(PruneArg::Tome, None, None)
        })
        .contains("--prune atedm"));
        assert!(e(PruneArgs {
            merge_ratio: Some(1.5),
            ..args(PruneArg::Tome, None, None)
        })
        .contains("(0, 1]"));
    }
}
