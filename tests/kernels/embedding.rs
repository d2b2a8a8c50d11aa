use crate::common::*;
use atedm::ops::embedding::{self, TimestepEmbedding};
use atedm::DType;
use proptest::prelude::*;
use rand::Rng;

fn cfg(dim: usize, flip: bool, shift: f32) -> TimestepEmbedding {
    TimestepEmbedding {
        dim,
        flip_sin_to_cos: flip,
        downscale_freq_shift: shift,
        max_period: 10000.0,
    }
}

fn timesteps(r: &mut rand::rngs::StdRng, b: usize, max: f32) -> Vec<f32> {
    // Integers (as schedulers produce) and a few fractional values.
    (0..b)
        .map(|i| {
            if i % 3 == 2 {
                r.random_range(0.0..max)
            } else {
                r.random_range(0..max as u32) as f32
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, .. ProptestConfig::default() })]

    /// Against the CPU reference with the same f32 argument: only the kernel's sin/cos (~1e-7)
    /// and the output rounding differ, so the standard tolerances hold.
    #[test]
    fn matches_cpu(b in 1usize..6, dim in 4usize..700, flip in any::<bool>(), shift in 0u8..2, seed in any::<u64>()) {
        let c = cfg(dim, flip, shift as f32);
        let mut r = rng(seed);
        let t = timesteps(&mut r, b, 1000.0);
        let tt = upload(&t, &[b], DType::F32);
        let want = embedding::cpu_timestep_embedding(&t, &c);
        for dtype in DTYPES {
            let out = embedding::timestep_embedding(ctx(), &tt, &c, dtype).unwrap();
            prop_assert_eq!(out.shape(), &[b, dim][..]);
            prop_assert_eq!(out.dtype(), dtype);
            let got = download(&out);
            assert_close(&got, &want, tol(dtype), &format!("timestep_embedding {c:?} {dtype}"));
            if dim % 2 == 1 {
                prop_assert!(got.chunks(dim).all(|row| row[dim - 1] == 0.0));
            }
        }
    }
}

/// The f32 argument `t * freq` is off the exact one by up to |t * freq| * 2^-23 (rounding of
/// freq to f32 and of the product): sin/cos inherit that absolute error. Here the GPU result is
/// checked (1) against exact f64 math with that bound plus 1e-5 for the sin/cos evaluation, and
/// (2) against the way diffusers computes in f32 (f32 exponent from two roundings, f32 exp, f32
/// product), whose own argument error adds |t * freq| * (2^-23 + 2^-24 * 2 |x|) for the exponent
/// x = ln(freq) (|x freq| <= 1/e): with both sides' errors 2^-21 * max t + 1e-5 bounds the gap.
/// SD-XL's add_time_proj embeds sizes such as 1024, so t goes to 4096 here.
#[test]
fn argument_rounding_bounds() {
    let c = cfg(320, true, 0.0);
    let t: Vec<f32> = vec![0.0, 1.0, 37.0, 499.0, 981.0, 999.0, 1024.0, 4096.0];
    let tt = upload(&t, &[t.len()], DType::F32);
    let out = embedding::timestep_embedding(ctx(), &tt, &c, DType::F32).unwrap();
    let got = download(&out);
    let half = 160;
    let lnp = 10000f64.ln();
    for (row, &tv) in got.chunks(320).zip(&t) {
        let bound_exact = tv * 2f32.powi(-23) + 1e-5;
        let bound_diffusers = tv * 2f32.powi(-21) + 1e-5;
        for k in 0..half {
            let arg = tv as f64 * (-lnp * k as f64 / half as f64).exp();
            let exponent = (-(lnp as f32) * k as f32) / half as f32;
            let arg32 = (tv * exponent.exp()) as f64;
            for (col, exact, diff) in [
                (k, arg.cos(), arg32.cos()),
                (half + k, arg.sin(), arg32.sin()),
            ] {
                let g = row[col] as f64;
                assert!(
                    (g - exact).abs() <= bound_exact as f64,
                    "t={tv} col {col}: {g} vs exact {exact}"
                );
                assert!(
                    (g - diff).abs() <= bound_diffusers as f64,
                    "t={tv} col {col}: {g} vs diffusers-way {diff}"
                );
            }
        }
    }
}

#[test]
fn bad_inputs_are_errors() {
    let cx = ctx();
    let t = upload(&[1.0, 2.0], &[2], DType::F32);
    let e = embedding::timestep_embedding(cx, &t, &cfg(1, false, 0.0), DType::F32)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("timestep_embedding") && e.contains("dim 1"),
        "{e}"
    );
    let e = embedding::timestep_embedding(cx, &t, &cfg(5000, false, 0.0), DType::F32)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("timestep_embedding") && e.contains("dim 5000"),
        "{e}"
    );
    let e = embedding::timestep_embedding(cx, &t, &cfg(2, false, 1.0), DType::F32)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("timestep_embedding") && e.contains("downscale_freq_shift 1"),
        "{e}"
    );
    let t2 = upload(&[1.0, 2.0], &[1, 2], DType::F32);
    let e = embedding::timestep_embedding(cx, &t2, &cfg(8, false, 0.0), DType::F32)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("timestep_embedding") && e.contains("[1, 2]"),
        "{e}"
    );
    let th = upload(&[1.0, 2.0], &[2], DType::F16);
    let e = embedding::timestep_embedding(cx, &th, &cfg(8, false, 0.0), DType::F32)
        .unwrap_err()
        .to_string();
    assert!(e.contains("timestep_embedding") && e.contains("f16"), "{e}");
    let e = embedding::timestep_embedding(cx, &t, &cfg(8, false, 0.0), DType::U32)
        .unwrap_err()
        .to_string();
    assert!(e.contains("timestep_embedding") && e.contains("u32"), "{e}");
}
