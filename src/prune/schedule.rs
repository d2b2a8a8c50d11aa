//! The pruning scheduler: given a denoising step and a transformer stack, what that stack does
//! at that step ([`StackAction`]). The UNet asks the schedule for every stack of every forward;
//! it decides nothing itself.
//!
//! [`Pruning`] is the built-in schedule: AT-EDM with DSAP (the first `ceil(tau * steps)` steps
//! leave the first stack of each down level and the last stack of each up level unpruned), or
//! ToMe every step. A user-written schedule implements [`PruneSchedule`] (for example a keep
//! ratio that falls with the step, or one keep ratio per feature level) and runs through
//! [`Pruning::custom`] with no change to the UNet.

use std::fmt;

use crate::error::{Error, Result};
use crate::model::config::{DownKind, UNetConfig, UpKind};
use crate::prune::settings::{AtEdm, Pruning, Recovery};
use crate::prune::tome::TomeSettings;

/// One `Transformer2DModel` of the UNet.
#[derive(Clone, Debug, PartialEq)]
pub struct Stack {
    /// diffusers module name, e.g. `down_blocks.1.attentions.0`.
    pub name: String,
    /// Feature level (1-based as the paper counts: level 1 = full latent resolution).
    pub level: usize,
    /// Channels (token width).
    pub channels: u64,
    /// Tokens (grid rows x columns).
    pub tokens: u64,
    /// Token grid (rows, columns).
    pub grid: (usize, usize),
    /// Number of `BasicTransformerBlock`s.
    pub depth: usize,
    /// Skipped by DSAP in early steps (the first stack of a down level, the last of an up level).
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

/// Tokens kept for `n` tokens at `keep_ratio`: round half up, clamped to [1, n].
pub fn kept_tokens(n: u64, keep_ratio: f64) -> u64 {
    ((keep_ratio * n as f64 + 0.5).floor() as u64).clamp(1, n)
}

/// AT-EDM in one stack at one forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackPrune {
    /// Tokens kept after the pruning block (1 to the stack's tokens).
    pub keep: usize,
    /// G-WPR iterations (at least 1).
    pub iters: usize,
    /// Pruning block p (below the stack's depth - 1).
    pub block: usize,
    /// How pruned tokens get their output back.
    pub recovery: Recovery,
}

/// What one stack does at one step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StackAction {
    /// All tokens through every block.
    Full,
    /// AT-EDM: prune after block `block`, keep `keep` tokens, recover at the end of the stack.
    AtEdm(StackPrune),
    /// ToMe: merge in every block with these settings.
    Tome(TomeSettings),
}

impl StackAction {
    /// Checks the action against the stack it is for (a user schedule may ask for anything).
    pub fn check(&self, stack: &Stack) -> Result<()> {
        match self {
            StackAction::Full => Ok(()),
            StackAction::AtEdm(p) => {
                if p.keep == 0 || p.keep as u64 > stack.tokens {
                    return Err(Error::Invalid(format!(
                        "{}: keeps {} of {} tokens (1 to {} allowed)",
                        stack.name, p.keep, stack.tokens, stack.tokens
                    )));
                }
                if p.iters == 0 {
                    return Err(Error::Invalid(format!(
                        "{}: G-WPR needs at least one iteration",
                        stack.name
                    )));
                }
                if p.block + 1 >= stack.depth {
                    return Err(Error::Invalid(format!(
                        "{}: pruning block {} leaves no block after it (depth {})",
                        stack.name, p.block, stack.depth
                    )));
                }
                Ok(())
            }
            StackAction::Tome(t) => t.validate(),
        }
    }
}

/// A pruning schedule: what every stack does at every denoising step.
pub trait PruneSchedule: Send + Sync {
    /// What `stack` does at step `step` (0-based) of `steps`.
    fn action(&self, stack: &Stack, step: usize, steps: usize) -> StackAction;

    /// One line naming the schedule (logs, saved runs).
    fn describe(&self) -> String {
        "a user-written schedule".into()
    }
}

impl fmt::Debug for dyn PruneSchedule + '_ {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl AtEdm {
    /// Whether `s` can be pruned at all (a block after the pruning block; not at level 2 for
    /// AT-EDM-dagger).
    pub fn prunable(&self, s: &Stack) -> bool {
        s.depth >= self.prune_block() + 2 && !(self.dagger() && s.level == 2)
    }

    /// Number of early (DSAP) steps among `steps`: `ceil(tau * steps)`, 0 without DSAP.
    pub fn early_steps(&self, steps: usize) -> usize {
        self.dsap_tau()
            .map_or(0, |tau| ((tau * steps as f64).ceil() as usize).min(steps))
    }

    /// Whether `s` is pruned at step `step` of `steps` (DSAP).
    pub fn pruned_at(&self, s: &Stack, step: usize, steps: usize) -> bool {
        self.prunable(s) && !(step < self.early_steps(steps) && s.dsap_protected)
    }
}

