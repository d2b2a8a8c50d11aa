//! The whole text-to-image path against diffusers' StableDiffusionXLPipeline on the tiny
//! pipeline fixture (tools/make_pipeline_fixtures.py): token ids, prompt embeddings, final
//! latents and the decoded image, for CFG with a negative prompt, an absent negative prompt
//! (zero embeddings) and guidance rescale.
mod common;

use std::path::{Path, PathBuf};

use atedm::model::weights::read_all_f32;
use atedm::pipeline::generate::{GenerateRequest, LoadOptions, SdxlPipeline};
use atedm::DType;
use common::*;

fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pipeline").join(p)
}

fn pipeline(dtype: DType) -> SdxlPipeline {
    SdxlPipeline::load(ctx(), &fixture("sdxl-tiny"), &LoadOptions { dtype, vae_dtype: None }).unwrap()
}

fn request(run: &str) -> (GenerateRequest, std::collections::HashMap<String, (Vec<usize>, Vec<f32>)>, serde_json::Value) {
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture(&format!("{run}.json"))).unwrap()).unwrap();
    let refs = read_all_f32(&fixture(&format!("{run}.safetensors"))).unwrap();
    let req = GenerateRequest {
        prompt: meta["prompt"].as_str().unwrap().to_string(),
        negative_prompt: meta["negative_prompt"].as_str().map(String::from),
        steps: meta["num_inference_steps"].as_u64().unwrap() as usize,
        guidance: meta["guidance_scale"].as_f64().unwrap() as f32,
        guidance_rescale: meta["guidance_rescale"].as_f64().unwrap() as f32,
        width: meta["width"].as_u64().unwrap() as usize,
        height: meta["height"].as_u64().unwrap() as usize,
        seed: 0,
        latents: Some(refs["latents"].1.clone()),
    };
    (req, refs, meta)
}

#[test]
fn token_ids_match_transformers() {
    let p = pipeline(DType::F32);
    let (_, _, meta) = request("cfg");
    let ids = &meta["token_ids"];
    let want = |k: &str| -> Vec<u32> { ids[k].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect() };
    let prompt = meta["prompt"].as_str().unwrap();
    let negative = meta["negative_prompt"].as_str().unwrap();
    assert_eq!(p.tokenizer.encode(prompt).unwrap().ids, want("prompt_ids_tokenizer"));
    assert_eq!(p.tokenizer_2.encode(prompt).unwrap().ids, want("prompt_ids_tokenizer_2"));
    assert_eq!(p.tokenizer.encode(negative).unwrap().ids, want("negative_ids_tokenizer"));
    assert_eq!(p.tokenizer_2.encode(negative).unwrap().ids, want("negative_ids_tokenizer_2"));
}

#[test]
fn generation_matches_diffusers_f32() {
    let p = pipeline(DType::F32);
    for run in ["cfg", "empty_negative", "rescale"] {
        let (req, refs, _) = request(run);
        let out = p.generate(ctx(), &req, |_, _| {}).unwrap();
        let e = &out.embeds;
        for (name, t) in [
            ("prompt_embeds", &e.prompt_embeds),
            ("negative_prompt_embeds", &e.negative_prompt_embeds),
            ("pooled_prompt_embeds", &e.pooled_prompt_embeds),
            ("negative_pooled_prompt_embeds", &e.negative_pooled_prompt_embeds),
        ] {
            let (shape, want) = &refs[name];
            assert_eq!(t.shape(), shape.as_slice(), "{run} {name}");
            let got = download(t);
            if want.iter().all(|&v| v == 0.0) {
                assert!(got.iter().all(|&v| v == 0.0), "{run} {name}: expected zeros");
            } else {
                let r = assert_close(&got, want, 1e-3, &format!("{run} {name}"));
                eprintln!("{run} {name}: {r:.2e}");
            }
        }
        let r = assert_close(&out.latents_final, &refs["latents_final"].1, 1e-3, &format!("{run} latents_final"));
        eprintln!("{run} latents_final: {r:.2e}");
        let r = assert_close(&out.image, &refs["image"].1, 2e-3, &format!("{run} image"));
        eprintln!("{run} image: {r:.2e}");
    }
}
