//! What pruning a run asks for: [`Pruning`], a value that holds only meaningful combinations
//! and is validated when it is built.
//!
//! - [`Pruning::None`]: every stack runs on all its tokens.
//! - [`Pruning::AtEdm`]: AT-EDM ([`AtEdm`]: keep ratio, G-WPR iterations, pruning block,
//!   dagger variant, DSAP).
//! - [`Pruning::Tome`]: the ToMe baseline ([`Tome`]).
//! - [`Pruning::Custom`]: a user-written [`PruneSchedule`].
//!
//! How a value acts per step and stack is the scheduler's business
//! ([`super::schedule`]); what it costs is the FLOPs model's ([`super::flops`]).

use std::fmt;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::prune::schedule::PruneSchedule;
use crate::prune::tome::TomeSettings;

/// DSAP's default early fraction of the steps (the paper's tau).
pub const DEFAULT_TAU: f64 = 0.25;
/// Default number of G-WPR iterations (the paper's T).
pub const DEFAULT_GWPR_ITERS: usize = 5;

/// Which pruning method a [`Pruning`] runs (its kind, without parameters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PruneMode {
    /// No pruning.
    None,
    /// AT-EDM in every transformer stack that has a block after the pruning block.
    AtEdm,
    /// AT-EDM without pruning at the second feature level (the paper's AT-EDM-dagger).
    AtEdmDagger,
    /// The ToMe baseline (token merging in every block of the selected stacks, every step).
    Tome,
    /// A user-written schedule.
    Custom,
}

impl PruneMode {
    /// The command-line and saved-run name: `none`, `atedm`, `atedm-dagger`, `tome`, `custom`.
    pub fn name(self) -> &'static str {
        match self {
            PruneMode::None => "none",
            PruneMode::AtEdm => "atedm",
            PruneMode::AtEdmDagger => "atedm-dagger",
            PruneMode::Tome => "tome",
            PruneMode::Custom => "custom",
        }
    }
}

/// How a pruned token gets its output back at the end of a stack (docs/pruning.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Recovery {
    /// The paper's rule: a pruned token copies the output of the kept token it attends to most
    /// in block p's head-mean map.
    #[default]
    AttnCopy,
    /// A pruned token keeps its own state after block p plus the update that the later blocks
    /// gave the kept token most cosine-similar to it there; `proj_out` then runs on every token.
    CosDelta,
}

impl Recovery {
    /// The command-line name: `attn-copy` or `cos-delta`.
    pub fn name(self) -> &'static str {
        match self {
            Recovery::AttnCopy => "attn-copy",
            Recovery::CosDelta => "cos-delta",
        }
    }
}

/// AT-EDM's parameters: the keep ratio after the pruning block, G-WPR iterations, the pruning
/// block, the dagger variant, DSAP and the recovery. Built with [`AtEdm::new`] and the `with_*`
/// methods, each of which validates its value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AtEdm {
    keep_ratio: f64,
    gwpr_iters: usize,
    prune_block: usize,
    dagger: bool,
    dsap_tau: Option<f64>,
    recovery: Recovery,
}

impl AtEdm {
    /// AT-EDM keeping `keep_ratio` of the tokens (in (0, 1]) after block 0, with 5 G-WPR
    /// iterations and DSAP at tau = 0.25 (the paper's defaults).
    pub fn new(keep_ratio: f64) -> Result<Self> {
        check_keep_ratio(keep_ratio)?;
        Ok(AtEdm {
            keep_ratio,
            gwpr_iters: DEFAULT_GWPR_ITERS,
            prune_block: 0,
            dagger: false,
            dsap_tau: Some(DEFAULT_TAU),
            recovery: Recovery::AttnCopy,
        })
    }

    /// The same settings with another keep ratio, in (0, 1].
    pub fn with_keep_ratio(self, keep_ratio: f64) -> Result<Self> {
        check_keep_ratio(keep_ratio)?;
        Ok(AtEdm { keep_ratio, ..self })
    }

    /// G-WPR iterations T (at least 1).
    pub fn with_gwpr_iters(self, gwpr_iters: usize) -> Result<Self> {
        if gwpr_iters == 0 {
            return Err(Error::Invalid("G-WPR needs at least one iteration".into()));
        }
        Ok(AtEdm { gwpr_iters, ..self })
    }

