//! # atedm
//!
//! Stable Diffusion XL on any GPU through WebGPU (wgpu + WGSL compute shaders), accelerated by
//! attention-driven token pruning (AT-EDM, CVPR 2024).
//!
//! The crate is a library first: [`gpu::GpuContext`] opens an adapter, [`Tensor`] holds data in
//! GPU buffers, and [`ops`] has one module per WGSL kernel family, each with a CPU reference.
//!
//! ```no_run
//! use atedm::{gpu::GpuContext, ops, DType, Tensor};
//! let ctx = GpuContext::new(&Default::default())?;
//! let a = Tensor::from_f32(&ctx, &[1.0, 2.0, 3.0, 4.0], &[2, 2], DType::F32)?;
//! let b = Tensor::from_f32(&ctx, &[1.0, 0.0, 0.0, 1.0], &[2, 2], DType::F32)?;
//! let c = ops::matmul::matmul(&ctx, &a, &b, &Default::default())?;
//! assert_eq!(c.to_f32_vec(&ctx)?, vec![1.0, 2.0, 3.0, 4.0]);
//! # Ok::<(), atedm::Error>(())
//! ```

pub mod cli;
pub mod error;
pub mod eval;
pub mod gpu;
pub mod io;
pub mod model;
pub mod ops;
pub mod pipeline;
pub mod prune;
pub mod tensor;
#[cfg(feature = "viewer")]
pub mod viewer;

pub use error::{Error, Result};
pub use tensor::{DType, Tensor};
