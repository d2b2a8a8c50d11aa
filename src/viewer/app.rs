//! The viewer's egui drawing: controls, images, per-stack masks and heatmaps, charts. The same
//! code runs in the window (`eframe`) and offscreen ([`super::headless`]).

use std::collections::HashMap;

use eframe::egui;
use egui::{Color32, Key, Modifiers, Rect, Sense, Stroke, TextureOptions, Vec2};

use super::live::{LiveRun, LiveStatus};
use super::model::{
    downsample, flops_series, heatmap_image, kept_count, mask_image, step_preview, time_series,
    Action, Rgba8, Series, ViewState,
};
use crate::pipeline::dump::{Rgb8, RunData};

/// Colours of the runs (first, second) in charts and headings.
pub const RUN_COLOURS: [Color32; 2] = [
    Color32::from_rgb(86, 156, 214),
    Color32::from_rgb(230, 145, 56),
];
/// Display width of mask and heatmap tiles, in points.
const TILE_W: f32 = 120.0;
/// Display width of the final image and the step preview, in points.
const IMAGE_W: f32 = 168.0;

/// What a drawn picture shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TileKind {
    /// The final image.
    Image,
    /// The step's latent preview.
    Preview,
    /// A stack's kept (amber) and pruned (navy) tokens.
    Mask,
    /// A stack's G-WPR heatmap over the image.
    Heatmap,
}

/// Where the last frame drew a picture (for tests and screenshots).
#[derive(Clone, Debug, PartialEq)]
pub struct DrawnTile {
    /// Index of the run in the shown order (the live run first).
    pub run: usize,
    /// The stack the tile belongs to (`None` for the final image and the step preview).
    pub stack: Option<String>,
    /// What the picture shows.
    pub kind: TileKind,
    /// In points.
    pub rect: Rect,
}

/// egui textures by name, rebuilt when their content key changes.
#[derive(Default)]
struct Textures {
    map: HashMap<String, (String, egui::TextureHandle)>,
}

impl Textures {
    /// The texture `name` showing what `key` identifies; `make` builds it when the key changed.
    fn get(
        &mut self,
        ctx: &egui::Context,
        name: &str,
        key: String,
        make: impl FnOnce() -> Rgba8,
    ) -> egui::TextureId {
        if let Some((k, t)) = self.map.get(name) {
            if *k == key {
                return t.id();
            }
        }
        let img = make();
        let image = egui::ColorImage::from_rgba_unmultiplied([img.width, img.height], &img.pixels);
        let options = TextureOptions::NEAREST;
        match self.map.get_mut(name) {
            Some((k, t)) => {
                t.set(image, options);
                *k = key;
                t.id()
            }
            None => {
                let t = ctx.load_texture(name, image, options);
                let id = t.id();
                self.map.insert(name.to_string(), (key, t));
                id
            }
        }
    }
}

fn rgba(img: &Rgb8) -> Rgba8 {
    Rgba8 {
        width: img.width,
        height: img.height,
        pixels: img
            .pixels
            .chunks_exact(3)
            .flat_map(|p| [p[0], p[1], p[2], 255])
            .collect(),
    }
}

/// The viewer: saved runs, an optional live run, the step cursor.
pub struct ViewerApp {
    /// The step cursor and display options.
    pub state: ViewState,
    /// Runs opened from dump folders.
    pub runs: Vec<RunData>,
    /// A generation running on a worker thread (shown first).
    pub live: Option<LiveRun>,
    /// Where the last frame drew its pictures.
    pub drawn: Vec<DrawnTile>,
    /// The visible part of the runs' scroll area in the last frame (points).
    pub central_rect: Rect,
    textures: Textures,
}

impl ViewerApp {
    /// A viewer of `runs` (dump folders already loaded) and, optionally, a live run.
    pub fn new(runs: Vec<RunData>, live: Option<LiveRun>) -> Self {
        ViewerApp {
            state: ViewState::default(),
            runs,
            live,
            drawn: Vec::new(),
            central_rect: Rect::NOTHING,
            textures: Textures::default(),
        }
    }