    /// The pruning block p: blocks `0..=p` of a stack run on all tokens, the pruning happens
    /// after block p. Stacks with no block after it are not pruned.
    pub fn with_prune_block(self, prune_block: usize) -> Self {
        AtEdm {
            prune_block,
            ..self
        }
    }

    /// AT-EDM-dagger: no pruning at the second feature level.
    pub fn with_dagger(self, dagger: bool) -> Self {
        AtEdm { dagger, ..self }
    }

    /// DSAP with early fraction `tau` in [0, 1], or `None` to prune every step alike.
    pub fn with_dsap(self, tau: Option<f64>) -> Result<Self> {
        if let Some(t) = tau {
            if !(0.0..=1.0).contains(&t) {
                return Err(Error::Invalid(format!(
                    "DSAP's tau must be in [0, 1], got {t}"
                )));
            }
        }
        Ok(AtEdm {
            dsap_tau: tau,
            ..self
        })
    }

    /// How pruned tokens are recovered (default: the paper's [`Recovery::AttnCopy`]).
    pub fn with_recovery(self, recovery: Recovery) -> Self {
        AtEdm { recovery, ..self }
    }

    /// How pruned tokens are recovered.
    pub fn recovery(&self) -> Recovery {
        self.recovery
    }

    /// Fraction of tokens kept after the pruning block.
    pub fn keep_ratio(&self) -> f64 {
        self.keep_ratio
    }

    /// G-WPR iterations T.
    pub fn gwpr_iters(&self) -> usize {
        self.gwpr_iters
    }

    /// The pruning block p.
    pub fn prune_block(&self) -> usize {
        self.prune_block
    }

    /// Whether this is AT-EDM-dagger (level 2 unpruned).
    pub fn dagger(&self) -> bool {
        self.dagger
    }

    /// DSAP's tau, `None` without DSAP.
    pub fn dsap_tau(&self) -> Option<f64> {
        self.dsap_tau
    }
}

fn check_keep_ratio(r: f64) -> Result<()> {
    if r > 0.0 && r <= 1.0 {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "keep ratio must be in (0, 1], got {r}"
        )))
    }
}

/// The ToMe baseline's settings, validated ([`TomeSettings::validate`]) when built.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tome(TomeSettings);

impl Tome {
    /// Checks `settings` (a merge ratio in (0, 1], at least one layer merged around).
    pub fn new(settings: TomeSettings) -> Result<Self> {
        settings.validate()?;
        Ok(Tome(settings))
    }

    /// The settings.
    pub fn settings(&self) -> &TomeSettings {
        &self.0
    }
}

/// The pruning of a run. Cheap to clone.
#[derive(Clone, Default)]
pub enum Pruning {
    /// No pruning.
    #[default]
    None,
    /// AT-EDM with DSAP (see [`AtEdm`]).
    AtEdm(AtEdm),
    /// ToMe, every step alike.
    Tome(Tome),
    /// A user-written schedule: it decides what every stack does at every step.
    Custom(Arc<dyn PruneSchedule>),
}

impl fmt::Debug for Pruning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pruning::None => f.write_str("None"),
            Pruning::AtEdm(a) => f.debug_tuple("AtEdm").field(a).finish(),
            Pruning::Tome(t) => f.debug_tuple("Tome").field(t).finish(),
            Pruning::Custom(s) => write!(f, "Custom({})", s.describe()),
        }
    }
}

impl From<AtEdm> for Pruning {
    fn from(a: AtEdm) -> Self {
        Pruning::AtEdm(a)
    }
}

impl From<Tome> for Pruning {
    fn from(t: Tome) -> Self {
        Pruning::Tome(t)
    }
}

impl Pruning {
    /// AT-EDM with the paper's defaults at `keep_ratio`.
    pub fn atedm(keep_ratio: f64) -> Result<Self> {
        Ok(Pruning::AtEdm(AtEdm::new(keep_ratio)?))
    }

    /// ToMe with `settings`.
    pub fn tome(settings: TomeSettings) -> Result<Self> {
        Ok(Pruning::Tome(Tome::new(settings)?))
    }

    /// A user-written schedule.
    pub fn custom(schedule: impl PruneSchedule + 'static) -> Self {
        Pruning::Custom(Arc::new(schedule))
    }

    /// The method, without its parameters.
    pub fn mode(&self) -> PruneMode {
        match self {
            Pruning::None => PruneMode::None,
            Pruning::AtEdm(a) if a.dagger => PruneMode::AtEdmDagger,
            Pruning::AtEdm(_) => PruneMode::AtEdm,
            Pruning::Tome(_) => PruneMode::Tome,
            Pruning::Custom(_) => PruneMode::Custom,
        }
    }

