//! The whole text-to-image path against diffusers' StableDiffusionXLPipeline on the tiny
//! pipeline fixture (tools/make_pipeline_fixtures.py): token ids, prompt embeddings, final
//! latents and the decoded image, for CFG with a negative prompt, an absent negative prompt
//! (zero embeddings) and guidance rescale.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use crate::common::*;
use atedm::model::weights::read_all_f32;
use atedm::pipeline::generate::{LoadOptions, Record, SdxlPipeline};
use atedm::pipeline::job::{run_job, GenerateJob, JobOutput};
use atedm::prune::budget::PruneTarget;
use atedm::prune::tome::TomeSettings;
use atedm::prune::Pruning;
use atedm::DType;

fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/pipeline")
        .join(p)
}

fn pipeline(dtype: DType) -> SdxlPipeline {
    SdxlPipeline::load(
        ctx(),
        &fixture("sdxl-tiny"),
        &LoadOptions {
            dtype,
            vae_dtype: None,
            config: None,
        },
    )
    .unwrap()
}

#[test]
fn token_ids_match_transformers() {
    let p = pipeline(DType::F32);
    let (_, _, meta) = pipeline_request("cfg");
    let ids = &meta["token_ids"];
    let want = |k: &str| -> Vec<u32> {
        ids[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect()
    };
    let prompt = meta["prompt"].as_str().unwrap();
    let negative = meta["negative_prompt"].as_str().unwrap();
    assert_eq!(
        p.tokenizer.encode(prompt).unwrap().ids,
        want("prompt_ids_tokenizer")
    );
    assert_eq!(
        p.tokenizer_2.encode(prompt).unwrap().ids,
        want("prompt_ids_tokenizer_2")
    );
    assert_eq!(
        p.tokenizer.encode(negative).unwrap().ids,
        want("negative_ids_tokenizer")
    );
    assert_eq!(
        p.tokenizer_2.encode(negative).unwrap().ids,
        want("negative_ids_tokenizer_2")
    );
}

#[test]
fn generation_matches_diffusers_f32() {
    let p = pipeline(DType::F32);
    for run in ["cfg", "empty_negative", "rescale"] {
        let (req, refs, _) = pipeline_request(run);
        let out = p.generate(ctx(), &req, |_, _| {}).unwrap();
        assert_matches_pipeline_reference(&out, &refs, run);
    }
}

/// An RGB8 96x64 PNG's pixels and its `parameters` text.
fn read_png(path: &Path) -> (Vec<u8>, String) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (96, 64));
    assert_eq!(info.color_type, png::ColorType::Rgb);
    let info = reader.info();
    let latin1 = info
        .uncompressed_latin1_text
        .iter()
        .find(|t| t.keyword == "parameters")
        .map(|t| t.text.clone());
    let utf8 = info
        .utf8_text
        .iter()
        .find(|t| t.keyword == "parameters")
        .map(|t| t.get_text().unwrap());
    (buf, latin1.or(utf8).expect("parameters chunk"))
}

/// The "cfg" fixture run as a job writing `out`.
fn job(out: &Path) -> GenerateJob {
    pipeline_job(out)
}

fn run(job: &GenerateJob) -> atedm::Result<JobOutput> {
    run_job(ctx(), job, Record::Nothing, |_| ControlFlow::Continue(()))
}

