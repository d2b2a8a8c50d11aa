//! Models: configs, weight loading and key mapping, and the networks (mirroring diffusers'
//! module names so the code reads beside diffusers').

pub mod clip;
pub mod config;
pub mod demo;
pub mod keymap;
pub mod layers;
pub mod load;
pub mod single_file;
pub mod tokenizer;
pub mod unet;
pub mod vae;
pub mod weights;

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Reads a diffusers/transformers `config.json` (the file itself, or the one in a folder) as
/// `T`; `what` names the expected kind in the error ("a CLIP text config").
pub(crate) fn read_config<T: serde::de::DeserializeOwned>(
    path: &Path,
    what: &str,
) -> Result<(PathBuf, T)> {
    let file = if path.is_dir() {
        path.join("config.json")
    } else {
        path.to_path_buf()
    };
    let text = std::fs::read_to_string(&file).map_err(|source| Error::Io {
        path: file.display().to_string(),
        source,
    })?;
    let value = parse_config(&text, &file.display().to_string(), what)?;
    Ok((file, value))
}

/// Parses a config text as `T`; `label` names its source and `what` the expected kind in errors.
pub(crate) fn parse_config<T: serde::de::DeserializeOwned>(
    text: &str,
    label: &str,
    what: &str,
) -> Result<T> {
    serde_json::from_str(text).map_err(|e| Error::Invalid(format!("{label}: not {what} ({e})")))
}
