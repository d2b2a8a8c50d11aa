//! The viewer's state and pictures, without any drawing: the step cursor with play/pause and
//! its keyboard actions, mask and heatmap images, previews and chart data. Unit-tested here;
//! `app` draws them with egui.

use crate::pipeline::dump::{Rgb8, RunData, StackInfo};
use crate::pipeline::generate::StepMask;
use crate::pipeline::preview::latents_to_rgb8;

/// Colour of kept tokens in mask tiles (amber; with navy below, readable with any colour
/// vision).
pub const KEPT_RGB: [u8; 3] = [250, 204, 21];
/// Colour of pruned tokens in mask tiles.
pub const PRUNED_RGB: [u8; 3] = [30, 41, 110];

/// What the user can do to the step cursor (buttons, slider, keyboard).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Space.
    TogglePlay,
    /// Left arrow.
    Prev,
    /// Right arrow.
    Next,
    /// Home.
    First,
    /// End: the last step; in a live run, follow new steps as they arrive.
    Last,
    /// The slider or a click on the chart.
    Goto(usize),
}

/// The step cursor: which step is shown, whether it plays, and the display options.
#[derive(Clone, Debug, PartialEq)]
pub struct ViewState {
    /// Shown step (0-based), always below `available` when any step is available.
    pub step: usize,
    /// Steps that can be shown (the longest run's; in a live run, those done so far).
    pub available: usize,
    /// Whether more steps will come (a live run still running).
    pub growing: bool,
    /// Whether the cursor advances by itself at [`ViewState::speed`].
    pub playing: bool,
    /// Steps per second while playing.
    pub speed: f32,
    /// Time of the last step advance while playing (seconds, the UI clock).
    last_advance: Option<f64>,
    /// In a live run: jump to each new step (until the user moves the cursor; End resumes).
    pub follow: bool,
    /// Show batch row 1 (the conditional half with classifier-free guidance) or row 0.
    pub conditional: bool,
    /// Opacity of the G-WPR heatmap over the image, 0..1.
    pub heat_opacity: f32,
}

impl Default for ViewState {
    fn default() -> Self {
        ViewState {
            step: 0,
            available: 0,
            growing: false,
            playing: false,
            speed: 4.0,
            last_advance: None,
            follow: true,
            conditional: true,
            heat_opacity: 0.75,
        }
    }
}

impl ViewState {
    /// The last step that can be shown.
    fn last(&self) -> usize {
        self.available.saturating_sub(1)
    }

    /// Applies a user action; returns whether the shown step changed.
    pub fn apply(&mut self, a: Action) -> bool {
        let before = self.step;
        match a {
            Action::TogglePlay => {
                self.playing = !self.playing;
                self.last_advance = None;
                // Play at the end starts over (unless the run is still growing).
                if self.playing && self.step >= self.last() && !self.growing {
                    self.step = 0;
                }
            }
            Action::Prev => {
                self.step = self.step.saturating_sub(1);
                self.follow = false;
            }
            Action::Next => {
                self.step = (self.step + 1).min(self.last());
                self.follow = false;
            }
            Action::First => {
                self.step = 0;
                self.follow = false;
            }
            Action::Last => {
                self.step = self.last();
                self.follow = true;
            }
            Action::Goto(i) => {
                self.step = i.min(self.last());
                self.follow = self.growing && self.step == self.last();
            }
        }
        self.step != before
    }

    /// Sets how many steps can be shown (and whether more will come); keeps the cursor in
    /// range and, when following a live run, on the newest step.
    pub fn set_available(&mut self, available: usize, growing: bool) {
        self.available = available;
        self.growing = growing;
        if self.follow && growing && !self.playing {
            self.step = self.last();
        }
        self.step = self.step.min(self.last());
    }

    /// Advances while playing, `speed` steps per second of `now` (seconds). Stops at the
    /// last step of a finished run; waits there in a growing one. Returns whether the step
    /// changed.
    pub fn tick(&mut self, now: f64) -> bool {
        if !self.playing {
            return false;
        }
        let period = 1.0 / f64::from(self.speed.max(0.1));
        let Some(last) = self.last_advance else {
            self.last_advance = Some(now);
            return false;
        };
        if now - last < period {
            return false;
        }
        self.last_advance = Some(now);
        if self.step < self.last() {
            self.step += 1;
            true
        } else {
            if !self.growing {
                self.playing = false;
            }
            false
        }
    }

