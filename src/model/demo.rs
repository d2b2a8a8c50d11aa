//! The demo model built into the engine: a tiny SD-XL-family pipeline (both CLIP text encoders,
//! a UNet with SD-XL's block structure and text_time conditioning, an 8x VAE) trained by
//! `tools/train_demo.py` on a procedural world of coloured shapes at 128x128. Its diffusers
//! folder is `assets/demo/`; the weights (f16) and configs are compiled into the binary, so
//! `atedm generate` works with no model on disk. The tokenizers are the engine's embedded CLIP
//! vocabulary, the one `assets/demo/tokenizer*/` were written from.

/// How the demo model is named in messages and PNG metadata.
pub const NAME: &str = "<built-in demo model>";

macro_rules! asset {
    (str $p:literal) => {
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/demo/", $p))
    };
    (bytes $p:literal) => {
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/demo/", $p))
    };
}

/// One model part: its config text and f16 weights, and its file names for messages.
pub struct Part {
    /// `config.json`.
    pub config: &'static str,
    /// The fp16 safetensors file.
    pub weights: &'static [u8],
    /// The part's folder name.
    pub name: &'static str,
    /// The weights' path in the folder.
    pub weights_name: &'static str,
}

/// `text_encoder/` (CLIP ViT-L-shaped).
pub static TEXT_ENCODER: Part = Part {
    config: asset!(str "text_encoder/config.json"),
    weights: asset!(bytes "text_encoder/model.fp16.safetensors"),
    name: "text_encoder",
    weights_name: "text_encoder/model.fp16.safetensors",
};

/// `text_encoder_2/` (OpenCLIP bigG-shaped, with projection).
pub static TEXT_ENCODER_2: Part = Part {
    config: asset!(str "text_encoder_2/config.json"),
    weights: asset!(bytes "text_encoder_2/model.fp16.safetensors"),
    name: "text_encoder_2",
    weights_name: "text_encoder_2/model.fp16.safetensors",
};

/// `unet/`.
pub static UNET: Part = Part {
    config: asset!(str "unet/config.json"),
    weights: asset!(bytes "unet/diffusion_pytorch_model.fp16.safetensors"),
    name: "unet",
    weights_name: "unet/diffusion_pytorch_model.fp16.safetensors",
};

/// `vae/`.
pub static VAE: Part = Part {
    config: asset!(str "vae/config.json"),
    weights: asset!(bytes "vae/diffusion_pytorch_model.fp16.safetensors"),
    name: "vae",
    weights_name: "vae/diffusion_pytorch_model.fp16.safetensors",
};

/// `scheduler/scheduler_config.json`.
pub const SCHEDULER_CONFIG: &str = asset!(str "scheduler/scheduler_config.json");

/// The dataset definition the model was trained on (`atedm_demo.json`).
pub const SPEC_JSON: &str = asset!(str "atedm_demo.json");

/// The demo model's denoising steps: the setting it was trained and evaluated with
/// (`training.sample_steps` in `atedm_demo.json`).
pub const DEFAULT_STEPS: usize = 20;

/// `<built-in demo model>/<file>`: how a demo file is named in errors.
pub fn label(file: &str) -> String {
    format!("{NAME}/{file}")
}
