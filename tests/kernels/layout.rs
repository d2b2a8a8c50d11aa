use crate::common::*;
use atedm::ops::layout;
use atedm::{DType, Tensor};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, .. ProptestConfig::default() })]

    /// Concat of 1..=3 tensors of random rank-1..=4 shapes along a random dim.
    #[test]
    fn concat_matches_cpu(shape in prop::collection::vec(1usize..7, 1..=4), dim_pick in any::<usize>(),
                          sizes in prop::collection::vec(1usize..9, 1..=3), seed in any::<u64>()) {
        let dim = dim_pick % shape.len();
        let mut r = rng(seed);
        for dtype in DTYPES {
            let shapes: Vec<Vec<usize>> = sizes.iter().map(|&s| { let mut sh = shape.clone(); sh[dim] = s; sh }).collect();
            let data: Vec<Vec<f32>> = shapes.iter().map(|s| round_to(dtype, &rand_vec(&mut r, s.iter().product(), 2.0))).collect();
            let ts: Vec<Tensor> = data.iter().zip(&shapes).map(|(d, s)| upload(d, s, dtype)).collect();
            let refs: Vec<&Tensor> = ts.iter().collect();
            let out = layout::concat(ctx(), &refs, dim).unwrap();
            let mut want_shape = shape.clone();
            want_shape[dim] = sizes.iter().sum();
            prop_assert_eq!(out.shape(), want_shape.as_slice());
            let parts: Vec<(&[f32], &[usize])> = data.iter().zip(&shapes).map(|(d, s)| (d.as_slice(), s.as_slice())).collect();
            prop_assert_eq!(download(&out), layout::cpu_concat(&parts, dim));
        }
    }

    #[test]
    fn upsample_matches_cpu(b in 1usize..3, c in 1usize..6, h in 1usize..12, w in 1usize..12, seed in any::<u64>()) {
        let mut r = rng(seed);
        for dtype in DTYPES {
            let x = round_to(dtype, &rand_vec(&mut r, b * c * h * w, 2.0));
            let out = layout::upsample_nearest2x(ctx(), &upload(&x, &[b, c, h, w], dtype)).unwrap();
            prop_assert_eq!(out.shape(), &[b, c, 2 * h, 2 * w]);
            prop_assert_eq!(download(&out), layout::cpu_upsample_nearest2x(&x, &[b, c, h, w]));
        }
    }

    /// Transposes of rank 2..=4 with odd sizes spanning several 16x16 tiles.
    #[test]
    fn transpose_matches_cpu(lead in prop::collection::vec(1usize..4, 0..=2), rows in 1usize..50, cols in 1usize..50, seed in any::<u64>()) {
        let mut shape = lead.clone();
        shape.push(rows);
        shape.push(cols);
        let mut r = rng(seed);
        for dtype in DTYPES {
            let x = round_to(dtype, &rand_vec(&mut r, shape.iter().product(), 2.0));
            let out = layout::transpose_last2(ctx(), &upload(&x, &shape, dtype)).unwrap();
            let mut ts = shape.clone();
            let n = ts.len();
            ts.swap(n - 2, n - 1);
            prop_assert_eq!(out.shape(), ts.as_slice());
            let got = download(&out);
            prop_assert_eq!(&got, &layout::cpu_transpose_last2(&x, &shape));
            // Transposing back gives the input.
            prop_assert_eq!(download(&layout::transpose_last2(ctx(), &out).unwrap()), x);
        }
    }
}

#[test]
fn unet_skip_concat_and_tokens() {
    // [B, C, H, W] channel concat as in the UNet decoder, then NCHW -> token-major.
    let mut r = rng(5);
    let a = rand_vec(&mut r, 2 * 3 * 5 * 7, 1.0);
    let b = rand_vec(&mut r, 2 * 4 * 5 * 7, 1.0);
    let (ta, tb) = (
        upload(&a, &[2, 3, 5, 7], DType::F32),
        upload(&b, &[2, 4, 5, 7], DType::F32),
    );
    let cat = layout::concat(ctx(), &[&ta, &tb], 1).unwrap();
    assert_eq!(cat.shape(), &[2, 7, 5, 7]);
    let want = layout::cpu_concat(
        &[
            (a.as_slice(), &[2usize, 3, 5, 7][..]),
            (b.as_slice(), &[2usize, 4, 5, 7][..]),
        ],
        1,
    );
    assert_eq!(download(&cat), want);
    let tokens = layout::transpose_last2(ctx(), &cat.reshape(&[2, 7, 35]).unwrap()).unwrap();
    assert_eq!(tokens.shape(), &[2, 35, 7]);
    assert_eq!(
        download(&tokens),
        layout::cpu_transpose_last2(&want, &[2, 7, 35])
    );
}

#[test]
fn bad_shapes_and_dtypes_are_errors() {
    let c = ctx();
    let f = DType::F32;
    let a = upload(&[0.0; 24], &[2, 3, 4], f);
    let b = upload(&[0.0; 30], &[2, 3, 5], f);
    let e = layout::concat(c, &[&a, &b], 1).unwrap_err().to_string();
    assert!(
        e.contains("concat") && e.contains("[2, 3, 4]") && e.contains("[2, 3, 5]"),
        "{e}"
    );
    let e = layout::concat(c, &[&a], 3).unwrap_err().to_string();
    assert!(e.contains("concat") && e.contains("dim 3"), "{e}");
    let e = layout::concat(c, &[], 0).unwrap_err().to_string();
    assert!(e.contains("concat"), "{e}");
    let e = layout::concat(c, &[&a, &upload(&[0.0; 24], &[2, 3, 4], DType::F16)], 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("concat") && e.contains("mixed dtypes"), "{e}");
    let e = layout::concat(c, &[&a, &upload(&[0.0; 24], &[2, 12], f)], 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("[2, 12]"), "{e}");
    let e = layout::upsample_nearest2x(c, &a).unwrap_err().to_string();
    assert!(
        e.contains("upsample_nearest2x") && e.contains("[2, 3, 4]"),
        "{e}"
    );
    let e = layout::transpose_last2(c, &upload(&[0.0; 5], &[5], f))
        .unwrap_err()
        .to_string();
    assert!(e.contains("transpose_last2") && e.contains("[5]"), "{e}");
    let idx = Tensor::from_u32(c, &[0; 4], &[2, 2]).unwrap();
    let e = layout::transpose_last2(c, &idx).unwrap_err().to_string();
    assert!(e.contains("u32"), "{e}");
}