    /// Keyboard: space play/pause, left/right one step, Home/End first/last. The keys are
    /// consumed before any widget sees them (a focused slider would step twice).
    fn keyboard(&mut self, ctx: &egui::Context) {
        let mut actions = Vec::new();
        ctx.input_mut(|i| {
            if i.consume_key(Modifiers::NONE, Key::Space) {
                actions.push(Action::TogglePlay);
            }
            for _ in 0..i.count_and_consume_key(Modifiers::NONE, Key::ArrowLeft) {
                actions.push(Action::Prev);
            }
            for _ in 0..i.count_and_consume_key(Modifiers::NONE, Key::ArrowRight) {
                actions.push(Action::Next);
            }
            if i.consume_key(Modifiers::NONE, Key::Home) {
                actions.push(Action::First);
            }
            if i.consume_key(Modifiers::NONE, Key::End) {
                actions.push(Action::Last);
            }
        });
        for a in actions {
            self.state.apply(a);
        }
    }

    /// Draws one frame into `ui` (the window's root, or the offscreen one).
    pub fn draw(&mut self, ui: &mut egui::Ui) {
        let ctx = ui.ctx().clone();
        let now = ui.input(|i| i.time);
        if let Some(live) = &mut self.live {
            live.poll();
        }
        let growing = self.live.as_ref().is_some_and(LiveRun::growing);
        let available = self
            .shown()
            .iter()
            .map(|r| r.steps.len())
            .max()
            .unwrap_or(0);
        self.state.set_available(available, growing);
        self.keyboard(&ctx);
        self.state.tick(now);
        if let Some(dt) = self.state.next_tick_in(now) {
            ctx.request_repaint_after(std::time::Duration::from_secs_f64(dt));
        }
        self.drawn.clear();

        egui::Panel::top("controls").show(ui, |ui| self.controls(ui));
        egui::Panel::bottom("charts")
            .resizable(true)
            .default_size(200.0)
            .show(ui, |ui| self.charts(ui));
        egui::CentralPanel::default().show(ui, |ui| {
            egui::ScrollArea::both()
                .auto_shrink([false, false])
                .show(ui, |ui| {
                    self.central_rect = ui.clip_rect();
                    self.runs_view(ui);
                });
        });
    }

    /// The runs shown, the live one first.
    fn shown(&self) -> Vec<&RunData> {
        self.live
            .iter()
            .filter_map(|l| l.run.as_ref())
            .chain(&self.runs)
            .collect()
    }

    fn controls(&mut self, ui: &mut egui::Ui) {
        let s = &mut self.state;
        ui.add_space(4.0);
        ui.horizontal(|ui| {
            let play = if s.playing { "Pause" } else { "Play" };
            if ui.button(play).on_hover_text("space").clicked() {
                s.apply(Action::TogglePlay);
            }
            if ui.button("|<").on_hover_text("Home").clicked() {
                s.apply(Action::First);
            }
            if ui.button("<").on_hover_text("left arrow").clicked() {
                s.apply(Action::Prev);
            }
            if ui.button(">").on_hover_text("right arrow").clicked() {
                s.apply(Action::Next);
            }
            if ui.button(">|").on_hover_text("End").clicked() {
                s.apply(Action::Last);
            }
            // 1-based on screen, as the step labels.
            let mut shown = s.step + 1;
            let slider = egui::Slider::new(&mut shown, 1..=s.available.max(1))
                .text(format!("step of {}", s.available))
                .integer();
            if ui.add_enabled(s.available > 1, slider).changed() {
                s.apply(Action::Goto(shown.saturating_sub(1)));
            }
            ui.separator();
            ui.add(
                egui::DragValue::new(&mut s.speed)
                    .range(0.5..=30.0)
                    .speed(0.1)
                    .suffix(" steps/s"),
            );
            ui.separator();
            ui.checkbox(&mut s.conditional, "conditional half")
                .on_hover_text(
                    "with CFG: show the conditional (prompt) batch row, else the unconditional",
                );
            ui.add(egui::Slider::new(&mut s.heat_opacity, 0.0..=1.0).text("heatmap opacity"));
        });
        if let Some(live) = &self.live {
            ui.horizontal(|ui| match &live.status {
                LiveStatus::Loading => {
                    ui.spinner();
                    ui.label("live: loading the pipeline…");
                }
                LiveStatus::Running { done, steps } => {
                    ui.label("live:");
                    ui.add(
                        egui::ProgressBar::new(*done as f32 / (*steps).max(1) as f32)
                            .text(format!("step {done}/{steps}"))
                            .desired_width(300.0),
                    );
                    if done == steps {
                        ui.spinner();
                        ui.label("decoding the image…");
                    }
                }
                LiveStatus::Done => {
                    let ms = live.run.as_ref().map_or(0.0, |r| r.info.generate_ms);
                    ui.label(format!("live: done in {:.1} s", ms / 1e3));
                }
                LiveStatus::Failed(e) => {
                    ui.colored_label(Color32::from_rgb(230, 80, 80), format!("live: {e}"));
                }
            });
        }
        ui.add_space(2.0);
    }

