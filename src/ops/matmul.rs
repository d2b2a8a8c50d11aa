//! Batched matrix multiplication with optional transposes, bias and a fused residual add;
//! [`linear`] (a PyTorch `nn.Linear`) on top of it.
//!
//! The kernel computes 64x64 output tiles per workgroup, 4x4 per invocation, staging K in slabs
//! of 16 in workgroup memory, accumulating in f32.

use bytemuck::{Pod, Zeroable};

use super::{dim32, float_dtype};
use crate::error::{Error, Result};
use crate::gpu::{GpuContext, Kernel};
use crate::tensor::Tensor;

crate::shader_family!(pub SHADER, "matmul");
const MATMUL: Kernel = SHADER.kernel("matmul");
const MATMUL_REG: Kernel = SHADER.kernel("matmul_reg");
const MATMUL_REG10: Kernel = SHADER.kernel("matmul_reg10");
/// Rows of the 10x8-block kernel's tile (one block high, 64 columns).
const REG10_ROWS: usize = 10;
/// The 8x8-block kernel's tile heights (rows; 64 columns) and entry points.
const REG8_SHAPES: [(usize, Kernel); 4] = [
    (64, SHADER.kernel("matmul_reg8")),
    (32, SHADER.kernel("matmul_reg8_h32")),
    (16, SHADER.kernel("matmul_reg8_h16")),
    (8, SHADER.kernel("matmul_reg8_h8")),
];

/// Output tile edge of the kernel (rows and columns).
const TILE: usize = 64;
/// Output tile edge of the register-blocked kernel (8x8 invocations x 4x4 blocks).
const REG_TILE: usize = 32;
/// Output columns per tile of the 8x8-block kernel (8 invocations x 8).
const REG8_COLS: usize = 64;

/// Epilogue flag bits shared by the matmul and conv2d kernels' params.
pub(crate) const FLAG_BIAS: u32 = 1;
pub(crate) const FLAG_RESIDUAL: u32 = 2;

/// Options of [`matmul`].
#[derive(Clone, Copy, Debug, Default)]
pub struct MatmulOptions<'a> {
    /// `a` is stored `[.., K, M]` and used transposed.
    pub trans_a: bool,
    /// `b` is stored `[.., N, K]` and used transposed.
    pub trans_b: bool,
    /// `[N]`, added to every row of the output.
    pub bias: Option<&'a Tensor>,
    /// Same shape as the output, added to it.
    pub residual: Option<&'a Tensor>,
    /// Which kernel runs (default: chosen by adapter type).
    pub kernel: MatmulKernel,
}

/// The matmul kernels. Both compute the same thing; the choice is about speed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MatmulKernel {
    /// On CPU adapters (lavapipe) [`MatmulKernel::Registers8`]; on GPUs [`MatmulKernel::Tiled`].
    #[default]
    Auto,
    /// 64x64 output tiles, K slabs staged in workgroup memory, 4x4 register blocks.
    Tiled,
    /// 32x32 output tiles of 4x4 register blocks read straight from storage (no barriers):
    /// faster than `Tiled` on lavapipe (figures in `docs/kernels.md`).
    Registers,
    /// 64x64 output tiles of 8x8 register blocks read straight from storage: 4 multiply-adds
    /// per loaded element instead of 2. On lavapipe every storage load is a per-lane gather
    /// that costs far more than the arithmetic, so this beats `Registers` there (figures in
    /// `docs/kernels.md`).
    /// The tile is 64, 32, 16 or 8 rows by 64 columns, whichever pads M least
    /// ([`reg8_tile_rows`]): a pruned layer's rows (AT-EDM keeps e.g. 50 of 128) then cost
    /// little more than their own work. Where blocks of 10 rows pad clearly less than blocks of
    /// 8 ([`reg10_pays`]), it runs [`MatmulKernel::Registers10`] instead.
    Registers8,
    /// [`MatmulKernel::Registers8`] with a fixed tile of this many rows (64, 32, 16 or 8),
    /// whatever the shape: for tests and comparisons.
    Registers8Rows(usize),
    /// 10x8 register blocks (10 rows, 8 columns) in tiles of 10 rows x 64 columns: for row
    /// counts that blocks of 8 pad badly. `Registers8` switches to it by itself where that
    /// pays ([`reg10_pays`]): AT-EDM's 50 kept rows at 256 px run as 5 blocks of 10 instead of
    /// 7 blocks of 8 (56 rows). `bench-ops --only linear` compares the two (figures in
    /// `docs/kernels.md`).
    Registers10,
}

