//! The viewer (feature `viewer`) on saved tiny runs: the dump format, an offscreen render of the
//! real UI on lavapipe (screenshot under the target folder, pixel statistics over the mask and
//! heatmap tiles), the keyboard, live mode on a worker thread, and bad input.
#![cfg(feature = "viewer")]
mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use atedm::pipeline::dump::RunData;
use atedm::pipeline::generate::Record;
use atedm::pipeline::job::{run_job, GenerateJob};
use atedm::prune::budget::PruneTarget;
use atedm::viewer::app::{DrawnTile, TileKind};
use atedm::viewer::headless::Headless;
use atedm::viewer::live::{spawn, LiveRun, LiveStatus};
use atedm::viewer::model::{KEPT_RGB, PRUNED_RGB};
use atedm::viewer::ViewerApp;
use atedm::Pruning;
use common::*;
use eframe::egui;

/// The tiny pipeline at 96x64, 4 steps, f32, the fixture's initial latents.
fn args(out: &Path, dump: Option<PathBuf>, prune: PruneTarget) -> GenerateJob {
    GenerateJob {
        prune,
        overwrite: true,
        save_run: dump,
        ..pipeline_job(out)
    }
}

fn atedm_half() -> PruneTarget {
    PruneTarget::Fixed(Pruning::atedm(0.5).unwrap())
}

fn run(ctx: &atedm::GpuContext, job: &GenerateJob) -> atedm::Result<()> {
    run_job(ctx, job, Record::Nothing, |_| {
        std::ops::ControlFlow::Continue(())
    })
    .map(|_| ())
}

/// Under the target folder (`cargo clean` removes it); each run of the tests replaces it.
fn work_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("viewer-runs")
}

/// Two saved runs, made once per test binary: (AT-EDM keep 0.5, full).
fn saved() -> &'static (PathBuf, PathBuf) {
    static RUNS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    RUNS.get_or_init(|| {
        let dir = work_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let (pruned, full) = (dir.join("pruned"), dir.join("full"));
        let t = std::time::Instant::now();
        run(
            ctx(),
            &args(&dir.join("pruned.png"), Some(pruned.clone()), atedm_half()),
        )
        .unwrap();
        run(
            ctx(),
            &args(
                &dir.join("full.png"),
                Some(full.clone()),
                Default::default(),
            ),
        )
        .unwrap();
        eprintln!("two tiny runs saved in {:.1} s", t.elapsed().as_secs_f64());
        (pruned, full)
    })
}

