//! Describing a generation run for saving and viewing: [`RunInfo::new`] records, per step, the
//! FLOPs the pruning schedule costs (from `prune::flops`) and which stacks AT-EDM prunes.
//! The saved-run format itself is [`super::dump`].

use crate::error::Result;
use crate::model::config::UNetConfig;
use crate::pipeline::dump::{RunInfo, StackInfo, RUN_FORMAT};
use crate::pipeline::generate::GenerateRequest;
use crate::prune::flops::{full_flops, step_flops};
use crate::prune::schedule::{stacks, PruneSchedule, StackAction};

impl RunInfo {
    /// Describes the run of `req` with `unet` on a `latent_shape` latent; `prune_text` and
    /// `settings` describe the pruning and the whole request. `step_ms`, `load_ms` and
    /// `generate_ms` are left empty / zero for the caller.
    pub fn new(
        unet: &UNetConfig,
        req: &GenerateRequest,
        latent_shape: [usize; 4],
        prune_text: &str,
        settings: &str,
    ) -> Result<Self> {
        let (prune, steps) = (&req.prune, req.steps);
        let (lh, lw) = (latent_shape[2], latent_shape[3]);
        let plan = stacks(unet, lh, lw);
        prune.check_stacks(&plan)?;
        let per_step = step_flops(unet, lh, lw, steps, prune)?;
        Ok(RunInfo {
            format: RUN_FORMAT.into(),
            settings: settings.into(),
            prompt: req.prompt.clone(),
            prune_mode: prune.mode().name().into(),
            prune: prune_text.into(),
            width: req.width,
            height: req.height,
            latent_shape,
            steps,
            step_ms: Vec::new(),
            step_flops: per_step.iter().map(|f| f.model).collect(),
            step_overhead_flops: per_step.iter().map(|f| f.overhead).collect(),
            full_flops: full_flops(unet, lh, lw),
            early_steps: prune.early_steps(steps),
            stacks: plan
                .iter()
                .map(|s| StackInfo {
                    name: s.name.clone(),
                    level: s.level,
                    grid: [s.grid.0, s.grid.1],
                    pruned: (0..steps)
                        .map(|i| matches!(prune.action(s, i, steps), StackAction::AtEdm(_)))
                        .collect(),
                })
                .collect(),
            load_ms: 0.0,
            generate_ms: 0.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prune::flops::unet_flops;
    use crate::prune::Pruning;

    #[test]
    fn run_info_counts_flops_per_step_and_pruned_stacks() {
        let cfg = crate::model::config::UNetConfig::sdxl_base();
        let prune = Pruning::atedm(0.5).unwrap();
        let req = GenerateRequest {
            steps: 8,
            prune: prune.clone(),
            ..Default::default()
        };
        let info = RunInfo::new(&cfg, &req, [1, 4, 128, 128], "x", "s").unwrap();
        info.validate().unwrap();
        assert_eq!(info.early_steps, 2);
        assert!(
            info.step_flops[0] > info.step_flops[2],
            "{:?}",
            info.step_flops
        );
        assert_eq!(info.step_flops[2], info.step_flops[7]);
        assert!(info.step_flops[0] < info.full_flops);
        let avg = info.step_flops.iter().sum::<f64>() / 8.0;
        let report = unet_flops(&cfg, 128, 128, 8, &prune).unwrap();
        assert!((avg - report.model).abs() < 1e-6 * report.model);
        let over = info.step_overhead_flops.iter().sum::<f64>() / 8.0;
        assert!((over - report.overhead).abs() < 1e-6 * report.overhead);
        // SD-XL: 11 stacks at 64x64 and 32x32; down_blocks.1.attentions.0 is DSAP-protected.
        assert_eq!(info.stacks.len(), 11);
        let d10 = info.stack("down_blocks.1.attentions.0").unwrap();
        assert_eq!((d10.level, d10.grid), (2, [64, 64]));
        assert_eq!(
            d10.pruned,
            [false, false, true, true, true, true, true, true]
        );
        let req = GenerateRequest {
            steps: 8,
            ..Default::default()
        };
        let full = RunInfo::new(&cfg, &req, [1, 4, 128, 128], "none", "s").unwrap();
        assert!(full.step_flops.iter().all(|&f| f == full.full_flops));
        assert!(full.stacks.iter().all(|s| s.pruned.iter().all(|p| !p)));
    }
}
