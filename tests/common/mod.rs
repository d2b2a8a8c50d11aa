//! Shared test helpers: one GPU context per test binary, random data, tolerance checks.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use atedm::gpu::{ContextOptions, GpuContext};
use atedm::{DType, Tensor};
use half::f16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The test context. Tests need an adapter: run them through the README's test command
/// (`tools/test.sh`), which installs Mesa's software Vulkan when none is present.
pub fn ctx() -> &'static GpuContext {
    static CTX: OnceLock<GpuContext> = OnceLock::new();
    CTX.get_or_init(|| {
        GpuContext::new(&ContextOptions::from_env()).unwrap_or_else(|e| {
            panic!("GPU tests need an adapter ({e}). Run tools/test.sh, which installs mesa-vulkan-drivers")
        })
    })
}

/// Both storage dtypes the kernels support.
pub const DTYPES: [DType; 2] = [DType::F32, DType::F16];

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// `n` values uniform in [-scale, scale).
pub fn rand_vec(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

/// Rounds through the storage dtype, so the CPU reference sees exactly what the GPU sees.
pub fn round_to(dtype: DType, v: &[f32]) -> Vec<f32> {
    match dtype {
        DType::F16 => v.iter().map(|&x| f16::from_f32(x).to_f32()).collect(),
        _ => v.to_vec(),
    }
}

/// Uploads `v` (already representable in `dtype`, see [`round_to`]).
pub fn upload(v: &[f32], shape: &[usize], dtype: DType) -> Tensor {
    Tensor::from_f32(ctx(), v, shape, dtype).expect("upload")
}

pub fn download(t: &Tensor) -> Vec<f32> {
    t.to_f32_vec(ctx()).expect("download")
}

/// Relative tolerance against max|ref| used by most ops: f32 1e-4 (the brief's bound);
/// f16 2e-3: inputs are rounded to f16 for both sides, kernels accumulate in f32, so the
/// difference is the final rounding to f16 (2^-11 = 4.9e-4 relative) plus f32 summation-order
/// noise; 2e-3 leaves room for values near max|ref| that round the other way once more.
pub fn tol(dtype: DType) -> f32 {
    match dtype {
        DType::F16 => 2e-3,
        _ => 1e-4,
    }
}

/// Asserts max|got - want| <= rel * max|want| (with a floor of 1e-6 on max|want|); returns the
/// measured max|got - want| / max|want|.
pub fn assert_close(got: &[f32], want: &[f32], rel: f32, what: &str) -> f32 {
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: length {} vs {}",
        got.len(),
        want.len()
    );
    let max_ref = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    let mut worst = (0usize, 0f32);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let d = (g - w).abs();
        assert!(!g.is_nan() || w.is_nan(), "{what}: NaN at {i} (want {w})");
        if d > worst.1 {
            worst = (i, d);
        }
    }
    assert!(
        worst.1 <= rel * max_ref,
        "{what}: max abs err {} at {} (got {}, want {}) > {rel} x max|ref| {max_ref}",
        worst.1,
        worst.0,
        got[worst.0],
        want[worst.0]
    );
    worst.1 / max_ref
}

/// Checks a generation against a diffusers pipeline reference run (tests/fixtures/pipeline):
/// embeddings and final latents within 1e-3 x max|ref| and the image within 2e-3 (f32 bounds of
/// the issue); absent-negative embeddings must be exact zeros.
pub fn assert_matches_pipeline_reference(
    out: &atedm::pipeline::generate::GenerateOutput,
    refs: &atedm::model::weights::HostTensors,
    run: &str,
) {
    let e = &out.embeds;
    for (name, t) in [
        ("prompt_embeds", &e.prompt_embeds),
        ("negative_prompt_embeds", &e.negative_prompt_embeds),
        ("pooled_prompt_embeds", &e.pooled_prompt_embeds),
        (
            "negative_pooled_prompt_embeds",
            &e.negative_pooled_prompt_embeds,
        ),
    ] {
        let (shape, want) = &refs[name];
        assert_eq!(t.shape(), shape.as_slice(), "{run} {name}");
        let got = download(t);
        if want.iter().all(|&v| v == 0.0) {
            assert!(
                got.iter().all(|&v| v == 0.0),
                "{run} {name}: expected zeros"
            );
        } else {
            let r = assert_close(&got, want, 1e-3, &format!("{run} {name}"));
            eprintln!("{run} {name}: {r:.2e}");
        }
    }
    let r = assert_close(
        &out.latents_final,
        &refs["latents_final"].1,
        1e-3,
        &format!("{run} latents_final"),
    );
    eprintln!("{run} latents_final: {r:.2e}");
    let r = assert_close(&out.image, &refs["image"].1, 2e-3, &format!("{run} image"));
    eprintln!("{run} image: {r:.2e}");
}

