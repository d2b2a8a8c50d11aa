//! `atedm view`: the egui viewer of token masks per step and layer (feature `viewer`).

use std::path::PathBuf;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use atedm::pipeline::dump::RunData;
use atedm::pipeline::job::{check_output, model_name};
use atedm::viewer::live::{spawn, LiveRun};
use atedm::viewer::ViewerApp;
use atedm::{Error, Result};
use clap::{Args, Subcommand};

use crate::cli::generate::GenerateArgs;
use crate::cli::GpuArgs;

#[derive(Args, Debug, Clone)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ViewArgs {
    /// One or two folders written by `atedm generate --dump-masks` (two: side by side, e.g.
    /// a full and a pruned run). A folder named `live` must be written `./live`.
    pub dirs: Vec<PathBuf>,
    /// Render the saved runs offscreen into this PNG instead of opening a window.
    #[arg(long)]
    pub screenshot: Option<PathBuf>,
    /// With --screenshot: the step to show (default: the last).
    #[arg(long, requires = "screenshot")]
    pub step: Option<usize>,
    /// With --screenshot: the picture's size in pixels, WIDTHxHEIGHT.
    #[arg(long, default_value = "1400x1000", requires = "screenshot")]
    pub size: String,
    #[command(subcommand)]
    pub live: Option<LiveCommand>,
}

#[derive(Subcommand, Debug, Clone)]
pub enum LiveCommand {
    /// Run a generation (the options of `atedm generate`) and show it as it runs.
    Live(LiveArgs),
}

#[derive(Args, Debug, Clone)]
pub struct LiveArgs {
    /// A saved run (`generate --dump-masks` folder) to show next to the live one.
    #[arg(long)]
    pub compare: Option<PathBuf>,
    #[command(flatten)]
    pub generate: GenerateArgs,
}

/// Loads the dump folders to show (one or two).
fn load_runs(dirs: &[PathBuf]) -> Result<Vec<RunData>> {
    atedm::viewer::load_runs(dirs)
}

pub fn run(gpu: &GpuArgs, a: ViewArgs) -> Result<()> {
    if let Some(out) = &a.screenshot {
        let (w, h) = a
            .size
            .split_once('x')
            .and_then(|(w, h)| Some((w.parse::<u32>().ok()?, h.parse::<u32>().ok()?)))
            .filter(|&(w, h)| w > 0 && h > 0)
            .ok_or_else(|| Error::Invalid(format!("--size '{}': expected WIDTHxHEIGHT", a.size)))?;
        if a.dirs.is_empty() {
            return Err(Error::Invalid(
                "--screenshot needs one or two folders written by `atedm generate --dump-masks`"
                    .into(),
            ));
        }
        let runs = load_runs(&a.dirs)?;
        let rgba = atedm::viewer::headless::screenshot(&gpu.context()?, runs, a.step, w, h)?;
        atedm::io::write_atomic(
            out,
            &atedm::io::png_rgba8_bytes(w as usize, h as usize, &rgba)?,
        )?;
        eprintln!("wrote {}", out.display());
        return Ok(());
    }
    let (runs, live) = match a.live {
        Some(LiveCommand::Live(l)) => {
            let runs = load_runs(l.compare.as_slice())?;
            let g = &l.generate;
            // Refuse what `generate` would refuse before opening a window.
            check_output(&g.output, g.overwrite)?;
            (runs, Some(g.job()?))
        }
        None => {
            if a.dirs.is_empty() {
                return Err(Error::Invalid(
                    "atedm view needs one or two folders written by `atedm generate --dump-masks`, or `atedm view live <generate options>`".into(),
                ));
            }
            (load_runs(&a.dirs)?, None)
        }
    };
    let title = match (&live, runs.as_slice()) {
        (Some(g), _) => format!("atedm view: live, {}", model_name(g.model.as_deref())),
        (None, r) => format!(
            "atedm view: {}",
            r.iter().map(RunData::label).collect::<Vec<_>>().join(" | ")
        ),
    };
    let options = eframe::NativeOptions {
        viewport: eframe::egui::ViewportBuilder::default()
            .with_inner_size([1400.0, 900.0])
            .with_title(title.clone()),
        ..Default::default()
    };
    let gpu = gpu.options();
    eframe::run_native(
        &title,
        options,
        Box::new(move |cc| {
            let live = live.map(|job| {
                let ctx = cc.egui_ctx.clone();
                let stop = Arc::new(AtomicBool::new(false));
                let (rx, worker) = spawn(job, gpu, stop.clone(), move || ctx.request_repaint());
                LiveRun::new(rx, worker).stop_on_drop(stop)
            });
            Ok(Box::new(ViewerApp::new(runs, live)))
        }),
    )
    .map_err(|e| Error::Invalid(format!("could not open the viewer window: {e}")))
}