    fn charts(&mut self, ui: &mut egui::Ui) {
        let shown = self.shown();
        let (flops, times) = (flops_series(&shown), time_series(&shown));
        let step = self.state.step;
        let mut goto = None;
        ui.columns(2, |cols| {
            goto = goto.or(chart(
                &mut cols[0],
                "model FLOPs per step (one image)",
                &flops,
                "FLOPs",
                step,
            ));
            goto = goto.or(chart(
                &mut cols[1],
                "wall time per step",
                &times,
                "ms",
                step,
            ));
        });
        if let Some(i) = goto {
            self.state.apply(Action::Goto(i));
        }
    }

    fn runs_view(&mut self, ui: &mut egui::Ui) {
        let ctx = ui.ctx().clone();
        let state = self.state.clone();
        let runs: Vec<&RunData> = self
            .live
            .iter()
            .filter_map(|l| l.run.as_ref())
            .chain(&self.runs)
            .collect();
        if runs.is_empty() {
            ui.label("waiting for the pipeline to load…");
            return;
        }
        let textures = &mut self.textures;
        let drawn = &mut self.drawn;
        ui.horizontal_top(|ui| {
            for (ri, run) in runs.iter().enumerate() {
                ui.vertical(|ui| {
                    run_column(ui, &ctx, textures, drawn, &state, ri, run);
                });
                if ri + 1 < runs.len() {
                    ui.separator();
                }
            }
        });
    }
}

