//! The `atedm` command line: a thin layer over the library (part of the binary only).

use atedm::gpu::{ContextOptions, GpuContext};
use atedm::Result;
use clap::{Args, Parser, Subcommand};

pub mod bench;
pub mod bench_ops;
pub mod eval;
pub mod flops;
pub mod generate;
pub mod unet_eval;
#[cfg(feature = "viewer")]
pub mod view;

/// Adapter selection flags shared by every subcommand that uses the GPU.
#[derive(Args, Clone, Debug, Default)]
pub struct GpuArgs {
    /// Backend: vulkan, metal or dx12 (default: any native backend).
    #[arg(long, env = "ATEDM_BACKEND", global = true)]
    pub backend: Option<String>,
    /// Adapter name substring, e.g. "llvmpipe" or "nvidia" (default: discrete, then integrated, then any).
    #[arg(long, env = "ATEDM_ADAPTER", global = true)]
    pub adapter: Option<String>,
}

impl GpuArgs {
    /// The library's adapter options.
    pub fn options(&self) -> ContextOptions {
        ContextOptions {
            backend: self.backend.clone(),
            adapter: self.adapter.clone(),
            plan_only: false,
        }
    }

    /// Opens the adapter these flags select.
    pub fn context(&self) -> Result<GpuContext> {
        GpuContext::new(&self.options())
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "atedm",
    version,
    about = "Stable Diffusion XL on WebGPU with attention-driven token pruning (AT-EDM)"
)]
pub struct Cli {
    #[command(flatten)]
    pub gpu: GpuArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the adapter, backend, driver, features and limits.
    Info {
        /// List every adapter instead of opening one.
        #[arg(long)]
        all: bool,
    },
    /// UNet step latency: full, AT-EDM and ToMe side by side (synthetic SD-XL weights by default).
    Bench(bench::BenchArgs),
    /// Kernel throughput report (GFLOP/s of matmul, conv and attention) on the current adapter.
    BenchOps(bench_ops::BenchOpsArgs),
    /// The FLOPs model: per-step TFLOPs, pruning overhead, keep ratio for a budget.
    Flops(flops::FlopsArgs),
    /// Generate an image from a prompt (default model: the built-in demo model).
    Generate(generate::GenerateArgs),
    /// Fidelity benchmark on the demo model: prompt adherence, PSNR/SSIM against the full
    /// model and time per image, for full, AT-EDM and ToMe at equal FLOPs.
    Eval(eval::EvalArgs),
    /// One UNet forward on inputs from a safetensors file (compare with diffusers).
    UnetEval(unet_eval::UNetEvalArgs),
    /// Token masks per step and layer in a window: saved runs (`view DIR [DIR]`) or a live
    /// generation (`view live <generate options>`).
    #[cfg(feature = "viewer")]
    View(view::ViewArgs),
    /// (Not in this build: the viewer needs the `viewer` cargo feature.)
    #[cfg(not(feature = "viewer"))]
    #[command(hide = true)]
    View {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Info { all } => {
            if all {
                for a in GpuContext::list_adapters(cli.gpu.backend.as_deref())? {
                    println!(
                        "{} | {} | {} | {} {}",
                        a.name, a.backend, a.device_type, a.driver, a.driver_info
                    );
                }
                return Ok(());
            }
            let ctx = cli.gpu.context()?;
            println!("{}", ctx.describe());
            Ok(())
        }
        Command::Bench(args) => bench::run(&cli.gpu.context()?, &args),
        Command::BenchOps(args) => bench_ops::run(&cli.gpu.context()?, &args),
        Command::Flops(args) => flops::run(&args),
        Command::Generate(args) => generate::run(&cli.gpu.context()?, &args),
        Command::Eval(args) => eval::run(&cli.gpu.context()?, &args),
        Command::UnetEval(args) => unet_eval::run(&cli.gpu.context()?, &args),
        #[cfg(feature = "viewer")]
        Command::View(args) => view::run(&cli.gpu, args),
        #[cfg(not(feature = "viewer"))]
        Command::View { .. } => Err(atedm::Error::Invalid(
            "this atedm was built without the viewer; build it with `cargo build --release --features viewer`".into(),
        )),
    }
}
