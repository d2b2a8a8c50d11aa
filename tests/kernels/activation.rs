use crate::common::*;
use atedm::ops::activation::{self, Activation};
use atedm::DType;
use proptest::prelude::*;

const ACTS: [Activation; 3] = [Activation::Gelu, Activation::QuickGelu, Activation::Silu];

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, .. ProptestConfig::default() })]

    #[test]
    fn activation_matches_cpu(rows in 1usize..40, w in 1usize..700, a in 0usize..3, seed in any::<u64>()) {
        let act = ACTS[a];
        let mut r = rng(seed);
        for dtype in DTYPES {
            let x = round_to(dtype, &rand_vec(&mut r, rows * w, 7.0));
            let xt = upload(&x, &[rows, w], dtype);
            let out = activation::activation(ctx(), &xt, act).unwrap();
            prop_assert_eq!(out.shape(), &[rows, w][..]);
            let want = activation::cpu_activation(&x, act);
            assert_close(&download(&out), &want, tol(dtype), &format!("{act:?} [{rows}, {w}] {dtype}"));
        }
    }

    #[test]
    fn geglu_matches_cpu(b in 1usize..3, rows in 1usize..20, f in 1usize..350, seed in any::<u64>()) {
        let mut r = rng(seed);
        for dtype in DTYPES {
            let x = round_to(dtype, &rand_vec(&mut r, b * rows * 2 * f, 5.0));
            let xt = upload(&x, &[b, rows, 2 * f], dtype);
            let out = activation::geglu(ctx(), &xt).unwrap();
            prop_assert_eq!(out.shape(), &[b, rows, f][..]);
            let want = activation::cpu_geglu(&x, 2 * f);
            assert_close(&download(&out), &want, tol(dtype), &format!("geglu [{b}, {rows}, {}] {dtype}", 2 * f));
        }
    }
}

/// The CPU erf against known values (so the GELU reference itself can be trusted).
#[test]
fn cpu_erf_is_accurate() {
    let known = [
        (0.0, 0.0),
        (0.1, 0.1124629160182849),
        (0.5, 0.5204998778130465),
        (1.0, 0.8427007929497149),
        (2.0, 0.9953222650189527),
        (3.0, 0.9999779095030014),
        (-1.5, -0.9661051464753108),
    ];
    for (x, want) in known {
        let got = activation::erf_f64(x);
        assert!(
            (got - want).abs() <= 1e-15 * want.abs().max(1e-300) + 1e-16,
            "erf({x}) = {got}, want {want}"
        );
    }
}

/// GELU across the whole range including the tails (erf near +-1, large |x|), pointwise relative
/// to max(|ref|, 1e-3) so the near-zero negative tail is checked too: the kernel's erfc has
/// relative error < 1.2e-7 (plus ~x^2/2 * 6e-8 from the f32 exp), far below 1e-4.
#[test]
fn gelu_dense_sweep() {
    let x: Vec<f32> = (0..20001).map(|i| -10.0 + i as f32 * 1e-3).collect();
    let xt = upload(&x, &[x.len()], DType::F32);
    let out = activation::activation(ctx(), &xt, Activation::Gelu).unwrap();
    let got = download(&out);
    let want = activation::cpu_activation(&x, Activation::Gelu);
    for i in 0..x.len() {
        let err = (got[i] - want[i]).abs();
        assert!(
            err <= 1e-4 * want[i].abs().max(1e-3),
            "gelu({}) = {}, want {}",
            x[i],
            got[i],
            want[i]
        );
    }
}

/// Saturation: huge |x| gives finite results (no inf/inf), x for large positive x, ~0 for large negative.
#[test]
fn activations_saturate() {
    let x = [-1e4f32, -200.0, -90.0, 90.0, 200.0, 1e4];
    for act in ACTS {
        let xt = upload(&x, &[6], DType::F32);
        let got = download(&activation::activation(ctx(), &xt, act).unwrap());
        for (g, v) in got.iter().zip(x) {
            let want = if v > 0.0 { v } else { 0.0 };
            assert!((g - want).abs() <= 1e-4 * v.abs(), "{act:?}({v}) = {g}");
        }
    }
}

#[test]
fn bad_shapes_and_dtypes_are_errors() {
    let c = ctx();
    let x = upload(&[1.0; 6], &[2, 3], DType::F32);
    let e = activation::geglu(c, &x).unwrap_err().to_string();
    assert!(
        e.contains("geglu") && e.contains("[2, 3]") && e.contains("even"),
        "{e}"
    );
    let idx = atedm::Tensor::from_u32(c, &[1, 2], &[2]).unwrap();
    let e = activation::activation(c, &idx, Activation::Silu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("activation") && e.contains("u32"), "{e}");
    let e = activation::geglu(c, &idx).unwrap_err().to_string();
    assert!(e.contains("geglu") && e.contains("u32"), "{e}");
}
