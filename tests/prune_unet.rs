//! AT-EDM inside the UNet against the Python reference of atedm.md on top of diffusers
//! (tools/atedm_reference.py, fixtures from tools/make_prune_fixtures.py): outputs, kept-token
//! masks and G-WPR scores of every pruned stack, for several keep ratios, T, p, DSAP states
//! and AT-EDM-dagger.
mod common;

use std::path::PathBuf;

use atedm::model::load::load_unet;
use atedm::model::unet::{PruneStep, UNetInputs};
use atedm::model::weights::read_all_f32;
use atedm::prune::flops::{PruneMode, PruneSettings};
use atedm::{DType, Tensor};
use common::*;

#[test]
fn pruned_unet_matches_the_reference() {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(root("tests/fixtures/prune"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .filter(|p| !p.to_string_lossy().contains("_tome_")) // tests/tome_unet.rs
        .collect();
    cases.sort();
    assert!(cases.len() >= 12, "fixtures present");
    let c = ctx();
    for case in cases {
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&case).unwrap()).unwrap();
        let name = case.file_stem().unwrap().to_string_lossy().to_string();
        assert_eq!(
            meta["any_topk_near_tie"], false,
            "{name}: near ties would make masks ambiguous"
        );
        let s = &meta["settings"];
        let settings = PruneSettings {
            mode: if s["dagger"].as_bool().unwrap() {
                PruneMode::AtEdmDagger
            } else {
                PruneMode::AtEdm
            },
            keep_ratio: s["keep_ratio"].as_f64().unwrap(),
            gwpr_iters: s["T"].as_u64().unwrap() as usize,
            prune_block: s["p"].as_u64().unwrap() as usize,
            dsap: s["dsap"].as_bool().unwrap(),
            tau: s["tau"].as_f64().unwrap(),
            ..Default::default()
        };
        let step = PruneStep {
            settings,
            step: s["step"].as_u64().unwrap() as usize,
            steps: s["steps"].as_u64().unwrap() as usize,
        };
        let unet = load_unet(c, &root(meta["unet"].as_str().unwrap()), None, DType::F32).unwrap();
        let inputs = read_all_f32(&root(meta["inputs"].as_str().unwrap())).unwrap();
        let up = |k: &str| Tensor::from_f32(c, &inputs[k].1, &inputs[k].0, DType::F32).unwrap();
        let (sample, enc, text) = (up("sample"), up("encoder_hidden_states"), up("text_embeds"));
        let x = UNetInputs {
            sample: &sample,
            timesteps: &inputs["timestep"].1,
            encoder_hidden_states: &enc,
            text_embeds: &text,
            time_ids: &inputs["time_ids"].1,
        };
        let result = unet.forward_pruned(c, &x, &step);
        let fixture = case.with_extension("safetensors");
        let want = read_all_f32(&fixture).unwrap();
        let masks = read_i64(&fixture);
        let pruned: Vec<String> = meta["pruned"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        let (out, records) = match result {
            Ok(r) => r,
            Err(e) => {
                // The only legitimate refusal: nothing of this model can be pruned at block p.
                assert!(
                    pruned.is_empty() && e.to_string().contains("no transformer stack"),
                    "{name}: {e}"
                );
                continue;
            }
        };
        let mut got_names: Vec<String> = records.stacks.iter().map(|(n, _)| n.clone()).collect();
        got_names.sort();
        let mut want_names = pruned.clone();
        want_names.sort();
        assert_eq!(got_names, want_names, "{name}: pruned stacks");
        for (stack, rec) in &records.stacks {
            let kept: Vec<i64> = rec
                .kept
                .to_u32_vec(c)
                .unwrap()
                .iter()
                .map(|&v| v as i64)
                .collect();
            assert_eq!(
                kept,
                masks[&format!("mask.{stack}")],
                "{name}: mask of {stack}"
            );
            let scores = rec.scores.to_f32_vec(c).unwrap();
            // G-WPR from an f32 map (flash-attention log-sum-exp) against the reference's f64:
            // 2e-6 of the largest score, tight enough to tell T = 4 or 6 from T = 5 (those move
            // the scores by 1.2e-5 and more on these models).
            let r = assert_close(
                &scores,
                &want[&format!("score.{stack}")].1,
                2e-6,
                &format!("{name}: scores of {stack}"),
            );
            eprintln!("{name} {stack}: scores {r:.1e}");
        }
        let r = assert_close(
            &out.to_f32_vec(c).unwrap(),
            &want["out"].1,
            1e-3,
            &format!("{name}: out"),
        );
        eprintln!(
            "{name}: out {r:.2e} (pruned vs unpruned differ by {:.2})",
            meta["rel_max_diff_vs_unpruned"].as_f64().unwrap()
        );
    }
}

#[test]
fn bad_pruning_requests_are_errors() {
    let c = ctx();
    let unet = load_unet(
        c,
        &root("tests/fixtures/unet/tiny-b/unet"),
        None,
        DType::F32,
    )
    .unwrap();
    let inputs = FixtureInputs::load(
        &root("tests/fixtures/unet/tiny-b/inputs.safetensors"),
        DType::F32,
    );
    let x = inputs.unet_inputs();
    let run = |settings: PruneSettings| {
        unet.forward_pruned(
            c,
            &x,
            &PruneStep {
                settings,
                step: 5,
                steps: 10,
            },
        )
        .err()
        .map(|e| e.to_string())
    };
    let base = PruneSettings {
        mode: PruneMode::AtEdm,
        keep_ratio: 0.5,
        ..Default::default()
    };
    assert!(run(PruneSettings {
        keep_ratio: 0.0,
        ..base
    })
    .unwrap()
    .contains("keep ratio"));
    assert!(run(PruneSettings {
        keep_ratio: 1.2,
        ..base
    })
    .unwrap()
    .contains("keep ratio"));
    assert!(run(PruneSettings {
        prune_block: 5,
        ..base
    })
    .unwrap()
    .contains("no transformer stack"));
    assert!(run(PruneSettings {
        gwpr_iters: 0,
        ..base
    })
    .unwrap()
    .contains("iteration"));
}

#[test]
fn unet_eval_writes_masks_like_the_reference() {
    use atedm::cli::flops::{OnOff, PruneArg, PruneArgs};
    use atedm::cli::unet_eval::{run, UNetEvalArgs};
    let dir = std::env::temp_dir().join(format!("atedm-unet-eval-prune-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let output = dir.join("out.safetensors");
    let args = UNetEvalArgs {
        model: root("tests/fixtures/unet/tiny-b/unet"),
        config: None,
        inputs: root("tests/fixtures/unet/tiny-b/inputs.safetensors"),
        output: output.clone(),
        dtype: DType::F32,
        step: 0,
        steps: 8,
        prune: PruneArgs {
            prune: PruneArg::Atedm,
            keep_ratio: Some(0.5),
            dsap: OnOff::On,
            ..Default::default()
        },
    };
    run(ctx(), &args).unwrap();
    // Same settings as the reference case tiny-b_dsap_early.
    let want = read_i64(&root("tests/fixtures/prune/tiny-b_dsap_early.safetensors"));
    let got = read_i64(&output);
    let mut names: Vec<_> = got.keys().cloned().collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            "mask.mid_block.attentions.0",
            "mask.up_blocks.0.attentions.0",
            "mask.up_blocks.1.attentions.0"
        ]
    );
    for n in &names {
        assert_eq!(got[n], want[n], "{n}");
    }
    let out = read_all_f32(&output).unwrap();
    let r = assert_close(
        &out["out"].1,
        &read_all_f32(&root("tests/fixtures/prune/tiny-b_dsap_early.safetensors")).unwrap()["out"]
            .1,
        1e-3,
        "unet-eval pruned out",
    );
    eprintln!("unet-eval pruned out: {r:.2e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
