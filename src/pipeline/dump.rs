//! A saved generation run: what `atedm generate --dump-masks DIR` writes and `atedm view`
//! reads.
//!
//! Files in `DIR`:
//! - `run.json`: [`RunInfo`] (settings, sizes, per-step time and FLOPs, the transformer stacks
//!   with their grids and the steps at which each is pruned). Written last: a folder with a
//!   `run.json` is complete.
//! - `image.png`: the final image (RGB8, with the generation parameters in a text chunk).
//! - `latents_NNN.safetensors`: `latents` (after step NNN) and `denoised` (that step's
//!   prediction of the clean latents, what previews show), f32 `[1, 4, H/8, W/8]`.
//! - `step_NNN.safetensors`: for each stack pruned at step NNN, `kept.<stack>` int64 `[B, k]`
//!   (kept token indices, row-major on the stack's grid) and `score.<stack>` f32 `[B, N]`
//!   (G-WPR importance); B = 2 with classifier-free guidance (unconditional, conditional). Only
//!   steps that prune have one (a full run, or ToMe, has none).
//! - `step_NNN_<stack>.png`: the conditional image's mask of that stack (kept white, pruned
//!   dark), scaled up to at least 64 px wide.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::io::{png_rgb8_bytes, safetensors_bytes, write_atomic, HostTensor};
use crate::pipeline::generate::{GenerateOutput, StepMask};

/// The `format` field of `run.json`.
pub const RUN_FORMAT: &str = "atedm-run/1";
/// Name of the run description in a dump folder.
pub const RUN_FILE: &str = "run.json";
/// Name of the final image in a dump folder.
pub const IMAGE_FILE: &str = "image.png";

/// `run.json`: one generation run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// [`RUN_FORMAT`].
    pub format: String,
    /// The generation parameters (the text stored in the PNG's `parameters` chunk).
    pub settings: String,
    /// The prompt.
    pub prompt: String,
    /// [`PruneMode::name`](crate::prune::settings::PruneMode::name): `none`, `atedm`,
    /// `atedm-dagger`, `tome` or `custom`.
    pub prune_mode: String,
    /// One line describing the pruning settings.
    pub prune: String,
    /// Image width in pixels.
    pub width: usize,
    /// Image height in pixels.
    pub height: usize,
    /// `[1, 4, H/8, W/8]`.
    pub latent_shape: [usize; 4],
    /// Number of denoising steps.
    pub steps: usize,
    /// Wall time of each step in ms (GPU time plus a small readback; see
    /// [`GenerateOutput::step_ms`]).
    pub step_ms: Vec<f64>,
    /// Model FLOPs of each step for one image (`prune::flops`; DSAP's early steps cost more).
    pub step_flops: Vec<f64>,
    /// Pruning overhead FLOPs of each step (attention map pass, G-WPR; ToMe's matching).
    pub step_overhead_flops: Vec<f64>,
    /// Model FLOPs of an unpruned step.
    pub full_flops: f64,
    /// Steps counted as early by DSAP.
    pub early_steps: usize,
    /// Every transformer stack of the UNet, in forward order.
    pub stacks: Vec<StackInfo>,
    /// Time to load the pipeline, in ms.
    pub load_ms: f64,
    /// Time from the start of the generation to the decoded image, in ms.
    pub generate_ms: f64,
}

/// One transformer stack in `run.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StackInfo {
    /// diffusers module name, e.g. `down_blocks.1.attentions.0`.
    pub name: String,
    /// Feature level (1 = full latent resolution).
    pub level: usize,
    /// Token grid `[rows, columns]`.
    pub grid: [usize; 2],
    /// Whether AT-EDM prunes it at each step (all false for a full run and for ToMe).
    pub pruned: Vec<bool>,
}

impl RunInfo {
    /// Checks the fields against each other (a hand-edited or truncated `run.json`).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(format!("{RUN_FILE}: {m}")));
        if self.format != RUN_FORMAT {
            return bad(format!("format '{}', expected '{RUN_FORMAT}'", self.format));
        }
        if self.steps == 0 {
            return bad("the run has no steps".into());
        }
        let s = self.latent_shape;
        if s.contains(&0) || s[1] < 3 {
            return bad(format!("bad latent shape {s:?}"));
        }
        if self.step_flops.len() != self.steps
            || self.step_overhead_flops.len() != self.steps
            || self.step_ms.len() > self.steps
        {
            return bad(format!(
                "{} steps but {} FLOPs, {} overhead and {} time entries",
                self.steps,
                self.step_flops.len(),
                self.step_overhead_flops.len(),
                self.step_ms.len()
            ));
        }
        for st in &self.stacks {
            if st.pruned.len() != self.steps || st.grid.contains(&0) {
                return bad(format!(
                    "stack {}: grid {:?}, {} pruned flags for {} steps",
                    st.name,
                    st.grid,
                    st.pruned.len(),
                    self.steps
                ));
            }
        }
        Ok(())
    }

    /// The stack named `name` (a diffusers module name), if the UNet has one.
    pub fn stack(&self, name: &str) -> Option<&StackInfo> {
        self.stacks.iter().find(|s| s.name == name)
    }
}

