//! Per-dispatch profiling: GPU timestamp queries around every compute pass where the adapter
//! has `TIMESTAMP_QUERY`, otherwise CPU wall time of each dispatch submitted alone and waited
//! for (slower, and it includes submission overhead: the report says which).
//!
//! Start with [`GpuContext::profile_begin`](super::GpuContext::profile_begin), run the
//! workload, end with [`GpuContext::profile_end`](super::GpuContext::profile_end). Ops tell
//! the profiler their FLOPs (matmul, conv, attention), and callers can tag a region with a
//! scope ([`GpuContext::profile_scope`](super::GpuContext::profile_scope)) so pruning
//! overhead can be told from model work. Only the thread that began the profile is recorded, so
//! other threads' work on the same context does not mix in; one profile at a time.

use std::collections::HashMap;
use std::fmt::Write as _;

/// How the times were taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimingSource {
    /// Timestamps written by the GPU at the start and end of each compute pass.
    GpuTimestamps,
    /// Each dispatch submitted alone and waited for on the CPU.
    CpuWait,
}

/// One timed dispatch.
#[derive(Clone, Debug)]
pub struct DispatchTime {
    /// The op that recorded it (`matmul`, `conv2d`, `gwpr`, ...).
    pub op: &'static str,
    /// The kernel's entry point.
    pub entry: &'static str,
    /// The scope it ran in, if any (`atedm`, `tome`).
    pub scope: Option<&'static str>,
    /// FLOPs of the dispatch, when the op counts them.
    pub flops: Option<f64>,
    pub seconds: f64,
}

impl DispatchTime {
    /// The row of the breakdown this dispatch belongs to: the op, except that the attention
    /// map pass (AT-EDM's head-mean map) is its own row, and scoped work is prefixed.
    pub fn category(&self) -> String {
        let base = if self.entry.starts_with("head_mean_map") {
            "attention map"
        } else {
            self.op
        };
        match self.scope {
            Some(s) => format!("{s}: {base}"),
            None => base.to_string(),
        }
    }
}

/// Totals of one category.
#[derive(Clone, Debug)]
pub struct CategoryTime {
    pub name: String,
    pub calls: usize,
    pub seconds: f64,
    /// FLOPs of the dispatches that count them.
    pub flops: f64,
}

/// A profiled region.
#[derive(Clone, Debug)]
pub struct Profile {
    pub source: TimingSource,
    pub dispatches: Vec<DispatchTime>,
}

impl Profile {
    /// Sum of all dispatch times (GPU busy time; excludes gaps between passes).
    pub fn total(&self) -> f64 {
        self.dispatches.iter().map(|d| d.seconds).sum()
    }

    /// Time of the dispatches that are pruning overhead: AT-EDM's map pass and everything in
    /// the `atedm` scope (G-WPR, top-k, recovery index, gather and recovery copies), and
    /// everything in the `tome` scope (plan, merge, unmerge).
    pub fn overhead(&self) -> f64 {
        self.dispatches
            .iter()
            .filter(|d| d.entry.starts_with("head_mean_map") || d.scope.is_some())
            .map(|d| d.seconds)
            .sum()
    }

    /// Categories, most time first.
    pub fn by_category(&self) -> Vec<CategoryTime> {
        let mut map: HashMap<String, CategoryTime> = HashMap::new();
        for d in &self.dispatches {
            let name = d.category();
            let e = map.entry(name.clone()).or_insert(CategoryTime {
                name,
                calls: 0,
                seconds: 0.0,
                flops: 0.0,
            });
            e.calls += 1;
            e.seconds += d.seconds;
            e.flops += d.flops.unwrap_or(0.0);
        }
        let mut v: Vec<CategoryTime> = map.into_values().collect();
        v.sort_by(|a, b| b.seconds.total_cmp(&a.seconds).then(a.name.cmp(&b.name)));
        v
    }

    /// The per-op breakdown as a text table: calls, time, share, achieved GFLOP/s.
    pub fn table(&self) -> String {
        let total = self.total();
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<28} {:>7} {:>11} {:>7} {:>10}",
            "op", "calls", "ms", "share", "GFLOP/s"
        );
        for c in self.by_category() {
            let gf = if c.flops > 0.0 && c.seconds > 0.0 {
                format!("{:.1}", c.flops / c.seconds / 1e9)
            } else {
                "-".into()
            };
            let _ = writeln!(
                s,
                "{:<28} {:>7} {:>11.2} {:>6.1}% {:>10}",
                c.name,
                c.calls,
                c.seconds * 1e3,
                100.0 * c.seconds / total.max(1e-30),
                gf
            );
        }
        let _ = write!(
            s,
            "{:<28} {:>7} {:>11.2} ({})",
            "total",
            self.dispatches.len(),
            total * 1e3,
            match self.source {
                TimingSource::GpuTimestamps => "GPU timestamps",
                TimingSource::CpuWait => "CPU wall time per dispatch; no timestamp queries",
            }
        );
        s
    }
}

/// Queries per query set (wgpu's maximum).
pub(crate) const QUERIES_PER_SET: u32 = 4096;

/// Recording state while profiling.
pub(crate) struct ProfState {
    /// The thread that records: dispatches of other threads are not profiled.
    pub owner: std::thread::ThreadId,
    pub source: TimingSource,
    pub sets: Vec<wgpu::QuerySet>,
    /// Queries used in the last set.
    pub used: u32,
    pub records: Vec<Pending>,
    pub next_flops: Option<f64>,
    pub scope: Option<&'static str>,
}

/// A dispatch whose time is not known yet.
pub(crate) struct Pending {
    pub op: &'static str,
    pub entry: &'static str,
    pub scope: Option<&'static str>,
    pub flops: Option<f64>,
    /// (set, first query) with GPU timestamps.
    pub query: Option<(usize, u32)>,
    /// With CPU timing.
    pub seconds: f64,
}

impl ProfState {
    pub fn new(source: TimingSource) -> Self {
        ProfState {
            owner: std::thread::current().id(),
            source,
            sets: Vec::new(),
            used: 0,
            records: Vec::new(),
            next_flops: None,
            scope: None,
        }
    }

    /// Two queries for the next pass (a new set when the last one is full).
    pub fn next_queries(&mut self, device: &wgpu::Device) -> (usize, u32) {
        if self.sets.is_empty() || self.used + 2 > QUERIES_PER_SET {
            self.sets
                .push(device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("atedm profile"),
                    ty: wgpu::QueryType::Timestamp,
                    count: QUERIES_PER_SET,
                }));
            self.used = 0;
        }
        let q = (self.sets.len() - 1, self.used);
        self.used += 2;
        q
    }
}