/// One run: heading, images, then a row per transformer stack.
fn run_column(
    ui: &mut egui::Ui,
    ctx: &egui::Context,
    textures: &mut Textures,
    drawn: &mut Vec<DrawnTile>,
    state: &ViewState,
    ri: usize,
    run: &RunData,
) {
    let info = &run.info;
    let colour = RUN_COLOURS[ri % RUN_COLOURS.len()];
    ui.heading(egui::RichText::new(run.label()).color(colour));
    ui.label(format!("pruning: {}", info.prune));
    let step = state.step.min(run.steps.len().saturating_sub(1));
    let have_step = step < run.steps.len();
    let ms = info
        .step_ms
        .get(step)
        .map_or("…".into(), |m| format!("{m:.0} ms"));
    let flops = info.step_flops.get(step).copied().unwrap_or(0.0);
    let over = info.step_overhead_flops.get(step).copied().unwrap_or(0.0);
    ui.label(format!(
        "step {}/{}: {ms}, {} ({:.0}% of full){}{}",
        step + 1,
        info.steps,
        si(flops, "FLOPs"),
        100.0 * flops / info.full_flops.max(1.0),
        if over > 0.0 {
            format!(" + pruning {}", si(over, "FLOPs"))
        } else {
            String::new()
        },
        if step < info.early_steps {
            ", DSAP early step"
        } else {
            ""
        }
    ));
    egui::CollapsingHeader::new("settings")
        .id_salt(("settings", ri))
        .show(ui, |ui| {
            ui.label(&info.settings);
        });
    let [_, _, lh, lw] = info.latent_shape;
    let image_h = IMAGE_W * info.height as f32 / info.width.max(1) as f32;
    let preview = if have_step {
        step_preview(run, step)
    } else {
        None
    };
    ui.horizontal_top(|ui| {
        ui.vertical(|ui| {
            ui.label("final image");
            match &run.image {
                Some(img) => {
                    let id =
                        textures.get(ctx, &format!("{ri}/image"), "final".into(), || rgba(img));
                    let r = ui.image((id, Vec2::new(IMAGE_W, image_h))).rect;
                    drawn.push(DrawnTile {
                        run: ri,
                        stack: None,
                        kind: TileKind::Image,
                        rect: r,
                    });
                }
                None => {
                    ui.allocate_ui(Vec2::new(IMAGE_W, image_h), |ui| {
                        ui.label("not decoded yet");
                    });
                }
            }
        });
        ui.vertical(|ui| {
            ui.label(format!("step {} preview (latents to RGB)", step + 1));
            match &preview {
                Some(p) => {
                    let id =
                        textures.get(ctx, &format!("{ri}/preview"), format!("{step}"), || rgba(p));
                    let r = ui.image((id, Vec2::new(IMAGE_W, image_h))).rect;
                    drawn.push(DrawnTile {
                        run: ri,
                        stack: None,
                        kind: TileKind::Preview,
                        rect: r,
                    });
                }
                None => {
                    ui.allocate_ui(Vec2::new(IMAGE_W, image_h), |ui| {
                        ui.label("no latents saved for this step");
                    });
                }
            }
        });
    });
    // The heatmaps' base: the step preview, else the final image at latent resolution.
    let base = preview.or_else(|| run.image.as_ref().map(|img| downsample(img, lw, lh)));
    ui.add_space(6.0);
    ui.label(
        egui::RichText::new("transformer stacks: kept / pruned tokens, G-WPR importance").strong(),
    );
    egui::Grid::new(("stacks", ri))
        .num_columns(3)
        .spacing([8.0, 6.0])
        .show(ui, |ui| {
            for st in &info.stacks {
                let [gh, gw] = st.grid;
                let mask = if have_step {
                    run.mask(step, &st.name)
                } else {
                    None
                };
                let mut text = format!("{}\nlevel {}, {gh}x{gw} tokens", st.name, st.level);
                match mask {
                    Some(m) => {
                        let (k, n) = kept_count(m);
                        text += &format!("\nkept {k}/{n} ({:.0}%)", 100.0 * k as f64 / n as f64);
                    }
                    None if st.pruned.iter().any(|&p| p) => {
                        text += "\nnot pruned at this step (DSAP)";
                    }
                    None => text += "\nnot pruned",
                }
                ui.label(text);
                let Some(m) = mask else {
                    ui.label("");
                    ui.label("");
                    ui.end_row();
                    continue;
                };
                let size = Vec2::new(TILE_W, TILE_W * gh as f32 / gw as f32);
                let row = state.conditional;
                let id = textures.get(
                    ctx,
                    &format!("{ri}/{}/mask", st.name),
                    format!("{step}/{row}"),
                    || mask_image(m, st, row),
                );
                let r = ui.image((id, size)).rect;
                drawn.push(DrawnTile {
                    run: ri,
                    stack: Some(st.name.clone()),
                    kind: TileKind::Mask,
                    rect: r,
                });
                let opacity = state.heat_opacity;
                let id = textures.get(
                    ctx,
                    &format!("{ri}/{}/heat", st.name),
                    format!("{step}/{row}/{opacity}/{}", base.is_some()),
                    || heatmap_image(m, st, base.as_ref(), opacity, row),
                );
                let hsize = Vec2::new(TILE_W, TILE_W * lh as f32 / lw.max(1) as f32);
                let r = ui.image((id, hsize)).rect;
                drawn.push(DrawnTile {
                    run: ri,
                    stack: Some(st.name.clone()),
                    kind: TileKind::Heatmap,
                    rect: r,
                });
                ui.end_row();
            }
        });
}