    /// Seconds until the next advance while playing (for scheduling a repaint).
    pub fn next_tick_in(&self, now: f64) -> Option<f64> {
        self.playing.then(|| {
            let period = 1.0 / f64::from(self.speed.max(0.1));
            self.last_advance
                .map_or(0.0, |t| (t + period - now).max(0.0))
        })
    }
}

/// RGBA8 image, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Rgba8 {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `width * height * 4` bytes, RGBA per pixel.
    pub pixels: Vec<u8>,
}

/// The batch row to show of a mask with `b` rows.
pub fn batch_row(b: usize, conditional: bool) -> usize {
    if conditional {
        b.saturating_sub(1)
    } else {
        0
    }
}

/// The mask of `m` on its stack's grid: kept tokens [`KEPT_RGB`], pruned [`PRUNED_RGB`], one
/// pixel per token.
pub fn mask_image(m: &StepMask, st: &StackInfo, conditional: bool) -> Rgba8 {
    let [gh, gw] = st.grid;
    let on = m.kept_mask(batch_row(m.kept_shape[0], conditional));
    let pixels = on
        .iter()
        .flat_map(|&k| {
            let c = if k { KEPT_RGB } else { PRUNED_RGB };
            [c[0], c[1], c[2], 255]
        })
        .collect();
    Rgba8 {
        width: gw,
        height: gh,
        pixels,
    }
}

/// A perceptually ordered colour map (viridis, by 5 control points): 0 dark violet .. 1 yellow.
pub fn colormap(t: f32) -> [u8; 3] {
    const STOPS: [[f32; 3]; 5] = [
        [68.0, 1.0, 84.0],
        [59.0, 82.0, 139.0],
        [33.0, 145.0, 140.0],
        [94.0, 201.0, 98.0],
        [253.0, 231.0, 37.0],
    ];
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let x = t * 4.0;
    let i = (x.floor() as usize).min(3);
    let f = x - i as f32;
    let mut out = [0u8; 3];
    for (k, o) in out.iter_mut().enumerate() {
        *o = (STOPS[i][k] + (STOPS[i + 1][k] - STOPS[i][k]) * f).round() as u8;
    }
    out
}

/// Scores of one batch row normalised to 0..1 (min..max; all 0.5 when flat).
pub fn normalised_scores(m: &StepMask, conditional: bool) -> Vec<f32> {
    let n = m.scores_shape[1];
    let b = batch_row(m.scores_shape[0], conditional);
    let row = m.scores.get(b * n..(b + 1) * n).unwrap_or(&[]);
    let (lo, hi) = row
        .iter()
        .filter(|v| v.is_finite())
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| {
            (l.min(v), h.max(v))
        });
    row.iter()
        .map(|&v| if hi > lo { (v - lo) / (hi - lo) } else { 0.5 })
        .collect()
}

/// The G-WPR importance of `m` as a heatmap on the stack's grid, blended with `opacity` over
/// `base` (resampled to the grid's aspect: each token covers its block of `base`'s pixels).
/// The result has `base`'s size (or the grid's without a base).
pub fn heatmap_image(
    m: &StepMask,
    st: &StackInfo,
    base: Option<&Rgb8>,
    opacity: f32,
    conditional: bool,
) -> Rgba8 {
    let [gh, gw] = st.grid;
    let s = normalised_scores(m, conditional);
    let (w, h) = base.map_or((gw, gh), |b| (b.width, b.height));
    let a = opacity.clamp(0.0, 1.0);
    let mut pixels = Vec::with_capacity(w * h * 4);
    for y in 0..h {
        let ty = (y * gh / h.max(1)).min(gh - 1);
        for x in 0..w {
            let tx = (x * gw / w.max(1)).min(gw - 1);
            let c = colormap(s.get(ty * gw + tx).copied().unwrap_or(0.0));
            let under = match base {
                Some(b) => {
                    let p = (y * b.width + x) * 3;
                    [b.pixels[p], b.pixels[p + 1], b.pixels[p + 2]]
                }
                None => [0, 0, 0],
            };
            for k in 0..3 {
                let v = f32::from(c[k]) * a + f32::from(under[k]) * (1.0 - a);
                pixels.push(v.round() as u8);
            }
            pixels.push(255);
        }
    }
    Rgba8 {
        width: w,
        height: h,
        pixels,
    }
}

/// The preview of `step` of `run`: its predicted clean latents through the fixed latent-to-RGB
/// map (the latents after the step when no prediction was saved).
pub fn step_preview(run: &RunData, step: usize) -> Option<Rgb8> {
    let s = run.steps.get(step)?;
    let lat = s.denoised.as_ref().or(s.latents.as_ref())?;
    let (width, height, pixels) = latents_to_rgb8(lat, run.info.latent_shape);
    Some(Rgb8 {
        width,
        height,
        pixels,
    })
}