#[test]
fn saved_runs_have_steps_masks_latents_timing_and_flops() {
    let (pruned_dir, full_dir) = saved();
    let pruned = RunData::load(pruned_dir).unwrap();
    let full = RunData::load(full_dir).unwrap();
    for r in [&pruned, &full] {
        let i = &r.info;
        assert_eq!((i.steps, i.width, i.height), (4, 96, 64));
        assert_eq!(i.latent_shape, [1, 4, 8, 12]);
        assert_eq!(i.step_ms.len(), 4);
        assert!(i.step_ms.iter().all(|&m| m > 0.0), "{:?}", i.step_ms);
        assert_eq!(r.steps.len(), 4);
        for s in &r.steps {
            assert_eq!(s.latents.as_ref().unwrap().len(), 4 * 8 * 12);
            assert_eq!(s.denoised.as_ref().unwrap().len(), 4 * 8 * 12);
        }
        // The last step's prediction is the final latents (sigma after it is 0).
        let last = &r.steps[3];
        assert_eq!(last.latents, last.denoised);
        assert_eq!(r.image.as_ref().unwrap().pixels.len(), 96 * 64 * 3);
    }
    // The image is the generated PNG.
    let png = atedm::pipeline::dump::read_png_rgb8(&work_dir().join("pruned.png")).unwrap();
    assert_eq!(pruned.image.as_ref().unwrap(), &png);
    // FLOPs: full steps all cost the full model; pruned steps less, DSAP's early step more.
    let (pf, ff) = (&pruned.info.step_flops, &full.info.step_flops);
    assert!(ff.iter().all(|&f| f == full.info.full_flops));
    assert_eq!(pruned.info.early_steps, 1);
    assert!(
        pf[0] > pf[1] && pf[1] == pf[3] && pf[0] < ff[0],
        "{pf:?} vs {ff:?}"
    );
    assert!(pruned.info.step_overhead_flops.iter().all(|&o| o > 0.0));
    // Masks: every stack marked pruned has one, kept indices fit the grid, scores sum to 1.
    let mut count = 0;
    for (i, step) in pruned.steps.iter().enumerate() {
        let want: Vec<&str> = pruned
            .info
            .stacks
            .iter()
            .filter(|s| s.pruned[i])
            .map(|s| s.name.as_str())
            .collect();
        let got: Vec<&str> = step.masks.iter().map(|m| m.stack.as_str()).collect();
        assert_eq!(got, want, "step {i}");
        for m in &step.masks {
            let st = pruned.info.stack(&m.stack).unwrap();
            let n = st.grid[0] * st.grid[1];
            assert_eq!(m.scores_shape, [2, n]);
            assert_eq!(m.kept_shape, [2, n.div_ceil(2)]);
            let sum: f32 = m.scores[n..].iter().sum();
            assert!((sum - 1.0).abs() < 1e-3, "{sum}");
            count += 1;
        }
    }
    assert!(count > pruned.steps.len(), "{count} masks");
    assert!(
        pruned.steps[0].masks.len() < pruned.steps[3].masks.len(),
        "DSAP protects some stacks in step 0"
    );
    // A full run has no masks and no step files.
    assert!(full.steps.iter().all(|s| s.masks.is_empty()));
    assert!(!full_dir.join("step_000.safetensors").exists());
    assert!(pruned_dir.join("step_003.safetensors").is_file());
}

/// Pixels of `rgba` (`w` wide) inside `r` (points; `ppp` pixels per point), insetting 2 px
/// against filtering at the tile's border.
fn pixels_in(rgba: &[u8], w: usize, r: egui::Rect, ppp: f32) -> Vec<[u8; 3]> {
    let (x0, y0) = (
        (r.min.x * ppp).ceil() as usize + 2,
        (r.min.y * ppp).ceil() as usize + 2,
    );
    let (x1, y1) = (
        (r.max.x * ppp).floor() as usize - 2,
        (r.max.y * ppp).floor() as usize - 2,
    );
    let mut out = Vec::new();
    for y in y0..y1 {
        for x in x0..x1 {
            let p = (y * w + x) * 4;
            out.push([rgba[p], rgba[p + 1], rgba[p + 2]]);
        }
    }
    out
}

fn near(a: [u8; 3], b: [u8; 3]) -> bool {
    a.iter().zip(&b).all(|(x, y)| x.abs_diff(*y) <= 6)
}

fn luma_std(px: &[[u8; 3]]) -> f64 {
    let l: Vec<f64> = px
        .iter()
        .map(|p| 0.299 * p[0] as f64 + 0.587 * p[1] as f64 + 0.114 * p[2] as f64)
        .collect();
    let mean = l.iter().sum::<f64>() / l.len() as f64;
    (l.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / l.len() as f64).sqrt()
}

