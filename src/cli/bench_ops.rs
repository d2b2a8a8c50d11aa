use clap::Args;
use crate::error::Result;
use crate::gpu::GpuContext;
#[derive(Args, Debug)]
pub struct BenchOpsArgs {}
pub fn run(_ctx: &GpuContext, _args: &BenchOpsArgs) -> Result<()> { Ok(()) }
