//! GPU runtime: adapter and device ([`GpuContext`]), the buffer pool, the pipeline cache and
//! command recording.
//!
//! Ops record compute passes into one pending command encoder; nothing is submitted until a
//! result is read back or [`GpuContext::flush`] is called, so a whole UNet step can go to the
//! GPU as one submission with no mid-step readback.

mod cache;
mod context;
mod kernel;
mod memory;
mod pool;
mod profile;
mod recording;

pub use context::{AdapterSummary, ContextOptions, GpuContext};
pub use kernel::{Kernel, ShaderFamily};
pub(crate) use pool::BufferPool;
pub use pool::PoolStats;
pub use profile::{CategoryTime, DispatchTime, Profile, ProfileScope, TimingSource};
