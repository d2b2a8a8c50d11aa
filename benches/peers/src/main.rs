//! `matmul-peers`: f32 matmul timings of atedm's WGSL kernels against burn's wgpu backend, on
//! the same adapter, in one process, with the repetitions interleaved.
//!
//! Each timed repetition, for every implementation alike: take the stored `a`, add a scalar that
//! is new to this repetition (burn: `add_scalar`; atedm: `ops::elementwise::scale(a, 1, eps)`),
//! multiply by `b`, and read the whole `[M, N]` result back into a host `Vec<f32>`. The clock
//! stops once the vector is in hand. The fresh scalar keeps a backend from handing back (or
//! skipping) work it already did for identical inputs; the readback forces the work to finish.
//!
//! Usage: matmul-peers [--reps N] [--warmup N] [--json FILE]

use std::time::{Duration, Instant};

use atedm::gpu::{ContextOptions, GpuContext};
use atedm::ops::elementwise::scale;
use atedm::ops::matmul::{matmul, MatmulKernel, MatmulOptions};
use atedm::{DType, Tensor as ATensor};
use burn::tensor::{Device, DeviceKind, Tensor as BTensor, TensorData};

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

/// (M, K, N): `[M, K] x [K, N]`.
const SHAPES: [(usize, usize, usize); 2] = [(1024, 1024, 1024), (4096, 640, 640)];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Impl {
    Burn,
    Atedm(MatmulKernel),
}

const IMPLS: [Impl; 4] = [
    Impl::Burn,
    Impl::Atedm(MatmulKernel::Auto),
    Impl::Atedm(MatmulKernel::Registers8),
    Impl::Atedm(MatmulKernel::Tiled),
];

impl Impl {
    fn name(self) -> &'static str {
        match self {
            Impl::Burn => "burn",
            Impl::Atedm(MatmulKernel::Auto) => "atedm(Auto)",
            Impl::Atedm(MatmulKernel::Registers8) => "atedm(Registers8)",
            Impl::Atedm(MatmulKernel::Tiled) => "atedm(Tiled)",
            Impl::Atedm(MatmulKernel::Registers) => "atedm(Registers)",
        }
    }
}

struct Args {
    reps: usize,
    warmup: usize,
    json: Option<String>,
}

fn parse_args() -> AnyResult<Args> {
    let mut args = Args {
        reps: 5,
        warmup: 2,
        json: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--reps" => args.reps = value("--reps")?.parse()?,
            "--warmup" => args.warmup = value("--warmup")?.parse()?,
            "--json" => args.json = Some(value("--json")?),
            "-h" | "--help" => {
                println!("usage: matmul-peers [--reps N (5)] [--warmup N (2)] [--json FILE]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)").into()),
        }
    }
    if args.reps == 0 || args.warmup == 0 {
        return Err("--reps and --warmup must be at least 1".into());
    }
    Ok(args)
}

/// Deterministic values in [-1, 1) (xorshift64*).
fn host_data(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            let r = s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40; // 24 bits
            r as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

struct Inputs {
    m: usize,
    n: usize,
    burn_a: BTensor<2>,
    burn_b: BTensor<2>,
    atedm_a: ATensor,
    atedm_b: ATensor,
}

/// One repetition: `(a + eps) @ b`, read back whole. Returns the result and the wall time.
fn run_once(
    imp: Impl,
    inp: &Inputs,
    ctx: &GpuContext,
    eps: f32,
) -> AnyResult<(Vec<f32>, Duration)> {
    let t0 = Instant::now();
    let out = match imp {
        Impl::Burn => {
            let c = inp
                .burn_a
                .clone()
                .add_scalar(eps)
                .matmul(inp.burn_b.clone());
            let data: TensorData = c.try_into_data()?;
            if data.dtype() != burn::tensor::DType::F32 {
                return Err(format!("burn returned {:?}, not f32", data.dtype()).into());
            }
            data.try_into_vec::<f32>()?
        }
        Impl::Atedm(kernel) => {
            let a = scale(ctx, &inp.atedm_a, 1.0, eps)?;
            let opts = MatmulOptions {
                kernel,
                ..Default::default()
            };
            let c = matmul(ctx, &a, &inp.atedm_b, &opts)?;
            c.to_f32_vec(ctx)?
        }
    };
    let dt = t0.elapsed();
    if out.len() != inp.m * inp.n {
        return Err(format!(
            "{}: {} values back, expected {}",
            imp.name(),
            out.len(),
            inp.m * inp.n
        )
        .into());
    }
    Ok((out, dt))
}

/// max |x - r| / max |r|, and how many entries differ at all (bitwise).
fn rel_diff(x: &[f32], r: &[f32]) -> (f64, usize) {
    let max_ref = r.iter().fold(0f64, |m, &v| m.max((v as f64).abs()));
    let max_diff = x
        .iter()
        .zip(r)
        .fold(0f64, |m, (&a, &b)| m.max((a as f64 - b as f64).abs()));
    let differing = x
        .iter()
        .zip(r)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    (max_diff / max_ref, differing)
}

/// The same measure against an f64 CPU product on a sample of output entries.
fn rel_diff_cpu_sample(
    x: &[f32],
    a: &[f32],
    b: &[f32],
    eps: f32,
    (m, k, n): (usize, usize, usize),
) -> f64 {
    let samples = 512;
    let (mut max_ref, mut max_diff) = (0f64, 0f64);
    for s in 0..samples {
        let i = (s * 7919 + 13) % m;
        let j = (s * 104_729 + 7) % n;
        let mut acc = 0f64;
        for p in 0..k {
            acc += (a[i * k + p] + eps) as f64 * b[p * n + j] as f64;
        }
        max_ref = max_ref.max(acc.abs());
        max_diff = max_diff.max((x[i * n + j] as f64 - acc).abs());
    }
    max_diff / max_ref
}

fn median(sorted: &[f64]) -> f64 {
    let l = sorted.len();
    if l % 2 == 1 {
        sorted[l / 2]
    } else {
        (sorted[l / 2 - 1] + sorted[l / 2]) / 2.0
    }
}

/// CubeCL keeps autotune results on disk, by default in `target/environment` beside the
/// outermost `Cargo.toml` above the working directory, which from here is the engine's checkout.
/// Unless a `cubecl.toml`/`burn.toml` or the environment says otherwise, keep it in this crate's
/// own (git-ignored) `target/cubecl-environment`. A cached decision makes a later run's first
/// burn call cheap; delete that folder to see the full autotune cost again.
fn place_cubecl_cache() -> std::path::PathBuf {
    use burn::cubecl::config::cache::CacheConfig;
    use burn::cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};
    let mut cfg = CubeClRuntimeConfig::from_current_dir().override_from_env();
    if matches!(cfg.environment.path, CacheConfig::Target) {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/cubecl-environment");
        cfg.environment.path = CacheConfig::Directory(dir);
    }
    let root = cfg.environment.path.root();
    CubeClRuntimeConfig::set(cfg);
    root
}

