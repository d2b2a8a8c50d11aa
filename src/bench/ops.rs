//! Kernel throughput on the current adapter (GFLOP/s), what `atedm bench-ops` prints.
//!
//! The shapes are SD-XL's: a 1024^3 matmul, a 3x3 convolution on a 64x64x640 feature map
//! (level 2 at 512 px / the first level-2 conv at 1024 px), and 4096-token 10-head attention
//! (a level-2 self-attention at 1024 px), in f32 and f16. Each case runs once to warm up
//! (pipeline compilation), then `reps` times; a run is recorded, submitted and waited for.

use std::time::Instant;

use crate::error::Result;
use crate::gpu::GpuContext;
use crate::ops::{attention, conv2d, matmul};
use crate::tensor::{DType, Tensor};

/// Which kernel cases to time, and how.
#[derive(Debug, Clone)]
pub struct OpsBenchOptions {
    /// Timed repetitions per case (after one warm-up run).
    pub reps: usize,
    /// Storage dtypes to measure (f16 is skipped where the adapter lacks `SHADER_F16`).
    pub dtype: Vec<DType>,
    /// Only run cases whose name contains this text (matmul, linear, conv, attention).
    pub only: Option<String>,
    /// Divide every size by this factor (a quick smoke run: 8).
    pub shrink: usize,
}

impl Default for OpsBenchOptions {
    fn default() -> Self {
        OpsBenchOptions {
            reps: 3,
            dtype: vec![DType::F32, DType::F16],
            only: None,
            shrink: 1,
        }
    }
}

/// One measured case.
#[derive(Clone, Debug)]
pub struct BenchResult {
    /// Case and kernel, e.g. `matmul 1024^3 reg8x8`.
    pub name: String,
    /// Storage dtype.
    pub dtype: DType,
    /// FLOPs of one run.
    pub flops: f64,
    /// Seconds per run: median.
    pub median_s: f64,
    /// Seconds per run: fastest.
    pub min_s: f64,
    /// Seconds per run: slowest.
    pub max_s: f64,
}

impl BenchResult {
    /// Throughput at the median time.
    pub fn gflops(&self) -> f64 {
        self.flops / self.median_s / 1e9
    }
}

fn random(
    ctx: &GpuContext,
    shape: &[usize],
    dtype: DType,
    seed: u64,
    scale: f32,
) -> Result<Tensor> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-scale..scale)).collect();
    Tensor::from_f32(ctx, &v, shape, dtype)
}

fn time_case(
    ctx: &GpuContext,
    reps: usize,
    mut f: impl FnMut() -> Result<Tensor>,
) -> Result<(f64, f64, f64)> {
    drop(f()?);
    ctx.wait()?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let t0 = Instant::now();
        let out = f()?;
        ctx.wait()?;
        times.push(t0.elapsed().as_secs_f64());
        drop(out);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok((times[times.len() / 2], times[0], times[times.len() - 1]))
}

