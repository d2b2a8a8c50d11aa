//! `atedm bench` on a tiny synthetic model (the figures are not asserted: speed is measured by
//! the bench, never in tests), the GPU profiler, and the synthetic-weight fill.

use crate::common::*;
use atedm::bench::{
    plan_memory, AtEdmVariant, BenchModel, BenchOptions, BenchReport, TomeVariant, Variant,
};
use atedm::gpu::GpuContext;
use atedm::model::config::UNetConfig;
use atedm::ops::fill;
use atedm::ops::matmul::{self, MatmulOptions};
use atedm::prune::budget::PruneTarget;
use atedm::prune::tome::TomeSettings;
use atedm::prune::{AtEdm, Pruning};
use atedm::DType;

/// One profile per context at a time: the tests that profile take turns.
static PROFILING: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn profiling() -> std::sync::MutexGuard<'static, ()> {
    PROFILING.lock().unwrap_or_else(|e| e.into_inner())
}

/// The bench on tiny-a's config with synthetic weights, 64 px, one timed round.
fn opts() -> BenchOptions {
    BenchOptions {
        model: BenchModel::Synthetic {
            config: Box::new(
                UNetConfig::from_file(&root("tests/fixtures/unet/tiny-a/unet/config.json"))
                    .unwrap(),
            ),
            name: "tiny-a".into(),
        },
        width: Some(64),
        height: Some(64),
        batch: 2,
        steps: 50,
        reps: 1,
        dtype: Some(DType::F32),
        ..Default::default()
    }
}

fn run(ctx: &GpuContext, a: &BenchOptions) -> atedm::Result<BenchReport> {
    atedm::bench::run(ctx, a, |_| {})
}

#[test]
fn bench_runs_full_atedm_and_tome_at_equal_flops() {
    let _turn = profiling();
    let report = run(ctx(), &opts()).unwrap();
    let results = &report.variants;
    let names: Vec<&str> = results.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["full", "AT-EDM", "ToMe"]);
    let (full, atedm, tome) = (&results[0], &results[1], &results[2]);
    assert_eq!((full.flops_ratio, full.speedup), (1.0, 1.0));
    assert!(
        full.overhead_share.abs() < 1e-12,
        "full has no pruning overhead"
    );
    // AT-EDM at the 4.1T setting's keep ratio (0.319 with DSAP); ToMe solved to AT-EDM's FLOPs:
    // at or below them, within one merge step.
    assert!(
        atedm.settings.contains("keep ratio 0.3190"),
        "{}",
        atedm.settings
    );
    assert!(atedm.flops_ratio > 1.0);
    assert!(tome.tflops_per_step <= atedm.tflops_per_step * (1.0 + 1e-12));
    assert!(
        tome.tflops_per_step > atedm.tflops_per_step * 0.95,
        "{tome:?} vs {atedm:?}"
    );
    for r in results {
        assert!(r.median_ms > 0.0 && r.min_ms <= r.median_ms && r.median_ms <= r.max_ms);
        assert!(r.overhead_share >= 0.0 && r.overhead_share < 1.0);
    }
    assert!(atedm.overhead_share > 0.0 && tome.overhead_share > 0.0);
    assert_eq!(
        report.profiles.len(),
        4,
        "full, AT-EDM early and late, ToMe"
    );
    assert!(report.profiles[0].profile.table().contains("total"));
    let doc = report.to_json();
    assert_eq!(doc["variants"].as_array().unwrap().len(), 3);
    assert!(doc["peak_bytes"].as_u64().unwrap() > 0);
}

#[test]
fn bench_reps_0_runs_one_step_and_reports_the_plans_memory() {
    // `--reps 0` runs one untimed step (the memory of a real run where timing is out of reach);
    // its peak from actual allocations agrees with `--plan-memory`'s allocation plan.
    let _turn = profiling();
    let a = BenchOptions {
        reps: 0,
        variants: vec![Variant::Full],
        ..opts()
    };
    // A context of its own: the shared one's pool holds (and has peaked with) the buffers of
    // the tests running beside this one.
    let own = atedm::gpu::GpuContext::new(&atedm::gpu::ContextOptions {
        backend: Some(ctx().adapter().backend.to_lowercase()),
        adapter: Some(ctx().adapter().name.clone()),
        plan_only: false,
    })
    .unwrap();
    let report = run(&own, &a).unwrap();
    assert!(report.variants.is_empty(), "no timings with --reps 0");
    let (peak, weights) = (report.peak_bytes, report.weights_bytes);
    assert!(
        weights > 0 && peak > weights,
        "peak {peak}, weights {weights}"
    );
    let planned = plan_memory(&own, &a).unwrap();
    let p = planned[0].peak_bytes;
    // Same code path, same pool: equal here (1,068,288 bytes for the tiny config); 1% allows
    // for a size-class difference.
    assert!(
        (p as f64 - peak as f64).abs() <= 0.01 * peak as f64,
        "planned {p} vs actual {peak}"
    );
}

