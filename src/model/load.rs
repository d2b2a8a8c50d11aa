//! Finding and loading a UNet from what a user points at: a diffusers pipeline folder, a
//! `unet/` folder, or a single-file SD-XL checkpoint (optionally with a config folder).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::gpu::GpuContext;
use crate::model::config::UNetConfig;
use crate::model::keymap::UNetKeyMap;
use crate::model::unet::UNet2DConditionModel;
use crate::model::weights::{SafetensorsFile, WeightLoader, WeightStore};
use crate::tensor::DType;

/// The `unet/` folder of a pipeline folder, or the folder itself when it holds a config.json.
fn unet_dir(dir: &Path) -> Option<PathBuf> {
    if dir.join("unet").join("config.json").is_file() {
        Some(dir.join("unet"))
    } else if dir.join("config.json").is_file() {
        Some(dir.to_path_buf())
    } else {
        None
    }
}

/// The UNet config for `model` (a folder or a single file) and an optional `--config` folder.
pub fn unet_config(model: &Path, config: Option<&Path>) -> Result<UNetConfig> {
    if let Some(c) = config {
        if c.is_file() {
            return UNetConfig::from_file(c);
        }
        let dir = unet_dir(c).ok_or_else(|| {
            Error::Invalid(format!(
                "--config {}: no config.json there or in its unet/ folder",
                c.display()
            ))
        })?;
        return UNetConfig::from_file(&dir);
    }
    if model.is_dir() {
        let dir = unet_dir(model).ok_or_else(|| {
            Error::Invalid(format!(
                "{}: not a diffusers pipeline or unet folder (no unet/config.json or config.json)",
                model.display()
            ))
        })?;
        return UNetConfig::from_file(&dir);
    }
    Ok(UNetConfig::sdxl_base())
}

/// Opens the UNet weights of `model` as a store with diffusers names.
pub fn unet_weights(model: &Path, cfg: &UNetConfig, prefer_f16: bool) -> Result<WeightStore> {
    if model.is_dir() {
        let dir = unet_dir(model).ok_or_else(|| {
            Error::Invalid(format!(
                "{}: not a diffusers pipeline or unet folder",
                model.display()
            ))
        })?;
        return WeightStore::open_diffusers(&dir, "diffusion_pytorch_model", prefer_f16);
    }
    if !model.exists() {
        return Err(Error::Invalid(format!(
            "{}: no such file or folder",
            model.display()
        )));
    }
    let map = UNetKeyMap::new(cfg);
    let store = WeightStore::from_files_mapped(vec![SafetensorsFile::open(model)?], |k| {
        map.map_checkpoint_key(k)
    })?;
    if store.names().next().is_none() {
        return Err(Error::Invalid(format!(
            "{}: not an SD-XL single-file checkpoint (no '{}' tensors)",
            model.display(),
            crate::model::keymap::UNET_PREFIX
        )));
    }
    Ok(store)
}

/// Loads the UNet of `model` in compute dtype `dtype`.
pub fn load_unet(
    ctx: &GpuContext,
    model: &Path,
    config: Option<&Path>,
    dtype: DType,
) -> Result<UNet2DConditionModel> {
    let cfg = unet_config(model, config)?;
    let store = unet_weights(model, &cfg, dtype == DType::F16)?;
    UNet2DConditionModel::load(&cfg, WeightLoader::new(ctx, &store, dtype))
        .map_err(|e| Error::Invalid(format!("{}: {e}", model.display())))
}