/// Rows of the [`MatmulKernel::Registers8`] tile for an output of `m` rows: the one of its
/// heights (64, 32, 16, 8) that pads `m` least, the tallest on a tie (fewer, larger workgroups).
pub fn reg8_tile_rows(m: usize) -> usize {
    let padded = |rows: usize| m.div_ceil(rows) * rows;
    let mut best = REG8_SHAPES[0].0;
    for &(rows, _) in &REG8_SHAPES[1..] {
        if padded(rows) < padded(best) {
            best = rows;
        }
    }
    best
}

/// Whether 10-row register blocks ([`MatmulKernel::Registers10`]) replace 8-row ones for an
/// output of `m` rows: when they pad fewer rows, by at least 2% of `m` (for large `m` the
/// padding is noise and the taller 8-row-block tiles are kept).
pub fn reg10_pays(m: usize) -> bool {
    let (pad8, pad10) = (
        m.div_ceil(8) * 8 - m,
        m.div_ceil(REG10_ROWS) * REG10_ROWS - m,
    );
    pad10 < pad8 && (pad8 - pad10) * 50 >= m
}

impl MatmulKernel {
    pub(crate) fn resolve(self, ctx: &GpuContext) -> MatmulKernel {
        match self {
            MatmulKernel::Auto if ctx.is_cpu_adapter() => MatmulKernel::Registers8,
            MatmulKernel::Auto => MatmulKernel::Tiled,
            k => k,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct MatmulParams {
    m: u32,
    n: u32,
    k: u32,
    batch: u32,
    a_sm: u32,
    a_sk: u32,
    a_sb: u32,
    b_sk: u32,
    b_sn: u32,
    b_sb: u32,
    flags: u32,
    tiles_n: u32,
}

/// Logical dimensions of one operand: batch, rows, cols of `op(t)`, with element strides.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Operand {
    batch: usize,
    rows: usize,
    cols: usize,
    /// Element strides along rows, cols and batch of `op(t)` (batch stride 0 when batch is 1).
    s_row: usize,
    s_col: usize,
    s_batch: usize,
}

fn operand(shape: &[usize], trans: bool) -> Option<Operand> {
    let (batch, r, c) = match *shape {
        [r, c] => (1, r, c),
        [b, r, c] => (b, r, c),
        _ => return None,
    };
    let s_batch = if batch == 1 { 0 } else { r * c };
    Some(if trans {
        Operand {
            batch,
            rows: c,
            cols: r,
            s_row: 1,
            s_col: c,
            s_batch,
        }
    } else {
        Operand {
            batch,
            rows: r,
            cols: c,
            s_row: c,
            s_col: 1,
            s_batch,
        }
    })
}

/// Validated problem: operands, output batch and output shape.
struct Plan {
    a: Operand,
    b: Operand,
    batch: usize,
    out_shape: Vec<usize>,
}

fn plan(op: &'static str, a: &[usize], b: &[usize], trans_a: bool, trans_b: bool) -> Result<Plan> {
    let what = || format!("a {a:?} (trans_a {trans_a}) and b {b:?} (trans_b {trans_b})");
    let (Some(oa), Some(ob)) = (operand(a, trans_a), operand(b, trans_b)) else {
        return Err(Error::shape(
            op,
            format!("operands must have rank 2 or 3, got {}", what()),
        ));
    };
    if oa.cols != ob.rows {
        return Err(Error::shape(
            op,
            format!(
                "inner dimensions differ ({} vs {}) for {}",
                oa.cols,
                ob.rows,
                what()
            ),
        ));
    }
    let batch = match (oa.batch, ob.batch) {
        (x, y) if x == y => x,
        (1, y) => y,
        (x, 1) => x,
        _ => {
            return Err(Error::shape(
                op,
                format!("batch sizes do not broadcast for {}", what()),
            ))
        }
    };
    let out_shape = if a.len() == 2 && b.len() == 2 {
        vec![oa.rows, ob.cols]
    } else {
        vec![batch, oa.rows, ob.cols]
    };
    Ok(Plan {
        a: oa,
        b: ob,
        batch,
        out_shape,
    })
}

/// Checks the optional epilogue tensors: `bias` of shape `bias_shape`, `residual` of `out_shape`.
pub(crate) fn check_epilogue(
    op: &'static str,
    bias: Option<&Tensor>,
    bias_shape: &[usize],
    residual: Option<&Tensor>,
    out_shape: &[usize],
) -> Result<u32> {
    let mut flags = 0;
    if let Some(t) = bias {
        if t.shape() != bias_shape {
            return Err(Error::shape(
                op,
                format!("bias must have shape {bias_shape:?}, got {:?}", t.shape()),
            ));
        }
        flags |= FLAG_BIAS;
    }
    if let Some(t) = residual {
        if t.shape() != out_shape {
            return Err(Error::shape(
                op,
                format!(
                    "residual must have the output shape {out_shape:?}, got {:?}",
                    t.shape()
                ),
            ));
        }
        flags |= FLAG_RESIDUAL;
    }
    Ok(flags)
}

/// `out[b] = op(a[b]) @ op(b[b]) + bias + residual`.
///
/// `a`: `[M, K]` or `[batch, M, K]` (`[.., K, M]` with `trans_a`); `b`: `[K, N]` or
/// `[batch, K, N]` (`[.., N, K]` with `trans_b`). An operand of rank 2 or batch 1 is broadcast
/// over the other's batch. Output `[batch, M, N]`, or `[M, N]` when both inputs have rank 2.
/// `bias`: `[N]`; `residual`: the output's shape. All tensors share one float dtype.
pub fn matmul(ctx: &GpuContext, a: &Tensor, b: &Tensor, opts: &MatmulOptions) -> Result<Tensor> {
    const OP: &str = "matmul";
    let mut named = vec![("a", a), ("b", b)];
    named.extend(opts.bias.map(|t| ("bias", t)));
    named.extend(opts.residual.map(|t| ("residual", t)));
    let dtype = float_dtype(OP, &named)?;
    let pl = plan(OP, a.shape(), b.shape(), opts.trans_a, opts.trans_b)?;
    let flags = check_epilogue(OP, opts.bias, &[pl.b.cols], opts.residual, &pl.out_shape)?;
    let out = Tensor::empty(ctx, &pl.out_shape, dtype)?;
    dim32(OP, out.numel())?;
    let (m, n) = (pl.a.rows, pl.b.cols);
    let reg8 = |rows: usize| match REG8_SHAPES.iter().find(|(r, _)| *r == rows) {
        Some((_, kernel)) => Ok((kernel, rows, REG8_COLS)),
        None => Err(Error::shape(
            OP,
            format!("Registers8Rows({rows}): the tile rows must be 64, 32, 16 or 8"),
        )),
    };
    let reg10 = (&MATMUL_REG10, REG10_ROWS, REG8_COLS);
    let (kernel, tile_m, tile_n) = match opts.kernel.resolve(ctx) {
        MatmulKernel::Registers => (&MATMUL_REG, REG_TILE, REG_TILE),
        MatmulKernel::Registers8 if reg10_pays(m) => reg10,
        MatmulKernel::Registers8 => reg8(reg8_tile_rows(m))?,
        MatmulKernel::Registers8Rows(rows) => reg8(rows)?,
        MatmulKernel::Registers10 => reg10,
        _ => (&MATMUL, TILE, TILE),
    };
    let tiles_n = n.div_ceil(tile_n);
    let params = MatmulParams {
        m: dim32(OP, m)?,
        n: dim32(OP, n)?,
        k: dim32(OP, pl.a.cols)?,
        batch: dim32(OP, pl.batch)?,
        a_sm: dim32(OP, pl.a.s_row)?,
        a_sk: dim32(OP, pl.a.s_col)?,
        a_sb: dim32(OP, pl.a.s_batch)?,
        b_sk: dim32(OP, pl.b.s_row)?,
        b_sn: dim32(OP, pl.b.s_col)?,
        b_sb: dim32(OP, pl.b.s_batch)?,
        flags,
        tiles_n: dim32(OP, tiles_n)?,
    };
    // Unused epilogue bindings get `a` as a placeholder (never read: the flags are off).
    let workgroups = (pl.batch * m.div_ceil(tile_m) * tiles_n) as u64;
    ctx.note_flops(2.0 * (pl.batch * m * n) as f64 * pl.a.cols as f64);
    ctx.dispatch(
        OP,
        kernel,
        dtype,
        bytemuck::bytes_of(&params),
        &[
            ("a", a),
            ("b", b),
            ("bias", opts.bias.unwrap_or(a)),
            ("residual", opts.residual.unwrap_or(a)),
            ("out", &out),
        ],
        ctx.grid(workgroups),
    )?;
    Ok(out)
}

/// A linear layer: `x [..., in] @ weight[out, in]^T + bias + residual -> [..., out]`
/// (PyTorch weight layout). `bias`: `[out]`; `residual`: `[..., out]`.
pub fn linear(
    ctx: &GpuContext,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    linear_impl(ctx, x, weight, true, bias, residual)
}

/// [`linear`] with the weight stored transposed, `[in, out]`: the layout in which the
/// register-blocked kernels on CPU adapters read it fastest (lanes read neighbouring output
/// features, not rows `in` elements apart).
pub fn linear_in_out(
    ctx: &GpuContext,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    linear_impl(ctx, x, weight, false, bias, residual)
}

fn linear_impl(
    ctx: &GpuContext,
    x: &Tensor,
    weight: &Tensor,
    out_in: bool,
    bias: Option<&Tensor>,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    const OP: &str = "linear";
    let (xs, ws) = (x.shape(), weight.shape());
    let (Some(&inf), [w0, w1]) = (xs.last(), ws) else {
        return Err(Error::shape(
            OP,
            format!("x must have rank >= 1 and weight rank 2, got x {xs:?} and weight {ws:?}"),
        ));
    };
    let (outf, win) = if out_in { (w0, w1) } else { (w1, w0) };
    if inf != *win {
        let layout = if out_in { "[out, in]" } else { "[in, out]" };
        return Err(Error::shape(
            OP,
            format!("x {xs:?} has {inf} features but weight {ws:?} ({layout}) expects {win}"),
        ));
    }
    let mut out_shape = xs.to_vec();
    *out_shape.last_mut().unwrap() = *outf;
    if let Some(r) = residual {
        if r.shape() != out_shape.as_slice() {
            return Err(Error::shape(
                OP,
                format!(
                    "residual must have shape {out_shape:?}, got {:?}",
                    r.shape()
                ),
            ));
        }
    }
    let rows = x.numel() / inf;
    let x2 = x.reshape(&[rows, inf])?;
    let r2 = residual.map(|r| r.reshape(&[rows, *outf])).transpose()?;
    let opts = MatmulOptions {
        trans_a: false,
        trans_b: out_in,
        bias,
        residual: r2.as_ref(),
        kernel: MatmulKernel::Auto,
    };
    let out = matmul(ctx, &x2, weight, &opts).map_err(|e| match e {
        Error::Shape { message, .. } => Error::shape(OP, message),
        Error::DType { message, .. } => Error::dtype(OP, message),
        other => other,
    })?;
    out.reshape(&out_shape)
}

/// CPU reference of [`matmul`] on host slices (shapes and options as for the GPU op; `bias`
/// and `residual` as flat data). Returns the output and its shape. Panics on invalid shapes.
#[allow(clippy::too_many_arguments)]
pub fn cpu_matmul(
    a: &[f32],
    a_shape: &[usize],
    b: &[f32],
    b_shape: &[usize],
    trans_a: bool,
    trans_b: bool,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
) -> (Vec<f32>, Vec<usize>) {
    let pl = plan("cpu_matmul", a_shape, b_shape, trans_a, trans_b).expect("valid shapes");
    let (m, n, k) = (pl.a.rows, pl.b.cols, pl.a.cols);
    let mut out = vec![0f32; pl.batch * m * n];
    for bi in 0..pl.batch {
        for i in 0..m {
            for j in 0..n {
                let mut s = 0f64;
                for l in 0..k {
                    let av = a[bi * pl.a.s_batch + i * pl.a.s_row + l * pl.a.s_col];
                    let bv = b[bi * pl.b.s_batch + l * pl.b.s_row + j * pl.b.s_col];
                    s += av as f64 * bv as f64;
                }
                let o = (bi * m + i) * n + j;
                s += bias.map_or(0.0, |v| v[j] as f64);
                s += residual.map_or(0.0, |v| v[o] as f64);
                out[o] = s as f32;
            }
        }
    }
    (out, pl.out_shape)
}
