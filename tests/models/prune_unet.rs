//! AT-EDM inside the UNet against the Python reference of atedm.md on top of diffusers
//! (tools/atedm_reference.py, fixtures from tools/make_prune_fixtures.py): outputs, kept-token
//! masks and G-WPR scores of every pruned stack, for several keep ratios, T, p, DSAP states
//! and AT-EDM-dagger.

use std::path::PathBuf;

use crate::common::*;
use atedm::model::load::load_unet;
use atedm::model::unet::PruneStep;
use atedm::model::weights::read_all_f32;
use atedm::prune::schedule::stacks;
use atedm::prune::{AtEdm, Pruning, Recovery};
use atedm::DType;

#[test]
fn pruned_unet_matches_the_reference() {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(root("tests/fixtures/prune"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .filter(|p| !p.to_string_lossy().contains("_tome_")) // tests/models/tome_unet.rs
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
        let pruning = Pruning::AtEdm(
            AtEdm::new(s["keep_ratio"].as_f64().unwrap())
                .unwrap()
                .with_gwpr_iters(s["T"].as_u64().unwrap() as usize)
                .unwrap()
                .with_prune_block(s["p"].as_u64().unwrap() as usize)
                .with_dagger(s["dagger"].as_bool().unwrap())
                .with_dsap(
                    s["dsap"]
                        .as_bool()
                        .unwrap()
                        .then(|| s["tau"].as_f64().unwrap()),
                )
                .unwrap()
                .with_recovery(match s["recovery"].as_str().unwrap_or("attn-copy") {
                    "attn-copy" => Recovery::AttnCopy,
                    "cos-delta" => Recovery::CosDelta,
                    other => panic!("{name}: unknown recovery {other}"),
                }),
        );
        let step = PruneStep::new(
            &pruning,
            s["step"].as_u64().unwrap() as usize,
            s["steps"].as_u64().unwrap() as usize,
        );
        let unet = load_unet(c, &root(meta["unet"].as_str().unwrap()), None, DType::F32).unwrap();
        let inputs = FixtureInputs::load(&root(meta["inputs"].as_str().unwrap()), DType::F32);
        let x = inputs.unet_inputs();
        let shape = x.sample.shape();
        let result = pruning
            .check_stacks(&stacks(&unet.config, shape[2], shape[3]))
            .and_then(|()| unet.forward_pruned(c, &x, &step));
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
            Ok(r) => (r.sample, r.records),
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
    let (unet, inputs) = tiny_b();
    let x = inputs.unet_inputs();
    // Settings are checked when built, before any forward.
    let base = AtEdm::new(0.5).unwrap();
    assert!(AtEdm::new(0.0)
        .unwrap_err()
        .to_string()
        .contains("keep ratio"));
    assert!(base
        .with_keep_ratio(1.2)
        .unwrap_err()
        .to_string()
        .contains("keep ratio"));
    assert!(base
        .with_gwpr_iters(0)
        .unwrap_err()
        .to_string()
        .contains("iteration"));
    // A pruning block with no block after it in any stack: refused against the model.
    let deep = Pruning::AtEdm(base.with_prune_block(5));
    let shape = x.sample.shape();
    assert!(deep
        .check_stacks(&stacks(&unet.config, shape[2], shape[3]))
        .unwrap_err()
        .to_string()
        .contains("no transformer stack"));
    // A user schedule that asks a stack for more tokens than it has: the forward refuses it,
    // naming the stack.
    #[derive(Debug)]
    struct TooMany;
    impl atedm::PruneSchedule for TooMany {
        fn action(&self, s: &atedm::Stack, _: usize, _: usize) -> atedm::StackAction {
            atedm::StackAction::AtEdm(atedm::StackPrune {
                keep: s.tokens as usize + 1,
                iters: 5,
                block: 0,
                recovery: atedm::Recovery::AttnCopy,
            })
        }
    }
    let too_many = Pruning::custom(TooMany);
    let e = unet
        .forward_pruned(c, &x, &PruneStep::new(&too_many, 5, 10))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains(".attentions.0: keeps") && e.contains("tokens"),
        "{e}"
    );
}

/// A user-written schedule runs with no change to the UNet: it prunes only the stack it names,
/// at the steps it names, with the tokens it asks for.
#[test]
fn a_custom_schedule_prunes_the_stacks_it_names() {
    let c = ctx();
    let (unet, inputs) = tiny_b();
    let x = inputs.unet_inputs();
    #[derive(Debug)]
    struct MidOnly;
    impl atedm::PruneSchedule for MidOnly {
        fn action(&self, s: &atedm::Stack, step: usize, _: usize) -> atedm::StackAction {
            if s.name.starts_with("mid_block") && step >= 1 {
                atedm::StackAction::AtEdm(atedm::StackPrune {
                    keep: atedm::prune::schedule::kept_tokens(s.tokens, 0.5) as usize,
                    iters: 5,
                    block: 0,
                    recovery: atedm::Recovery::AttnCopy,
                })
            } else {
                atedm::StackAction::Full
            }
        }
    }
    let custom = Pruning::custom(MidOnly);
    let early = unet
        .forward_pruned(c, &x, &PruneStep::new(&custom, 0, 4))
        .unwrap();
    assert!(early.records.stacks.is_empty(), "step 0 runs full");
    let late = unet
        .forward_pruned(c, &x, &PruneStep::new(&custom, 1, 4))
        .unwrap();
    let names: Vec<&str> = late.records.stacks.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(names, ["mid_block.attentions.0"]);
    // Half the mid block's tokens kept, as distinct ascending indices for each batch element.
    let rec = &late.records.stacks[0].1;
    let (b, k) = (rec.kept.shape()[0], rec.kept.shape()[1]);
    let n = rec.scores.shape()[1];
    assert_eq!(k as u64, atedm::prune::schedule::kept_tokens(n as u64, 0.5));
    let kept = rec.kept.to_u32_vec(c).unwrap();
    for row in kept.chunks(k).take(b) {
        assert!(row.windows(2).all(|w| w[0] < w[1]) && (row[k - 1] as usize) < n);
    }
    let full = unet.forward(c, &x).unwrap().to_f32_vec(c).unwrap();
    let pruned = late.sample.to_f32_vec(c).unwrap();
    assert!(full != pruned, "pruning the mid block changed the output");
}

#[test]
fn unet_eval_writes_masks_like_the_reference() {
    let dir = std::env::temp_dir().join(format!("atedm-unet-eval-prune-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let output = dir.join("out.safetensors");
    atedm_cli(&[
        "unet-eval",
        "--model",
        &path_str(&root("tests/fixtures/unet/tiny-b/unet")),
        "--inputs",
        &path_str(&root("tests/fixtures/unet/tiny-b/inputs.safetensors")),
        "--output",
        &path_str(&output),
        "--dtype",
        "f32",
        "--step",
        "0",
        "--steps",
        "8",
        "--prune",
        "atedm",
        "--keep-ratio",
        "0.5",
        "--dsap",
        "on",
    ])
    .ok();
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