/// A reference run of the pipeline fixture (tests/fixtures/pipeline/<run>.{json,safetensors}):
/// the request that reproduces it (its prompts, settings and initial latents), the reference
/// tensors and the json metadata.
pub fn pipeline_request(
    run: &str,
) -> (
    atedm::pipeline::generate::GenerateRequest,
    atedm::model::weights::HostTensors,
    serde_json::Value,
) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pipeline");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{run}.json"))).unwrap())
            .unwrap();
    let refs =
        atedm::model::weights::read_all_f32(&dir.join(format!("{run}.safetensors"))).unwrap();
    let req = atedm::pipeline::generate::GenerateRequest {
        prompt: meta["prompt"].as_str().unwrap().to_string(),
        negative_prompt: meta["negative_prompt"].as_str().map(String::from),
        steps: meta["num_inference_steps"].as_u64().unwrap() as usize,
        guidance: meta["guidance_scale"].as_f64().unwrap() as f32,
        guidance_rescale: meta["guidance_rescale"].as_f64().unwrap() as f32,
        width: meta["width"].as_u64().unwrap() as usize,
        height: meta["height"].as_u64().unwrap() as usize,
        seed: 0,
        latents: Some(refs["latents"].1.clone()),
        prune: Default::default(),
        record: Default::default(),
    };
    (req, refs, meta)
}

/// What a run of the `atedm` binary printed.
pub struct CliRun {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl CliRun {
    /// The run's stderr, asserting that it failed.
    pub fn error(&self) -> &str {
        assert!(
            !self.success,
            "expected a failure; stderr:\n{}",
            self.stderr
        );
        &self.stderr
    }

    /// Asserts that the run succeeded.
    pub fn ok(&self) -> &Self {
        assert!(self.success, "atedm failed:\n{}", self.stderr);
        self
    }
}

/// Runs the `atedm` binary (the command line as a user runs it) with `args`.
pub fn atedm_cli<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> CliRun {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_atedm"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running the atedm binary");
    CliRun {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A path as a command-line argument.
pub fn path_str(p: &Path) -> String {
    p.to_str().expect("test paths are UTF-8").to_string()
}

/// A path under the crate root.
pub fn root(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// Integer tensors (masks, slots) of a safetensors file.
pub fn read_i64(path: &Path) -> HashMap<String, Vec<i64>> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .filter(|(_, v)| v.dtype() == safetensors::Dtype::I64)
        .map(|(n, v)| (n, bytemuck::pod_collect_to_vec(v.data())))
        .collect()
}

/// UNet inputs from a fixture's safetensors file, uploaded in `dtype`.
pub struct FixtureInputs {
    pub sample: Tensor,
    pub encoder_hidden_states: Tensor,
    pub text_embeds: Tensor,
    pub timestep: Vec<f32>,
    pub time_ids: Vec<f32>,
}

impl FixtureInputs {
    pub fn load(path: &Path, dtype: DType) -> Self {
        Self::load_on(ctx(), path, dtype)
    }

    /// [`FixtureInputs::load`] on the context `c`.
    pub fn load_on(c: &GpuContext, path: &Path, dtype: DType) -> Self {
        let inputs = atedm::model::weights::read_all_f32(path).unwrap();
        let up = |k: &str| Tensor::from_f32(c, &inputs[k].1, &inputs[k].0, dtype).unwrap();
        FixtureInputs {
            sample: up("sample"),
            encoder_hidden_states: up("encoder_hidden_states"),
            text_embeds: up("text_embeds"),
            timestep: inputs["timestep"].1.clone(),
            time_ids: inputs["time_ids"].1.clone(),
        }
    }

    pub fn unet_inputs(&self) -> atedm::model::unet::UNetInputs<'_> {
        atedm::model::unet::UNetInputs {
            sample: &self.sample,
            timesteps: &self.timestep,
            encoder_hidden_states: &self.encoder_hidden_states,
            text_embeds: &self.text_embeds,
            time_ids: &self.time_ids,
        }
    }
}

/// The tiny pipeline's "cfg" fixture run (96x64, 4 steps, f32, its initial latents, seed 7) as a
/// generation job writing `out`.
pub fn pipeline_job(out: &Path) -> atedm::GenerateJob {
    let (req, _, _) = pipeline_request("cfg");
    let fixture = |p: &str| root("tests/fixtures/pipeline").join(p);
    atedm::GenerateJob {
        model: Some(fixture("sdxl-tiny")),
        load: atedm::LoadOptions {
            dtype: DType::F32,
            vae_dtype: None,
            config: None,
        },
        prompt: req.prompt,
        negative_prompt: req.negative_prompt,
        steps: Some(req.steps),
        guidance: req.guidance,
        guidance_rescale: 0.0,
        seed: 7,
        width: Some(req.width),
        height: Some(req.height),
        latents: Some(fixture("cfg.safetensors")),
        output: Some(out.to_path_buf()),
        ..Default::default()
    }
}

/// tiny-b's UNet (f32) and its fixture inputs.
pub fn tiny_b() -> (atedm::model::unet::UNet2DConditionModel, FixtureInputs) {
    let unet = atedm::model::load::load_unet(
        ctx(),
        &root("tests/fixtures/unet/tiny-b/unet"),
        None,
        DType::F32,
    )
    .unwrap();
    let inputs = FixtureInputs::load(
        &root("tests/fixtures/unet/tiny-b/inputs.safetensors"),
        DType::F32,
    );
    (unet, inputs)
}
