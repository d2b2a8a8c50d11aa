use crate::common::*;
use atedm::ops::attention::{self, AttentionOptions, MapKernel};
use atedm::{DType, Tensor};
use proptest::prelude::*;

const HEAD_DIMS: [usize; 5] = [8, 13, 16, 40, 64];

/// Runs attention_with_map (and plain attention) on random data and compares with the CPU.
///
/// Tolerances (relative to max|ref|):
/// - output f32: 1e-4 (`tol`): f32 dot products and online-softmax rescaling of <= 80 keys;
///   the only extra error over the f64 reference is exp() (a few ulp) and summation order.
/// - output f16: 2e-3 (`tol`): q/k/v are rounded to f16 for both sides, the kernel accumulates
///   in f32, so the difference is the final f16 rounding (2^-11 = 4.9e-4 of |out| <= max|ref|)
///   plus f32 noise; 2e-3 leaves a 4x margin.
/// - map: same bounds; entries are in [0, 1] and computed in f32 as exp(s - lse) averaged over
///   heads, then rounded once to the storage dtype.
/// - row sums of the map: f32 1e-4 (<= 80 terms each with exp error ~1e-6); f16 2e-3 (each
///   stored entry carries <= 2^-11 relative rounding, so the row sum is off by <= 4.9e-4).
#[allow(clippy::too_many_arguments)]
fn check_case(
    batch: usize,
    nq: usize,
    nk: usize,
    heads: usize,
    hd: usize,
    causal: bool,
    scale: Option<f32>,
    seed: u64,
) {
    let width = heads * hd;
    let mut r = rng(seed);
    let opts = AttentionOptions {
        heads,
        scale,
        causal,
    };
    for dtype in DTYPES {
        let q = round_to(dtype, &rand_vec(&mut r, batch * nq * width, 1.5));
        let k = round_to(dtype, &rand_vec(&mut r, batch * nk * width, 1.5));
        let v = round_to(dtype, &rand_vec(&mut r, batch * nk * width, 1.0));
        let (qt, kt, vt) = (
            upload(&q, &[batch, nq, width], dtype),
            upload(&k, &[batch, nk, width], dtype),
            upload(&v, &[batch, nk, width], dtype),
        );
        let what = format!("B{batch} Nq{nq} Nk{nk} H{heads} D{hd} causal={causal} {dtype}");
        let (want_out, want_map) =
            attention::cpu_attention(&q, &k, &v, batch, nq, nk, width, &opts);
        // Both map kernels whatever the adapter (Auto picks one of them).
        let kernel = if seed % 2 == 0 {
            MapKernel::Staged
        } else {
            MapKernel::Registers8
        };
        let what = format!("{what} {kernel:?}");
        let (out, map) =
            attention::attention_with_map_kernel(ctx(), &qt, &kt, &vt, &opts, kernel).unwrap();
        assert_eq!(out.shape(), &[batch, nq, width]);
        assert_eq!(map.shape(), &[batch, nq, nk]);
        assert_eq!(map.dtype(), dtype);
        assert_close(
            &download(&out),
            &want_out,
            tol(dtype),
            &format!("out {what}"),
        );
        let got_map = download(&map);
        assert_close(&got_map, &want_map, tol(dtype), &format!("map {what}"));
        for (row, vals) in got_map.chunks(nk).enumerate() {
            let s: f32 = vals.iter().sum();
            assert!(
                (s - 1.0).abs() <= tol(dtype),
                "{what}: map row {row} sums to {s}"
            );
        }
        let plain = attention::attention(ctx(), &qt, &kt, &vt, &opts).unwrap();
        assert_close(
            &download(&plain),
            &want_out,
            tol(dtype),
            &format!("plain out {what}"),
        );
        // Both query tiles of the flash pass whatever the adapter (Auto picks one of them).
        for tile in [64, 8] {
            let o = attention::attention_with_tile(ctx(), &qt, &kt, &vt, &opts, tile).unwrap();
            assert_close(
                &download(&o),
                &want_out,
                tol(dtype),
                &format!("tile {tile} {what}"),
            );
        }
    }
}

#[test]
fn head_dim_64_kernels_match_cpu() {
    // The head_dim-64 flash kernels (UNet): key counts below, at and past the 4-key groups and
    // the 32-key staged tiles (3, 32, 33, 77), odd query counts, both query tiles and map
    // kernels (check_case); causal d = 64 takes the generic pass.
    for (i, (batch, nq, nk, heads)) in [(2, 37, 77, 3), (1, 5, 3, 2), (1, 70, 33, 1), (2, 9, 32, 2)]
        .into_iter()
        .enumerate()
    {
        check_case(batch, nq, nk, heads, 64, false, None, i as u64);
    }
    check_case(1, 19, 19, 2, 64, true, None, 5);
}

