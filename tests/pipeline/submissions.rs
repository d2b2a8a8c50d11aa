//! A UNet step is one command submission: no readback and no upload inside the step splits it
//! (on a context of its own, so no other test submits on it meanwhile).

use crate::common::*;
use atedm::gpu::{ContextOptions, GpuContext};
use atedm::model::load::load_unet;
use atedm::model::unet::PruneStep;
use atedm::prune::tome::TomeSettings;
use atedm::prune::Pruning;
use atedm::DType;

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
    let inputs = FixtureInputs::load_on(
        c,
        &root("tests/fixtures/unet/tiny-b/inputs.safetensors"),
        DType::F32,
    );
    let x = inputs.unet_inputs();
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
