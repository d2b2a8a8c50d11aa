//! 2-D convolution, NCHW with PyTorch weight layout, as an implicit GEMM (M = Cout,
//! N = B*Ho*Wo, K = Cin*kh*kw) tiled like [`matmul`](super::matmul), with bias and a fused
//! residual add.

use bytemuck::{Pod, Zeroable};

use super::matmul::check_epilogue;
use super::{dim32, expect_rank, float_dtype};
use crate::error::{Error, Result};
use crate::gpu::{GpuContext, Kernel};
use crate::tensor::Tensor;

crate::shader_family!(pub SHADER, "conv2d");
const CONV2D: Kernel = SHADER.kernel("conv2d");
const CONV2D_REG8: Kernel = SHADER.kernel("conv2d_reg8");
const CONV2D_3X3_REG8: Kernel = SHADER.kernel("conv2d_3x3_reg8");

/// Which convolution kernel runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConvKernel {
    /// On CPU adapters (lavapipe) `Rows3x3` where it applies, else `Registers8`; `Tiled` on
    /// GPUs.
    #[default]
    Auto,
    /// 64x64 output tiles, K slabs (im2col gathered while staging) in workgroup memory.
    Tiled,
    /// 64x64 output tiles of 8x8 register blocks read straight from storage: on lavapipe,
    /// where each storage load costs far more than a multiply-add, 4 multiply-adds per load.
    Registers8,
    /// `Registers8`'s tiles for 3x3 stride-1 convolutions with `Wo % 8 == 0`: each invocation's
    /// 8 columns are neighbouring pixels of one output row, so an input row segment is loaded
    /// once for the 3 kernel columns. Other shapes are an error when asked for explicitly.
    Rows3x3,
}

/// Whether [`ConvKernel::Rows3x3`] can run a convolution: a 3x3 kernel, stride 1 (all of
/// SD-XL's and its VAE's convolutions but the downsamplers and 1x1 shortcuts), and output rows
/// of a multiple of 8 pixels.
pub fn rows3x3_applies(kh: usize, kw: usize, stride: usize, wo: usize) -> bool {
    kh == 3 && kw == 3 && stride == 1 && wo % 8 == 0
}

/// Output tile edge of the kernel (GEMM rows and columns).
const TILE: usize = 64;
/// Output channels per workgroup of the 3x3-rows kernel (one 8x8 block per invocation, 8
/// invocations side by side): the channels, hence the weight loads, are the same for the
/// whole workgroup, and lavapipe turns such uniform loads into one scalar load.
const ROWS3X3_TILE_M: usize = 8;

/// Options of [`conv2d`]. Default: stride 1, padding 0, no bias, no residual.
#[derive(Clone, Copy, Debug)]
pub struct Conv2dOptions<'a> {
    /// Stride in both spatial dimensions (>= 1).
    pub stride: usize,
    /// Zero padding on each side of both spatial dimensions.
    pub padding: usize,
    /// `[Cout]`, added to each output channel.
    pub bias: Option<&'a Tensor>,
    /// `[B, Cout, Ho, Wo]`, added to the output.
    pub residual: Option<&'a Tensor>,
    /// Which kernel runs (default: [`ConvKernel::Auto`]).
    pub kernel: ConvKernel,
}

impl Default for Conv2dOptions<'_> {
    fn default() -> Self {
        Conv2dOptions {
            stride: 1,
            padding: 0,
            bias: None,
            residual: None,
            kernel: ConvKernel::Auto,
        }
    }
}

