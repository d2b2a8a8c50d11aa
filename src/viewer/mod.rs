//! `atedm view` (cargo feature `viewer`): an egui window on wgpu that shows, per denoising
//! step, the image preview and each pruned transformer stack's kept and pruned tokens and
//! G-WPR importance, with per-step FLOPs and time; for a live generation (run on a worker
//! thread) or for runs saved by `atedm generate --dump-masks` (two side by side).
//!
//! - [`model`]: the step cursor (play/pause, keyboard actions) and the pictures, no drawing.
//! - [`app`]: the egui drawing, shared by the window and the offscreen renderer.
//! - [`live`]: the generation worker and its channel.
//! - [`headless`]: offscreen rendering with `egui_wgpu` (tests, screenshots).

pub mod app;
pub mod headless;
pub mod live;
pub mod model;

pub use app::ViewerApp;

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::pipeline::dump::RunData;

/// Loads the saved runs to show side by side (one or two `generate --dump-masks` folders).
pub fn load_runs(dirs: &[PathBuf]) -> Result<Vec<RunData>> {
    if dirs.len() > 2 {
        return Err(Error::Invalid(format!(
            "atedm view shows one or two saved runs side by side; got {} folders",
            dirs.len()
        )));
    }
    dirs.iter().map(|d| RunData::load(d)).collect()
}