#[test]
fn bench_pruning_flags_override_the_variants() {
    let _turn = profiling();
    let a = BenchOptions {
        variants: vec![Variant::Atedm, Variant::Tome],
        atedm: AtEdmVariant::Target(PruneTarget::Fixed(Pruning::AtEdm(
            AtEdm::new(0.5).unwrap().with_dagger(true),
        ))),
        tome: TomeVariant::Target(PruneTarget::Fixed(
            Pruning::tome(TomeSettings {
                ratio: 0.25,
                ..Default::default()
            })
            .unwrap(),
        )),
        ..opts()
    };
    let r = run(ctx(), &a).unwrap().variants;
    assert_eq!(r[0].name, "AT-EDM-dagger");
    assert!(
        r[0].settings.contains("keep ratio 0.5000"),
        "{}",
        r[0].settings
    );
    assert!(
        r[1].settings.contains("merge ratio 0.2500"),
        "{}",
        r[1].settings
    );
    // No full variant: speedups are undefined.
    assert!(r[0].speedup.is_nan());
    let bad = BenchOptions {
        width: Some(100),
        ..opts()
    };
    assert!(run(ctx(), &bad)
        .err()
        .unwrap()
        .to_string()
        .contains("multiple of"));
    // The command line: flags into the same options, and a missing config named.
    let cli = atedm_cli(&["bench", "--synthetic", "nonexistent.json"]);
    assert!(cli.error().contains("nonexistent.json"), "{}", cli.stderr);
    let cli = atedm_cli(&["bench", "--tau", "2"]);
    assert!(cli.error().contains("--tau"), "{}", cli.stderr);
}

#[test]
fn profiler_times_every_dispatch_with_flops_and_scopes() {
    let _turn = profiling();
    let c = ctx();
    let a = fill::fill_uniform(c, &[64, 48], DType::F32, 1, 0.0, 1.0).unwrap();
    let b = fill::fill_uniform(c, &[48, 32], DType::F32, 2, 0.0, 1.0).unwrap();
    c.profile_begin().unwrap();
    let _x = matmul::matmul(c, &a, &b, &MatmulOptions::default()).unwrap();
    {
        let _s = c.profile_scope("atedm");
        let _y = matmul::matmul(c, &a, &b, &MatmulOptions::default()).unwrap();
    }
    let _z = fill::fill_uniform(c, &[10], DType::F32, 3, 0.0, 1.0).unwrap();
    let p = c.profile_end().unwrap();
    assert!(!c.is_profiling());
    assert_eq!(p.dispatches.len(), 3);
    let flops = 2.0 * 64.0 * 48.0 * 32.0;
    assert_eq!(p.dispatches[0].flops, Some(flops));
    assert_eq!(p.dispatches[0].scope, None);
    assert_eq!(p.dispatches[1].scope, Some("atedm"));
    assert_eq!(p.dispatches[2].op, "fill_uniform");
    assert_eq!(p.dispatches[2].flops, None);
    assert!(p
        .dispatches
        .iter()
        .all(|d| d.seconds > 0.0 && d.seconds < 10.0));
    assert!((p.overhead() - p.dispatches[1].seconds).abs() < 1e-15);
    let cats = p.by_category();
    assert!(cats
        .iter()
        .any(|c| c.name == "atedm: matmul" && c.calls == 1));
    assert!(p.table().contains("total"));
    assert!(c.profile_end().is_err(), "no profile running");
}

#[test]
fn fill_matches_cpu_and_has_the_asked_range() {
    let c = ctx();
    for (n, seed, offset, scale) in [
        (1usize, 0u32, 0.0f32, 1.0f32),
        (1000, 7, 1.0, 0.5),
        (4097, 9, -2.0, 3.0),
    ] {
        let want = fill::cpu_fill_uniform(n, seed, offset, scale);
        for dtype in DTYPES {
            let got = download(&fill::fill_uniform(c, &[n], dtype, seed, offset, scale).unwrap());
            assert_close(
                &got,
                &round_to(dtype, &want),
                tol(dtype),
                &format!("fill {n} {dtype}"),
            );
        }
        assert!(want.iter().all(|v| (v - offset).abs() <= scale));
        if n > 1000 {
            let mean = want.iter().sum::<f32>() / n as f32;
            assert!((mean - offset).abs() < 0.1 * scale, "{mean}");
        }
    }
    let e = fill::fill_uniform(c, &[4], DType::U32, 0, 0.0, 1.0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("float"), "{e}");
}

#[test]
fn the_map_pass_counts_as_pruning_overhead_with_either_kernel() {
    use atedm::ops::attention::{self, AttentionOptions, MapKernel};
    let _turn = profiling();
    let c = ctx();
    let q = fill::fill_uniform(c, &[1, 20, 16], DType::F32, 4, 0.0, 1.0).unwrap();
    let opts = AttentionOptions::new(2);
    for kernel in [MapKernel::Staged, MapKernel::Registers8] {
        c.profile_begin().unwrap();
        let _r = attention::attention_with_map_kernel(c, &q, &q, &q, &opts, kernel).unwrap();
        let p = c.profile_end().unwrap();
        assert_eq!(p.dispatches.len(), 2);
        assert!(
            (p.overhead() - p.dispatches[1].seconds).abs() < 1e-15,
            "{kernel:?}"
        );
        assert!(p.by_category().iter().any(|c| c.name == "attention map"));
    }
}

/// `bench --plan-memory`: SD-XL at 1024 px, batch 2, f16, every variant's step planned (nothing
/// runs): issue 7's memory target is at most 8 GB including the weights.
#[test]
fn bench_plans_sdxl_1024_memory_under_8_gb() {
    if !ctx().supports_f16() {
        eprintln!("skipped: the adapter has no f16");
        return;
    }
    let a = BenchOptions {
        model: BenchModel::default(),
        width: Some(1024),
        height: Some(1024),
        dtype: Some(DType::F16),
        ..opts()
    };
    let plans = plan_memory(ctx(), &a).unwrap();
    assert_eq!(plans.len(), 3);
    for p in &plans {
        // Weights: 2 bytes for each of SD-XL's 2,567,463,684 UNet parameters, plus at most
        // 12.5% size-class padding.
        let exact = 2 * 2_567_463_684u64;
        assert!(p.weights_bytes >= exact && p.weights_bytes <= exact + exact / 8);
        assert!(p.peak_bytes > p.weights_bytes, "{p:?}");
        assert!(p.peak_bytes <= 8_000_000_000, "{p:?}");
    }
}
