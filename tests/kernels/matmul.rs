use crate::common::*;
use atedm::ops::matmul::{self, MatmulKernel, MatmulOptions};
use atedm::DType;
use proptest::prelude::*;

/// Stored shape of an operand with logical `rows x cols` (swapped when transposed), with an
/// optional batch dimension (`None`: rank 2).
fn stored(batch: Option<usize>, rows: usize, cols: usize, trans: bool) -> Vec<usize> {
    let (r, c) = if trans { (cols, rows) } else { (rows, cols) };
    match batch {
        Some(b) => vec![b, r, c],
        None => vec![r, c],
    }
}

/// Batch layouts: (a batch, b batch) with rank-2 (`None`) and batch-1 broadcasting.
fn batches() -> impl Strategy<Value = (Option<usize>, Option<usize>)> {
    (1usize..4, 0u8..5).prop_map(|(n, kind)| match kind {
        0 => (None, None),
        1 => (Some(n), Some(n)),
        2 => (None, Some(n)),
        3 => (Some(n), None),
        _ => (Some(1), Some(n)),
    })
}

/// Every kernel and every tile height of the 8x8-block kernel.
const KERNELS: [MatmulKernel; 8] = [
    MatmulKernel::Tiled,
    MatmulKernel::Registers,
    MatmulKernel::Registers8,
    MatmulKernel::Registers8Rows(64),
    MatmulKernel::Registers8Rows(32),
    MatmulKernel::Registers8Rows(16),
    MatmulKernel::Registers8Rows(8),
    MatmulKernel::Registers10,
];

#[test]
fn reg8_tile_height_pads_rows_least() {
    // (rows, chosen tile height): the height that pads least, the tallest on a tie.
    for (m, want) in [
        (1, 8),
        (8, 8),
        (12, 16),
        (25, 32),
        (50, 8),
        (64, 64),
        (98, 8),
        (128, 64),
        (196, 8),
        (200, 8),
        (256, 64),
        (100, 8),
        (96, 32),
        (4096, 64),
        (4100, 8),
    ] {
        assert_eq!(matmul::reg8_tile_rows(m), want, "m = {m}");
    }
}

#[test]
fn ten_row_blocks_only_where_they_pad_clearly_less() {
    // (rows, 10-row blocks): 50 -> 50 rows instead of 56; 98 -> 100 instead of 104; 128 and 196
    // pad less (or as little) with 8; 4090 saves 6 rows, under 2%.
    for (m, want) in [
        (1, false),
        (10, true),
        (50, true),
        (98, true),
        (128, false),
        (196, false),
        (200, false),
        (4090, false),
    ] {
        assert_eq!(matmul::reg10_pays(m), want, "m = {m}");
    }
}

#[test]
fn every_tile_shape_matches_cpu_on_odd_shapes() {
    // Rows that leave a partial tile for every height, columns a partial 64-wide tile, batch 2
    // with transposed operands and both epilogues.
    let (m, n, k) = (37, 77, 19);
    let mut r = rng(7);
    for kernel in KERNELS {
        for dtype in DTYPES {
            let (sa, sb) = (stored(Some(2), m, k, true), stored(Some(2), k, n, true));
            let a = round_to(dtype, &rand_vec(&mut r, 2 * m * k, 1.0));
            let b = round_to(dtype, &rand_vec(&mut r, 2 * k * n, 1.0));
            let bias = round_to(dtype, &rand_vec(&mut r, n, 1.0));
            let res = round_to(dtype, &rand_vec(&mut r, 2 * m * n, 1.0));
            let (bias_t, res_t) = (upload(&bias, &[n], dtype), upload(&res, &[2, m, n], dtype));
            let opts = MatmulOptions {
                trans_a: true,
                trans_b: true,
                bias: Some(&bias_t),
                residual: Some(&res_t),
                kernel,
            };
            let out = matmul::matmul(
                ctx(),
                &upload(&a, &sa, dtype),
                &upload(&b, &sb, dtype),
                &opts,
            )
            .unwrap();
            let (want, _) =
                matmul::cpu_matmul(&a, &sa, &b, &sb, true, true, Some(&bias), Some(&res));
            assert_close(
                &download(&out),
                &want,
                tol(dtype),
                &format!("{kernel:?} {dtype}"),
            );
        }
    }
}

