//! Load the built-in demo model, generate one image, save it as a PNG.
//!
//! ```sh
//! cargo run --release --example generate -- "a large cyan circle at the top left" out.png
//! ```
//!
//! Without a GPU on Linux, run `. "$(tools/fast-lavapipe.sh)"` first (Mesa's software Vulkan).

use atedm::io::{png_rgb8_bytes, write_atomic};
use atedm::{GenerateRequest, GpuContext, LoadOptions, SdxlPipeline};

fn main() -> atedm::Result<()> {
    let mut args = std::env::args().skip(1);
    let prompt = args
        .next()
        .unwrap_or_else(|| "a large cyan circle at the top left".into());
    let out = args.next().unwrap_or_else(|| "generate.png".into());

    let ctx = GpuContext::new(&Default::default())?;
    let pipe = SdxlPipeline::load_demo(&ctx, &LoadOptions::default())?;
    let size = pipe.native_size();
    let req = GenerateRequest {
        prompt: prompt.clone(),
        steps: pipe.default_steps(),
        width: size,
        height: size,
        seed: 0,
        ..Default::default()
    };
    let image = pipe.generate(&ctx, &req, |step, steps| eprint!("\rstep {step}/{steps}"))?;
    eprintln!();
    let png = png_rgb8_bytes(size, size, &image.rgb8(), &prompt)?;
    write_atomic(out.as_ref(), &png)?;
    println!("wrote {out} ({size}x{size}, {} steps)", req.steps);
    Ok(())
}