#[test]
fn flash_query_tile_fits_few_queries_on_cpu_adapters() {
    let c = ctx();
    for (nq, cpu_tile) in [
        (1, 8),
        (25, 8),
        (64, 64),
        (98, 8),
        (128, 64),
        (256, 64),
        (4096, 64),
    ] {
        let want = if c.is_cpu_adapter() { cpu_tile } else { 64 };
        assert_eq!(attention::flash_query_tile(c, nq), want, "nq {nq}");
    }
    let t = upload(&[0.0; 8], &[1, 2, 4], DType::F32);
    let err = attention::attention_with_tile(c, &t, &t, &t, &AttentionOptions::new(1), 16)
        .unwrap_err()
        .to_string();
    assert!(err.contains("query tile 16"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, .. ProptestConfig::default() })]

    #[test]
    fn cross_attention_matches_cpu(batch in 1usize..=2, nq2 in 0usize..40, nk2 in 0usize..40,
                                   heads in 1usize..=4, d in 0usize..5, seed in any::<u64>()) {
        // Odd sizes, Nq != Nk.
        let (nq, mut nk) = (2 * nq2 + 1, 2 * nk2 + 1);
        if nk == nq { nk += 2; }
        check_case(batch, nq, nk, heads, HEAD_DIMS[d], false, None, seed);
    }

    #[test]
    fn self_attention_matches_cpu(batch in 1usize..=2, n2 in 0usize..40, heads in 1usize..=4,
                                  d in 0usize..5, causal in any::<bool>(), seed in any::<u64>()) {
        check_case(batch, 2 * n2 + 1, 2 * n2 + 1, heads, HEAD_DIMS[d], causal, None, seed);
    }
}

#[test]
fn multiple_query_tiles_and_explicit_scale() {
    // Nq = 150 spans three 64-query flash tiles; Nk = 300 spans several key tiles (D = 40 gives
    // 51 keys per tile). Causal with N = 130 crosses tile boundaries of both passes.
    check_case(1, 150, 300, 2, 40, false, Some(0.3), 1);
    check_case(2, 130, 130, 2, 16, true, None, 2);
    check_case(1, 9, 7, 1, 128, false, None, 3);
}

#[test]
fn sharp_softmax_is_stable() {
    // Large scores (scale 8): the online softmax must rescale without overflow.
    check_case(1, 33, 47, 2, 16, false, Some(8.0), 4);
}

#[test]
fn bad_shapes_and_dtypes_are_errors() {
    let c = ctx();
    let t = |shape: &[usize], dtype: DType| {
        let n: usize = shape.iter().product();
        upload(&vec![0.5; n], shape, dtype)
    };
    let f = DType::F32;
    let opts = AttentionOptions::new(3);
    let err = |q: &Tensor, k: &Tensor, v: &Tensor, o: &AttentionOptions| {
        let e = attention::attention(c, q, k, v, o).unwrap_err().to_string();
        let e2 = attention::attention_with_map(c, q, k, v, o)
            .unwrap_err()
            .to_string();
        assert_eq!(e, e2);
        assert!(e.contains("attention"), "{e}");
        e
    };
    // width 16 not divisible by 3 heads
    let e = err(
        &t(&[1, 4, 16], f),
        &t(&[1, 5, 16], f),
        &t(&[1, 5, 16], f),
        &opts,
    );
    assert!(e.contains("16") && e.contains("heads 3"), "{e}");
    // mismatched batch
    let e = err(
        &t(&[1, 4, 12], f),
        &t(&[2, 5, 12], f),
        &t(&[2, 5, 12], f),
        &opts,
    );
    assert!(e.contains("[1, 4, 12]") && e.contains("[2, 5, 12]"), "{e}");
    // mismatched width
    let e = err(
        &t(&[1, 4, 12], f),
        &t(&[1, 5, 24], f),
        &t(&[1, 5, 24], f),
        &opts,
    );
    assert!(e.contains("[1, 5, 24]"), "{e}");
    // k / v disagree
    let e = err(
        &t(&[1, 4, 12], f),
        &t(&[1, 5, 12], f),
        &t(&[1, 6, 12], f),
        &opts,
    );
    assert!(e.contains("[1, 6, 12]"), "{e}");
    // rank
    let e = err(
        &t(&[4, 12], f),
        &t(&[1, 5, 12], f),
        &t(&[1, 5, 12], f),
        &opts,
    );
    assert!(e.contains("[4, 12]"), "{e}");
    // head_dim too large
    let e = err(
        &t(&[1, 2, 129], f),
        &t(&[1, 2, 129], f),
        &t(&[1, 2, 129], f),
        &AttentionOptions::new(1),
    );
    assert!(e.contains("129"), "{e}");
    // causal with Nq != Nk
    let causal = AttentionOptions {
        heads: 3,
        scale: None,
        causal: true,
    };
    let e = err(
        &t(&[1, 4, 12], f),
        &t(&[1, 5, 12], f),
        &t(&[1, 5, 12], f),
        &causal,
    );
    assert!(e.contains("causal"), "{e}");
    // dtypes: mixed, and u32
    let e = err(
        &t(&[1, 4, 12], f),
        &t(&[1, 5, 12], DType::F16),
        &t(&[1, 5, 12], f),
        &opts,
    );
    assert!(e.contains("mixed dtypes"), "{e}");
    let idx = Tensor::from_u32(c, &[0; 60], &[1, 5, 12]).unwrap();
    let e = err(&t(&[1, 4, 12], f), &idx, &idx, &opts);
    assert!(e.contains("u32"), "{e}");
}
