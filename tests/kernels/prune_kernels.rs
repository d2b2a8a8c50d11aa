//! G-WPR, top-k and recovery-index kernels against their CPU references, including ties,
//! k = N and k = 1.

use crate::common::*;
use atedm::prune::gwpr;
use atedm::{DType, Tensor};
use proptest::prelude::*;

/// Row-stochastic maps [B, N, N] (softmax of random logits), rounded to `dtype`.
fn random_map(r: &mut rand::rngs::StdRng, b: usize, n: usize, dtype: DType) -> Vec<f32> {
    let logits = rand_vec(r, b * n * n, 3.0);
    let mut out = Vec::with_capacity(b * n * n);
    for row in logits.chunks(n) {
        let m = row.iter().fold(f32::MIN, |a, &v| a.max(v));
        let e: Vec<f32> = row.iter().map(|&v| (v - m).exp()).collect();
        let s: f32 = e.iter().sum();
        out.extend(e.iter().map(|v| v / s));
    }
    round_to(dtype, &out)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, .. ProptestConfig::default() })]

    #[test]
    fn gwpr_topk_recover_match_cpu(b in 1usize..3, n in 1usize..70, iters in 1usize..6,
                                   kf in 0.0f64..1.0, seed in any::<u64>()) {
        let k = ((kf * n as f64) as usize).clamp(1, n);
        let mut r = rng(seed);
        for dtype in DTYPES {
            let map = random_map(&mut r, b, n, dtype);
            let map_t = upload(&map, &[b, n, n], dtype);
            // G-WPR in f32 sums over f16/f32 map entries; the reference sums in f64:
            // differences are f32 rounding (~n * 6e-8 relative), far below 1e-4.
            let scores = gwpr::gwpr(ctx(), &map_t, iters).unwrap();
            let want = gwpr::cpu_gwpr(&map, b, n, iters);
            let got = download(&scores);
            assert_close(&got, &want, 1e-4, &format!("gwpr b{b} n{n} T{iters} {dtype}"));
            // G-WPR keeps the total at 1 when the map's rows sum to 1; rounded to f16 they sum
            // to 1 + d (|d| up to n * 2^-12), and each of the T iterations scales the total by
            // at most that: the bound is (1 + d_max)^T - 1, plus f32 summation noise.
            let d_max = map
                .chunks(n)
                .map(|row| (row.iter().map(|&v| v as f64).sum::<f64>() - 1.0).abs())
                .fold(0.0, f64::max);
            let bound = (1.0 + d_max).powi(iters as i32) - 1.0 + 1e-5;
            let total: f32 = got[..n].iter().sum();
            prop_assert!(
                ((total - 1.0).abs() as f64) <= bound,
                "scores sum to 1 within {bound:.2e} (row sums off by {d_max:.2e}): {total}"
            );
            // Top-k and recovery on the reference scores (exact comparisons).
            let s_t = Tensor::from_f32(ctx(), &want, &[b, n], DType::F32).unwrap();
            let kept = gwpr::top_k(ctx(), &s_t, k).unwrap();
            let want_kept = gwpr::cpu_top_k(&want, b, n, k);
            prop_assert_eq!(kept.to_u32_vec(ctx()).unwrap(), want_kept.clone());
            let rec = gwpr::recover_index(ctx(), &map_t, &kept).unwrap();
            prop_assert_eq!(rec.to_u32_vec(ctx()).unwrap(), gwpr::cpu_recover_index(&map, b, n, &want_kept, k));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, .. ProptestConfig::default() })]

    /// Recovery cos-delta's index: the most cosine-similar kept token, against the f64 CPU
    /// reference. Kept tokens must map to themselves exactly; a pruned token may pick another
    /// kept token only where its cosine is within 1e-5 of the best (f32 sums against f64:
    /// near ties may break either way).
    #[test]
    fn cos_recover_index_matches_cpu(b in 1usize..3, n in 1usize..50, c in 1usize..40,
                                     kf in 0.0f64..1.0, seed in any::<u64>()) {
        let k = ((kf * n as f64) as usize).clamp(1, n);
        let mut r = rng(seed);
        for dtype in DTYPES {
            let h = round_to(dtype, &rand_vec(&mut r, b * n * c, 1.0));
            let h_t = upload(&h, &[b, n, c], dtype);
            // k kept tokens per row: the first k of a seeded shuffle, ascending.
            let mut kept = Vec::with_capacity(b * k);
            for _ in 0..b {
                let mut idx: Vec<u32> = (0..n as u32).collect();
                rand::seq::SliceRandom::shuffle(&mut idx[..], &mut r);
                let mut row = idx[..k].to_vec();
                row.sort_unstable();
                kept.extend(row);
            }
            let kept_t = Tensor::from_u32(ctx(), &kept, &[b, k]).unwrap();
            let got = gwpr::cos_recover_index(ctx(), &h_t, &kept_t)
                .unwrap()
                .to_u32_vec(ctx())
                .unwrap();
            let want = gwpr::cpu_cos_recover_index(&h, b, n, c, &kept, k);
            let cos = |bi: usize, i: usize, q: u32| {
                let row = |t: usize| &h[(bi * n + t) * c..(bi * n + t + 1) * c];
                let (x, y) = (row(i), row(kept[bi * k + q as usize] as usize));
                let dot: f64 = x.iter().zip(y).map(|(a, b)| *a as f64 * *b as f64).sum();
                let nn: f64 = y.iter().map(|v| *v as f64 * *v as f64).sum();
                let nx: f64 = x.iter().map(|v| *v as f64 * *v as f64).sum();
                if nn > 0.0 && nx > 0.0 { dot / (nn * nx).sqrt() } else { 0.0 }
            };
            for t in 0..b * n {
                let (bi, i) = (t / n, t % n);
                if kept[bi * k..(bi + 1) * k].contains(&(i as u32)) || got[t] == want[t] {
                    prop_assert_eq!(got[t], want[t], "kept token {} of row {}", i, bi);
                    continue;
                }
                let (g, w) = (cos(bi, i, got[t]), cos(bi, i, want[t]));
                prop_assert!(g >= w - 1e-5, "token {} of row {}: cos {} vs best {}", i, bi, g, w);
            }
        }
    }
}

