//! A pruning schedule of your own, with no change to the engine: keep all tokens for the first
//! fifth of the steps, then a keep ratio that falls linearly from 0.8 to 0.4, and prune the
//! lowest-resolution level harder than the others.
//!
//! ```sh
//! cargo run --release --example custom_schedule -- custom.png
//! ```

use atedm::io::{png_rgb8_bytes, write_atomic};
use atedm::prune::flops::step_flops;
use atedm::prune::schedule::kept_tokens;
use atedm::{
    GenerateRequest, GpuContext, LoadOptions, PruneSchedule, Pruning, Recovery, SdxlPipeline,
    Stack, StackAction, StackPrune,
};

/// The schedule: what every transformer stack does at every step.
struct FallingKeepRatio;

impl PruneSchedule for FallingKeepRatio {
    fn action(&self, stack: &Stack, step: usize, steps: usize) -> StackAction {
        let t = step as f64 / steps.max(1) as f64;
        // Pruning needs a block after the pruning block (block 0 here).
        if t < 0.2 || stack.depth < 2 {
            return StackAction::Full;
        }
        let mut keep = 0.8 - 0.4 * (t - 0.2) / 0.8;
        if stack.level >= 3 {
            keep *= 0.75;
        }
        StackAction::AtEdm(StackPrune {
            keep: kept_tokens(stack.tokens, keep) as usize,
            iters: 5,
            block: 0,
            recovery: Recovery::AttnCopy,
        })
    }

    fn describe(&self) -> String {
        "keep 0.8 falling to 0.4 after the first fifth, x0.75 at level 3".into()
    }
}

fn main() -> atedm::Result<()> {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "custom.png".into());
    let ctx = GpuContext::new(&Default::default())?;
    let pipe = SdxlPipeline::load_demo(&ctx, &LoadOptions::default())?;
    let size = pipe.native_size();
    let prune = Pruning::custom(FallingKeepRatio);
    let req = GenerateRequest {
        prompt: "a large yellow triangle at the bottom".into(),
        steps: pipe.default_steps(),
        width: size,
        height: size,
        prune: prune.clone(),
        ..Default::default()
    };
    // The FLOPs model counts any schedule, step by step.
    let latent = size / pipe.vae.config.upsampling();
    let flops = step_flops(&pipe.unet.config, latent, latent, req.steps, &prune)?;
    for (i, f) in flops.iter().enumerate().step_by(5) {
        println!("step {i:2}: {:.3} GFLOPs", f.model / 1e9);
    }
    let image = pipe.generate(&ctx, &req, |_, _| {})?;
    let params = format!("{}\nPruning: {}", req.prompt, prune.describe());
    write_atomic(
        out.as_ref(),
        &png_rgb8_bytes(size, size, &image.rgb8(), &params)?,
    )?;
    println!("wrote {out}");
    Ok(())
}