/// `img` box-filtered down to `w x h` (for heatmap bases; `w, h` at most the image's size).
pub fn downsample(img: &Rgb8, w: usize, h: usize) -> Rgb8 {
    let (w, h) = (w.clamp(1, img.width), h.clamp(1, img.height));
    let mut pixels = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        let (y0, y1) = (
            y * img.height / h,
            ((y + 1) * img.height / h).max(y * img.height / h + 1),
        );
        for x in 0..w {
            let (x0, x1) = (
                x * img.width / w,
                ((x + 1) * img.width / w).max(x * img.width / w + 1),
            );
            let mut sum = [0u32; 3];
            for yy in y0..y1 {
                for xx in x0..x1 {
                    let p = (yy * img.width + xx) * 3;
                    for (k, s) in sum.iter_mut().enumerate() {
                        *s += u32::from(img.pixels[p + k]);
                    }
                }
            }
            let n = ((y1 - y0) * (x1 - x0)) as u32;
            pixels.extend(sum.map(|s| ((s + n / 2) / n) as u8));
        }
    }
    Rgb8 {
        width: w,
        height: h,
        pixels,
    }
}

/// Kept tokens (per batch row) and total tokens of `m`.
pub fn kept_count(m: &StepMask) -> (usize, usize) {
    (m.kept_shape[1], m.scores_shape[1])
}

/// One bar series of the charts: a value per step (`None` where not known yet).
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// The run's name (see [`RunData::label`]).
    pub label: String,
    /// One value per step.
    pub values: Vec<Option<f64>>,
}

/// Per-step model FLOPs (one image) of each run.
pub fn flops_series(runs: &[&RunData]) -> Vec<Series> {
    runs.iter()
        .map(|r| Series {
            label: r.label(),
            values: r.info.step_flops.iter().map(|&f| Some(f)).collect(),
        })
        .collect()
}