    /// Whether this prunes or merges anything at all.
    pub fn is_none(&self) -> bool {
        matches!(self, Pruning::None)
    }

    /// The AT-EDM settings, if this is AT-EDM.
    pub fn as_atedm(&self) -> Option<&AtEdm> {
        match self {
            Pruning::AtEdm(a) => Some(a),
            _ => None,
        }
    }

    /// The ToMe settings, if this is ToMe.
    pub fn as_tome(&self) -> Option<&TomeSettings> {
        match self {
            Pruning::Tome(t) => Some(t.settings()),
            _ => None,
        }
    }

    /// One line for logs, saved runs and the PNG's parameters, e.g. `AT-EDM, keep ratio
    /// 0.3190, G-WPR T=5, pruning block 0, DSAP on (tau 0.25)`.
    pub fn describe(&self) -> String {
        self.describe_solved(None)
    }

    /// [`Pruning::describe`], saying that the ratio was solved for `budget` FLOPs per step.
    pub fn describe_solved(&self, budget: Option<f64>) -> String {
        let how = budget.map_or(String::new(), |b| {
            if b >= 1e11 {
                format!(", solved for {:.3} TFLOPs/step", b / 1e12)
            } else {
                format!(", solved for {:.4} GFLOPs/step", b / 1e9)
            }
        });
        match self {
            Pruning::None => "none".into(),
            Pruning::Tome(t) => format!("{}{how}", describe_tome(t.settings())),
            Pruning::AtEdm(a) => format!(
                "{}, keep ratio {:.4}{how}, G-WPR T={}, pruning block {}, DSAP {}{}",
                if a.dagger { "AT-EDM-dagger" } else { "AT-EDM" },
                a.keep_ratio,
                a.gwpr_iters,
                a.prune_block,
                match a.dsap_tau {
                    Some(tau) => format!("on (tau {tau})"),
                    None => "off".into(),
                },
                match a.recovery {
                    Recovery::AttnCopy => String::new(),
                    r => format!(", recovery {}", r.name()),
                }
            ),
            Pruning::Custom(s) => format!("custom schedule: {}", s.describe()),
        }
    }
}

/// One line describing ToMe settings.
pub fn describe_tome(t: &TomeSettings) -> String {
    let layers: Vec<&str> = [
        (t.merge_attn, "attn1"),
        (t.merge_crossattn, "attn2"),
        (t.merge_mlp, "mlp"),
    ]
    .iter()
    .filter(|l| l.0)
    .map(|l| l.1)
    .collect();
    format!(
        "ToMe, merge ratio {:.4} around {}, stacks with downsample <= {}, destinations {}",
        t.ratio,
        layers.join("+"),
        t.max_downsample,
        if t.random {
            format!("random (seed {})", t.seed)
        } else {
            "top-left".into()
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_values_are_refused_when_built() {
        assert!(AtEdm::new(0.0)
            .unwrap_err()
            .to_string()
            .contains("keep ratio"));
        assert!(AtEdm::new(1.2)
            .unwrap_err()
            .to_string()
            .contains("keep ratio"));
        assert!(AtEdm::new(f64::NAN).is_err());
        let a = AtEdm::new(0.5).unwrap();
        assert!(a
            .with_gwpr_iters(0)
            .unwrap_err()
            .to_string()
            .contains("iteration"));
        assert!(a.with_dsap(Some(1.5)).is_err());
        assert!(a.with_keep_ratio(-0.1).is_err());
        let bad = TomeSettings {
            ratio: 0.0,
            ..Default::default()
        };
        assert!(Tome::new(bad).is_err());
        let none = TomeSettings {
            merge_attn: false,
            ..Default::default()
        };
        assert!(Pruning::tome(none).is_err());
    }

    #[test]
    fn modes_and_descriptions() {
        let a = AtEdm::new(0.5).unwrap().with_dagger(true);
        assert_eq!(Pruning::from(a).mode(), PruneMode::AtEdmDagger);
        assert_eq!(Pruning::None.mode().name(), "none");
        let d = Pruning::atedm(0.319).unwrap().describe_solved(Some(4.1e12));
        assert_eq!(
            d,
            "AT-EDM, keep ratio 0.3190, solved for 4.100 TFLOPs/step, G-WPR T=5, pruning block 0, DSAP on (tau 0.25)"
        );
    }
}
