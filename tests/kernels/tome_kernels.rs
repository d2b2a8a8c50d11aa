//! ToMe kernels (roles, merge plan, merge, unmerge) against their CPU references, over odd
//! grids, both destination modes, merge ratios up to the cap, f32 and f16.

use crate::common::*;
use atedm::prune::tome::{self, BlockSite, TomeSettings};
use atedm::{DType, Tensor};
use proptest::prelude::*;

fn settings(ratio: f64, random: bool, seed: u32) -> TomeSettings {
    TomeSettings {
        ratio,
        random,
        seed,
        ..Default::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, .. ProptestConfig::default() })]

    #[test]
    fn roles_match_cpu(h in 1usize..13, w in 1usize..13, random in any::<bool>(),
                       seed in any::<u32>(), block in 0u32..100, step in 0u32..60) {
        let site = BlockSite { h, w, block_id: block, step };
        let s = settings(0.5, random, seed);
        let got = tome::roles(ctx(), &site, &s).unwrap().to_u32_vec(ctx()).unwrap();
        let want = tome::cpu_roles(&site, &s);
        prop_assert_eq!(&got, &want);
        // A permutation: every token once; one destination per 2x2 window.
        let mut sorted = got.clone();
        sorted.sort_unstable();
        prop_assert_eq!(sorted, (0..(h * w) as u32).collect::<Vec<_>>());
        let (ndst, _) = tome::grid_roles(h, w);
        for &t in &got[..ndst] {
            let (y, x) = (t as usize / w, t as usize % w);
            prop_assert!(y < h / 2 * 2 && x < w / 2 * 2);
        }
    }

    #[test]
    fn plan_merge_unmerge_match_cpu(b in 1usize..3, h in 2usize..11, w in 2usize..11,
                                    c in 1usize..40, ratio in 0.05f64..1.0,
                                    random in any::<bool>(), seed in any::<u64>()) {
        let n = h * w;
        let mut r = rng(seed);
        let site = BlockSite { h, w, block_id: (seed % 97) as u32, step: (seed % 13) as u32 };
        let s = settings(ratio, random, seed as u32);
        for dtype in DTYPES {
            let x = round_to(dtype, &rand_vec(&mut r, b * n * c, 1.0));
            let xt = upload(&x, &[b, n, c], dtype);
            let Some(plan) = tome::plan(ctx(), &xt, &site, &s).unwrap() else {
                prop_assert_eq!(tome::merged_count(h, w, ratio), 0);
                continue;
            };
            let slot = plan.slot.to_u32_vec(ctx()).unwrap();
            let (want_slot, gap) = tome::cpu_slots(&x, b, c, &site, &s);
            // Decisions in f32 on the GPU, f64 here: equal unless two scores are within
            // f32 rounding of each other (checked through the reference's smallest gap).
            if gap > 1e-4 {
                prop_assert_eq!(&slot, &want_slot, "slots, {:?} {} gap {:e}", site, dtype, gap);
            }
            prop_assert_eq!(plan.n_out, n - plan.r);
            prop_assert!(slot.iter().all(|&v| (v as usize) < plan.n_out));
            // Merge and unmerge follow the GPU's own slots exactly (their references take them).
            let y = round_to(dtype, &rand_vec(&mut r, b * n * c, 1.0));
            let merged = tome::merge(ctx(), &upload(&y, &[b, n, c], dtype), &plan).unwrap();
            let want_m = tome::cpu_merge(&y, b, n, c, &slot, plan.n_out);
            assert_close(&download(&merged), &want_m, tol(dtype), &format!("merge {dtype}"));
            let res = round_to(dtype, &rand_vec(&mut r, b * n * c, 1.0));
            let z = round_to(dtype, &want_m);
            let out = tome::unmerge_add(ctx(), &upload(&z, &[b, plan.n_out, c], dtype), &plan,
                                        &upload(&res, &[b, n, c], dtype)).unwrap();
            let want_u = tome::cpu_unmerge_add(&z, b, n, c, &slot, plan.n_out, &res);
            assert_close(&download(&out), &want_u, tol(dtype), &format!("unmerge {dtype}"));
        }
    }
}

