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

use super::GpuContext;
use crate::error::{Error, Result};

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
    /// Duration of the dispatch in seconds, taken as [`Profile::source`] says.
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
    /// The category, as [`DispatchTime::category`] names it.
    pub name: String,
    /// Number of dispatches in the category.
    pub calls: usize,
    /// Summed time of those dispatches, in seconds.
    pub seconds: f64,
    /// FLOPs of the dispatches that count them.
    pub flops: f64,
}

/// A profiled region.
#[derive(Clone, Debug)]
pub struct Profile {
    /// How the dispatch times were taken.
    pub source: TimingSource,
    /// Every dispatch recorded on the profiling thread, in recording order.
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

/// Restores the previous profiling scope when dropped (see [`GpuContext::profile_scope`]).
pub struct ProfileScope<'a> {
    ctx: &'a GpuContext,
    previous: Option<&'static str>,
}

impl Drop for ProfileScope<'_> {
    fn drop(&mut self) {
        if let Some(st) = self.ctx.profiler.lock().unwrap().as_mut() {
            if st.owner == std::thread::current().id() {
                st.scope = self.previous;
            }
        }
    }
}

impl GpuContext {
    /// Starts timing every dispatch (GPU timestamps when the adapter has them, else CPU wall
    /// time per dispatch, which submits each one alone). Waits for earlier work first.
    pub fn profile_begin(&self) -> Result<()> {
        self.wait()?;
        let source = if self.supports_timestamps() {
            TimingSource::GpuTimestamps
        } else {
            TimingSource::CpuWait
        };
        let mut prof = self.profiler.lock().unwrap();
        if prof.is_some() {
            return Err(Error::Invalid(
                "a profile is already being recorded on this context".into(),
            ));
        }
        *prof = Some(ProfState::new(source));
        Ok(())
    }

    /// Ends the profile: waits for the GPU, reads the timestamps and returns the dispatch times.
    pub fn profile_end(&self) -> Result<Profile> {
        self.wait()?;
        let st = {
            let mut prof = self.profiler.lock().unwrap();
            match prof.as_ref() {
                Some(st) if st.owner == std::thread::current().id() => prof.take(),
                _ => None,
            }
        };
        let Some(st) = st else {
            return Err(Error::Invalid(
                "profile_end without profile_begin on this thread".into(),
            ));
        };
        let mut ticks: Vec<Vec<u64>> = Vec::with_capacity(st.sets.len());
        for (i, set) in st.sets.iter().enumerate() {
            let count = if i + 1 == st.sets.len() {
                st.used
            } else {
                QUERIES_PER_SET
            };
            let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("profile resolve"),
                size: count as u64 * 8,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            self.with_encoder(|enc| enc.resolve_query_set(set, 0..count, &buf, 0));
            let bytes = self.read(&buf, count as u64 * 8)?;
            ticks.push(bytemuck::pod_collect_to_vec(&bytes));
        }
        let period_s = self.queue.get_timestamp_period() as f64 * 1e-9;
        let dispatches = st
            .records
            .into_iter()
            .map(|r| DispatchTime {
                op: r.op,
                entry: r.entry,
                scope: r.scope,
                flops: r.flops,
                seconds: match r.query {
                    Some((set, q)) => {
                        let t = &ticks[set];
                        t[q as usize + 1].saturating_sub(t[q as usize]) as f64 * period_s
                    }
                    None => r.seconds,
                },
            })
            .collect();
        Ok(Profile {
            source: st.source,
            dispatches,
        })
    }

    /// Whether this thread is recording a profile.
    pub fn is_profiling(&self) -> bool {
        self.profiler
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(|st| st.owner == std::thread::current().id())
    }

    /// Tags the dispatches recorded until the guard drops with `scope` (when profiling).
    pub fn profile_scope(&self, scope: &'static str) -> ProfileScope<'_> {
        let previous = self
            .profiler
            .lock()
            .unwrap()
            .as_mut()
            .filter(|st| st.owner == std::thread::current().id())
            .and_then(|st| st.scope.replace(scope));
        ProfileScope {
            ctx: self,
            previous,
        }
    }

    /// The FLOPs of the next dispatch (ops that count them call this just before dispatching).
    pub(crate) fn note_flops(&self, flops: f64) {
        if let Some(st) = self.profiler.lock().unwrap().as_mut() {
            if st.owner == std::thread::current().id() {
                st.next_flops = Some(flops);
            }
        }
    }
}
