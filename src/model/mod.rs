//! Models: configs, weight loading and key mapping, and the networks (mirroring diffusers'
//! module names so the code reads beside diffusers').

pub mod clip;
pub mod config;
pub mod keymap;
pub mod load;
pub mod nn;
pub mod single_file;
pub mod tokenizer;
pub mod unet;
pub mod vae;
pub mod weights;
