//! Generating from an original single-file SD-XL checkpoint: the tiny pipeline fixture in
//! single-file layout (tests/fixtures/pipeline/sdxl-tiny.safetensors, f16) with its diffusers
//! config folder reproduces the diffusers reference runs; the key maps (OpenCLIP q/k/v split,
//! transposed text projection, reversed VAE up blocks) give exactly the diffusers folder's
//! tensors; incomplete or foreign files are clear errors.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::common::*;
use atedm::model::clip::ClipTextConfig;
use atedm::model::single_file::{clip_l_key, BigGKeyMap, VaeKeyMap};
use atedm::model::vae::VaeConfig;
use atedm::model::weights::{read_all_f32, SafetensorsFile, Transform, WeightStore};
use atedm::pipeline::generate::{LoadOptions, SdxlPipeline};
use atedm::DType;

fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/pipeline")
        .join(p)
}

fn single() -> PathBuf {
    fixture("sdxl-tiny.safetensors")
}

fn opts(dtype: DType, config: Option<PathBuf>) -> LoadOptions {
    LoadOptions {
        dtype,
        vae_dtype: None,
        config,
    }
}

fn load_err(path: &Path, config: Option<PathBuf>) -> String {
    match SdxlPipeline::load(ctx(), path, &opts(DType::F32, config)) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn single_file_with_config_matches_diffusers_f32() {
    let p = SdxlPipeline::load(
        ctx(),
        &single(),
        &opts(DType::F32, Some(fixture("sdxl-tiny"))),
    )
    .unwrap();
    for run in ["cfg", "empty_negative", "rescale"] {
        let (req, refs, _) = pipeline_request(run);
        let out = p.generate(ctx(), &req, |_, _| {}).unwrap();
        assert_matches_pipeline_reference(&out, &refs, run);
    }
}

/// Every tensor a single-file map yields equals the diffusers folder's tensor of that name
/// (same f16 values, shapes equal up to trailing 1s), and the name sets are the same.
fn same_tensors(mapped: &WeightStore, folder: &WeightStore, skip: &[&str]) {
    let a: BTreeSet<&str> = mapped.names().collect();
    let b: BTreeSet<&str> = folder
        .names()
        .filter(|n| !skip.iter().any(|s| n.starts_with(s)))
        .collect();
    assert_eq!(a, b);
    let strip = |s: Vec<usize>| {
        let mut s = s;
        while s.len() > 1 && s.last() == Some(&1) {
            s.pop();
        }
        s
    };
    for n in a {
        let (sa, va) = mapped.read_f32(n).unwrap();
        let (sb, vb) = folder.read_f32(n).unwrap();
        assert_eq!(strip(sa), strip(sb), "{n}");
        assert!(va == vb, "{n}: values differ");
    }
}

fn mapped(map: impl Fn(&str) -> Vec<(String, Transform)>) -> WeightStore {
    WeightStore::from_files_transformed(vec![SafetensorsFile::open(&single()).unwrap()], map)
        .unwrap()
}

#[test]
fn big_g_split_and_transpose_match_diffusers_weights() {
    let dir = fixture("sdxl-tiny/text_encoder_2");
    let cfg = ClipTextConfig::from_file(&dir).unwrap();
    let m = BigGKeyMap::new(&cfg);
    let store = mapped(|k| m.map(k));
    let folder = WeightStore::open_diffusers(&dir, "model", true).unwrap();
    // The projection really is transposed: [20, 16] stored, [16, 20] as a linear weight.
    assert_eq!(
        store.shape("text_projection.weight").unwrap(),
        vec![cfg.projection_dim.unwrap(), cfg.hidden_size]
    );
    assert_eq!(
        store
            .shape("text_model.encoder.layers.0.self_attn.v_proj.weight")
            .unwrap(),
        vec![cfg.hidden_size, cfg.hidden_size]
    );
    same_tensors(&store, &folder, &["text_model.embeddings.position_ids"]);
}

#[test]
fn clip_l_and_vae_maps_match_diffusers_weights() {
    let dir = fixture("sdxl-tiny/text_encoder");
    let folder = WeightStore::open_diffusers(&dir, "model", true).unwrap();
    same_tensors(
        &mapped(clip_l_key),
        &folder,
        &["text_model.embeddings.position_ids"],
    );
    let dir = fixture("sdxl-tiny/vae");
    let m = VaeKeyMap::new(&VaeConfig::from_file(&dir).unwrap());
    let folder = WeightStore::open_diffusers(&dir, "diffusion_pytorch_model", true).unwrap();
    same_tensors(&mapped(|k| m.map(k)), &folder, &["encoder.", "quant_conv."]);
}

#[test]
fn transforms_are_checked_against_the_stored_shape() {
    let e =
        WeightStore::from_files_transformed(vec![SafetensorsFile::open(&single()).unwrap()], |k| {
            if k == "conditioner.embedders.1.model.ln_final.weight" {
                vec![("x".into(), Transform::Transpose)]
            } else {
                vec![]
            }
        })
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("ln_final.weight") && e.contains("not 2-D"),
        "{e}"
    );
    let e =
        WeightStore::from_files_transformed(vec![SafetensorsFile::open(&single()).unwrap()], |k| {
            if k == "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_bias" {
                vec![("x".into(), Transform::Rows { start: 40, len: 40 })]
            } else {
                vec![]
            }
        })
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("in_proj_bias") && e.contains("no rows 40..80"),
        "{e}"
    );
}