impl<'a> Conv2dOptions<'a> {
    /// Stride `stride`, padding `padding`, with `bias`.
    pub fn new(stride: usize, padding: usize, bias: Option<&'a Tensor>) -> Self {
        Conv2dOptions {
            stride,
            padding,
            bias,
            residual: None,
            kernel: ConvKernel::Auto,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ConvParams {
    batch: u32,
    cin: u32,
    h: u32,
    w: u32,
    cout: u32,
    ho: u32,
    wo: u32,
    kh: u32,
    kw: u32,
    stride: u32,
    pad: u32,
    flags: u32,
    kdim: u32,
    ndim: u32,
    tiles_n: u32,
    _pad: u32,
}

/// Output shape `[B, Cout, Ho, Wo]` of a convolution, validating the shapes.
fn out_shape(
    op: &'static str,
    xs: &[usize],
    ws: &[usize],
    stride: usize,
    pad: usize,
) -> Result<Vec<usize>> {
    let (&[b, cin, h, w], &[cout, wcin, kh, kw]) = (xs, ws) else {
        return Err(Error::shape(
            op,
            format!("x {xs:?} and weight {ws:?} must both have rank 4"),
        ));
    };
    if cin != wcin {
        return Err(Error::shape(
            op,
            format!("x {xs:?} has {cin} channels but weight {ws:?} expects {wcin}"),
        ));
    }
    if stride == 0 {
        return Err(Error::shape(
            op,
            format!("stride must be >= 1 (x {xs:?}, weight {ws:?})"),
        ));
    }
    if h + 2 * pad < kh || w + 2 * pad < kw {
        return Err(Error::shape(
            op,
            format!("kernel {kh}x{kw} is larger than input {h}x{w} padded by {pad} (x {xs:?}, weight {ws:?})"),
        ));
    }
    Ok(vec![
        b,
        cout,
        (h + 2 * pad - kh) / stride + 1,
        (w + 2 * pad - kw) / stride + 1,
    ])
}

/// `x [B, Cin, H, W]` convolved with `weight [Cout, Cin, kh, kw]` -> `[B, Cout, Ho, Wo]`,
/// `Ho = (H + 2p - kh) / s + 1` (likewise `Wo`); plus `bias [Cout]` and `residual` (the output's
/// shape) when given. All tensors share one float dtype.
pub fn conv2d(
    ctx: &GpuContext,
    x: &Tensor,
    weight: &Tensor,
    opts: &Conv2dOptions,
) -> Result<Tensor> {
    const OP: &str = "conv2d";
    let mut named = vec![("x", x), ("weight", weight)];
    named.extend(opts.bias.map(|t| ("bias", t)));
    named.extend(opts.residual.map(|t| ("residual", t)));
    let dtype = float_dtype(OP, &named)?;
    expect_rank(OP, "x", x, 4)?;
    expect_rank(OP, "weight", weight, 4)?;
    let shape = out_shape(OP, x.shape(), weight.shape(), opts.stride, opts.padding)?;
    let (xs, ws) = (x.shape(), weight.shape());
    let flags = check_epilogue(OP, opts.bias, &[ws[0]], opts.residual, &shape)?;
    let out = Tensor::empty(ctx, &shape, dtype)?;
    dim32(OP, out.numel())?;
    let kdim = ws[1] * ws[2] * ws[3];
    let ndim = shape[0] * shape[2] * shape[3];
    let tiles_n = ndim.div_ceil(TILE);
    let params = ConvParams {
        batch: dim32(OP, xs[0])?,
        cin: dim32(OP, xs[1])?,
        h: dim32(OP, xs[2])?,
        w: dim32(OP, xs[3])?,
        cout: dim32(OP, ws[0])?,
        ho: dim32(OP, shape[2])?,
        wo: dim32(OP, shape[3])?,
        kh: dim32(OP, ws[2])?,
        kw: dim32(OP, ws[3])?,
        stride: dim32(OP, opts.stride)?,
        pad: dim32(OP, opts.padding)?,
        flags,
        kdim: dim32(OP, kdim)?,
        ndim: dim32(OP, ndim)?,
        tiles_n: dim32(OP, tiles_n)?,
        _pad: 0,
    };
    ctx.note_flops(2.0 * (ws[0] * ndim) as f64 * kdim as f64);
    let rows3x3 = rows3x3_applies(ws[2], ws[3], opts.stride, shape[3]);
    // The kernel and its tile height (output channels per workgroup; 64 GEMM columns).
    let (kernel, tile_m) = match opts.kernel {
        ConvKernel::Auto if ctx.is_cpu_adapter() && rows3x3 => (&CONV2D_3X3_REG8, ROWS3X3_TILE_M),
        ConvKernel::Auto if ctx.is_cpu_adapter() => (&CONV2D_REG8, TILE),
        ConvKernel::Auto | ConvKernel::Tiled => (&CONV2D, TILE),
        ConvKernel::Registers8 => (&CONV2D_REG8, TILE),
        ConvKernel::Rows3x3 if rows3x3 => (&CONV2D_3X3_REG8, ROWS3X3_TILE_M),
        ConvKernel::Rows3x3 => {
            return Err(Error::shape(
                OP,
                format!(
                    "the 3x3-rows kernel needs a 3x3 kernel, stride 1 and an output width that \
                     is a multiple of 8 (x {xs:?}, weight {ws:?}, stride {}, output {shape:?})",
                    opts.stride
                ),
            ))
        }
    };
    let workgroups = (ws[0].div_ceil(tile_m) * tiles_n) as u64;
    // Unused epilogue bindings get `x` as a placeholder (never read: the flags are off).
    ctx.dispatch(
        OP,
        kernel,
        dtype,
        bytemuck::bytes_of(&params),
        &[
            ("x", x),
            ("weight", weight),
            ("bias", opts.bias.unwrap_or(x)),
            ("residual", opts.residual.unwrap_or(x)),
            ("out", &out),
        ],
        ctx.grid(workgroups),
    )?;
    Ok(out)
}

/// CPU reference of [`conv2d`] on host slices (`bias`, `residual` as flat data). Returns the
/// output and its shape. Panics on invalid shapes.
#[allow(clippy::too_many_arguments)]
pub fn cpu_conv2d(
    x: &[f32],
    x_shape: &[usize],
    weight: &[f32],
    w_shape: &[usize],
    stride: usize,
    padding: usize,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
) -> (Vec<f32>, Vec<usize>) {
    let shape = out_shape("cpu_conv2d", x_shape, w_shape, stride, padding).expect("valid shapes");
    let (cin, h, w) = (x_shape[1], x_shape[2], x_shape[3]);
    let (kh, kw) = (w_shape[2], w_shape[3]);
    let [b, cout, ho, wo] = shape[..] else {
        unreachable!()
    };
    let mut out = vec![0f32; b * cout * ho * wo];
    for bi in 0..b {
        for co in 0..cout {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut s = 0f64;
                    for ci in 0..cin {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * stride + ky) as isize - padding as isize;
                                let ix = (ox * stride + kx) as isize - padding as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                let xv = x[((bi * cin + ci) * h + iy as usize) * w + ix as usize];
                                let wv = weight[((co * cin + ci) * kh + ky) * kw + kx];
                                s += xv as f64 * wv as f64;
                            }
                        }
                    }
                    let o = ((bi * cout + co) * ho + oy) * wo + ox;
                    s += bias.map_or(0.0, |v| v[co] as f64);
                    s += residual.map_or(0.0, |v| v[o] as f64);
                    out[o] = s as f32;
                }
            }
        }
    }
    (out, shape)
}