/// One step of a loaded run.
#[derive(Clone, Debug, Default)]
pub struct StepData {
    /// Latents after the step, `[1, 4, h, w]`.
    pub latents: Option<Vec<f32>>,
    /// The step's prediction of the clean latents.
    pub denoised: Option<Vec<f32>>,
    /// The masks of the stacks pruned at this step.
    pub masks: Vec<StepMask>,
}

/// An RGB8 image.
#[derive(Clone, Debug, PartialEq)]
pub struct Rgb8 {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Row-major RGB.
    pub pixels: Vec<u8>,
}

/// A run in memory: loaded from a dump folder, or built step by step by a live generation.
#[derive(Clone, Debug)]
pub struct RunData {
    /// Where it was loaded from (`None`: a live run).
    pub dir: Option<PathBuf>,
    /// The run's description (`run.json`).
    pub info: RunInfo,
    /// One entry per step done so far (all `info.steps` for a saved run).
    pub steps: Vec<StepData>,
    /// The final image (`None` until a live run has decoded it, or when `image.png` is missing).
    pub image: Option<Rgb8>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Whether `name` is one of the per-step files of a dump (`step_NNN...`, `latents_NNN...`).
fn is_step_file(name: &str) -> bool {
    let rest = name
        .strip_prefix("step_")
        .or_else(|| name.strip_prefix("latents_"));
    match rest {
        Some(r) => {
            let digits = r.bytes().take_while(u8::is_ascii_digit).count();
            digits >= 3
                && (r[digits..] == *".safetensors"
                    || (r[digits..].starts_with('_') && r.ends_with(".png")))
        }
        None => false,
    }
}

/// Writes a dump of `out` to `dir` (see the module docs); `info.step_ms` etc. as the caller
/// set them. `rgb` is the final image as RGB8 and `parameters` its PNG text. Per-step files of
/// an earlier dump in `dir` are removed first, so a folder never mixes two runs.
pub fn write_run(
    dir: &Path,
    info: &RunInfo,
    out: &GenerateOutput,
    rgb: &[u8],
    parameters: &str,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        if name.to_str().is_some_and(is_step_file) {
            let p = entry.path();
            std::fs::remove_file(&p).map_err(io_err(&p))?;
        }
    }
    let shape = out.latent_shape.to_vec();
    for (i, (lat, den)) in out.step_latents.iter().zip(&out.step_denoised).enumerate() {
        write_atomic(
            &dir.join(format!("latents_{i:03}.safetensors")),
            &safetensors_bytes(&[
                HostTensor::F32("latents", shape.clone(), lat),
                HostTensor::F32("denoised", shape.clone(), den),
            ])?,
        )?;
    }
    write_masks(dir, info, &out.masks)?;
    write_atomic(
        &dir.join(IMAGE_FILE),
        &png_rgb8_bytes(out.width, out.height, rgb, parameters)?,
    )?;
    let json = serde_json::to_string_pretty(info)
        .map_err(|e| Error::Invalid(format!("{RUN_FILE}: {e}")))?;
    write_atomic(&dir.join(RUN_FILE), json.as_bytes())
}