#[test]
fn ties_go_to_the_lower_index() {
    let c = ctx();
    // Uniform map: every score is 1/N, so the kept set is the first k tokens and every pruned
    // token recovers from kept position 0.
    let n = 9;
    let map = vec![1.0 / n as f32; n * n];
    let map_t = upload(&map, &[1, n, n], DType::F32);
    let s = gwpr::gwpr(c, &map_t, 5).unwrap();
    let kept = gwpr::top_k(c, &s, 4).unwrap();
    assert_eq!(kept.to_u32_vec(c).unwrap(), vec![0, 1, 2, 3]);
    let rec = gwpr::recover_index(c, &map_t, &kept)
        .unwrap()
        .to_u32_vec(c)
        .unwrap();
    assert_eq!(rec, vec![0, 1, 2, 3, 0, 0, 0, 0, 0]);
    // Explicit duplicates: [0.3, 0.5, 0.3, 0.5, 0.1] with k = 3 keeps 1, 3 and the lower 0.3 (0).
    let sc = Tensor::from_f32(c, &[0.3, 0.5, 0.3, 0.5, 0.1], &[1, 5], DType::F32).unwrap();
    assert_eq!(
        gwpr::top_k(c, &sc, 3).unwrap().to_u32_vec(c).unwrap(),
        vec![0, 1, 3]
    );
    // k = N keeps everything; k = 1 the best.
    assert_eq!(
        gwpr::top_k(c, &sc, 5).unwrap().to_u32_vec(c).unwrap(),
        vec![0, 1, 2, 3, 4]
    );
    assert_eq!(
        gwpr::top_k(c, &sc, 1).unwrap().to_u32_vec(c).unwrap(),
        vec![1]
    );
}

#[test]
fn bad_inputs_are_errors() {
    let c = ctx();
    let m = upload(&[0.5; 6], &[1, 2, 3], DType::F32);
    assert!(gwpr::gwpr(c, &m, 5)
        .unwrap_err()
        .to_string()
        .contains("[B, N, N]"));
    let m = upload(&[0.5; 4], &[1, 2, 2], DType::F32);
    assert!(gwpr::gwpr(c, &m, 0).is_err());
    let s = Tensor::from_f32(c, &[0.5, 0.5], &[1, 2], DType::F32).unwrap();
    assert!(gwpr::top_k(c, &s, 0).is_err());
    assert!(gwpr::top_k(c, &s, 3).is_err());
    let bad_kept = Tensor::from_f32(c, &[0.0], &[1, 1], DType::F32).unwrap();
    assert!(gwpr::recover_index(c, &m, &bad_kept)
        .unwrap_err()
        .to_string()
        .contains("u32"));
}