/// A bar chart of one value per step for each series; the shown step is highlighted. Returns
/// the step clicked, if any.
fn chart(
    ui: &mut egui::Ui,
    title: &str,
    series: &[Series],
    unit: &str,
    step: usize,
) -> Option<usize> {
    ui.horizontal(|ui| {
        ui.label(egui::RichText::new(title).strong());
        for (i, s) in series.iter().enumerate() {
            ui.colored_label(RUN_COLOURS[i % RUN_COLOURS.len()], &s.label);
        }
    });
    let steps = series.iter().map(|s| s.values.len()).max().unwrap_or(0);
    let size = Vec2::new(ui.available_width(), ui.available_height().max(60.0));
    let (resp, painter) = ui.allocate_painter(size, Sense::click());
    let rect = resp.rect;
    let visuals = ui.visuals();
    painter.rect_filled(rect, 2.0, visuals.extreme_bg_color);
    if steps == 0 {
        return None;
    }
    let max = series
        .iter()
        .flat_map(|s| s.values.iter().flatten())
        .fold(0f64, |m, &v| m.max(v));
    let font = egui::FontId::proportional(11.0);
    let text_colour = visuals.text_color();
    let plot = Rect::from_min_max(
        rect.min + Vec2::new(4.0, 16.0),
        rect.max - Vec2::new(4.0, 14.0),
    );
    let slot = plot.width() / steps as f32;
    // The shown step's slot.
    let sx = plot.left() + slot * step.min(steps - 1) as f32;
    painter.rect_filled(
        Rect::from_min_max(
            egui::pos2(sx, plot.top()),
            egui::pos2(sx + slot, plot.bottom()),
        ),
        0.0,
        visuals.selection.bg_fill.gamma_multiply(0.5),
    );
    if max > 0.0 {
        let n = series.len().max(1) as f32;
        let bar = (slot * 0.8 / n).max(1.0);
        for (si, s) in series.iter().enumerate() {
            let colour = RUN_COLOURS[si % RUN_COLOURS.len()];
            for (i, v) in s.values.iter().enumerate() {
                let Some(v) = v else { continue };
                let x = plot.left() + slot * i as f32 + slot * 0.1 + bar * si as f32;
                let h = plot.height() * (*v / max) as f32;
                painter.rect_filled(
                    Rect::from_min_max(
                        egui::pos2(x, plot.bottom() - h),
                        egui::pos2(x + bar, plot.bottom()),
                    ),
                    0.0,
                    colour,
                );
            }
        }
        painter.text(
            rect.left_top() + Vec2::new(4.0, 1.0),
            egui::Align2::LEFT_TOP,
            format!("max {}", si(max, unit)),
            font.clone(),
            text_colour,
        );
    }
    painter.line_segment(
        [plot.left_bottom(), plot.right_bottom()],
        Stroke::new(1.0, text_colour),
    );
    painter.text(
        egui::pos2(plot.left(), rect.bottom() - 1.0),
        egui::Align2::LEFT_BOTTOM,
        "step 1",
        font.clone(),
        text_colour,
    );
    painter.text(
        egui::pos2(plot.right(), rect.bottom() - 1.0),
        egui::Align2::RIGHT_BOTTOM,
        format!("{steps}"),
        font,
        text_colour,
    );
    let clicked = resp.clicked() || resp.dragged();
    clicked
        .then(|| resp.interact_pointer_pos())
        .flatten()
        .map(|p| (((p.x - plot.left()) / slot).floor().max(0.0) as usize).min(steps - 1))
}

/// `v` with an SI prefix (k, M, G, T) and 3 significant digits, e.g. "4.10 TFLOPs"; `ms` is
/// never prefixed.
fn si(v: f64, unit: &str) -> String {
    let (scaled, prefix) = if unit == "ms" {
        (v, "")
    } else {
        [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")]
            .into_iter()
            .find(|(s, _)| v >= *s)
            .map_or((v, ""), |(s, p)| (v / s, p))
    };
    let digits = if scaled >= 100.0 {
        0
    } else if scaled >= 10.0 {
        1
    } else {
        2
    };
    format!("{scaled:.digits$} {prefix}{unit}")
}

impl eframe::App for ViewerApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.draw(ui);
    }
}

#[cfg(test)]
mod tests {
    use super::si;

    #[test]
    fn si_prefixes() {
        assert_eq!(si(4.1e12, "FLOPs"), "4.10 TFLOPs");
        assert_eq!(si(123.4e6, "FLOPs"), "123 MFLOPs");
        assert_eq!(si(12.34e9, "FLOPs"), "12.3 GFLOPs");
        assert_eq!(si(5.0, "FLOPs"), "5.00 FLOPs");
        assert_eq!(si(1234.0, "ms"), "1234 ms");
    }
}
