use crate::common::*;
use atedm::ops::norm;
use atedm::DType;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, .. ProptestConfig::default() })]

    #[test]
    fn group_norm_matches_cpu(
        b in 1usize..3, groups in 1usize..6, cpg in 1usize..5,
        spatial in prop::collection::vec(1usize..24, 0..=2),
        silu in any::<bool>(), seed in any::<u64>(),
    ) {
        let c = groups * cpg;
        let mut shape = vec![b, c];
        shape.extend(&spatial);
        let n: usize = shape.iter().product();
        let mut r = rng(seed);
        for dtype in DTYPES {
            // An offset mean checks the two-pass variance.
            let x: Vec<f32> = rand_vec(&mut r, n, 2.0).iter().map(|v| v + 3.0).collect();
            let x = round_to(dtype, &x);
            let gamma = round_to(dtype, &rand_vec(&mut r, c, 1.5));
            let beta = round_to(dtype, &rand_vec(&mut r, c, 1.0));
            let (xt, gt, bt) = (upload(&x, &shape, dtype), upload(&gamma, &[c], dtype), upload(&beta, &[c], dtype));
            let out = norm::group_norm(ctx(), &xt, groups, &gt, &bt, 1e-5, silu).unwrap();
            prop_assert_eq!(out.shape(), shape.as_slice());
            let want = norm::cpu_group_norm(&x, &shape, groups, &gamma, &beta, 1e-5, silu);
            assert_close(&download(&out), &want, tol(dtype), &format!("group_norm {shape:?} g={groups} silu={silu} {dtype}"));
        }
    }

    #[test]
    fn layer_norm_matches_cpu(rows in 1usize..40, c in 1usize..700, with_beta in any::<bool>(), seed in any::<u64>()) {
        let mut r = rng(seed);
        for dtype in DTYPES {
            let x: Vec<f32> = rand_vec(&mut r, rows * c, 2.0).iter().map(|v| v - 1.5).collect();
            let x = round_to(dtype, &x);
            let gamma = round_to(dtype, &rand_vec(&mut r, c, 1.5));
            let beta = round_to(dtype, &rand_vec(&mut r, c, 1.0));
            let bt = upload(&beta, &[c], dtype);
            let shape = [rows, c];
            let (xt, gt) = (upload(&x, &shape, dtype), upload(&gamma, &[c], dtype));
            let out = norm::layer_norm(ctx(), &xt, &gt, with_beta.then_some(&bt), 1e-5).unwrap();
            let want = norm::cpu_layer_norm(&x, &gamma, with_beta.then_some(beta.as_slice()), 1e-5);
            assert_close(&download(&out), &want, tol(dtype), &format!("layer_norm {shape:?} beta={with_beta} {dtype}"));
        }
    }
}

/// A group far larger than the workgroup (the strided loop), at a 3-D shape [B, C, H, W] with
/// SD-XL's 32 groups; f32 sums of ~5000 elements per group stay well within 1e-4.
#[test]
fn group_norm_large_groups() {
    let shape = [2, 64, 37, 41];
    let n: usize = shape.iter().product();
    let mut r = rng(7);
    let x = rand_vec(&mut r, n, 3.0);
    let gamma = rand_vec(&mut r, 64, 1.0);
    let beta = rand_vec(&mut r, 64, 1.0);
    let dt = DType::F32;
    let (xt, gt, bt) = (
        upload(&x, &shape, dt),
        upload(&gamma, &[64], dt),
        upload(&beta, &[64], dt),
    );
    let out = norm::group_norm(ctx(), &xt, 32, &gt, &bt, 1e-6, true).unwrap();
    let want = norm::cpu_group_norm(&x, &shape, 32, &gamma, &beta, 1e-6, true);
    assert_close(&download(&out), &want, tol(dt), "group_norm large");
}

/// Rank-3 LayerNorm (tokens) with rows > the dispatch grid's one-dimension limit is covered by
/// ctx.grid; here a rank-3 input checks the row flattening.
#[test]
fn layer_norm_rank3() {
    let shape = [2, 5, 77];
    let mut r = rng(3);
    let x = rand_vec(&mut r, 2 * 5 * 77, 1.0);
    let g = rand_vec(&mut r, 77, 1.0);
    let dt = DType::F32;
    let (xt, gt) = (upload(&x, &shape, dt), upload(&g, &[77], dt));
    let out = norm::layer_norm(ctx(), &xt, &gt, None, 1e-5).unwrap();
    assert_eq!(out.shape(), &shape);
    assert_close(
        &download(&out),
        &norm::cpu_layer_norm(&x, &g, None, 1e-5),
        tol(dt),
        "layer_norm rank3",
    );
}

#[test]
fn bad_shapes_and_dtypes_are_errors() {
    let c = ctx();
    let f = DType::F32;
    let x = upload(&[1.0; 2 * 6 * 4], &[2, 6, 4], f);
    let g6 = upload(&[1.0; 6], &[6], f);
    let g5 = upload(&[1.0; 5], &[5], f);
    let e = norm::group_norm(c, &x, 4, &g6, &g6, 1e-5, false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("group_norm") && e.contains("[2, 6, 4]") && e.contains("groups=4"),
        "{e}"
    );
    let e = norm::group_norm(c, &x, 0, &g6, &g6, 1e-5, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("group_norm") && e.contains("groups=0"), "{e}");
    let e = norm::group_norm(c, &x, 3, &g5, &g6, 1e-5, false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("group_norm") && e.contains("gamma") && e.contains("[5]"),
        "{e}"
    );
    let e = norm::group_norm(c, &x, 3, &g6, &g5, 1e-5, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("beta") && e.contains("[5]"), "{e}");
    let e = norm::group_norm(c, &g6, 3, &g6, &g6, 1e-5, false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("group_norm") && e.contains("rank >= 2") && e.contains("[6]"),
        "{e}"
    );
    let h = upload(&[1.0; 6], &[6], DType::F16);
    let e = norm::group_norm(c, &x, 3, &h, &g6, 1e-5, false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("group_norm") && e.contains("mixed dtypes"),
        "{e}"
    );

    let e = norm::layer_norm(c, &x, &g6, None, 1e-5)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("layer_norm") && e.contains("[6]") && e.contains("[2, 6, 4]"),
        "{e}"
    );
    let g4 = upload(&[1.0; 4], &[4], f);
    let e = norm::layer_norm(c, &x, &g4, Some(&g6), 1e-5)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("layer_norm") && e.contains("beta") && e.contains("[6]"),
        "{e}"
    );
    let idx = atedm::Tensor::from_u32(c, &[1, 2, 3, 4], &[4]).unwrap();
    let e = norm::layer_norm(c, &idx, &g4, None, 1e-5)
        .unwrap_err()
        .to_string();
    assert!(e.contains("layer_norm") && e.contains("u32"), "{e}");
}
