//! Solve AT-EDM's keep ratio for a FLOPs budget (no GPU needed): SD-XL base at 1024 px, 50
//! steps, the paper's 4.1 TFLOPs setting, with and without DSAP; and ToMe at the same FLOPs.
//!
//! ```sh
//! cargo run --release --example flops_budget -- 4.1 1024
//! ```

use atedm::model::config::UNetConfig;
use atedm::prune::budget::{keep_ratio_for_budget, tome_for_budget};
use atedm::prune::flops::unet_flops;
use atedm::prune::tome::TomeSettings;
use atedm::{AtEdm, Pruning};

fn main() -> atedm::Result<()> {
    let mut args = std::env::args().skip(1);
    let tflops: f64 = args.next().map_or(Ok(4.1), |a| a.parse()).unwrap_or(4.1);
    let size: usize = args.next().map_or(Ok(1024), |a| a.parse()).unwrap_or(1024);
    let (cfg, steps, latent) = (UNetConfig::sdxl_base(), 50, size / 8);
    let full = unet_flops(&cfg, latent, latent, steps, &Pruning::None)?.model;
    println!(
        "SD-XL base at {size} px: {:.3} TFLOPs per step unpruned",
        full / 1e12
    );
    for dsap in [Some(0.25), None] {
        let settings = AtEdm::new(1.0)?.with_dsap(dsap)?;
        let keep = keep_ratio_for_budget(&cfg, latent, latent, steps, &settings, tflops * 1e12)?;
        let pruning = Pruning::AtEdm(settings.with_keep_ratio(keep)?);
        let f = unet_flops(&cfg, latent, latent, steps, &pruning)?;
        println!(
            "AT-EDM, DSAP {}: keep ratio {keep:.3} -> {:.3} TFLOPs/step ({:.2}x fewer), overhead {:.3}",
            if dsap.is_some() { "on " } else { "off" },
            f.model / 1e12,
            full / f.model,
            f.overhead / 1e12
        );
    }
    let tome = tome_for_budget(
        &cfg,
        latent,
        latent,
        steps,
        &TomeSettings::default(),
        tflops * 1e12,
        true,
    )?;
    println!(
        "{}",
        Pruning::tome(tome)?.describe_solved(Some(tflops * 1e12))
    );
    Ok(())
}
