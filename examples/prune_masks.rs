//! Generate with AT-EDM on the built-in demo model, read which tokens every pruned stack kept at
//! every step, and save one mask as a picture (kept tokens white, pruned ones dark).
//!
//! ```sh
//! cargo run --release --example prune_masks -- mask.png
//! ```

use atedm::io::{png_rgb8_bytes, write_atomic};
use atedm::{GenerateRequest, GpuContext, LoadOptions, Pruning, Record, SdxlPipeline};

fn main() -> atedm::Result<()> {
    let out = std::env::args().nth(1).unwrap_or_else(|| "mask.png".into());
    let ctx = GpuContext::new(&Default::default())?;
    let pipe = SdxlPipeline::load_demo(&ctx, &LoadOptions::default())?;
    let size = pipe.native_size();
    let req = GenerateRequest {
        prompt: "a large red square at the center and a small blue circle at the top left".into(),
        steps: pipe.default_steps(),
        width: size,
        height: size,
        // Keep half the tokens after the first transformer block, DSAP on (the defaults).
        prune: Pruning::atedm(0.5)?,
        record: Record::Masks,
        ..Default::default()
    };
    let output = pipe.generate(&ctx, &req, |_, _| {})?;
    for m in output.masks.iter().filter(|m| m.step == req.steps - 1) {
        let cond = m.kept_shape[0] - 1; // the conditional half of the CFG batch
        let kept = m.kept_mask(cond).iter().filter(|k| **k).count();
        println!(
            "step {}: {} keeps {kept} of {} tokens ({}x{} grid)",
            m.step,
            m.stack,
            m.grid[0] * m.grid[1],
            m.grid[0],
            m.grid[1]
        );
    }
    // The last step's mask of the first pruned stack, each token drawn as an 8x8 square.
    let m = output
        .masks
        .iter()
        .rfind(|m| m.step == req.steps - 1)
        .expect("AT-EDM prunes at the last step");
    let ([rows, cols], scale) = (m.grid, 8);
    let on = m.kept_mask(m.kept_shape[0] - 1);
    let mut rgb = Vec::with_capacity(rows * cols * scale * scale * 3);
    for y in 0..rows * scale {
        for x in 0..cols * scale {
            let v = if on[(y / scale) * cols + x / scale] {
                255
            } else {
                30
            };
            rgb.extend([v, v, v]);
        }
    }
    write_atomic(
        out.as_ref(),
        &png_rgb8_bytes(cols * scale, rows * scale, &rgb, &m.stack)?,
    )?;
    println!("wrote {out}: {} at step {}", m.stack, m.step);
    Ok(())
}