/// `step_NNN.safetensors` and the mask pictures.
fn write_masks(dir: &Path, info: &RunInfo, masks: &[StepMask]) -> Result<()> {
    let steps: std::collections::BTreeSet<usize> = masks.iter().map(|m| m.step).collect();
    for step in steps {
        let masks: Vec<_> = masks.iter().filter(|m| m.step == step).collect();
        let kept: Vec<(String, Vec<i64>)> = masks
            .iter()
            .map(|m| {
                (
                    format!("kept.{}", m.stack),
                    m.kept.iter().map(|&v| v as i64).collect(),
                )
            })
            .collect();
        let names: Vec<String> = masks.iter().map(|m| format!("score.{}", m.stack)).collect();
        let mut tensors = Vec::new();
        for (m, (kn, kv)) in masks.iter().zip(&kept) {
            tensors.push(HostTensor::I64(kn, m.kept_shape.to_vec(), kv));
        }
        for (m, sn) in masks.iter().zip(&names) {
            tensors.push(HostTensor::F32(sn, m.scores_shape.to_vec(), &m.scores));
        }
        write_atomic(
            &dir.join(format!("step_{step:03}.safetensors")),
            &safetensors_bytes(&tensors)?,
        )?;
        for m in &masks {
            let Some(st) = info.stack(&m.stack) else {
                continue;
            };
            let [gh, gw] = st.grid;
            let b = m.kept_shape[0] - 1; // the conditional half with CFG
            let on = m.kept_mask(b);
            let scale = (64 / gw.max(1)).max(1);
            let (w, h) = (gw * scale, gh * scale);
            let mut rgb = Vec::with_capacity(w * h * 3);
            for y in 0..h {
                for x in 0..w {
                    let v = if on[(y / scale) * gw + x / scale] {
                        255
                    } else {
                        24
                    };
                    rgb.extend([v, v, v]);
                }
            }
            let file = dir.join(format!("step_{step:03}_{}.png", m.stack));
            write_atomic(
                &file,
                &png_rgb8_bytes(
                    w,
                    h,
                    &rgb,
                    &format!("kept tokens of {} at step {step}", m.stack),
                )?,
            )?;
        }
    }
    Ok(())
}

/// The tensors of a small safetensors file: f32 and int64 (as u32) data with shapes.
struct Tensors {
    file: PathBuf,
    f32s: std::collections::HashMap<String, (Vec<usize>, Vec<f32>)>,
    ints: std::collections::HashMap<String, (Vec<usize>, Vec<i64>)>,
}

impl Tensors {
    fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(io_err(path))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
        let mut t = Tensors {
            file: path.to_path_buf(),
            f32s: Default::default(),
            ints: Default::default(),
        };
        for (name, v) in st.tensors() {
            let shape = v.shape().to_vec();
            match v.dtype() {
                safetensors::Dtype::F32 => {
                    let d = v
                        .data()
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect();
                    t.f32s.insert(name, (shape, d));
                }
                safetensors::Dtype::I64 => {
                    let d = v
                        .data()
                        .chunks_exact(8)
                        .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                        .collect();
                    t.ints.insert(name, (shape, d));
                }
                other => {
                    return Err(Error::Invalid(format!(
                        "{}: tensor '{name}' has dtype {other:?} (expected F32 or I64)",
                        path.display()
                    )))
                }
            }
        }
        Ok(t)
    }

    fn bad(&self, m: String) -> Error {
        Error::Invalid(format!("{}: {m}", self.file.display()))
    }

    fn latent(&self, name: &str, shape: [usize; 4]) -> Result<Option<Vec<f32>>> {
        match self.f32s.get(name) {
            None => Ok(None),
            Some((s, v)) if s.as_slice() == shape.as_slice() => Ok(Some(v.clone())),
            Some((s, _)) => Err(self.bad(format!(
                "'{name}' has shape {s:?}, the run's latents are {shape:?}"
            ))),
        }
    }
}

/// Decodes an 8-bit RGB or RGBA PNG.
pub fn read_png_rgb8(path: &Path) -> Result<Rgb8> {
    let bad = |m: String| Error::Invalid(format!("{}: {m}", path.display()));
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    let mut reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .map_err(|e| bad(e.to_string()))?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| bad("image too large".into()))?;
    let mut buf = vec![0; size];
    let frame = reader
        .next_frame(&mut buf)
        .map_err(|e| bad(e.to_string()))?;
    let (w, h) = (frame.width as usize, frame.height as usize);
    if frame.bit_depth != png::BitDepth::Eight {
        return Err(bad(format!("bit depth {:?}, expected 8", frame.bit_depth)));
    }
    let pixels = match frame.color_type {
        png::ColorType::Rgb => buf[..w * h * 3].to_vec(),
        png::ColorType::Rgba => buf[..w * h * 4]
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect(),
        png::ColorType::Grayscale => buf[..w * h].iter().flat_map(|&g| [g, g, g]).collect(),
        other => return Err(bad(format!("colour type {other:?}, expected RGB"))),
    };
    Ok(Rgb8 {
        width: w,
        height: h,
        pixels,
    })
}

impl RunData {
    /// An empty live run described by `info`.
    pub fn live(info: RunInfo) -> Self {
        RunData {
            dir: None,
            info,
            steps: Vec::new(),
            image: None,
        }
    }

