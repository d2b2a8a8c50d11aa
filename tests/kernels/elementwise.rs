use crate::common::*;
use atedm::ops::elementwise::{self, BinaryOp};
use proptest::prelude::*;

fn shape_pair() -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
    // Random rank 1..=5 output shape, then `b` drops leading dims and sets some dims to 1.
    (prop::collection::vec(1usize..9, 1..=5), any::<u64>()).prop_map(|(shape, bits)| {
        let drop = (bits % (shape.len() as u64)) as usize;
        let b: Vec<usize> = shape[drop..]
            .iter()
            .enumerate()
            .map(|(i, &d)| if bits >> (8 + i) & 1 == 1 { 1 } else { d })
            .collect();
        if bits >> 20 & 1 == 1 {
            (b, shape)
        } else {
            (shape, b)
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    #[test]
    fn binary_matches_cpu((sa, sb) in shape_pair(), seed in any::<u64>(), op in 0u8..3) {
        let op = match op { 0 => BinaryOp::Add { alpha: -0.75 }, 1 => BinaryOp::Mul, _ => BinaryOp::Sub };
        let mut r = rng(seed);
        for dtype in DTYPES {
            let a = round_to(dtype, &rand_vec(&mut r, sa.iter().product(), 2.0));
            let b = round_to(dtype, &rand_vec(&mut r, sb.iter().product(), 2.0));
            let out = elementwise::binary(ctx(), &upload(&a, &sa, dtype), &upload(&b, &sb, dtype), op).unwrap();
            let want = elementwise::cpu_binary(&a, &sa, &b, &sb, op);
            let bshape = elementwise::broadcast_shape(&sa, &sb).unwrap();
            prop_assert_eq!(out.shape(), bshape.as_slice());
            assert_close(&download(&out), &want, tol(dtype), &format!("{op:?} {sa:?} {sb:?} {dtype}"));
        }
    }

    #[test]
    fn scale_matches_cpu(n in 1usize..3000, seed in any::<u64>(), s in -3f32..3.0, c in -1f32..1.0) {
        let mut r = rng(seed);
        for dtype in DTYPES {
            let x = round_to(dtype, &rand_vec(&mut r, n, 4.0));
            let out = elementwise::scale(ctx(), &upload(&x, &[n], dtype), s, c).unwrap();
            assert_close(&download(&out), &elementwise::cpu_scale(&x, s, c), tol(dtype), "scale");
        }
    }
}

#[test]
fn large_grid_spans_two_dimensions() {
    // 65535 * 256 + 1000 elements needs a 2-D dispatch grid.
    let n = 65535 * 256 + 1000;
    let x: Vec<f32> = (0..n).map(|i| (i % 1000) as f32).collect();
    let out = elementwise::scale(ctx(), &upload(&x, &[n], atedm::DType::F32), 2.0, 1.0).unwrap();
    let got = download(&out);
    assert_eq!(got[n - 1], ((n - 1) % 1000) as f32 * 2.0 + 1.0);
    assert_eq!(got[12345], (12345 % 1000) as f32 * 2.0 + 1.0);
}

#[test]
fn bad_shapes_and_dtypes_are_errors() {
    let c = ctx();
    let a = upload(&[1.0; 6], &[2, 3], atedm::DType::F32);
    let b = upload(&[1.0; 4], &[4], atedm::DType::F32);
    let e = elementwise::add(c, &a, &b).unwrap_err().to_string();
    assert!(
        e.contains("elementwise") && e.contains("[2, 3]") && e.contains("[4]"),
        "{e}"
    );
    let h = upload(&[1.0; 3], &[3], atedm::DType::F16);
    let e = elementwise::add(c, &a, &h).unwrap_err().to_string();
    assert!(e.contains("mixed dtypes"), "{e}");
    let idx = atedm::Tensor::from_u32(c, &[1, 2, 3], &[3]).unwrap();
    let e = elementwise::scale(c, &idx, 1.0, 0.0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("u32"), "{e}");
}