#[test]
fn generate_job_writes_png_and_intermediates() {
    let dir = std::env::temp_dir().join(format!("atedm-generate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let png_path = dir.join("out.png");
    let inter = dir.join("inter.safetensors");
    let args = GenerateJob {
        save_intermediates: Some(inter.clone()),
        ..job(&png_path)
    };
    run(&args).unwrap();
    // The PNG: right size, RGB8, the parameters in a text chunk, pixels = clamp(image/2+0.5).
    let (buf, params) = read_png(&png_path);
    assert!(
        params.contains("astronaut") && params.contains("Steps: 4"),
        "{params}"
    );
    let refs = read_all_f32(&fixture("cfg.safetensors")).unwrap();
    let (w, h) = (96, 64);
    let image = &refs["image"].1;
    let mut max_diff = 0i32;
    for p in 0..w * h {
        for c in 0..3 {
            let want = ((image[c * w * h + p] * 0.5 + 0.5).clamp(0.0, 1.0) * 255.0).round() as i32;
            max_diff = max_diff.max((buf[p * 3 + c] as i32 - want).abs());
        }
    }
    assert!(
        max_diff <= 1,
        "pixels differ from diffusers' image by {max_diff} levels"
    );
    // Intermediates hold what the issue names, matching diffusers.
    let got = read_all_f32(&inter).unwrap();
    for k in [
        "prompt_embeds",
        "negative_prompt_embeds",
        "pooled_prompt_embeds",
        "negative_pooled_prompt_embeds",
        "latents_final",
        "image",
    ] {
        assert_eq!(got[k].0, refs[k].0, "{k} shape");
        assert_close(&got[k].1, &refs[k].1, 2e-3, k);
    }
    // No silent overwrite; the file is left as it was.
    let before = std::fs::read(&png_path).unwrap();
    let e = run(&job(&png_path)).err().unwrap().to_string();
    assert!(e.contains("exists") && e.contains("--overwrite"), "{e}");
    assert_eq!(std::fs::read(&png_path).unwrap(), before);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_requests_are_clear_errors_without_output() {
    let dir = std::env::temp_dir().join(format!("atedm-generate-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("never.png");
    let check = |args: GenerateJob, want: &str| {
        let e = run(&args).err().unwrap().to_string();
        assert!(e.contains(want), "expected '{want}' in: {e}");
        assert!(!out.exists(), "no output after: {e}");
    };
    check(
        GenerateJob {
            width: Some(100),
            latents: None,
            ..job(&out)
        },
        "multiple of 32",
    );
    check(
        GenerateJob {
            steps: Some(0),
            ..job(&out)
        },
        "steps must be at least 1",
    );
    check(
        GenerateJob {
            latents: Some(fixture("tokens.json")),
            ..job(&out)
        },
        "tokens.json",
    );
    // Not a pipeline folder (a UNet folder) and a pipeline missing a part.
    let unet_only = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/unet/tiny-a");
    check(
        GenerateJob {
            model: Some(unet_only),
            ..job(&out)
        },
        "model_index.json",
    );
    let partial = dir.join("partial");
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::copy(
        fixture("sdxl-tiny/model_index.json"),
        partial.join("model_index.json"),
    )
    .unwrap();
    check(
        GenerateJob {
            model: Some(partial),
            ..job(&out)
        },
        "missing model part 'tokenizer/'",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn generation_f16_matches_diffusers_within_f16_bounds() {
    // Text encoders and UNet store activations in f16 (f32 inside kernels); the VAE stays f32
    // (force_upcast). Errors compound over 4 steps through the latents; 2e-2 of max|ref| is the
    // bound (measured in the README).
    let p = pipeline(DType::F16);
    assert_eq!(p.vae_dtype, DType::F32);
    let (req, refs, _) = pipeline_request("cfg");
    let out = p.generate(ctx(), &req, |_, _| {}).unwrap();
    let r = assert_close(
        &download(&out.embeds.prompt_embeds),
        &refs["prompt_embeds"].1,
        5e-3,
        "f16 prompt_embeds",
    );
    eprintln!("f16 prompt_embeds: {r:.2e}");
    let r = assert_close(
        &out.latents_final,
        &refs["latents_final"].1,
        2e-2,
        "f16 latents_final",
    );
    eprintln!("f16 latents_final: {r:.2e}");
    let r = assert_close(&out.image, &refs["image"].1, 2e-2, "f16 image");
    eprintln!("f16 image: {r:.2e}");
}

#[test]
fn vae_tiled_decode_matches_diffusers() {
    // tools/make_vae_tiling_fixture.py: diffusers' tiled_decode with 4-latent (32 px) tiles,
    // overlap factor 0.25, on latents [1, 4, 12, 16]; tiles are normalized separately, so the
    // tiled image differs from the whole one (by up to 1.7 here) and this checks the tiling.
    let p = pipeline(DType::F32);
    let refs = read_all_f32(&fixture("vae_tiled.safetensors")).unwrap();
    let latents = &refs["latents"].1;
    let shape = [1, 4, 12, 16];
    let tiled = p
        .vae
        .decode_tiled(ctx(), latents, shape, 4, DType::F32)
        .unwrap();
    let r = assert_close(&tiled, &refs["image_tiled"].1, 2e-3, "tiled decode");
    eprintln!("tiled decode: {r:.2e}");
    let whole = p
        .vae
        .decode_host(ctx(), latents, shape, DType::F32)
        .unwrap();
    assert_close(&whole, &refs["image_whole"].1, 2e-3, "whole decode");
    // The SD-XL VAE at 1024 px: its largest activation (the 256-channel upsampled map at
    // 1024x1024) is 1 GiB in f32, so decode_host tiles it on adapters with smaller bindings.
    let sdxl = atedm::model::vae::VaeConfig::sdxl();
    assert_eq!(
        sdxl.largest_activation_bytes(128, 128, DType::F32),
        256 * 1024 * 1024 * 4
    );
    assert_eq!(
        sdxl.largest_activation_bytes(32, 32, DType::F32),
        256 * 256 * 256 * 4
    );
}

#[test]
fn sdxl_vae_decodes_1024px_within_the_binding_limit() {
    // A planning context validates every op (binding sizes included) and counts allocations
    // without running: the SD-XL VAE decoding 1024x1024 in f32 must go through (tiled).
    use atedm::gpu::{ContextOptions, GpuContext};
    use atedm::model::vae::{VaeConfig, VaeDecoder};
    use atedm::model::weights::WeightLoader;
    let c = GpuContext::new(&ContextOptions {
        plan_only: true,
        ..ContextOptions::from_env()
    })
    .unwrap();
    let mut l = WeightLoader::plan(&c, DType::F32);
    let vae = VaeDecoder::build(&VaeConfig::sdxl(), &mut l);
    l.finish().unwrap();
    let image = vae
        .decode_host(&c, &vec![0.0; 4 * 128 * 128], [1, 4, 128, 128], DType::F32)
        .unwrap();
    assert_eq!(image.len(), 3 * 1024 * 1024);
    let peak = c.pool_stats().peak_bytes;
    eprintln!(
        "SD-XL VAE 1024 px f32 tiled decode: peak {:.2} GiB",
        peak as f64 / (1u64 << 30) as f64
    );
}

#[test]
fn generate_with_atedm_dumps_masks() {
    let dir = std::env::temp_dir().join(format!("atedm-generate-prune-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let masks = dir.join("masks");
    let args = GenerateJob {
        save_run: Some(masks.clone()),
        prune: PruneTarget::Fixed(Pruning::atedm(0.5).unwrap()),
        ..job(&dir.join("out.png"))
    };
    run(&args).unwrap();
    // 4 steps, DSAP tau 0.25: step 0 leaves the protected stacks alone, later steps prune all
    // prunable stacks (the tiny pipeline's UNet is tiny-a-shaped: level-3 stacks only).
    let step0 = read_all_f32(&masks.join("step_000.safetensors")).unwrap();
    let step3 = read_all_f32(&masks.join("step_003.safetensors")).unwrap();
    assert!(
        step3.len() > step0.len() && !step0.is_empty(),
        "{} vs {}",
        step0.len(),
        step3.len()
    );
    let (shape, scores) = &step3["score.mid_block.attentions.0"];
    assert_eq!(shape[0], 2, "CFG batch");
    let n = shape[1];
    let sum: f32 = scores[..n].iter().sum();
    assert!((sum - 1.0).abs() < 1e-3, "G-WPR scores sum to 1: {sum}");
    assert!(masks.join("step_003_mid_block.attentions.0.png").is_file());
    // The pruned image differs from the full one but is a valid image.
    assert!(dir.join("out.png").is_file());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn generate_with_tome_merges_and_records_the_setting() {
    let dir = std::env::temp_dir().join(format!("atedm-generate-tome-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let prune = PruneTarget::Fixed(
        Pruning::tome(TomeSettings {
            ratio: 0.5,
            merge_mlp: true,
            ..Default::default()
        })
        .unwrap(),
    );
    let full = dir.join("full.png");
    run(&job(&full)).unwrap();
    let merged = dir.join("tome.png");
    let args = GenerateJob {
        prune: prune.clone(),
        ..job(&merged)
    };
    run(&args).unwrap();
    let ((a, _), (b, params)) = (read_png(&full), read_png(&merged));
    let diff = a.iter().zip(&b).filter(|(x, y)| x != y).count();
    assert!(
        diff > a.len() / 10,
        "ToMe changes the image: {diff} bytes differ"
    );
    assert!(
        params.contains("Pruning: ToMe, merge ratio 0.5000 around attn1+mlp"),
        "{params}"
    );
    // ToMe has no token masks: the dump has the run, the step latents and the image only.
    let masks = dir.join("masks");
    run(&GenerateJob {
        save_run: Some(masks.clone()),
        overwrite: true,
        prune,
        ..job(&merged)
    })
    .unwrap();
    let saved = atedm::pipeline::dump::RunData::load(&masks).unwrap();
    assert_eq!(saved.info.prune_mode, "tome");
    assert!(saved
        .steps
        .iter()
        .all(|s| s.masks.is_empty() && s.denoised.is_some()));
    assert!(!masks.join("step_000.safetensors").exists());
    assert_eq!(saved.image.unwrap().pixels, read_png(&merged).0);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Any Unicode prompt (emoji, Japanese, Russian) generates and is stored losslessly in the PNG
/// (an iTXt chunk where the text is not Latin-1); the CLI takes it too.
#[test]
fn unicode_prompts_are_stored_losslessly() {
    let dir = std::env::temp_dir().join(format!("atedm-generate-utf8-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let prompt = "a large red circle at the center 🙂, 赤い丸, красный круг";
    let out = dir.join("utf8.png");
    run(&GenerateJob {
        prompt: prompt.into(),
        ..job(&out)
    })
    .unwrap();
    let (_, params) = read_png(&out);
    assert!(params.starts_with(prompt), "{params}");
    // Latin-1 text stays in a tEXt chunk (what most image tools read).
    let plain = dir.join("plain.png");
    run(&GenerateJob {
        prompt: "café crème".into(),
        ..job(&plain)
    })
    .unwrap();
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(&plain).unwrap(),
    ));
    let reader = decoder.read_info().unwrap();
    assert!(reader.info().utf8_text.is_empty());
    assert!(reader.info().uncompressed_latin1_text[0]
        .text
        .starts_with("café crème"));
    // The command line, end to end.
    let cli_out = dir.join("cli.png");
    let (req, _, _) = pipeline_request("cfg");
    atedm_cli(&[
        "generate".to_string(),
        "--model".into(),
        path_str(&fixture("sdxl-tiny")),
        "--prompt".into(),
        prompt.into(),
        "--steps".into(),
        "2".into(),
        "--width".into(),
        req.width.to_string(),
        "--height".into(),
        req.height.to_string(),
        "--output".into(),
        path_str(&cli_out),
    ])
    .ok();
    assert!(read_png(&cli_out).1.starts_with(prompt));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A step callback that asks to stop ends the run with `Cancelled` and writes nothing.
#[test]
fn a_cancelled_job_writes_nothing() {
    let dir = std::env::temp_dir().join(format!("atedm-generate-cancel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("never.png");
    let runs = dir.join("run");
    let args = GenerateJob {
        save_run: Some(runs.clone()),
        save_intermediates: Some(dir.join("never.safetensors")),
        ..job(&out)
    };
    let mut steps = 0;
    let e = run_job(ctx(), &args, Record::Nothing, |ev| {
        if let atedm::JobEvent::Step(_) = ev {
            steps += 1;
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    })
    .err()
    .unwrap();
    assert!(matches!(e, atedm::Error::Cancelled), "{e}");
    assert_eq!(steps, 1, "stopped after the first step");
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert!(left.is_empty(), "nothing written: {left:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Ctrl-C during `atedm generate` stops after the current step: exit code 130, and neither the
/// image nor the saved run is written.
#[cfg(unix)]
#[test]
fn ctrl_c_stops_the_cli_without_output() {
    use std::io::BufRead;
    let dir = std::env::temp_dir().join(format!("atedm-generate-sigint-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (out, runs) = (dir.join("never.png"), dir.join("run"));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_atedm"))
        .args(["generate", "--prompt", "a large red circle at the center"])
        .args(["--steps", "1000", "--output"])
        .arg(&out)
        .arg("--dump-masks")
        .arg(&runs)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the model is loaded (the handler is installed before that), then interrupt.
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let loaded = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.starts_with("loaded"));
    assert!(loaded, "the run started");
    let kill = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{rest:?}");
    assert!(rest.iter().any(|l| l.contains("cancelled")), "{rest:?}");
    assert!(!out.exists() && !runs.exists(), "nothing written");
    std::fs::remove_dir_all(&dir).unwrap();
}
