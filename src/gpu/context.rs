//! Adapter selection, device creation, error capture and command recording.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use wgpu::util::DeviceExt;

use super::kernel::Kernel;
use super::pool::{size_class, BufferPool, PoolStats};
use super::profile::{self, DispatchTime, ProfState, Profile, TimingSource};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// How to pick the adapter. Empty fields mean "choose automatically".
#[derive(Clone, Debug, Default)]
pub struct ContextOptions {
    /// Backend name: `vulkan`, `metal`, `dx12` (case-insensitive). `None`: all native backends.
    pub backend: Option<String>,
    /// Case-insensitive substring of the adapter name, e.g. `llvmpipe` or `nvidia`.
    pub adapter: Option<String>,
    /// Planning mode: ops validate their inputs and allocate through the pool, which counts
    /// the bytes, but no GPU memory is taken and nothing runs. Gives the peak memory of a
    /// workload (a full-size SD-XL step, say) from its allocation plan. Reads return zeros.
    pub plan_only: bool,
}

impl ContextOptions {
    /// Options from the environment variables `ATEDM_BACKEND` and `ATEDM_ADAPTER`.
    pub fn from_env() -> Self {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        ContextOptions {
            backend: get("ATEDM_BACKEND"),
            adapter: get("ATEDM_ADAPTER"),
            plan_only: false,
        }
    }

    /// `self` with empty fields filled from the environment.
    pub fn or_env(mut self) -> Self {
        let env = Self::from_env();
        self.backend = self.backend.or(env.backend);
        self.adapter = self.adapter.or(env.adapter);
        self
    }
}

/// A printable description of an adapter.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
}

impl AdapterSummary {
    fn new(info: &wgpu::AdapterInfo) -> Self {
        AdapterSummary {
            name: info.name.clone(),
            backend: format!("{:?}", info.backend),
            device_type: format!("{:?}", info.device_type),
            driver: info.driver.clone(),
            driver_info: info.driver_info.clone(),
        }
    }
}

/// Features the engine uses when the adapter has them.
const WANTED_FEATURES: wgpu::Features = wgpu::Features::SHADER_F16
    .union(wgpu::Features::TIMESTAMP_QUERY)
    .union(wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS)
    .union(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES)
    .union(wgpu::Features::SUBGROUP);

/// Dispatches recorded since the last submit; submitted automatically past this count so a long
/// chain of ops does not hold an unbounded command buffer.
const MAX_PENDING_DISPATCHES: usize = 4096;

#[derive(Default)]
struct Pending {
    encoder: Option<wgpu::CommandEncoder>,
    dispatches: usize,
}

/// Pipeline cache key: (family, entry point, storage dtype).
type PipelineKey = (&'static str, &'static str, DType);

/// The GPU: adapter, device, queue, buffer pool and pipeline cache.
///
/// `GpuContext` is `Send + Sync`; ops from several threads record into one command stream.
pub struct GpuContext {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    features: wgpu::Features,
    limits: wgpu::Limits,
    pub(crate) pool: Arc<BufferPool>,
    modules: Mutex<HashMap<(&'static str, DType), Arc<wgpu::ShaderModule>>>,
    pipelines: Mutex<HashMap<PipelineKey, Arc<wgpu::ComputePipeline>>>,
    pending: Mutex<Pending>,
    errors: Arc<Mutex<Vec<wgpu::Error>>>,
    lost: Arc<Mutex<Option<String>>>,
    /// In planning mode, the one small buffer every "allocation" shares.
    plan_buffer: Option<wgpu::Buffer>,
    /// Per-dispatch timing while a profile is being recorded.
    profiler: Mutex<Option<ProfState>>,
    submissions: std::sync::atomic::AtomicU64,
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

fn parse_backend(name: &str) -> Result<wgpu::Backends> {
    match name.trim().to_ascii_lowercase().as_str() {
        "vulkan" | "vk" => Ok(wgpu::Backends::VULKAN),
        "metal" | "mtl" => Ok(wgpu::Backends::METAL),
        "dx12" | "d3d12" => Ok(wgpu::Backends::DX12),
        other => Err(Error::Invalid(format!(
            "unknown backend '{other}': expected vulkan, metal or dx12"
        ))),
    }
}

fn type_rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    }
}

