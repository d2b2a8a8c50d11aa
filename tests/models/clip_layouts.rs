//! SD-XL text encoder folders as each transformers version's `save_pretrained` writes them
//! (tests/fixtures/clip_layouts, made by tools/make_clip_layout_fixtures.py): every layout loads
//! and reproduces the outputs of the transformers version that wrote it; a file in no known
//! layout, or in two at once, is a clear error.
//!
//! Layouts (see tests/fixtures/clip_layouts/README.md): transformers 4.x and 5.0-5.5 save both
//! models with the text tower under `text_model.`; 5.6-5.25 save `CLIPTextModel` flat
//! (`embeddings.*`, `encoder.layers.*`, `final_layer_norm.*`) and
//! `CLIPTextModelWithProjection` still under `text_model.`. The projection is
//! `text_projection.weight` in both.

use std::path::PathBuf;

use crate::common::*;
use atedm::model::clip::{ClipKind, ClipOutputs, ClipTextConfig, ClipTextModel};
use atedm::model::weights::{read_all_f32, SafetensorsFile, Transform, WeightLoader, WeightStore};
use atedm::DType;

/// Relative to max|ref|. f32 on both sides, same operations; what differs is summation order
/// (sums of at most 40 terms here) and the kernels' own exp/erf/rsqrt, each a few f32 ulps
/// (1.2e-7 relative), through two layers and up to three layer norms: measured at most 5.0e-7
/// (lavapipe). 1e-5 (about 80 ulps of the largest value) leaves 20x room for other adapters and
/// still catches small faults: a wrongly loaded or swapped tensor moves the outputs by
/// O(max|ref|), and even the final norm's eps at 1e-4 instead of 1e-5 by 3e-5 (tried).
const TOL: f32 = 1e-5;

fn fixture(writer: &str) -> PathBuf {
    root("tests/fixtures/clip_layouts").join(writer)
}

/// The first tensor name of a saved model that holds the token embedding (which layout it is).
fn token_embedding_key(dir: &std::path::Path) -> String {
    let names = SafetensorsFile::open(&dir.join("model.safetensors"))
        .unwrap()
        .names();
    let found: Vec<&String> = names
        .iter()
        .filter(|n| n.ends_with("embeddings.token_embedding.weight"))
        .collect();
    assert_eq!(found.len(), 1, "{}: {found:?}", dir.display());
    found[0].clone()
}

/// Loads both encoders of `writer`'s fixture with atedm and compares every recorded output
/// (batches "a" [3, 8] and "b" [1, 77]): the penultimate hidden state SD-XL uses, the
/// last hidden state, and text_encoder_2's projected pooled output (`text_embeds`). `layout`:
/// the token embedding's key in text_encoder and text_encoder_2, checked first so the test
/// covers the layout it names. Returns the worst relative error.
fn check_writer(writer: &str, layout: [&str; 2]) -> f32 {
    let dir = fixture(writer);
    let refs = read_all_f32(&dir.join("reference.safetensors")).unwrap();
    let ids = read_i64(&dir.join("reference.safetensors"));
    let mut worst = 0f32;
    for ((sub, with_projection), key) in [("text_encoder", false), ("text_encoder_2", true)]
        .into_iter()
        .zip(layout)
    {
        let part = dir.join(sub);
        assert_eq!(
            token_embedding_key(&part),
            key,
            "{writer}/{sub}: not the layout under test"
        );
        let (kind, outputs) = if with_projection {
            (ClipKind::WithProjection, ClipOutputs::WithPooled)
        } else {
            (ClipKind::TextModel, ClipOutputs::Penultimate)
        };
        let model = ClipTextModel::load(ctx(), &part, DType::F32, kind)
            .unwrap_or_else(|e| panic!("{writer}/{sub}: {e}"));
        for batch in ["a", "b"] {
            let (shape, _) = &refs[&format!("{sub}.{batch}.penultimate")];
            let (b, l) = (shape[0], shape[1]);
            let batch_ids: Vec<u32> = ids[&format!("{batch}.input_ids")]
                .iter()
                .map(|&i| u32::try_from(i).unwrap())
                .collect();
            assert_eq!(batch_ids.len(), b * l);
            let out = model.forward(ctx(), &batch_ids, b, outputs).unwrap();
            let mut got = vec![("penultimate", out.penultimate)];
            got.push((
                "last_hidden_state",
                model.last_hidden_state(ctx(), &batch_ids, b).unwrap(),
            ));
            if with_projection {
                got.push(("text_embeds", out.pooled.expect("pooled output")));
            }
            for (name, t) in got {
                let what = format!("{writer}/{sub} {batch}.{name}");
                let (want_shape, want) = &refs[&format!("{sub}.{batch}.{name}")];
                assert_eq!(t.shape(), want_shape.as_slice(), "{what}");
                let r = assert_close(&download(&t), want, TOL, &what);
                eprintln!("{what} {want_shape:?}: max|err| / max|ref| = {r:.2e}");
                worst = worst.max(r);
            }
        }
    }
    eprintln!("{writer}: worst {worst:.2e} (tolerance {TOL:.0e})");
    worst
}

/// transformers 4.57.6 (and 4.x, 5.0-5.5): both encoders under `text_model.`.
#[test]
fn transformers_4_57_layout_matches_transformers() {
    check_writer(
        "transformers-4.57.6",
        [
            "text_model.embeddings.token_embedding.weight",
            "text_model.embeddings.token_embedding.weight",
        ],
    );
}

/// transformers 5.25.0 (and 5.6-5.24, the pinned 5.24.0 included): `CLIPTextModel` flat,
/// `CLIPTextModelWithProjection` under `text_model.` (issue 15, point 9b).
#[test]
fn transformers_5_25_layout_matches_transformers() {
    check_writer(
        "transformers-5.25.0",
        [
            "embeddings.token_embedding.weight",
            "text_model.embeddings.token_embedding.weight",
        ],
    );
}

/// Builds text_encoder of the 5.25 fixture from its file seen through `map`; the error text.
fn build_err(map: impl Fn(&str) -> Vec<(String, Transform)>) -> String {
    let dir = fixture("transformers-5.25.0").join("text_encoder");
    let cfg = ClipTextConfig::from_file(&dir).unwrap();
    let file = SafetensorsFile::open(&dir.join("model.safetensors")).unwrap();
    let store = WeightStore::from_files_transformed(vec![file], map).unwrap();
    let mut l = WeightLoader::new(ctx(), &store, DType::F32);
    let built = ClipTextModel::build(&cfg, &mut l, ClipKind::TextModel);
    match built.and_then(|_| l.finish()) {
        Ok(_) => panic!("loaded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn unknown_prefix_is_a_clear_error() {
    let e = build_err(|k| vec![(format!("model.{k}"), Transform::Identity)]);
    assert!(
        e.contains("not a CLIP text model in a known layout")
            && e.contains("'text_model.embeddings.token_embedding.weight'")
            && e.contains("'embeddings.token_embedding.weight'")
            && e.contains("model.embeddings."),
        "{e}"
    );
}

#[test]
fn both_layouts_in_one_file_is_a_clear_error() {
    let e = build_err(|k| {
        vec![
            (k.to_string(), Transform::Identity),
            (format!("text_model.{k}"), Transform::Identity),
        ]
    });
    assert!(
        e.contains("ambiguous CLIP text model layout")
            && e.contains("'text_model.embeddings.token_embedding.weight' and 'embeddings.token_embedding.weight'"),
        "{e}"
    );
}