/// Per-step wall time (ms) of each run, as far as known.
pub fn time_series(runs: &[&RunData]) -> Vec<Series> {
    runs.iter()
        .map(|r| Series {
            label: r.label(),
            values: (0..r.info.steps)
                .map(|i| r.info.step_ms.get(i).copied())
                .collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(available: usize) -> ViewState {
        let mut s = ViewState::default();
        s.set_available(available, false);
        s
    }

    #[test]
    fn arrows_step_and_clamp() {
        let mut s = state(4);
        assert_eq!(s.step, 0);
        assert!(!s.apply(Action::Prev), "clamped at 0");
        assert!(s.apply(Action::Next));
        assert!(s.apply(Action::Next));
        assert!(s.apply(Action::Next));
        assert_eq!(s.step, 3);
        assert!(!s.apply(Action::Next), "clamped at the last step");
        assert_eq!(s.step, 3);
        s.apply(Action::First);
        assert_eq!(s.step, 0);
        s.apply(Action::Goto(99));
        assert_eq!(s.step, 3);
        s.apply(Action::Goto(1));
        assert_eq!(s.step, 1);
    }

    #[test]
    fn space_toggles_play_and_play_advances_then_stops() {
        let mut s = state(3);
        s.speed = 2.0; // one step per 0.5 s
        assert!(!s.playing);
        s.apply(Action::TogglePlay);
        assert!(s.playing);
        assert!(!s.tick(10.0), "the first tick starts the clock");
        assert!(!s.tick(10.2));
        assert!(s.tick(10.5));
        assert_eq!(s.step, 1);
        assert!(s.tick(11.0));
        assert_eq!(s.step, 2);
        assert!(!s.tick(11.5));
        assert!(!s.playing, "stops at the end of a finished run");
        s.apply(Action::TogglePlay);
        assert!(s.playing);
        assert_eq!(s.step, 0, "play at the end starts over");
        s.apply(Action::TogglePlay);
        assert!(!s.playing);
        assert!(!s.tick(20.0));
    }

    #[test]
    fn live_runs_follow_new_steps_until_moved() {
        let mut s = ViewState::default();
        s.set_available(0, true);
        assert_eq!(s.step, 0);
        s.set_available(2, true);
        assert_eq!(s.step, 1, "follows");
        s.apply(Action::Prev);
        s.set_available(3, true);
        assert_eq!(s.step, 0, "stays where the user put it");
        s.apply(Action::Last);
        s.set_available(4, true);
        assert_eq!(s.step, 3, "End resumes following");
        // Playing in a growing run waits at the newest step.
        s.apply(Action::TogglePlay);
        s.tick(0.0);
        assert!(!s.tick(1.0));
        assert!(s.playing);
        s.set_available(5, true);
        assert!(s.tick(2.0));
        assert_eq!(s.step, 4);
    }

    fn mask() -> (StepMask, StackInfo) {
        // 2x3 grid, B = 2, k = 2: row 0 keeps 0 and 5, row 1 keeps 1 and 2.
        let m = StepMask {
            step: 0,
            stack: "mid".into(),
            grid: [2, 3],
            kept: vec![0, 5, 1, 2],
            kept_shape: [2, 2],
            scores: vec![0.5, 0.1, 0.1, 0.1, 0.1, 0.1, 0.0, 0.4, 0.3, 0.1, 0.1, 0.1],
            scores_shape: [2, 6],
        };
        let st = StackInfo {
            name: "mid".into(),
            level: 3,
            grid: [2, 3],
            pruned: vec![true],
        };
        (m, st)
    }

    #[test]
    fn mask_image_colours_kept_and_pruned_tokens() {
        let (m, st) = mask();
        let img = mask_image(&m, &st, true);
        assert_eq!((img.width, img.height), (3, 2));
        let kept: Vec<bool> = img.pixels.chunks(4).map(|p| p[..3] == KEPT_RGB).collect();
        assert_eq!(kept, [false, true, true, false, false, false]);
        let img = mask_image(&m, &st, false);
        let kept: Vec<bool> = img.pixels.chunks(4).map(|p| p[..3] == KEPT_RGB).collect();
        assert_eq!(kept, [true, false, false, false, false, true]);
    }

    #[test]
    fn heatmap_spans_the_colormap_and_blends() {
        let (m, st) = mask();
        let img = heatmap_image(&m, &st, None, 1.0, true);
        assert_eq!((img.width, img.height), (3, 2));
        assert_eq!(img.pixels[0..3], colormap(0.0), "lowest score");
        assert_eq!(img.pixels[4..7], colormap(1.0), "highest score");
        // Over a 6x4 grey base at half opacity: the base's size, each token a 2x2 block.
        let base = Rgb8 {
            width: 6,
            height: 4,
            pixels: vec![100; 6 * 4 * 3],
        };
        let img = heatmap_image(&m, &st, Some(&base), 0.5, true);
        assert_eq!((img.width, img.height), (6, 4));
        let hi = colormap(1.0);
        let want: Vec<u8> = hi
            .iter()
            .map(|&c| ((f32::from(c) + 100.0) * 0.5).round() as u8)
            .collect();
        // Pixel (x=2, y=1) lies in token (0, 1), the highest.
        let p = (6 + 2) * 4;
        assert_eq!(img.pixels[p..p + 3], want[..]);
    }

    #[test]
    fn colormap_ends_and_bad_values() {
        assert_eq!(colormap(0.0), [68, 1, 84]);
        assert_eq!(colormap(1.0), [253, 231, 37]);
        assert_eq!(colormap(f32::NAN), [68, 1, 84]);
        assert_eq!(colormap(7.0), [253, 231, 37]);
    }

    #[test]
    fn chart_series_cover_every_step_and_mark_unknown_times() {
        let req = crate::pipeline::generate::GenerateRequest {
            steps: 3,
            ..Default::default()
        };
        let cfg = crate::model::config::UNetConfig::sdxl_base();
        let mut info =
            crate::pipeline::dump::RunInfo::new(&cfg, &req, [1, 4, 128, 128], "none", "").unwrap();
        info.step_ms = vec![12.5];
        let run = RunData::live(info);
        let f = flops_series(&[&run]);
        assert_eq!(f[0].label, "live");
        assert_eq!(f[0].values, vec![Some(run.info.full_flops); 3]);
        let t = time_series(&[&run]);
        assert_eq!(t[0].values, vec![Some(12.5), None, None]);
    }

    #[test]
    fn downsample_averages_blocks() {
        let img = Rgb8 {
            width: 4,
            height: 2,
            pixels: [
                [0u8; 3], [10; 3], [20; 3], [30; 3], [40; 3], [50; 3], [60; 3], [70; 3],
            ]
            .concat(),
        };
        let d = downsample(&img, 2, 1);
        assert_eq!((d.width, d.height), (2, 1));
        assert_eq!(d.pixels, [25, 25, 25, 45, 45, 45]);
    }
}
