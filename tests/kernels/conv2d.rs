use crate::common::*;
use atedm::ops::conv2d::{self, Conv2dOptions, ConvKernel};
use atedm::DType;
use proptest::prelude::*;

/// `conv2d` with `kernel` against the CPU reference, in f32 and f16, with the epilogue `epi`
/// (bit 0: bias, bit 1: residual) on random data from `seed`.
fn check_against_cpu(
    seed: u64,
    xs: [usize; 4],
    ws: [usize; 4],
    stride: usize,
    padding: usize,
    epi: u8,
    kernel: ConvKernel,
) -> Result<(), TestCaseError> {
    let cout = ws[0];
    let os = [
        xs[0],
        cout,
        (xs[2] + 2 * padding - ws[2]) / stride + 1,
        (xs[3] + 2 * padding - ws[3]) / stride + 1,
    ];
    let mut r = rng(seed);
    for dtype in DTYPES {
        let x = round_to(dtype, &rand_vec(&mut r, xs.iter().product(), 1.0));
        let wt = round_to(dtype, &rand_vec(&mut r, ws.iter().product(), 1.0));
        let bias = round_to(dtype, &rand_vec(&mut r, cout, 1.0));
        let res = round_to(dtype, &rand_vec(&mut r, os.iter().product(), 1.0));
        let (bias_t, res_t) = (upload(&bias, &[cout], dtype), upload(&res, &os, dtype));
        let (use_bias, use_res) = (epi & 1 == 1, epi & 2 == 2);
        let opts = Conv2dOptions {
            stride,
            padding,
            bias: use_bias.then_some(&bias_t),
            residual: use_res.then_some(&res_t),
            kernel,
        };
        // Inputs stay alive until the download: see the pooled-buffer race noted in the report.
        let (x_t, w_t) = (upload(&x, &xs, dtype), upload(&wt, &ws, dtype));
        let out = conv2d::conv2d(ctx(), &x_t, &w_t, &opts).unwrap();
        let (want, want_shape) = conv2d::cpu_conv2d(
            &x,
            &xs,
            &wt,
            &ws,
            stride,
            padding,
            use_bias.then_some(&bias[..]),
            use_res.then_some(&res[..]),
        );
        prop_assert_eq!(out.shape(), &os[..]);
        prop_assert_eq!(want_shape.as_slice(), &os[..]);
        assert_close(
            &download(&out),
            &want,
            tol(dtype),
            &format!(
                "conv2d {kernel:?} x {xs:?} w {ws:?} s {stride} p {padding} epi {epi} {dtype}"
            ),
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, .. ProptestConfig::default() })]

    #[test]
    fn conv2d_matches_cpu(b in 1usize..3, cin in 1usize..12, cout in 1usize..80,
                          h in 1usize..20, w in 1usize..20, kind in 0u8..3, epi in 0u8..4,
                          seed in any::<u64>(), tiled in any::<bool>()) {
        // 3x3 stride 1 pad 1, 3x3 stride 2 pad 1, 1x1 stride 1 pad 0 (the SDXL UNet/VAE convs).
        let (k, stride, padding) = match kind { 0 => (3, 1, 1), 1 => (3, 2, 1), _ => (1, 1, 0) };
        // Both general kernels whatever the adapter (Auto picks one of the kernels).
        let kernel = if tiled { ConvKernel::Tiled } else { ConvKernel::Registers8 };
        check_against_cpu(seed, [b, cin, h, w], [cout, cin, k, k], stride, padding, epi, kernel)?;
    }

    // The 3x3-rows kernel (Auto's choice on CPU adapters for these shapes), chosen explicitly
    // so it runs on any adapter: output widths of 8-24 (1-3 blocks of 8 per row, rows that
    // start mid-tile), paddings 0-2 (2: every segment pixel can be padding), odd channel
    // counts (a partial block of 8), batch 1-2, all epilogues, f32 and f16.
    #[test]
    fn conv2d_rows3x3_matches_cpu(b in 1usize..3, cin in 1usize..12, cout in 1usize..40,
                                  ho in 1usize..11, wo_blocks in 1usize..4, padding in 0usize..3,
                                  epi in 0u8..4, seed in any::<u64>()) {
        // Input size for the output size: h = ho + 2 - 2 * padding (padding 2 needs ho >= 3).
        let ho = if padding == 2 { ho.max(3) } else { ho };
        let (h, w) = (ho + 2 - 2 * padding, 8 * wo_blocks + 2 - 2 * padding);
        check_against_cpu(seed, [b, cin, h, w], [cout, cin, 3, 3], 1, padding, epi, ConvKernel::Rows3x3)?;
    }

    #[test]
    fn conv2d_general_kernel(kh in 1usize..6, kw in 1usize..6, stride in 1usize..4, padding in 0usize..3,
                             h in 5usize..14, w in 5usize..14, seed in any::<u64>()) {
        let (xs, ws) = ([2, 3, h, w], [5, 3, kh, kw]);
        let mut r = rng(seed);
        let x = rand_vec(&mut r, xs.iter().product(), 1.0);
        let wt = rand_vec(&mut r, ws.iter().product(), 1.0);
        let kernel = if seed % 2 == 0 { ConvKernel::Tiled } else { ConvKernel::Registers8 };
        let opts = Conv2dOptions { stride, padding, kernel, ..Default::default() };
        let (x_t, w_t) = (upload(&x, &xs, DType::F32), upload(&wt, &ws, DType::F32));
        let out = conv2d::conv2d(ctx(), &x_t, &w_t, &opts).unwrap();
        let (want, shape) = conv2d::cpu_conv2d(&x, &xs, &wt, &ws, stride, padding, None, None);
        prop_assert_eq!(out.shape(), shape.as_slice());
        assert_close(&download(&out), &want, tol(DType::F32), &format!("conv2d {kh}x{kw} s {stride} p {padding}"));
    }
}

