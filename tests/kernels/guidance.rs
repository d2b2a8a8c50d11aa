use crate::common::*;
use atedm::ops::guidance;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, .. ProptestConfig::default() })]

    #[test]
    fn guidance_matches_cpu(images in 1usize..3, n in 2usize..2000, g in 0f32..12.0,
                            rescale in prop::sample::select(vec![0.0f32, 0.3, 0.7, 1.0]), seed in any::<u64>()) {
        let mut r = rng(seed);
        for dtype in DTYPES {
            let eps = round_to(dtype, &rand_vec(&mut r, 2 * images * n, 2.0));
            let t = upload(&eps, &[2 * images, n], dtype);
            let out = guidance::guidance(ctx(), &t, g, rescale).unwrap();
            prop_assert_eq!(out.shape(), &[images, n]);
            let want = guidance::cpu_guidance(&eps, n, g, rescale);
            // The cfg value itself is |u + g (c - u)| <= (1 + 2g) max|eps|: one f32 rounding of
            // the output per element plus, with rescale, f32 sums over n elements.
            assert_close(&download(&out), &want, tol(dtype), &format!("guidance g {g} phi {rescale} {dtype}"));
        }
    }
}

#[test]
fn bad_guidance_inputs_are_errors() {
    let t = upload(&[1.0; 6], &[3, 2], atedm::DType::F32);
    let e = guidance::guidance(ctx(), &t, 5.0, 0.0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("guidance") && e.contains("[3, 2]"), "{e}");
    let t = upload(&[1.0; 4], &[2, 2], atedm::DType::F32);
    assert!(guidance::guidance(ctx(), &t, 5.0, 1.5)
        .unwrap_err()
        .to_string()
        .contains("rescale"));
}
