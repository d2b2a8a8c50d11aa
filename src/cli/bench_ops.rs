//! `atedm bench-ops`: kernel throughput on the current adapter.

use clap::Args;

use crate::error::Result;
use crate::gpu::GpuContext;

#[derive(Args, Debug)]
pub struct BenchOpsArgs {
    /// Timed repetitions per kernel (after one warm-up run).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
}

pub fn run(_ctx: &GpuContext, _args: &BenchOpsArgs) -> Result<()> {
    Err(crate::Error::Invalid("bench-ops is not built yet".into()))
}
