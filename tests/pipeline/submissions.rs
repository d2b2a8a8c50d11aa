//! A UNet step is one command submission: no readback and no upload inside the step splits it
//! (on a context of its own, so no other test submits on it meanwhile).

use crate::common::*;
use atedm::gpu::{ContextOptions, GpuContext};
use atedm::model::load::load_unet;
use atedm::model::unet::{PruneStep, UNetInputs};
use atedm::model::weights::read_all_f32;
use atedm::prune::tome::TomeSettings;
use atedm::prune::Pruning;
use atedm::{DType, Tensor};

#[test]
fn a_unet_step_is_one_submission_with_and_without_pruning() {
    let own = GpuContext::new(&ContextOptions::from_env()).unwrap();
    let c = &own;
    let unet = load_unet(
        c,
        &root("tests/fixtures/unet/tiny-b/unet"),
        None,
        DType::F32,
    )
    .unwrap();
    let inputs = read_all_f32(&root("tests/fixtures/unet/tiny-b/inputs.safetensors")).unwrap();
    let up = |k: &str| Tensor::from_f32(c, &inputs[k].1, &inputs[k].0, DType::F32).unwrap();
    let (sample, enc, text) = (up("sample"), up("encoder_hidden_states"), up("text_embeds"));
    let x = UNetInputs {
        sample: &sample,
        timesteps: &inputs["timestep"].1,
        encoder_hidden_states: &enc,
        text_embeds: &text,
        time_ids: &inputs["time_ids"].1,
    };
    let atedm = Pruning::atedm(0.5).unwrap();
    let tome = Pruning::tome(TomeSettings {
        merge_mlp: true,
        ..Default::default()
    })
    .unwrap();
    for (name, pruning) in [("full", Pruning::None), ("AT-EDM", atedm), ("ToMe", tome)] {
        c.wait().unwrap();
        let before = c.submissions();
        let result = unet
            .forward_pruned(c, &x, &PruneStep::new(&pruning, 7, 8))
            .unwrap();
        let (out, records) = (result.sample, result.records);
        c.flush().unwrap();
        assert_eq!(
            c.submissions() - before,
            1,
            "{name}: one submission per step"
        );
        // And the step did the work (the records exist, the output is finite).
        assert!(name == "full" || !(records.stacks.is_empty() && records.merges.is_empty()));
        assert!(out.to_f32_vec(c).unwrap().iter().all(|v| v.is_finite()));
    }
}