/// Runs the throughput cases, calling `report` after each, and returns their results.
pub fn measure(
    ctx: &GpuContext,
    args: &OpsBenchOptions,
    mut report: impl FnMut(&BenchResult),
) -> Result<Vec<BenchResult>> {
    let s = args.shrink.max(1);
    let wanted = |name: &str| args.only.as_deref().is_none_or(|o| name.contains(o));
    let mut results = Vec::new();
    for &dtype in &args.dtype {
        if dtype == DType::F16 && !ctx.supports_f16() {
            continue;
        }
        let mut push = |name: String, flops: f64, t: (f64, f64, f64)| {
            let r = BenchResult {
                name,
                dtype,
                flops,
                median_s: t.0,
                min_s: t.1,
                max_s: t.2,
            };
            report(&r);
            results.push(r);
        };
        let n = 1024 / s;
        if wanted("matmul") {
            let a = random(ctx, &[n, n], dtype, 1, 1.0)?;
            let b = random(ctx, &[n, n], dtype, 2, 1.0)?;
            for kernel in [
                matmul::MatmulKernel::Tiled,
                matmul::MatmulKernel::Registers,
                matmul::MatmulKernel::Registers8,
            ] {
                let opts = matmul::MatmulOptions {
                    kernel,
                    ..Default::default()
                };
                let t = time_case(ctx, args.reps, || matmul::matmul(ctx, &a, &b, &opts))?;
                let tag = match kernel {
                    matmul::MatmulKernel::Tiled => "tiled",
                    matmul::MatmulKernel::Registers => "regs 4x4",
                    _ => "regs 8x8",
                };
                push(
                    format!("matmul {n}x{n}x{n} ({tag})"),
                    2.0 * (n * n * n) as f64,
                    t,
                );
            }
        }
        // A pruned transformer's linear layers: few rows (AT-EDM keeps 25 of 64 tokens per
        // image at 256 px, 50 rows at batch 2), x @ W^T with SD-XL's 1280 features. The
        // 64-row tile against the height fitted to the rows; FLOPs count only the real rows.
        if wanted("linear") {
            let f = 1280 / s;
            let w = random(ctx, &[f, f], dtype, 2, 1.0)?;
            for rows in [12, 32, 50, 98, 128, 154] {
                let x = random(ctx, &[rows, f], dtype, 1, 1.0)?;
                for (kernel, trans_b, tag) in [
                    (matmul::MatmulKernel::Registers, true, "regs 4x4"),
                    (
                        matmul::MatmulKernel::Registers8Rows(64),
                        true,
                        "64-row tile",
                    ),
                    (matmul::MatmulKernel::Registers8, true, "fitted tile"),
                    (
                        matmul::MatmulKernel::Registers8,
                        false,
                        "fitted tile, W^T stored",
                    ),
                    (
                        matmul::MatmulKernel::Registers10,
                        false,
                        "10-row blocks, W^T stored",
                    ),
                ] {
                    let opts = matmul::MatmulOptions {
                        trans_b,
                        kernel,
                        ..Default::default()
                    };
                    let t = time_case(ctx, args.reps, || matmul::matmul(ctx, &x, &w, &opts))?;
                    push(
                        format!("linear {rows}x{f}x{f} ({tag})"),
                        2.0 * (rows * f * f) as f64,
                        t,
                    );
                }
            }
        }
        let (hw, c) = (64 / s, 640 / s);
        if wanted("conv") {
            let x = random(ctx, &[1, c, hw, hw], dtype, 3, 1.0)?;
            let w = random(ctx, &[c, c, 3, 3], dtype, 4, 0.05)?;
            for (kernel, tag) in [
                (conv2d::ConvKernel::Tiled, "tiled"),
                (conv2d::ConvKernel::Registers8, "regs 8x8"),
                (conv2d::ConvKernel::Rows3x3, "regs 8x8, row segments"),
            ] {
                let opts = conv2d::Conv2dOptions {
                    stride: 1,
                    padding: 1,
                    kernel,
                    ..Default::default()
                };
                let t = time_case(ctx, args.reps, || conv2d::conv2d(ctx, &x, &w, &opts))?;
                push(
                    format!("conv3x3 {hw}x{hw}x{c}->{c} ({tag})"),
                    2.0 * (c * c * 9 * hw * hw) as f64,
                    t,
                );
            }
        }
        let (tokens, heads, d) = (4096 / (s * s), 10, 64);
        let attn_flops = 4.0 * (tokens * tokens * d * heads) as f64;
        let opts = attention::AttentionOptions {
            heads,
            scale: None,
            causal: false,
        };
        if wanted("attention") {
            let q = random(ctx, &[1, tokens, heads * d], dtype, 5, 1.0)?;
            let k = random(ctx, &[1, tokens, heads * d], dtype, 6, 1.0)?;
            let v = random(ctx, &[1, tokens, heads * d], dtype, 7, 1.0)?;
            let t = time_case(ctx, args.reps, || {
                attention::attention(ctx, &q, &k, &v, &opts)
            })?;
            push(format!("attention {tokens} tok {heads}x{d}"), attn_flops, t);
            // The map variant recomputes Q K^T once more: count that too.
            for (kernel, tag) in [
                (attention::MapKernel::Staged, "staged"),
                (attention::MapKernel::Registers8, "regs 8x8"),
            ] {
                let t = time_case(ctx, args.reps, || {
                    attention::attention_with_map_kernel(ctx, &q, &k, &v, &opts, kernel)
                        .map(|(o, _map)| o)
                })?;
                push(
                    format!("attention+map {tokens} tok {heads}x{d} ({tag})"),
                    attn_flops * 1.5,
                    t,
                );
            }
        }
    }
    Ok(results)
}
