//! A UNet step is one command submission: no readback and no upload inside the step splits it
//! (its own test binary, so no other test submits on the shared context meanwhile).
mod common;

use atedm::model::load::load_unet;
use atedm::model::unet::PruneStep;
use atedm::prune::flops::{PruneMode, PruneSettings};
use atedm::prune::tome::TomeSettings;
use atedm::DType;
use common::*;

#[test]
fn a_unet_step_is_one_submission_with_and_without_pruning() {
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
    let atedm = PruneSettings {
        mode: PruneMode::AtEdm,
        keep_ratio: 0.5,
        ..Default::default()
    };
    let tome = PruneSettings {
        mode: PruneMode::Tome,
        tome: TomeSettings {
            merge_mlp: true,
            ..Default::default()
        },
        ..Default::default()
    };
    for (name, settings) in [
        ("full", PruneSettings::default()),
        ("AT-EDM", atedm),
        ("ToMe", tome),
    ] {
        c.wait().unwrap();
        let before = c.submissions();
        let (out, records) = unet
            .forward_pruned(
                c,
                &x,
                &PruneStep {
                    settings,
                    step: 7,
                    steps: 8,
                },
            )
            .unwrap();
        c.flush().unwrap();
        assert_eq!(
            c.submissions() - before,
            1,
            "{name}: one submission per step"
        );
        // And the step did the work (the records exist, the output is finite).
        assert!(name == "full" || !(records.stacks.is_empty() && records.merges.is_empty()));
        assert!(download(&out).iter().all(|v| v.is_finite()));
    }
}