impl Pruning {
    /// Whether `s` is pruned or merged in some step (always false for a custom schedule).
    pub fn prunable(&self, s: &Stack) -> bool {
        match self {
            Pruning::None | Pruning::Custom(_) => false,
            Pruning::AtEdm(a) => a.prunable(s),
            Pruning::Tome(t) => t.settings().selects_level(s.level),
        }
    }

    /// Number of early (DSAP) steps among `steps` (0 but for AT-EDM with DSAP).
    pub fn early_steps(&self, steps: usize) -> usize {
        self.as_atedm().map_or(0, |a| a.early_steps(steps))
    }

    /// Checks that this pruning acts on some stack of `stacks` (AT-EDM needs a stack with a
    /// block after the pruning block, ToMe a stack at a selected level).
    pub fn check_stacks(&self, stacks: &[Stack]) -> Result<()> {
        match self {
            Pruning::None | Pruning::Custom(_) => Ok(()),
            _ if stacks.iter().any(|s| self.prunable(s)) => Ok(()),
            Pruning::Tome(t) => Err(Error::Invalid(format!(
                "ToMe selects no transformer stack of this model (max downsample {})",
                t.settings().max_downsample
            ))),
            Pruning::AtEdm(a) => Err(Error::Invalid(format!(
                "pruning asked, but no transformer stack of this model has a block after block {}",
                a.prune_block()
            ))),
        }
    }
}

impl PruneSchedule for Pruning {
    fn action(&self, stack: &Stack, step: usize, steps: usize) -> StackAction {
        match self {
            Pruning::None => StackAction::Full,
            Pruning::AtEdm(a) if a.pruned_at(stack, step, steps) => {
                StackAction::AtEdm(StackPrune {
                    keep: kept_tokens(stack.tokens, a.keep_ratio()) as usize,
                    iters: a.gwpr_iters(),
                    block: a.prune_block(),
                    recovery: a.recovery(),
                })
            }
            Pruning::AtEdm(_) => StackAction::Full,
            Pruning::Tome(t) if t.settings().selects_level(stack.level) => {
                StackAction::Tome(*t.settings())
            }
            Pruning::Tome(_) => StackAction::Full,
            Pruning::Custom(s) => s.action(stack, step, steps),
        }
    }

    fn describe(&self) -> String {
        Pruning::describe(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_tokens_round_half_up_and_clamp() {
        assert_eq!(kept_tokens(1024, 0.5), 512);
        assert_eq!(kept_tokens(3, 0.5), 2);
        assert_eq!(kept_tokens(10, 1e-6), 1);
        assert_eq!(kept_tokens(10, 1.0), 10);
    }

    #[test]
    fn dsap_leaves_protected_stacks_full_in_early_steps() {
        let all = stacks(&UNetConfig::sdxl_base(), 128, 128);
        let p = Pruning::atedm(0.5).unwrap();
        let first = all.iter().find(|s| s.dsap_protected).unwrap();
        let other = all
            .iter()
            .find(|s| !s.dsap_protected && p.prunable(s))
            .unwrap();
        // 50 steps, tau 0.25: 13 early steps.
        assert_eq!(p.action(first, 12, 50), StackAction::Full);
        assert!(matches!(p.action(first, 13, 50), StackAction::AtEdm(_)));
        assert!(matches!(p.action(other, 0, 50), StackAction::AtEdm(_)));
        let off = Pruning::from(AtEdm::new(0.5).unwrap().with_dsap(None).unwrap());
        assert!(matches!(off.action(first, 0, 50), StackAction::AtEdm(_)));
    }

    #[test]
    fn actions_are_checked_against_their_stack() {
        let s = &stacks(&UNetConfig::sdxl_base(), 128, 128)[0];
        let ok = StackPrune {
            keep: 1,
            iters: 1,
            block: 0,
            recovery: Recovery::AttnCopy,
        };
        assert!(StackAction::AtEdm(ok).check(s).is_ok());
        for bad in [
            StackPrune { keep: 0, ..ok },
            StackPrune {
                keep: s.tokens as usize + 1,
                ..ok
            },
            StackPrune { iters: 0, ..ok },
            StackPrune {
                block: s.depth - 1,
                ..ok
            },
        ] {
            assert!(StackAction::AtEdm(bad).check(s).is_err(), "{bad:?}");
        }
    }
}