#[test]
fn rows3x3_kernel_refuses_other_shapes() {
    let f = DType::F32;
    let t =
        |shape: &[usize], dtype: DType| upload(&vec![0.5; shape.iter().product()], shape, dtype);
    assert!(conv2d::rows3x3_applies(3, 3, 1, 16));
    for (xs, ws, stride) in [
        ([1, 2, 8, 12], [4, 2, 3, 3], 1),  // output width 12
        ([1, 2, 16, 16], [4, 2, 3, 3], 2), // stride 2
        ([1, 2, 8, 8], [4, 2, 1, 1], 1),   // 1x1
    ] {
        let opts = Conv2dOptions {
            stride,
            padding: 1,
            kernel: ConvKernel::Rows3x3,
            ..Default::default()
        };
        let e = conv2d::conv2d(ctx(), &t(&xs, f), &t(&ws, f), &opts)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("3x3-rows") && e.contains(&format!("{ws:?}")),
            "{e}"
        );
        // Auto falls back to a general kernel for the same shape.
        let auto = Conv2dOptions {
            kernel: ConvKernel::Auto,
            ..opts
        };
        conv2d::conv2d(ctx(), &t(&xs, f), &t(&ws, f), &auto).unwrap();
    }
}

#[test]
fn conv2d_known_values() {
    // 1 channel 3x3 input of 1..9, 3x3 all-ones kernel, padding 1: sums of 3x3 neighbourhoods.
    let x: Vec<f32> = (1..=9).map(|v| v as f32).collect();
    let out = conv2d::conv2d(
        ctx(),
        &upload(&x, &[1, 1, 3, 3], DType::F32),
        &upload(&[1.0; 9], &[1, 1, 3, 3], DType::F32),
        &Conv2dOptions {
            padding: 1,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        download(&out),
        vec![12.0, 21.0, 16.0, 27.0, 45.0, 33.0, 24.0, 39.0, 28.0]
    );
}

#[test]
fn bad_shapes_and_dtypes_are_errors() {
    let c = ctx();
    let f = DType::F32;
    let t =
        |shape: &[usize], dtype: DType| upload(&vec![0.5; shape.iter().product()], shape, dtype);
    let opts = Conv2dOptions {
        padding: 1,
        ..Default::default()
    };
    let e = conv2d::conv2d(c, &t(&[1, 3, 8, 8], f), &t(&[4, 2, 3, 3], f), &opts)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("conv2d") && e.contains("[1, 3, 8, 8]") && e.contains("[4, 2, 3, 3]"),
        "{e}"
    );
    let e = conv2d::conv2d(c, &t(&[3, 8, 8], f), &t(&[4, 3, 3, 3], f), &opts)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("conv2d") && e.contains("rank 4") && e.contains("[3, 8, 8]"),
        "{e}"
    );
    let none = Conv2dOptions::default();
    let e = conv2d::conv2d(c, &t(&[1, 3, 2, 2], f), &t(&[4, 3, 3, 3], f), &none)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("conv2d") && e.contains("larger") && e.contains("[1, 3, 2, 2]"),
        "{e}"
    );
    let zero = Conv2dOptions {
        stride: 0,
        ..Default::default()
    };
    let e = conv2d::conv2d(c, &t(&[1, 3, 4, 4], f), &t(&[4, 3, 1, 1], f), &zero)
        .unwrap_err()
        .to_string();
    assert!(e.contains("conv2d") && e.contains("stride"), "{e}");
    let bias = t(&[3], f);
    let o = Conv2dOptions {
        bias: Some(&bias),
        ..opts
    };
    let e = conv2d::conv2d(c, &t(&[1, 3, 8, 8], f), &t(&[4, 3, 3, 3], f), &o)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("conv2d") && e.contains("bias") && e.contains("[4]") && e.contains("[3]"),
        "{e}"
    );
    let res = t(&[1, 4, 4, 4], f);
    let o = Conv2dOptions {
        residual: Some(&res),
        ..opts
    };
    let e = conv2d::conv2d(c, &t(&[1, 3, 8, 8], f), &t(&[4, 3, 3, 3], f), &o)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("residual") && e.contains("[1, 4, 8, 8]") && e.contains("[1, 4, 4, 4]"),
        "{e}"
    );
    let e = conv2d::conv2d(
        c,
        &t(&[1, 3, 8, 8], f),
        &t(&[4, 3, 3, 3], DType::F16),
        &opts,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("conv2d") && e.contains("mixed dtypes"), "{e}");
}
