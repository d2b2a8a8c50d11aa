//! The pipeline end to end against diffusers, the demo model, saved runs, and the benchmark engine.
//!
//! One test binary for the group (each links wgpu and naga); one module per former file.

#[path = "../common/mod.rs"]
mod common;

mod bench;
mod demo;
mod generate;
mod submissions;
