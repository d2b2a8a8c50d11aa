use crate::common::*;
use atedm::ops::gather;
use atedm::{DType, Tensor};
use proptest::prelude::*;
use rand::seq::SliceRandom;
use rand::Rng;

fn upload_idx(idx: &[u32], shape: &[usize]) -> Tensor {
    Tensor::from_u32(ctx(), idx, shape).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, .. ProptestConfig::default() })]

    /// Gather with random indices (duplicates allowed), a different index set per batch.
    #[test]
    fn gather_matches_cpu(batch in 1usize..=2, n in 1usize..80, k in 1usize..90, c in 1usize..70, seed in any::<u64>()) {
        let mut r = rng(seed);
        let idx: Vec<u32> = (0..batch * k).map(|_| r.random_range(0..n as u32)).collect();
        for dtype in DTYPES {
            let src = round_to(dtype, &rand_vec(&mut r, batch * n * c, 3.0));
            let out = gather::gather_rows(ctx(), &upload(&src, &[batch, n, c], dtype), &upload_idx(&idx, &[batch, k])).unwrap();
            prop_assert_eq!(out.shape(), &[batch, k, c]);
            // A copy: exact in both dtypes.
            prop_assert_eq!(download(&out), gather::cpu_gather_rows(&src, batch, n, c, &idx));
        }
    }

    /// Scatter of k distinct rows per batch (AT-EDM recovery) into a random dst; the other rows
    /// keep their values.
    #[test]
    fn scatter_matches_cpu(batch in 1usize..=2, n in 1usize..80, kfrac in 0.0f64..=1.0, c in 1usize..70, seed in any::<u64>()) {
        let mut r = rng(seed);
        let k = ((n as f64 * kfrac) as usize).clamp(1, n);
        let mut idx = Vec::new();
        for _ in 0..batch {
            let mut perm: Vec<u32> = (0..n as u32).collect();
            perm.shuffle(&mut r);
            idx.extend_from_slice(&perm[..k]);
        }
        for dtype in DTYPES {
            let dst = round_to(dtype, &rand_vec(&mut r, batch * n * c, 3.0));
            let src = round_to(dtype, &rand_vec(&mut r, batch * k * c, 3.0));
            let dst_t = upload(&dst, &[batch, n, c], dtype);
            gather::scatter_rows(ctx(), &dst_t, &upload_idx(&idx, &[batch, k]), &upload(&src, &[batch, k, c], dtype)).unwrap();
            let mut want = dst.clone();
            gather::cpu_scatter_rows(&mut want, batch, n, c, &idx, &src);
            prop_assert_eq!(download(&dst_t), want);
        }
    }
}

#[test]
fn edge_cases() {
    let c = ctx();
    for dtype in DTYPES {
        // k = N identity permutation reversed, k = 1, B = 2 with different sets, duplicates.
        let (b, n, ch) = (2, 7, 5);
        let src = round_to(dtype, &rand_vec(&mut rng(9), b * n * ch, 1.0));
        let st = upload(&src, &[b, n, ch], dtype);
        for idx in [
            vec![6, 5, 4, 3, 2, 1, 0, 0, 1, 2, 3, 4, 5, 6],
            vec![3, 0],
            vec![2, 2, 2, 5, 5, 1],
        ] {
            let k = idx.len() / b;
            let out = gather::gather_rows(c, &st, &upload_idx(&idx, &[b, k])).unwrap();
            assert_eq!(
                download(&out),
                gather::cpu_gather_rows(&src, b, n, ch, &idx),
                "{idx:?}"
            );
        }
        // Gather then scatter back with all rows (k = N): recovers the source.
        let idx: Vec<u32> = vec![4, 1, 6, 0, 2, 5, 3, 0, 1, 2, 3, 4, 5, 6];
        let it = upload_idx(&idx, &[b, n]);
        let g = gather::gather_rows(c, &st, &it).unwrap();
        let back = Tensor::zeros(c, &[b, n, ch], dtype).unwrap();
        gather::scatter_rows(c, &back, &it, &g).unwrap();
        assert_eq!(download(&back), src);
        // Out-of-range indices: gather gives zero rows, scatter skips them.
        let idx = vec![1, 99, 7, 0];
        let out = download(&gather::gather_rows(c, &st, &upload_idx(&idx, &[b, 2])).unwrap());
        assert_eq!(out, gather::cpu_gather_rows(&src, b, n, ch, &idx));
        assert!(out[ch..2 * ch].iter().all(|&x| x == 0.0));
        let dst = Tensor::zeros(c, &[b, n, ch], dtype).unwrap();
        let rows = round_to(dtype, &rand_vec(&mut rng(3), b * 2 * ch, 1.0));
        gather::scatter_rows(
            c,
            &dst,
            &upload_idx(&idx, &[b, 2]),
            &upload(&rows, &[b, 2, ch], dtype),
        )
        .unwrap();
        let mut want = vec![0.0; b * n * ch];
        gather::cpu_scatter_rows(&mut want, b, n, ch, &idx, &rows);
        assert_eq!(download(&dst), want);
    }
}

#[test]
fn bad_shapes_and_dtypes_are_errors() {
    let c = ctx();
    let f = DType::F32;
    let src = upload(&[0.0; 24], &[2, 3, 4], f);
    let idx = upload_idx(&[0, 1, 2, 0], &[2, 2]);
    // batch mismatch
    let e = gather::gather_rows(c, &src, &upload_idx(&[0, 1], &[1, 2]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("gather_rows") && e.contains("[1, 2]") && e.contains("[2, 3, 4]"),
        "{e}"
    );
    // idx not u32
    let e = gather::gather_rows(c, &src, &upload(&[0.0; 4], &[2, 2], f))
        .unwrap_err()
        .to_string();
    assert!(e.contains("gather_rows") && e.contains("u32"), "{e}");
    // ranks
    let e = gather::gather_rows(c, &upload(&[0.0; 12], &[3, 4], f), &idx)
        .unwrap_err()
        .to_string();
    assert!(e.contains("[3, 4]"), "{e}");
    let e = gather::gather_rows(c, &src, &upload_idx(&[0, 1, 2, 0], &[4]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("[4]"), "{e}");
    // src u32
    let e = gather::gather_rows(c, &upload_idx(&[0; 24], &[2, 3, 4]), &idx)
        .unwrap_err()
        .to_string();
    assert!(e.contains("u32"), "{e}");
    // scatter: src shape must be [B, k, C]
    let dst = upload(&[0.0; 24], &[2, 3, 4], f);
    let e = gather::scatter_rows(c, &dst, &idx, &upload(&[0.0; 10], &[2, 1, 5], f))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("scatter_rows") && e.contains("[2, 1, 5]") && e.contains("[2, 2, 4]"),
        "{e}"
    );
    // scatter: mixed dtypes
    let e = gather::scatter_rows(c, &dst, &idx, &upload(&[0.0; 16], &[2, 2, 4], DType::F16))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("scatter_rows") && e.contains("mixed dtypes"),
        "{e}"
    );
    // scatter: dst aliasing src
    let view = dst.reshape(&[2, 3, 4]).unwrap();
    let e = gather::scatter_rows(c, &dst, &upload_idx(&[0, 1, 2, 0, 1, 2], &[2, 3]), &view)
        .unwrap_err()
        .to_string();
    assert!(e.contains("scatter_rows") && e.contains("shares"), "{e}");
}