    /// Loads a dump folder written by `generate --dump-masks` (see the module docs). A missing
    /// folder, a folder without `run.json`, and files that do not fit `run.json` are errors
    /// naming the file.
    pub fn load(dir: &Path) -> Result<Self> {
        if !dir.exists() {
            return Err(Error::Invalid(format!(
                "{}: no such folder (expected one written by `atedm generate --dump-masks`)",
                dir.display()
            )));
        }
        if !dir.is_dir() {
            return Err(Error::Invalid(format!(
                "{}: not a folder (expected one written by `atedm generate --dump-masks`)",
                dir.display()
            )));
        }
        let run_file = dir.join(RUN_FILE);
        if !run_file.is_file() {
            return Err(Error::Invalid(format!(
                "{}: no {RUN_FILE}: not a complete `atedm generate --dump-masks` folder (an unfinished run, or one saved by an older atedm: generate it again)",
                dir.display()
            )));
        }
        let text = std::fs::read_to_string(&run_file).map_err(io_err(&run_file))?;
        let info: RunInfo = serde_json::from_str(&text)
            .map_err(|e| Error::Invalid(format!("{}: {e}", run_file.display())))?;
        info.validate()
            .map_err(|e| Error::Invalid(format!("{}: {e}", dir.display())))?;
        let shape = info.latent_shape;
        let mut steps = Vec::with_capacity(info.steps);
        for i in 0..info.steps {
            let mut step = StepData::default();
            let lat = dir.join(format!("latents_{i:03}.safetensors"));
            if lat.is_file() {
                let t = Tensors::read(&lat)?;
                step.latents = t.latent("latents", shape)?;
                step.denoised = t.latent("denoised", shape)?;
            }
            let pruned: Vec<&StackInfo> = info.stacks.iter().filter(|s| s.pruned[i]).collect();
            let file = dir.join(format!("step_{i:03}.safetensors"));
            if !pruned.is_empty() {
                if !file.is_file() {
                    return Err(Error::Invalid(format!(
                        "{}: missing: {RUN_FILE} says step {i} prunes {} stacks",
                        file.display(),
                        pruned.len()
                    )));
                }
                let t = Tensors::read(&file)?;
                for st in pruned {
                    step.masks.push(read_mask(&t, st, i)?);
                }
            }
            steps.push(step);
        }
        let img_file = dir.join(IMAGE_FILE);
        let image = if img_file.is_file() {
            Some(read_png_rgb8(&img_file)?)
        } else {
            None
        };
        Ok(RunData {
            dir: Some(dir.to_path_buf()),
            info,
            steps,
            image,
        })
    }

    /// A short name: the folder's name, or "live".
    pub fn label(&self) -> String {
        match &self.dir {
            Some(d) => d
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| d.display().to_string()),
            None => "live".into(),
        }
    }

    /// The mask of `stack` at `step`, if that step pruned it.
    pub fn mask(&self, step: usize, stack: &str) -> Option<&StepMask> {
        self.steps
            .get(step)?
            .masks
            .iter()
            .find(|m| m.stack == stack)
    }
}

/// `kept.<stack>` and `score.<stack>` of `t`, checked against the stack's grid.
fn read_mask(t: &Tensors, st: &StackInfo, step: usize) -> Result<StepMask> {
    let n = st.grid[0] * st.grid[1];
    let kn = format!("kept.{}", st.name);
    let sn = format!("score.{}", st.name);
    let (ks, kv) = t
        .ints
        .get(&kn)
        .ok_or_else(|| t.bad(format!("no int64 tensor '{kn}'")))?;
    let (ss, sv) = t
        .f32s
        .get(&sn)
        .ok_or_else(|| t.bad(format!("no f32 tensor '{sn}'")))?;
    if ks.len() != 2 || ss.len() != 2 || ks[0] != ss[0] || ks[0] == 0 || ss[1] != n || ks[1] > n {
        return Err(t.bad(format!(
            "'{kn}' {ks:?} and '{sn}' {ss:?} do not fit the {}x{} grid of {}",
            st.grid[0], st.grid[1], st.name
        )));
    }
    if let Some(bad) = kv.iter().find(|&&v| v < 0 || v as usize >= n) {
        return Err(t.bad(format!("'{kn}' has index {bad}, outside 0..{n}")));
    }
    Ok(StepMask {
        step,
        stack: st.name.clone(),
        grid: st.grid,
        kept: kv.iter().map(|&v| v as u32).collect(),
        kept_shape: [ks[0], ks[1]],
        scores: sv.clone(),
        scores_shape: [ss[0], ss[1]],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_file_names() {
        for yes in [
            "step_000.safetensors",
            "step_012_mid_block.attentions.0.png",
            "latents_049.safetensors",
            "step_1000.safetensors",
        ] {
            assert!(is_step_file(yes), "{yes}");
        }
        for no in [
            "run.json",
            "image.png",
            "step_01.safetensors",
            "step_000.txt",
            "notes_step_000.safetensors",
            "latents_000.png.bak",
        ] {
            assert!(!is_step_file(no), "{no}");
        }
    }
}