impl GpuContext {
    /// Lists the adapters visible to `backend` (all native backends when `None`).
    pub fn list_adapters(backend: Option<&str>) -> Result<Vec<AdapterSummary>> {
        let backends = match backend {
            Some(b) => parse_backend(b)?,
            None => wgpu::Backends::PRIMARY,
        };
        let instance = Self::instance(backends);
        let adapters = pollster::block_on(instance.enumerate_adapters(backends));
        Ok(adapters
            .iter()
            .map(|a| AdapterSummary::new(&a.get_info()))
            .collect())
    }

    fn instance(backends: wgpu::Backends) -> wgpu::Instance {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = backends;
        wgpu::Instance::new(desc)
    }

    /// Opens the adapter chosen by `opts` (see [`ContextOptions`]): by default a discrete GPU,
    /// else an integrated one, else any adapter (a software rasterizer such as lavapipe).
    pub fn new(opts: &ContextOptions) -> Result<Self> {
        let backends = match &opts.backend {
            Some(b) => parse_backend(b)?,
            None => wgpu::Backends::PRIMARY,
        };
        let instance = Self::instance(backends);
        let mut adapters = pollster::block_on(instance.enumerate_adapters(backends));
        let all: Vec<String> = adapters
            .iter()
            .map(|a| {
                let i = a.get_info();
                format!("{} ({:?}, {:?})", i.name, i.backend, i.device_type)
            })
            .collect();
        if let Some(want) = &opts.adapter {
            let want = want.to_ascii_lowercase();
            adapters.retain(|a| a.get_info().name.to_ascii_lowercase().contains(&want));
        }
        adapters.sort_by_key(|a| type_rank(a.get_info().device_type));
        let Some(adapter) = adapters.into_iter().next() else {
            let mut msg = String::new();
            if let Some(b) = &opts.backend {
                let _ = write!(msg, " for backend '{b}'");
            }
            if let Some(a) = &opts.adapter {
                let _ = write!(msg, " matching '{a}'");
            }
            if all.is_empty() {
                msg.push_str(
                    ": no Vulkan/Metal/DX12 driver is installed. On Debian/Ubuntu without a GPU, \
                     install Mesa's software Vulkan driver: `apt-get install mesa-vulkan-drivers`",
                );
            } else {
                let _ = write!(msg, "; available: {}", all.join(", "));
            }
            return Err(Error::NoAdapter(msg));
        };
        let info = adapter.get_info();
        let features = adapter.features() & WANTED_FEATURES;
        let limits = adapter.limits();
        let desc = wgpu::DeviceDescriptor {
            label: Some("atedm"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&desc)).map_err(|e| {
            Error::DeviceRequest {
                adapter: info.name.clone(),
                message: e.to_string(),
            }
        })?;
        let errors: Arc<Mutex<Vec<wgpu::Error>>> = Arc::default();
        let lost: Arc<Mutex<Option<String>>> = Arc::default();
        {
            let errors = errors.clone();
            device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
                errors.lock().unwrap().push(e);
            }));
            let lost = lost.clone();
            device.set_device_lost_callback(move |reason, msg| {
                *lost.lock().unwrap() = Some(format!("{reason:?}: {msg}"));
            });
        }
        let plan_buffer = opts.plan_only.then(|| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("plan placeholder"),
                size: 256,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        });
        Ok(GpuContext {
            plan_buffer,
            device,
            queue,
            info,
            features,
            limits,
            pool: Arc::default(),
            modules: Mutex::default(),
            pipelines: Mutex::default(),
            pending: Mutex::default(),
            errors,
            lost,
            profiler: Mutex::default(),
            submissions: Default::default(),
        })
    }

    // ---------------------------------------------------------------- profiling

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
                profile::QUERIES_PER_SET
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

    /// The adapter's description.
    pub fn adapter(&self) -> AdapterSummary {
        AdapterSummary::new(&self.info)
    }
    /// The features enabled on the device (the subset of the ones we use that the adapter has).
    pub fn features(&self) -> wgpu::Features {
        self.features
    }
    /// The device limits (the adapter's real limits).
    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }
    /// Whether this context only plans (see [`ContextOptions::plan_only`]).
    pub fn is_plan_only(&self) -> bool {
        self.plan_buffer.is_some()
    }

    /// Whether the adapter is a CPU implementation (lavapipe, WARP): kernels without workgroup
    /// barriers are chosen there.
    pub fn is_cpu_adapter(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    /// Whether f16 storage (`SHADER_F16`) is available.
    pub fn supports_f16(&self) -> bool {
        self.features.contains(wgpu::Features::SHADER_F16)
    }
    /// Whether GPU timestamp queries are available.
    pub fn supports_timestamps(&self) -> bool {
        self.features.contains(wgpu::Features::TIMESTAMP_QUERY)
    }
    /// Counters of the buffer pool.
    pub fn pool_stats(&self) -> PoolStats {
        self.pool.stats()
    }
    /// Resets the pool's peak to its current footprint.
    pub fn reset_peak_memory(&self) {
        self.pool.reset_peak();
    }
    /// Destroys the device now (frees its memory). Every later operation returns
    /// [`Error::DeviceLost`].
    pub fn destroy(&self) {
        self.lost
            .lock()
            .unwrap()
            .get_or_insert_with(|| "destroyed by GpuContext::destroy".into());
        self.device.destroy();
    }

    fn check_lost(&self) -> Result<()> {
        match self.lost.lock().unwrap().clone() {
            Some(reason) => Err(Error::DeviceLost(reason)),
            None => Ok(()),
        }
    }

    /// Frees the pool's unused buffers.
    pub fn trim_pool(&self) {
        self.pool.trim();
    }

    /// Multi-line report of adapter, features and limits (`atedm info`).
    pub fn describe(&self) -> String {
        let i = &self.info;
        let l = &self.limits;
        let mut s = String::new();
        let _ = writeln!(s, "adapter:   {}", i.name);
        let _ = writeln!(s, "backend:   {:?}", i.backend);
        let _ = writeln!(s, "type:      {:?}", i.device_type);
        let _ = writeln!(s, "driver:    {} {}", i.driver, i.driver_info);
        let _ = writeln!(s, "vendor/device id: {:#06x}/{:#06x}", i.vendor, i.device);
        let feat = |f: wgpu::Features, n: &str| {
            format!(
                "{n}={}",
                if self.features.contains(f) {
                    "yes"
                } else {
                    "no"
                }
            )
        };
        let _ = writeln!(
            s,
            "features:  {} {} {} {}",
            feat(wgpu::Features::SHADER_F16, "shader-f16"),
            feat(wgpu::Features::TIMESTAMP_QUERY, "timestamp-query"),
            feat(
                wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES,
                "timestamps-in-passes"
            ),
            feat(wgpu::Features::SUBGROUP, "subgroup"),
        );
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        let _ = writeln!(s, "limits:");
        let _ = writeln!(
            s,
            "  max_storage_buffer_binding_size: {} ({:.0} MiB)",
            l.max_storage_buffer_binding_size,
            mib(l.max_storage_buffer_binding_size)
        );
        let _ = writeln!(
            s,
            "  max_buffer_size: {} ({:.0} MiB)",
            l.max_buffer_size,
            mib(l.max_buffer_size)
        );
        let _ = writeln!(
            s,
            "  max_compute_workgroup_storage_size: {}",
            l.max_compute_workgroup_storage_size
        );
        let _ = writeln!(
            s,
            "  max_compute_invocations_per_workgroup: {}",
            l.max_compute_invocations_per_workgroup
        );
        let _ = writeln!(
            s,
            "  max_compute_workgroup_size: {}x{}x{}",
            l.max_compute_workgroup_size_x,
            l.max_compute_workgroup_size_y,
            l.max_compute_workgroup_size_z
        );
        let _ = writeln!(
            s,
            "  max_compute_workgroups_per_dimension: {}",
            l.max_compute_workgroups_per_dimension
        );
        let _ = writeln!(
            s,
            "  max_storage_buffers_per_shader_stage: {}",
            l.max_storage_buffers_per_shader_stage
        );
        let _ = write!(
            s,
            "  max_uniform_buffer_binding_size: {}",
            l.max_uniform_buffer_binding_size
        );
        s
    }

    /// Returns the first error the device reported since the last check (validation, OOM,
    /// device loss), clearing it.
    pub fn check(&self) -> Result<()> {
        self.check_lost()?;
        let mut errs = self.errors.lock().unwrap();
        if errs.is_empty() {
            return Ok(());
        }
        let first = errs.remove(0);
        errs.clear();
        Err(convert_error(first, "a GPU operation"))
    }

    // ---------------------------------------------------------------- buffers

    /// Allocates a storage buffer of at least `bytes` bytes (from the pool when possible).
    /// Returns the buffer and its size class.
    pub(crate) fn alloc(&self, bytes: u64, what: &str) -> Result<(wgpu::Buffer, u64)> {
        self.check_lost()?;
        if bytes > self.limits.max_buffer_size {
            return Err(Error::TooLarge {
                op: "alloc",
                tensor: what.to_string(),
                bytes,
                limit_name: "max_buffer_size",
                limit: self.limits.max_buffer_size,
            });
        }
        let mut class = size_class(bytes);
        if class > self.limits.max_buffer_size {
            class = bytes.div_ceil(4) * 4;
        }
        if let Some(b) = self.pool.take(class) {
            return Ok((b, class));
        }
        match self.create_storage(class, what) {
            Err(Error::OutOfMemory { .. }) => {
                // Return the pool's idle buffers to the driver and try once more.
                self.pool.trim();
                self.create_storage(class, what)
            }
            other => other,
        }
        .map(|b| {
            self.pool.created(class);
            (b, class)
        })
    }

    fn create_storage(&self, class: u64, what: &str) -> Result<wgpu::Buffer> {
        if let Some(b) = &self.plan_buffer {
            return Ok(b.clone());
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let vscope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(what),
            size: class,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let verr = pollster::block_on(vscope.pop());
        let oom = pollster::block_on(scope.pop());
        if oom.is_some() {
            return Err(Error::OutOfMemory {
                what: what.to_string(),
                bytes: class,
            });
        }
        if let Some(e) = verr {
            return Err(convert_error(e, what));
        }
        Ok(buffer)
    }

    /// A storage buffer holding `data` (padded to its size class). Small uploads get a fresh
    /// buffer created with its contents, so nothing recorded has to be submitted first and a
    /// step that uploads a few host values (timesteps, micro-conditioning) stays one
    /// submission; large ones (and planning mode) take a pooled buffer and a queue write.
    pub(crate) fn alloc_init(&self, data: &[u8], what: &str) -> Result<(wgpu::Buffer, u64)> {
        const SMALL: usize = 1 << 20;
        if self.is_plan_only() || data.len() > SMALL {
            let (b, class) = self.alloc(data.len() as u64, what)?;
            self.write(&b, data)?;
            return Ok((b, class));
        }
        self.check_lost()?;
        let class = size_class(data.len() as u64);
        let mut padded = data.to_vec();
        padded.resize(class as usize, 0);
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let buffer = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(what),
                contents: &padded,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
            });
        if pollster::block_on(scope.pop()).is_some() {
            return Err(Error::OutOfMemory {
                what: what.to_string(),
                bytes: class,
            });
        }
        self.pool.created(class);
        Ok((buffer, class))
    }

    /// Command buffers submitted so far (a UNet step should add one).
    pub fn submissions(&self) -> u64 {
        self.submissions.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Writes `data` at the start of `buffer`, in stream order with recorded ops.
    pub(crate) fn write(&self, buffer: &wgpu::Buffer, data: &[u8]) -> Result<()> {
        self.check_lost()?;
        if self.is_plan_only() {
            return Ok(());
        }
        let padded;
        let bytes = if data.len() % 4 != 0 {
            let mut v = data.to_vec();
            v.resize(data.len().div_ceil(4) * 4, 0);
            padded = v;
            &padded[..]
        } else {
            data
        };
        // queue.write_buffer lands before the next submit: submit what is recorded first, under
        // the recording lock, so a pooled buffer still read by recorded ops is not overwritten
        // under them and no other thread's submit slips in between.
        let mut p = self.pending.lock().unwrap();
        self.submit_locked(&mut p)?;
        self.queue.write_buffer(buffer, 0, bytes);
        Ok(())
    }

    /// Reads `bytes` bytes from the start of `buffer` (submits pending work and waits).
    pub(crate) fn read(&self, buffer: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>> {
        self.check_lost()?;
        if self.is_plan_only() {
            return Ok(vec![0; bytes as usize]);
        }
        let padded = bytes.div_ceil(4) * 4;
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: padded,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        {
            let mut p = self.pending.lock().unwrap();
            Self::encoder(&self.device, &mut p)
                .copy_buffer_to_buffer(buffer, 0, &staging, 0, padded);
            self.submit_locked(&mut p)?;
        }
        self.check()?;
        let (tx, rx) = std::sync::mpsc::channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.wait()?;
        match rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                self.check()?;
                return Err(Error::Gpu(format!(
                    "mapping the readback buffer failed: {e}"
                )));
            }
            Err(_) => {
                self.check()?;
                return Err(Error::Gpu("readback was never completed".into()));
            }
        }
        let mut data = staging
            .slice(..)
            .get_mapped_range()
            .map_err(|e| Error::Gpu(format!("reading the readback buffer: {e}")))?
            .to_vec();
        staging.unmap();
        data.truncate(bytes as usize);
        Ok(data)
    }

    /// Zero-fills the first `bytes` bytes of `buffer` in stream order.
    pub(crate) fn clear(&self, buffer: &wgpu::Buffer, bytes: u64) {
        if self.is_plan_only() {
            return;
        }
        let padded = bytes.div_ceil(4) * 4;
        self.with_encoder(|enc| enc.clear_buffer(buffer, 0, Some(padded)));
    }

    /// Copies `bytes` bytes between buffers in stream order.
    pub(crate) fn copy(&self, src: &wgpu::Buffer, dst: &wgpu::Buffer, bytes: u64) {
        if self.is_plan_only() {
            return;
        }
        let padded = bytes.div_ceil(4) * 4;
        self.with_encoder(|enc| enc.copy_buffer_to_buffer(src, 0, dst, 0, padded));
    }

    // ---------------------------------------------------------------- recording

    fn encoder<'p>(device: &wgpu::Device, p: &'p mut Pending) -> &'p mut wgpu::CommandEncoder {
        p.encoder.get_or_insert_with(|| {
            device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("atedm"),
            })
        })
    }

    fn with_encoder<R>(&self, f: impl FnOnce(&mut wgpu::CommandEncoder) -> R) -> R {
        let mut p = self.pending.lock().unwrap();
        f(Self::encoder(&self.device, &mut p))
    }

    /// Submits the pending encoder while the caller holds the recording lock, so submissions
    /// reach the queue in recording order whatever the threads do.
    fn submit_locked(&self, p: &mut Pending) -> Result<()> {
        p.dispatches = 0;
        if let Some(enc) = p.encoder.take() {
            self.submissions
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
            let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
            self.queue.submit([enc.finish()]);
            let oom = pollster::block_on(oom.pop());
            let err = pollster::block_on(scope.pop());
            if let Some(e) = oom.or(err) {
                return Err(convert_error(e, "submitting recorded work"));
            }
        }
        Ok(())
    }

    /// Submits everything recorded so far (does not wait).
    pub fn flush(&self) -> Result<()> {
        {
            let mut p = self.pending.lock().unwrap();
            self.submit_locked(&mut p)?;
        }
        self.check()
    }

    /// Submits recorded work and blocks until the GPU has finished it.
    pub fn wait(&self) -> Result<()> {
        self.flush()?;
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: None,
                timeout: None,
            })
            .map_err(|e| Error::Gpu(format!("waiting for the GPU: {e}")))?;
        self.check()
    }

    /// Shader module for a family and dtype (cached).
    fn module(&self, kernel: &Kernel, dtype: DType) -> Result<Arc<wgpu::ShaderModule>> {
        let key = (kernel.family.name, dtype);
        if let Some(m) = self.modules.lock().unwrap().get(&key) {
            return Ok(m.clone());
        }
        if dtype == DType::F16 && !self.supports_f16() {
            return Err(Error::Unsupported(format!(
                "f16 kernels need the SHADER_F16 feature, which adapter '{}' lacks; use f32",
                self.info.name
            )));
        }
        let src = kernel.family.source_for(dtype);
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let desc = wgpu::ShaderModuleDescriptor {
            label: Some(kernel.family.name),
            source: wgpu::ShaderSource::Wgsl(src.into()),
        };
        let module = self.device.create_shader_module(desc);
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(format!(
                "shader '{}' ({dtype:?}) failed to compile: {e}",
                kernel.family.name
            )));
        }
        let module = Arc::new(module);
        self.modules.lock().unwrap().insert(key, module.clone());
        Ok(module)
    }

    /// Compute pipeline for a kernel and dtype (cached; auto layout).
    pub(crate) fn pipeline(
        &self,
        kernel: &Kernel,
        dtype: DType,
    ) -> Result<Arc<wgpu::ComputePipeline>> {
        let key = (kernel.family.name, kernel.entry, dtype);
        if let Some(p) = self.pipelines.lock().unwrap().get(&key) {
            return Ok(p.clone());
        }
        let module = self.module(kernel, dtype)?;
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(kernel.entry),
                layout: None,
                module: &module,
                entry_point: Some(kernel.entry),
                compilation_options: Default::default(),
                cache: None,
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(format!(
                "pipeline '{}::{}' ({dtype:?}) failed: {e}",
                kernel.family.name, kernel.entry
            )));
        }
        let pipeline = Arc::new(pipeline);
        self.pipelines.lock().unwrap().insert(key, pipeline.clone());
        Ok(pipeline)
    }

    /// Records one dispatch of `kernel`.
    ///
    /// Binding 0 is the uniform `params` (skipped when empty); bindings 1.. are the storage
    /// buffers of `tensors`, in order. Each tensor is bound with its own byte size, which must
    /// not exceed the adapter's `max_storage_buffer_binding_size`: the error names the tensor.
    pub(crate) fn dispatch(
        &self,
        op: &'static str,
        kernel: &Kernel,
        dtype: DType,
        params: &[u8],
        tensors: &[(&str, &Tensor)],
        workgroups: [u32; 3],
    ) -> Result<()> {
        self.check_lost()?;
        let max_bind = self.limits.max_storage_buffer_binding_size;
        for (name, t) in tensors {
            let bytes = t.binding_bytes();
            if bytes > max_bind {
                return Err(Error::TooLarge {
                    op,
                    tensor: format!("{name} {:?} {:?}", t.shape(), t.dtype()),
                    bytes,
                    limit_name: "max_storage_buffer_binding_size",
                    limit: max_bind,
                });
            }
        }
        let max_wg = self.limits.max_compute_workgroups_per_dimension;
        if workgroups.iter().any(|&w| w > max_wg) {
            return Err(Error::TooLarge {
                op,
                tensor: format!("dispatch grid {workgroups:?}"),
                bytes: *workgroups.iter().max().unwrap() as u64,
                limit_name: "max_compute_workgroups_per_dimension",
                limit: max_wg as u64,
            });
        }
        if workgroups.contains(&0) {
            return Ok(());
        }
        if self.is_plan_only() {
            return Ok(());
        }
        let pipeline = self.pipeline(kernel, dtype)?;
        let layout = pipeline.get_bind_group_layout(0);
        let uniform = (!params.is_empty()).then(|| {
            let mut data = params.to_vec();
            data.resize(data.len().div_ceil(16) * 16, 0);
            self.device
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("params"),
                    contents: &data,
                    usage: wgpu::BufferUsages::UNIFORM,
                })
        });
        let mut entries = Vec::with_capacity(tensors.len() + 1);
        if let Some(u) = &uniform {
            entries.push(wgpu::BindGroupEntry {
                binding: 0,
                resource: u.as_entire_binding(),
            });
        }
        for (i, (_, t)) in tensors.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: t.buffer(),
                    offset: 0,
                    size: std::num::NonZeroU64::new(t.binding_bytes()),
                }),
            });
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(kernel.entry),
            layout: &layout,
            entries: &entries,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(format!(
                "{op}: binding failed for '{}': {e}",
                kernel.entry
            )));
        }
        let mut prof_guard = self.profiler.lock().unwrap();
        let mut prof = prof_guard
            .as_mut()
            .filter(|st| st.owner == std::thread::current().id());
        let query = prof.as_mut().and_then(|st| {
            (st.source == TimingSource::GpuTimestamps).then(|| st.next_queries(&self.device))
        });
        let mut p = self.pending.lock().unwrap();
        {
            let enc = Self::encoder(&self.device, &mut p);
            let timestamp_writes = query.map(|(set, q)| wgpu::ComputePassTimestampWrites {
                query_set: &prof.as_ref().expect("profiling").sets[set],
                beginning_of_pass_write_index: Some(q),
                end_of_pass_write_index: Some(q + 1),
            });
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(kernel.entry),
                timestamp_writes,
            });
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(workgroups[0], workgroups[1], workgroups[2]);
        }
        p.dispatches += 1;
        if let Some(st) = prof.as_mut() {
            let mut seconds = 0.0;
            if st.source == TimingSource::CpuWait {
                let t0 = std::time::Instant::now();
                self.submit_locked(&mut p)?;
                self.device
                    .poll(wgpu::PollType::Wait {
                        submission_index: None,
                        timeout: None,
                    })
                    .map_err(|e| Error::Gpu(format!("waiting for the GPU: {e}")))?;
                seconds = t0.elapsed().as_secs_f64();
            }
            st.records.push(profile::Pending {
                op,
                entry: kernel.entry,
                scope: st.scope,
                flops: st.next_flops.take(),
                query,
                seconds,
            });
        }
        if p.dispatches >= MAX_PENDING_DISPATCHES {
            self.submit_locked(&mut p)?;
        }
        Ok(())
    }

    /// Splits `n` workgroups over x and y so no dimension exceeds the adapter's limit.
    /// Kernels recover the linear index as `wid.x + wid.y * nwg.x` and skip indices `>= n`.
    pub fn grid(&self, n: u64) -> [u32; 3] {
        let max = self.limits.max_compute_workgroups_per_dimension as u64;
        if n <= max {
            [n as u32, 1, 1]
        } else {
            let y = n.div_ceil(max);
            let x = n.div_ceil(y);
            [x as u32, y as u32, 1]
        }
    }
}

fn convert_error(e: wgpu::Error, what: &str) -> Error {
    match e {
        wgpu::Error::OutOfMemory { .. } => Error::OutOfMemory {
            what: what.to_string(),
            bytes: 0,
        },
        other => Error::Gpu(other.to_string()),
    }
}
