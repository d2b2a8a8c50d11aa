//! Models against diffusers/transformers fixtures: the UNet in every weight layout, AT-EDM and ToMe inside it, weight loading, single files, tokenizers.
//!
//! One test binary for the group (each links wgpu and naga); one module per former file.

#[path = "../common/mod.rs"]
mod common;

mod clip_layouts;
mod prune_unet;
mod single_file;
mod tokenizer;
mod tome_unet;
mod unet;
mod weights;