#[test]
fn unsupported_tile_height_is_an_error() {
    let a = upload(&[1.0; 4], &[2, 2], DType::F32);
    let opts = MatmulOptions {
        kernel: MatmulKernel::Registers8Rows(24),
        ..Default::default()
    };
    let err = matmul::matmul(ctx(), &a, &a, &opts)
        .unwrap_err()
        .to_string();
    assert!(err.contains("Registers8Rows(24)"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    #[test]
    fn matmul_matches_cpu(m in 1usize..130, n in 1usize..130, k in 1usize..130,
                          (ba, bb) in batches(), trans in 0u8..4, epi in 0u8..4, seed in any::<u64>(),
                          which in 0u8..8) {
        // Every kernel is checked whatever the adapter (Auto picks one of them).
        let kernel = KERNELS[which as usize];
        let (ta, tb) = (trans & 1 == 1, trans & 2 == 2);
        let sa = stored(ba, m, k, ta);
        let sb = stored(bb, k, n, tb);
        let batch = ba.unwrap_or(1).max(bb.unwrap_or(1));
        let out_shape = if ba.is_none() && bb.is_none() { vec![m, n] } else { vec![batch, m, n] };
        let mut r = rng(seed);
        for dtype in DTYPES {
            let a = round_to(dtype, &rand_vec(&mut r, sa.iter().product(), 1.0));
            let b = round_to(dtype, &rand_vec(&mut r, sb.iter().product(), 1.0));
            let bias = round_to(dtype, &rand_vec(&mut r, n, 1.0));
            let res = round_to(dtype, &rand_vec(&mut r, out_shape.iter().product(), 1.0));
            let (bias_t, res_t) = (upload(&bias, &[n], dtype), upload(&res, &out_shape, dtype));
            let use_bias = epi & 1 == 1;
            let use_res = epi & 2 == 2;
            let opts = MatmulOptions {
                trans_a: ta,
                trans_b: tb,
                bias: use_bias.then_some(&bias_t),
                residual: use_res.then_some(&res_t),
                kernel,
            };
            let (a_t, b_t) = (upload(&a, &sa, dtype), upload(&b, &sb, dtype));
            let out = matmul::matmul(ctx(), &a_t, &b_t, &opts).unwrap();
            let (want, want_shape) = matmul::cpu_matmul(
                &a, &sa, &b, &sb, ta, tb,
                use_bias.then_some(&bias[..]), use_res.then_some(&res[..]));
            prop_assert_eq!(out.shape(), want_shape.as_slice());
            prop_assert_eq!(out.shape(), out_shape.as_slice());
            assert_close(&download(&out), &want, tol(dtype),
                &format!("matmul {kernel:?} a {sa:?} b {sb:?} ta {ta} tb {tb} epi {epi} {dtype}"));
        }
    }

    #[test]
    fn linear_matches_cpu(lead in prop::collection::vec(1usize..6, 0..3), inf in 1usize..100,
                          outf in 1usize..100, epi in 0u8..4, seed in any::<u64>()) {
        let mut xs = lead.clone();
        xs.push(inf);
        let mut os = lead.clone();
        os.push(outf);
        let rows: usize = lead.iter().product();
        let mut r = rng(seed);
        for dtype in DTYPES {
            let x = round_to(dtype, &rand_vec(&mut r, rows * inf, 1.0));
            let w = round_to(dtype, &rand_vec(&mut r, outf * inf, 1.0));
            let bias = round_to(dtype, &rand_vec(&mut r, outf, 1.0));
            let res = round_to(dtype, &rand_vec(&mut r, rows * outf, 1.0));
            let (bias_t, res_t) = (upload(&bias, &[outf], dtype), upload(&res, &os, dtype));
            let (use_bias, use_res) = (epi & 1 == 1, epi & 2 == 2);
            let (x_t, w_t) = (upload(&x, &xs, dtype), upload(&w, &[outf, inf], dtype));
            let out = matmul::linear(ctx(), &x_t, &w_t,
                use_bias.then_some(&bias_t), use_res.then_some(&res_t)).unwrap();
            let (want, _) = matmul::cpu_matmul(&x, &[rows, inf], &w, &[outf, inf], false, true,
                use_bias.then_some(&bias[..]), use_res.then_some(&res[..]));
            prop_assert_eq!(out.shape(), os.as_slice());
            assert_close(&download(&out), &want, tol(dtype), &format!("linear x {xs:?} out {outf} {dtype}"));
        }
    }
}

#[test]
fn bad_shapes_and_dtypes_are_errors() {
    let c = ctx();
    let f = DType::F32;
    let t =
        |shape: &[usize], dtype: DType| upload(&vec![0.5; shape.iter().product()], shape, dtype);
    let none = MatmulOptions::default();
    let e = matmul::matmul(c, &t(&[2, 3], f), &t(&[4, 5], f), &none)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("matmul") && e.contains("[2, 3]") && e.contains("[4, 5]"),
        "{e}"
    );
    let e = matmul::matmul(c, &t(&[2, 2, 3], f), &t(&[3, 3, 5], f), &none)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("matmul") && e.contains("batch") && e.contains("[2, 2, 3]"),
        "{e}"
    );
    let e = matmul::matmul(c, &t(&[3], f), &t(&[3, 5], f), &none)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("matmul") && e.contains("rank") && e.contains("[3]"),
        "{e}"
    );
    let bias = t(&[4], f);
    let opts = MatmulOptions {
        bias: Some(&bias),
        ..Default::default()
    };
    let e = matmul::matmul(c, &t(&[2, 3], f), &t(&[3, 5], f), &opts)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("matmul") && e.contains("bias") && e.contains("[5]") && e.contains("[4]"),
        "{e}"
    );
    let res = t(&[5, 2], f);
    let opts = MatmulOptions {
        residual: Some(&res),
        ..Default::default()
    };
    let e = matmul::matmul(c, &t(&[2, 3], f), &t(&[3, 5], f), &opts)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("residual") && e.contains("[2, 5]") && e.contains("[5, 2]"),
        "{e}"
    );
    let e = matmul::matmul(c, &t(&[2, 3], f), &t(&[3, 5], DType::F16), &none)
        .unwrap_err()
        .to_string();
    assert!(e.contains("matmul") && e.contains("mixed dtypes"), "{e}");
    let idx = atedm::Tensor::from_u32(c, &[1; 6], &[2, 3]).unwrap();
    let e = matmul::matmul(c, &idx, &t(&[3, 5], f), &none)
        .unwrap_err()
        .to_string();
    assert!(e.contains("u32"), "{e}");
    let e = matmul::linear(c, &t(&[4, 3], f), &t(&[5, 4], f), None, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("linear") && e.contains("[4, 3]") && e.contains("[5, 4]"),
        "{e}"
    );
}