#[test]
fn unet_only_file_is_not_a_checkpoint() {
    let unet_only =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/unet/tiny-b/single.safetensors");
    let e = load_err(&unet_only, None);
    assert!(
        e.contains("not an SD-XL single-file checkpoint")
            && e.contains("conditioner.embedders.0.transformer.")
            && e.contains("conditioner.embedders.1.model.")
            && e.contains("first_stage_model.")
            && !e.contains("UNet"),
        "{e}"
    );
}

#[test]
fn config_mismatch_and_misuse_are_clear_errors() {
    // Without --config the built-in SD-XL base configs do not fit the tiny weights.
    let e = load_err(&single(), None);
    assert!(
        e.contains("(text_encoder)") && e.contains("wrong shape"),
        "{e}"
    );
    // --config is for single files only.
    let e = load_err(&fixture("sdxl-tiny"), Some(fixture("sdxl-tiny")));
    assert!(e.contains("only for single-file checkpoints"), "{e}");
    let e = load_err(&single(), Some(fixture("cfg.json")));
    assert!(e.contains("not a folder"), "{e}");
}

/// The fixture's tensors with some left out and some added, as a new single file.
fn edited(name: &str, drop: &str, add: &str) -> PathBuf {
    let file = SafetensorsFile::open(&single()).unwrap();
    let bytes = std::fs::read(single()).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, safetensors::tensor::TensorView)> = file
        .names()
        .into_iter()
        .filter(|n| n != drop)
        .map(|n| {
            let v = st.tensor(&n).unwrap();
            (n, v)
        })
        .collect();
    let extra = st
        .tensor("first_stage_model.decoder.up.1.upsample.conv.weight")
        .unwrap();
    if !add.is_empty() {
        tensors.push((add.to_string(), extra));
    }
    let path = std::env::temp_dir().join(format!("atedm-single-{}-{name}", std::process::id()));
    safetensors::serialize_to_file(tensors, None, &path).unwrap();
    path
}

#[test]
fn missing_and_unknown_tensors_are_named() {
    let path = edited(
        "missing.safetensors",
        "conditioner.embedders.1.model.transformer.resblocks.2.ln_1.weight",
        "",
    );
    let e = load_err(&path, Some(fixture("sdxl-tiny")));
    std::fs::remove_file(&path).unwrap();
    assert!(
        e.contains("(text_encoder_2)")
            && e.contains("missing (1): text_model.encoder.layers.2.layer_norm1.weight"),
        "{e}"
    );
    // An upsampler after the last original level (up.0) is not part of the decoder.
    let path = edited(
        "unexpected.safetensors",
        "",
        "first_stage_model.decoder.up.0.upsample.conv.weight",
    );
    let e = load_err(&path, Some(fixture("sdxl-tiny")));
    std::fs::remove_file(&path).unwrap();
    assert!(
        e.contains("(vae)")
            && e.contains("unexpected (1): first_stage_model.decoder.up.0.upsample.conv.weight"),
        "{e}"
    );
}

#[test]
fn generate_cli_takes_a_single_file_with_config() {
    let (req, refs, _) = pipeline_request("cfg");
    let dir = std::env::temp_dir().join(format!("atedm-single-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let inter = dir.join("inter.safetensors");
    let mut args = vec![
        "generate".to_string(),
        "--model".into(),
        path_str(&single()),
        "--config".into(),
        path_str(&fixture("sdxl-tiny")),
        "--prompt".into(),
        req.prompt.clone(),
        "--steps".into(),
        req.steps.to_string(),
        "--guidance".into(),
        req.guidance.to_string(),
        "--seed".into(),
        "7".into(),
        "--width".into(),
        req.width.to_string(),
        "--height".into(),
        req.height.to_string(),
        "--dtype".into(),
        "f32".into(),
        "--output".into(),
        path_str(&dir.join("out.png")),
        "--latents".into(),
        path_str(&fixture("cfg.safetensors")),
        "--save-intermediates".into(),
        path_str(&inter),
    ];
    if let Some(n) = &req.negative_prompt {
        args.extend(["--negative-prompt".to_string(), n.clone()]);
    }
    atedm_cli(&args).ok();
    let got = read_all_f32(&inter).unwrap();
    assert!(dir.join("out.png").is_file());
    std::fs::remove_dir_all(&dir).unwrap();
    for k in ["latents_final", "image"] {
        assert_eq!(got[k].0, refs[k].0, "{k} shape");
        assert_close(&got[k].1, &refs[k].1, 2e-3, k);
    }
}
