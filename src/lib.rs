//! # atedm
//!
//! Stable Diffusion XL on any GPU through WebGPU (wgpu + WGSL compute shaders), made faster
//! without retraining by attention-driven token pruning (AT-EDM, CVPR 2024).
//!
//! Generate an image with the built-in demo model, pruned by AT-EDM:
//!
//! ```no_run
//! use atedm::{GenerateRequest, GpuContext, LoadOptions, Pruning, SdxlPipeline};
//! let ctx = GpuContext::new(&Default::default())?;
//! let pipe = SdxlPipeline::load_demo(&ctx, &LoadOptions::default())?;
//! let req = GenerateRequest {
//!     prompt: "a large cyan circle at the top left".into(),
//!     steps: pipe.default_steps(),
//!     width: pipe.native_size(),
//!     height: pipe.native_size(),
//!     prune: Pruning::atedm(0.5)?,
//!     ..Default::default()
//! };
//! let image = pipe.generate(&ctx, &req, |step, steps| eprintln!("{step}/{steps}"))?;
//! let rgb: Vec<u8> = image.rgb8();
//! # Ok::<(), atedm::Error>(())
//! ```
//!
//! The crate is layered, each layer importing only the ones below it (`docs/architecture.md`):
//! [`gpu`] (adapter, device, buffers, command recording) -> [`ops`] (one module per WGSL kernel
//! family, each with a CPU reference) -> [`nn`] (layers with weights) -> [`prune`] (pruning
//! settings, the scheduler, G-WPR, ToMe, FLOPs) -> [`model`] (configs, weights, the UNet, CLIP,
//! VAE) -> [`pipeline`] (scheduler, generation, saved runs) -> [`bench`](mod@bench) / [`eval`] -> the
//! `viewer` (feature `viewer`) and the `atedm` binary.
//!
//! A pruning schedule of your own implements [`PruneSchedule`] and runs through
//! [`Pruning::custom`]; a host application that already has a wgpu device runs the engine on
//! it with [`GpuContext::from_wgpu`].

#![warn(missing_docs)]

pub mod bench;
pub mod error;
pub mod eval;
pub mod gpu;
pub mod io;
#[cfg(test)]
mod layers;
pub mod model;
pub mod nn;
pub mod ops;
pub mod pipeline;
pub mod prune;
pub mod tensor;
#[cfg(feature = "viewer")]
pub mod viewer;

pub use error::{Error, Result};
pub use gpu::{ContextOptions, GpuContext};
pub use pipeline::generate::{
    GenerateOutput, GenerateRequest, LoadOptions, Record, SdxlPipeline, StepMask, StepUpdate,
};
pub use pipeline::job::{run_job, GenerateJob, JobEvent};
pub use prune::{AtEdm, PruneSchedule, Pruning, Recovery, Stack, StackAction, StackPrune};
pub use tensor::{DType, Tensor};

/// Every WGSL kernel family of the engine (validated by naga in the tests, in both dtypes).
pub fn shader_families() -> Vec<&'static gpu::ShaderFamily> {
    let mut all = ops::shader_families();
    all.extend(prune::shader_families());
    all
}
