//! `atedm bench-ops`: kernel throughput on the current adapter (`atedm::bench::ops`).

use atedm::bench::ops::{measure, OpsBenchOptions};
use atedm::gpu::GpuContext;
use atedm::{DType, Result};
use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct BenchOpsArgs {
    /// Timed repetitions per case (after one warm-up run).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Storage dtypes to measure.
    #[arg(long, value_delimiter = ',', default_value = "f32,f16")]
    pub dtype: Vec<DType>,
    /// Only run cases whose name contains this text (matmul, linear, conv, attention).
    #[arg(long)]
    pub only: Option<String>,
    /// Divide every size by this factor (a quick smoke run: `--shrink 8`).
    #[arg(long, default_value_t = 1)]
    pub shrink: usize,
}

pub fn run(ctx: &GpuContext, args: &BenchOpsArgs) -> Result<()> {
    let a = ctx.adapter();
    println!("adapter: {} ({}, {})", a.name, a.backend, a.driver_info);
    if args.dtype.contains(&DType::F16) && !ctx.supports_f16() {
        eprintln!("skipping f16: the adapter lacks SHADER_F16");
    }
    println!(
        "{:<34} {:>5} {:>10} {:>10} {:>10} {:>9}",
        "case", "dtype", "median ms", "min ms", "max ms", "GFLOP/s"
    );
    let opts = OpsBenchOptions {
        reps: args.reps,
        dtype: args.dtype.clone(),
        only: args.only.clone(),
        shrink: args.shrink,
    };
    measure(ctx, &opts, |r| {
        println!(
            "{:<34} {:>5} {:>10.1} {:>10.1} {:>10.1} {:>9.2}",
            r.name,
            r.dtype.to_string(),
            r.median_s * 1e3,
            r.min_s * 1e3,
            r.max_s * 1e3,
            r.gflops()
        );
    })?;
    Ok(())
}