#[test]
fn identical_tokens_merge_into_the_lowest_destination_and_average_exactly() {
    // Every token equal: all cosines are 1, so every merged source picks destination 0 (first
    // maximum) and the merged sources are the lowest-index sources (ties to the lower index).
    let (h, w, c) = (4, 6, 3);
    let n = h * w;
    let x = vec![0.5f32; n * c];
    let site = BlockSite {
        h,
        w,
        block_id: 0,
        step: 0,
    };
    let s = settings(0.5, false, 0);
    let plan = tome::plan(ctx(), &upload(&x, &[1, n, c], DType::F32), &site, &s)
        .unwrap()
        .unwrap();
    assert_eq!(plan.r, 12);
    let slot = plan.slot.to_u32_vec(ctx()).unwrap();
    let (ndst, nsrc) = tome::grid_roles(h, w);
    assert_eq!((ndst, nsrc), (6, 18));
    let nunm = nsrc - plan.r;
    let roles = tome::cpu_roles(&site, &s);
    for (i, &t) in roles.iter().enumerate() {
        let want = if i < ndst {
            nunm + i
        } else if i - ndst < plan.r {
            nunm // merged into destination 0
        } else {
            i - ndst - plan.r
        };
        assert_eq!(slot[t as usize], want as u32, "token {t}");
    }
    // Merge of a ramp: destination 0 averages itself (token 0) and the 12 first sources.
    let y: Vec<f32> = (0..n).map(|t| t as f32).collect();
    let m = download(&tome::merge(ctx(), &upload(&y, &[1, n, 1], DType::F32), &plan).unwrap());
    let members: Vec<u32> = std::iter::once(roles[0])
        .chain(roles[ndst..ndst + plan.r].iter().copied())
        .collect();
    let mean = members.iter().map(|&t| t as f32).sum::<f32>() / members.len() as f32;
    assert!((m[nunm] - mean).abs() < 1e-5, "{} vs {mean}", m[nunm]);
}

#[test]
fn ratio_caps_at_the_sources_and_tiny_ratios_merge_nothing() {
    assert_eq!(tome::merged_count(4, 4, 1.0), 12);
    assert_eq!(tome::merged_count(4, 4, 0.75), 12);
    assert_eq!(tome::merged_count(3, 5, 1.0), 13); // 2 windows, 13 sources
    assert_eq!(tome::merged_count(4, 4, 0.05), 0);
    let x = Tensor::zeros(ctx(), &[1, 16, 4], DType::F32).unwrap();
    let site = BlockSite {
        h: 4,
        w: 4,
        block_id: 0,
        step: 0,
    };
    assert!(tome::plan(ctx(), &x, &site, &settings(0.05, true, 1))
        .unwrap()
        .is_none());
    // Zero rows have no direction: the guard keeps the plan finite and valid.
    let plan = tome::plan(ctx(), &x, &site, &settings(1.0, true, 1))
        .unwrap()
        .unwrap();
    assert_eq!(plan.n_out, 4);
    assert!(plan.slot.to_u32_vec(ctx()).unwrap().iter().all(|&v| v < 4));
}

#[test]
fn bad_inputs_are_errors() {
    let c = ctx();
    let x = Tensor::zeros(c, &[1, 16, 4], DType::F32).unwrap();
    let site = BlockSite {
        h: 4,
        w: 5,
        block_id: 0,
        step: 0,
    };
    let e = tome::plan(c, &x, &site, &settings(0.5, true, 0))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("4x5"), "{e}");
    let ok = BlockSite { w: 4, ..site };
    for bad in [0.0, -0.5, 1.5, f64::NAN] {
        let e = tome::plan(c, &x, &ok, &settings(bad, true, 0))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("merge ratio"), "{e}");
    }
    let none = TomeSettings {
        merge_attn: false,
        ..settings(0.5, true, 0)
    };
    assert!(tome::plan(c, &x, &ok, &none).is_err());
    let plan = tome::plan(c, &x, &ok, &settings(0.5, true, 0))
        .unwrap()
        .unwrap();
    let wrong = Tensor::zeros(c, &[1, 15, 4], DType::F32).unwrap();
    assert!(tome::merge(c, &wrong, &plan).is_err());
    assert!(tome::unmerge_add(c, &wrong, &plan, &x).is_err());
}