#[test]
fn headless_render_shows_masks_and_heatmaps_side_by_side() {
    let (pruned_dir, full_dir) = saved();
    let runs = atedm::viewer::load_runs(&[pruned_dir.clone(), full_dir.clone()]).unwrap();
    let mut app = ViewerApp::new(runs, None);
    let (w, h, ppp) = (1400u32, 1100u32, 1.0f32);
    let mut hl = Headless::new(ctx(), w, h, ppp).unwrap();
    let t = std::time::Instant::now();
    // First frames lay out; End shows the last step (all stacks pruned there).
    hl.frame(vec![], |ui| app.draw(ui)).unwrap();
    hl.time += 0.1;
    hl.frame(vec![key(egui::Key::End)], |ui| app.draw(ui))
        .unwrap();
    hl.time += 0.1;
    hl.frame(vec![], |ui| app.draw(ui)).unwrap();
    assert_eq!(app.state.step, 3);
    let rgba = hl.read_rgba().unwrap();
    eprintln!(
        "3 frames rendered and read in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("viewer-screenshot.png");
    std::fs::write(
        &shot,
        atedm::io::png_rgba8_bytes(w as usize, h as usize, &rgba).unwrap(),
    )
    .unwrap();
    eprintln!("screenshot: {}", shot.display());

    let visible = |t: &&DrawnTile| app.central_rect.contains_rect(t.rect);
    let tiles: Vec<&DrawnTile> = app.drawn.iter().filter(visible).collect();
    let masks: Vec<&&DrawnTile> = tiles.iter().filter(|t| t.kind == TileKind::Mask).collect();
    let heats: Vec<&&DrawnTile> = tiles
        .iter()
        .filter(|t| t.kind == TileKind::Heatmap)
        .collect();
    assert!(
        !masks.is_empty() && masks.len() == heats.len(),
        "{:?}",
        app.drawn
    );
    assert!(
        masks.iter().all(|t| t.run == 0),
        "the full run has no masks"
    );
    assert!(
        tiles
            .iter()
            .any(|t| t.run == 1 && t.kind == TileKind::Image),
        "the full run is drawn next to the pruned one"
    );
    let (mut kept, mut pruned, mut total) = (0usize, 0usize, 0usize);
    for t in &masks {
        let px = pixels_in(&rgba, w as usize, t.rect, ppp);
        kept += px.iter().filter(|&&p| near(p, KEPT_RGB)).count();
        pruned += px.iter().filter(|&&p| near(p, PRUNED_RGB)).count();
        total += px.len();
    }
    let heat: Vec<[u8; 3]> = heats
        .iter()
        .flat_map(|t| pixels_in(&rgba, w as usize, t.rect, ppp))
        .collect();
    let heat_std = luma_std(&heat);
    let all: Vec<[u8; 3]> = rgba.chunks(4).map(|p| [p[0], p[1], p[2]]).collect();
    let screen_std = luma_std(&all);
    eprintln!(
        "{} mask tiles: {total} px, kept colour {:.1}%, pruned colour {:.1}%; {} heatmap tiles: luma std {heat_std:.1}; whole screen luma std {screen_std:.1}",
        masks.len(),
        100.0 * kept as f64 / total as f64,
        100.0 * pruned as f64 / total as f64,
        heats.len()
    );
    // keep ratio 0.5 of 6 tokens: 3 kept, 3 pruned in every mask.
    assert!(
        kept * 4 > total && pruned * 4 > total,
        "kept {kept}, pruned {pruned} of {total}"
    );
    assert!(
        kept + pruned > total * 9 / 10,
        "masks are only the two colours"
    );
    assert!(heat_std > 8.0, "heatmaps vary: luma std {heat_std}");
    assert!(screen_std > 8.0, "not blank: luma std {screen_std}");
    for kind in [TileKind::Image, TileKind::Preview] {
        let t = tiles.iter().find(|t| t.kind == kind && t.run == 0).unwrap();
        let s = luma_std(&pixels_in(&rgba, w as usize, t.rect, ppp));
        assert!(s > 2.0, "{kind:?} is not flat: {s}");
    }
}

fn key(k: egui::Key) -> egui::Event {
    egui::Event::Key {
        key: k,
        physical_key: None,
        pressed: true,
        repeat: false,
        modifiers: egui::Modifiers::NONE,
    }
}

#[test]
fn keyboard_space_plays_and_arrows_step() {
    let (pruned_dir, _) = saved();
    let mut app = ViewerApp::new(vec![RunData::load(pruned_dir).unwrap()], None);
    let mut hl = Headless::new(ctx(), 640, 480, 1.0).unwrap();
    let press = |hl: &mut Headless, keys: &[egui::Key], app: &mut ViewerApp| {
        hl.time += 0.01;
        hl.frame(keys.iter().map(|&k| key(k)).collect(), |ui| app.draw(ui))
            .unwrap();
    };
    press(&mut hl, &[], &mut app);
    assert_eq!((app.state.step, app.state.playing), (0, false));
    press(&mut hl, &[egui::Key::ArrowRight], &mut app);
    assert_eq!(app.state.step, 1);
    press(&mut hl, &[egui::Key::ArrowRight; 5], &mut app);
    assert_eq!(app.state.step, 3, "clamped at the last step");
    press(&mut hl, &[egui::Key::ArrowLeft], &mut app);
    assert_eq!(app.state.step, 2);
    press(&mut hl, &[egui::Key::ArrowLeft; 4], &mut app);
    assert_eq!(app.state.step, 0, "clamped at the first step");
    press(&mut hl, &[egui::Key::End], &mut app);
    assert_eq!(app.state.step, 3);
    press(&mut hl, &[egui::Key::Home], &mut app);
    assert_eq!(app.state.step, 0);
    // Space plays (4 steps per second by default), space again pauses.
    press(&mut hl, &[egui::Key::Space], &mut app);
    assert!(app.state.playing);
    hl.time += 0.3;
    press(&mut hl, &[], &mut app);
    assert_eq!(app.state.step, 1, "advanced while playing");
    press(&mut hl, &[egui::Key::Space], &mut app);
    assert!(!app.state.playing);
    hl.time += 1.0;
    press(&mut hl, &[], &mut app);
    assert_eq!(app.state.step, 1, "paused");
}

#[test]
fn live_mode_streams_steps_while_the_ui_keeps_rendering() {
    let (pruned_dir, _) = saved();
    let saved = RunData::load(pruned_dir).unwrap();
    let out = work_dir().join("live.png");
    let gpu = atedm::gpu::ContextOptions::from_env();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (rx, worker) = spawn(args(&out, None, atedm_half()), gpu, stop, || {});
    let mut app = ViewerApp::new(vec![], Some(LiveRun::new(rx, worker)));
    let mut hl = Headless::new(ctx(), 800, 600, 1.0).unwrap();
    let t = std::time::Instant::now();
    let (mut frames, mut frames_running, mut seen) = (0, 0, Vec::new());
    loop {
        hl.time = t.elapsed().as_secs_f64();
        hl.frame(vec![], |ui| app.draw(ui)).unwrap();
        frames += 1;
        let live = app.live.as_ref().unwrap();
        if let LiveStatus::Running { done, .. } = live.status {
            frames_running += 1;
            if seen.last() != Some(&done) {
                seen.push(done);
            }
        }
        match &live.status {
            LiveStatus::Done => break,
            LiveStatus::Failed(e) => panic!("live run failed: {e}"),
            _ => {}
        }
        assert!(t.elapsed().as_secs() < 600, "live run too slow");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    eprintln!(
        "live run: {frames} frames in {:.1} s, {frames_running} while running; steps seen {seen:?}",
        t.elapsed().as_secs_f64()
    );
    assert!(frames_running > 1, "the UI rendered while the worker ran");
    let live = app.live.as_ref().unwrap().run.as_ref().unwrap();
    assert_eq!(live.steps.len(), 4);
    assert_eq!(live.info.step_ms.len(), 4);
    assert!(live.image.is_some());
    assert_eq!(app.state.step, 3, "the cursor followed the live run");
    // The same request gives the same masks as the saved run.
    for (a, b) in live.steps.iter().zip(&saved.steps) {
        let ka: Vec<_> = a.masks.iter().map(|m| (&m.stack, &m.kept)).collect();
        let kb: Vec<_> = b.masks.iter().map(|m| (&m.stack, &m.kept)).collect();
        assert_eq!(ka, kb);
    }
    assert!(out.is_file(), "live mode writes the image as generate does");
}

#[test]
fn bad_input_gives_clear_errors() {
    let dir = work_dir().join("bad");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let view = |paths: &[&Path]| -> String {
        let mut argv = vec!["view".to_string()];
        argv.extend(paths.iter().map(|p| path_str(p)));
        atedm_cli(&argv).error().to_string()
    };
    let e = view(&[]);
    assert!(e.contains("one or two folders"), "{e}");
    let e = view(&[&dir.join("missing")]);
    assert!(e.contains("no such folder"), "{e}");
    let e = view(&[&dir]);
    assert!(e.contains("no run.json"), "{e}");
    std::fs::write(dir.join("run.json"), "{ not json").unwrap();
    let e = view(&[&dir]);
    assert!(e.contains("run.json"), "{e}");
    // A valid run.json with its steps removed.
    let (pruned_dir, _) = saved();
    let text = std::fs::read_to_string(pruned_dir.join("run.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["steps"] = 0.into();
    std::fs::write(dir.join("run.json"), v.to_string()).unwrap();
    let e = view(&[&dir]);
    assert!(e.contains("no steps"), "{e}");
    // Masks promised by run.json but missing.
    std::fs::write(dir.join("run.json"), &text).unwrap();
    let e = view(&[&dir]);
    assert!(
        e.contains("step_000.safetensors") && e.contains("missing"),
        "{e}"
    );
    let e = view(&[&dir, &dir, &dir]);
    assert!(e.contains("one or two"), "{e}");
    let e = RunData::load(&pruned_dir.join("image.png"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a folder"), "{e}");
}

/// `atedm view --screenshot`: the same UI rendered offscreen to a PNG (no window), at a chosen
/// step; a step past the runs and a bad size are errors.
#[test]
fn view_screenshot_writes_a_png() {
    let (pruned_dir, full_dir) = saved();
    let out = work_dir().join("shot.png");
    let view = |step: Option<usize>, size: &str| {
        let mut argv = vec![
            "view".to_string(),
            path_str(pruned_dir),
            path_str(full_dir),
            "--screenshot".into(),
            path_str(&out),
            "--size".into(),
            size.into(),
        ];
        if let Some(s) = step {
            argv.extend(["--step".to_string(), s.to_string()]);
        }
        atedm_cli(&argv)
    };
    let _ = std::fs::remove_file(&out);
    view(Some(1), "640x480").ok();
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&out).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (640, 480));
    let px: Vec<[u8; 3]> = buf[..info.buffer_size()]
        .chunks_exact(4)
        .map(|p| [p[0], p[1], p[2]])
        .collect();
    assert!(luma_std(&px) > 10.0, "the screenshot is blank");
    let run = view(Some(99), "640x480");
    let e = run.error();
    assert!(e.contains("--step 99"), "{e}");
    let run = view(None, "640by480");
    let e = run.error();
    assert!(e.contains("--size"), "{e}");
}

/// A live run whose stop flag is set (the window closed) ends after its current step with
/// `cancelled` and writes no image.
#[test]
fn a_stopped_live_run_writes_nothing() {
    let out = work_dir().join("stopped.png");
    let _ = std::fs::remove_file(&out);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gpu = atedm::gpu::ContextOptions::from_env();
    let (rx, worker) = spawn(args(&out, None, atedm_half()), gpu, stop.clone(), || {});
    let mut live = LiveRun::new(rx, worker).stop_on_drop(stop.clone());
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let t = std::time::Instant::now();
    while live.growing() {
        live.poll();
        assert!(t.elapsed().as_secs() < 300, "the stopped run did not end");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(live.status, LiveStatus::Failed("cancelled".into()));
    assert!(!out.exists(), "a stopped run writes no image");
}
