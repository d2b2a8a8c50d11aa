//! GPU runtime and kernels: every op against its CPU reference over odd shapes (proptest), the WGSL families through naga, the context, and the pruning kernels.
//!
//! One test binary for the group (each links wgpu and naga); one module per former file.

#[path = "../common/mod.rs"]
mod common;

mod activation;
mod attention;
mod conv2d;
mod elementwise;
mod embedding;
mod gather;
mod gpu_context;
mod guidance;
mod layout;
mod matmul;
mod norm;
mod prune_kernels;
mod shaders;
mod softmax;
mod tome_kernels;
