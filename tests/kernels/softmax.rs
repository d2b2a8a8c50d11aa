use crate::common::*;
use atedm::ops::softmax;
use atedm::DType;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, .. ProptestConfig::default() })]

    #[test]
    fn softmax_matches_cpu(rows in 1usize..40, n in 1usize..700, scale in -2f32..2.0, seed in any::<u64>()) {
        let mut r = rng(seed);
        for dtype in DTYPES {
            // Large offsets: without the max subtraction exp would overflow.
            let x: Vec<f32> = rand_vec(&mut r, rows * n, 8.0).iter().map(|v| v + 60.0).collect();
            let x = round_to(dtype, &x);
            let shape = [rows, n];
            let xt = upload(&x, &shape, dtype);
            let out = softmax::softmax(ctx(), &xt, scale).unwrap();
            prop_assert_eq!(out.shape(), &shape[..]);
            let want = softmax::cpu_softmax(&x, n, scale);
            assert_close(&download(&out), &want, tol(dtype), &format!("softmax {shape:?} scale={scale} {dtype}"));
        }
    }
}

/// Rows of attention-like length with a rank-4 shape; each row sums to 1.
#[test]
fn softmax_rank4_rows_sum_to_one() {
    let shape = [2, 3, 5, 1029];
    let n = shape.iter().product();
    let mut r = rng(11);
    let x = rand_vec(&mut r, n, 30.0);
    let xt = upload(&x, &shape, DType::F32);
    let out = softmax::softmax(ctx(), &xt, 0.125).unwrap();
    let got = download(&out);
    assert_close(
        &got,
        &softmax::cpu_softmax(&x, 1029, 0.125),
        tol(DType::F32),
        "softmax rank4",
    );
    for row in got.chunks(1029) {
        let s: f32 = row.iter().sum();
        assert!((s - 1.0).abs() < 1e-4, "row sum {s}");
    }
}

#[test]
fn bad_inputs_are_errors() {
    let c = ctx();
    let idx = atedm::Tensor::from_u32(c, &[1, 2, 3], &[3]).unwrap();
    let e = softmax::softmax(c, &idx, 1.0).unwrap_err().to_string();
    assert!(e.contains("softmax") && e.contains("u32"), "{e}");
}