fn main() -> AnyResult<()> {
    let args = parse_args()?;
    let cache = place_cubecl_cache();
    println!("burn/cubecl autotune cache: {}", cache.display());

    let ctx = GpuContext::new(&ContextOptions::default())?;
    let ad = ctx.adapter();
    println!(
        "atedm adapter: {} ({}, {}) driver: {} {}",
        ad.name, ad.backend, ad.device_type, ad.driver, ad.driver_info
    );
    // burn on the same adapter: the CPU kind when atedm's is a CPU adapter (lavapipe).
    let kind = if ctx.is_cpu_adapter() {
        DeviceKind::Cpu
    } else {
        DeviceKind::DefaultDevice
    };
    let (device, setup): (Device, _) = Device::wgpu_options()
        .device_kind(kind.clone())
        .init_with_setup()
        .map_err(|e| format!("burn wgpu init ({kind:?}): {e:?}"))?;
    let bi = setup.adapter.get_info();
    println!(
        "burn  adapter: {} ({:?}, {:?}) driver: {} {} [burn 0.22.1, wgpu runtime, WGSL, fusion+autotune]",
        bi.name, bi.backend, bi.device_type, bi.driver, bi.driver_info
    );
    if bi.name != ad.name {
        println!("WARNING: the two libraries run on different adapters");
    }
    let adapter_line = format!("{} / {} {}", ad.name, ad.driver, ad.driver_info);
    println!(
        "f32, {} warm-up + {} timed reps per implementation, interleaved (order rotated each rep); \
         each rep = (a + eps_rep) @ b + full readback",
        args.warmup, args.reps
    );

    let mut eps_counter = 0u32;
    let mut next_eps = || {
        eps_counter += 1;
        eps_counter as f32 * 1e-4
    };

    let mut json_shapes = Vec::new();
    for &(m, k, n) in &SHAPES {
        let a_host = host_data(m * k, 1 + m as u64);
        let b_host = host_data(k * n, 2 + n as u64);
        let inp = Inputs {
            m,
            n,
            burn_a: BTensor::<2>::from_data(TensorData::new(a_host.clone(), [m, k]), &device),
            burn_b: BTensor::<2>::from_data(TensorData::new(b_host.clone(), [k, n]), &device),
            atedm_a: ATensor::from_f32(&ctx, &a_host, &[m, k], DType::F32)?,
            atedm_b: ATensor::from_f32(&ctx, &b_host, &[k, n], DType::F32)?,
        };
        let flops = 2.0 * m as f64 * n as f64 * k as f64;
        println!(
            "\n== [{m},{k}] x [{k},{n}] (M x K x N = {m} x {k} x {n}), {:.2} GFLOP per matmul",
            flops / 1e9
        );

        // Warm-up (burn's first call autotunes), untimed.
        let mut first_call = Vec::new();
        for &imp in &IMPLS {
            for w in 0..args.warmup {
                let (_, dt) = run_once(imp, &inp, &ctx, next_eps())?;
                if w == 0 {
                    first_call.push((imp, dt));
                }
            }
        }
        print!("first call (incl. compile/autotune):");
        for (imp, dt) in &first_call {
            print!(" {} {:.0} ms;", imp.name(), dt.as_secs_f64() * 1e3);
        }
        println!();

        // Correctness: all on the same eps; burn is the reference, plus an f64 CPU sample.
        let eps_check = 0.5f32;
        let (reference, _) = run_once(Impl::Burn, &inp, &ctx, eps_check)?;
        let burn_vs_cpu = rel_diff_cpu_sample(&reference, &a_host, &b_host, eps_check, (m, k, n));
        println!("check (a + {eps_check}) @ b, max|diff| / max|ref|:");
        println!(
            "  {:<18} vs f64 CPU (512 sampled entries): {:.2e}",
            "burn", burn_vs_cpu
        );
        let mut checks = vec![serde_json::json!({"impl": "burn", "vs_cpu_sample": burn_vs_cpu})];
        for &imp in &IMPLS[1..] {
            let (out, _) = run_once(imp, &inp, &ctx, eps_check)?;
            let (vs_burn, differing) = rel_diff(&out, &reference);
            let vs_cpu = rel_diff_cpu_sample(&out, &a_host, &b_host, eps_check, (m, k, n));
            println!(
                "  {:<18} vs burn (all {} entries): {:.2e} ({} entries differ)   vs f64 CPU sample: {:.2e}",
                imp.name(),
                m * n,
                vs_burn,
                differing,
                vs_cpu
            );
            checks.push(serde_json::json!({"impl": imp.name(), "vs_burn": vs_burn, "entries_differing_from_burn": differing, "vs_cpu_sample": vs_cpu}));
        }
        // Control: the comparison does see a difference when there is one (atedm on a + 0.5001).
        let (control, _) = run_once(IMPLS[1], &inp, &ctx, eps_check + 1e-4)?;
        let (ctl_diff, ctl_differing) = rel_diff(&control, &reference);
        println!(
            "  control: {} on (a + {}) vs burn on (a + {eps_check}): {:.2e} ({} entries differ)",
            IMPLS[1].name(),
            eps_check + 1e-4,
            ctl_diff,
            ctl_differing
        );
        checks.push(serde_json::json!({"control": format!("{} with eps + 1e-4", IMPLS[1].name()), "vs_burn": ctl_diff, "entries_differing_from_burn": ctl_differing}));

        // Timed, interleaved; the starting implementation rotates each rep.
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); IMPLS.len()];
        for rep in 0..args.reps {
            for j in 0..IMPLS.len() {
                let idx = (rep + j) % IMPLS.len();
                let (out, dt) = run_once(IMPLS[idx], &inp, &ctx, next_eps())?;
                std::hint::black_box(&out);
                times[idx].push(dt.as_secs_f64() * 1e3);
            }
        }

        println!(
            "{:<18} {:>10} {:>10} {:>10} {:>12} {:>16}",
            "impl", "median ms", "min ms", "max ms", "GFLOP/s med", "med / burn med"
        );
        let mut sorted_all = Vec::new();
        for t in &times {
            let mut s = t.clone();
            s.sort_by(|a, b| a.partial_cmp(b).unwrap());
            sorted_all.push(s);
        }
        let burn_med = median(&sorted_all[0]);
        let mut rows = Vec::new();
        for (i, &imp) in IMPLS.iter().enumerate() {
            let s = &sorted_all[i];
            let med = median(s);
            let gflops = flops / (med / 1e3) / 1e9;
            println!(
                "{:<18} {:>10.1} {:>10.1} {:>10.1} {:>12.2} {:>16.2}",
                imp.name(),
                med,
                s[0],
                s[s.len() - 1],
                gflops,
                med / burn_med
            );
            rows.push(serde_json::json!({
                "impl": imp.name(),
                "times_ms": times[i],
                "median_ms": med,
                "min_ms": s[0],
                "max_ms": s[s.len() - 1],
                "gflops_median": gflops,
                "atedm_over_burn_median_time": med / burn_med,
            }));
        }
        print!("atedm/burn ratio of median times (<1: atedm faster):");
        for (i, &imp) in IMPLS.iter().enumerate().skip(1) {
            print!(" {} {:.2};", imp.name(), median(&sorted_all[i]) / burn_med);
        }
        println!();
        json_shapes.push(serde_json::json!({
            "m": m, "k": k, "n": n,
            "first_call_ms": first_call.iter().map(|(imp, dt)| serde_json::json!({"impl": imp.name(), "ms": dt.as_secs_f64() * 1e3})).collect::<Vec<_>>(),
            "checks": checks,
            "results": rows,
        }));
    }

    if let Some(path) = &args.json {
        let doc = serde_json::json!({
            "adapter": adapter_line,
            "burn_adapter": format!("{} / {} {}", bi.name, bi.driver, bi.driver_info),
            "burn_version": "0.22.1",
            "reps": args.reps,
            "warmup": args.warmup,
            "timed": "(a + eps_rep) @ b, then the whole result read back to a host Vec<f32>",
            "shapes": json_shapes,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)?;
        println!("\nwrote {path}");
    }
    Ok(())
}
