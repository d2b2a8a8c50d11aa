//! The GPU context: adapter selection, device creation (or adoption of a host application's
//! device), error capture and the adapter's description. Memory and transfers are in
//! [`super::memory`], command recording and dispatch in [`super::recording`], the shader and
//! pipeline caches in [`super::cache`], profiling in [`super::profile`].

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use super::pool::BufferPool;
use crate::error::{Error, Result};
use crate::tensor::DType;

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
    /// The adapter's name, e.g. `llvmpipe (LLVM 19.1.7, 256 bits)`.
    pub name: String,
    /// `Vulkan`, `Metal`, `Dx12`, ...
    pub backend: String,
    /// `DiscreteGpu`, `IntegratedGpu`, `Cpu`, ...
    pub device_type: String,
    /// The driver's name.
    pub driver: String,
    /// The driver's version text.
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

/// The GPU: adapter, device, queue, buffer pool and pipeline cache.
///
/// `GpuContext` is `Send + Sync`; ops from several threads record into one command stream.
pub struct GpuContext {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(super) info: wgpu::AdapterInfo,
    pub(super) features: wgpu::Features,
    pub(super) limits: wgpu::Limits,
    pub(crate) pool: Arc<BufferPool>,
    pub(super) modules: Mutex<HashMap<(&'static str, DType), Arc<wgpu::ShaderModule>>>,
    pub(super) pipelines: Mutex<HashMap<super::cache::PipelineKey, Arc<wgpu::ComputePipeline>>>,
    pub(super) pending: Mutex<super::recording::Pending>,
    pub(super) errors: Arc<Mutex<Vec<wgpu::Error>>>,
    pub(super) lost: Arc<Mutex<Option<String>>>,
    /// In planning mode, the one small buffer every "allocation" shares.
    pub(super) plan_buffer: Option<wgpu::Buffer>,
    /// Per-dispatch timing while a profile is being recorded.
    pub(super) profiler: Mutex<Option<super::profile::ProfState>>,
    pub(super) submissions: std::sync::atomic::AtomicU64,
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
        pollster::block_on(Self::list_adapters_async(backend))
    }

    /// [`GpuContext::list_adapters`] without blocking.
    pub async fn list_adapters_async(backend: Option<&str>) -> Result<Vec<AdapterSummary>> {
        let backends = match backend {
            Some(b) => parse_backend(b)?,
            None => wgpu::Backends::PRIMARY,
        };
        let instance = Self::instance(backends);
        let adapters = instance.enumerate_adapters(backends).await;
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
    /// Blocks until the adapter and device are ready ([`GpuContext::new_async`] is the
    /// non-blocking form, for hosts that cannot block, such as a browser).
    pub fn new(opts: &ContextOptions) -> Result<Self> {
        pollster::block_on(Self::new_async(opts))
    }

    /// [`GpuContext::new`] without blocking.
    pub async fn new_async(opts: &ContextOptions) -> Result<Self> {
        let backends = match &opts.backend {
            Some(b) => parse_backend(b)?,
            None => wgpu::Backends::PRIMARY,
        };
        let instance = Self::instance(backends);
        let mut adapters = instance.enumerate_adapters(backends).await;
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
        let (device, queue) =
            adapter
                .request_device(&desc)
                .await
                .map_err(|e| Error::DeviceRequest {
                    adapter: info.name.clone(),
                    message: e.to_string(),
                })?;
        Ok(Self::with_device(
            info,
            features,
            limits,
            device,
            queue,
            opts.plan_only,
        ))
    }

    /// A context on a device the host application created (a desktop app that renders with
    /// wgpu and runs the engine beside it). The device must have been requested with the
    /// features the engine should use (`SHADER_F16` for f16, `TIMESTAMP_QUERY` for GPU
    /// profiling; see [`GpuContext::wanted_features`]) and the limits its tensors need. The
    /// context installs its own uncaptured-error and device-lost callbacks on the device, so
    /// that failures come back as [`Error`]s; the host keeps its clones of the device and
    /// queue and may submit its own work on them.
    pub fn from_wgpu(adapter: &wgpu::Adapter, device: wgpu::Device, queue: wgpu::Queue) -> Self {
        let features = device.features() & WANTED_FEATURES;
        let limits = device.limits();
        Self::with_device(adapter.get_info(), features, limits, device, queue, false)
    }

    /// The features the engine uses when a device has them (ask for
    /// `adapter.features() & GpuContext::wanted_features()` when creating a device for it).
    pub fn wanted_features() -> wgpu::Features {
        WANTED_FEATURES
    }

    /// The wgpu device (shared with the host in [`GpuContext::from_wgpu`]).
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The wgpu queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    fn with_device(
        info: wgpu::AdapterInfo,
        features: wgpu::Features,
        limits: wgpu::Limits,
        device: wgpu::Device,
        queue: wgpu::Queue,
        plan_only: bool,
    ) -> Self {
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
        let plan_buffer = plan_only.then(|| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("plan placeholder"),
                size: 256,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        });
        GpuContext {
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

    /// Destroys the device now (frees its memory). Every later operation returns
    /// [`Error::DeviceLost`].
    pub fn destroy(&self) {
        self.lost
            .lock()
            .unwrap()
            .get_or_insert_with(|| "destroyed by GpuContext::destroy".into());
        self.device.destroy();
    }

    pub(super) fn check_lost(&self) -> Result<()> {
        match self.lost.lock().unwrap().clone() {
            Some(reason) => Err(Error::DeviceLost(reason)),
            None => Ok(()),
        }
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
}

pub(super) fn convert_error(e: wgpu::Error, what: &str) -> Error {
    match e {
        wgpu::Error::OutOfMemory { .. } => Error::OutOfMemory {
            what: what.to_string(),
            bytes: 0,
        },
        other => Error::Gpu(other.to_string()),
    }
}

/// The error an error scope caught. wgpu resolves a scope's pop at once on native backends;
/// where it does not (a browser), the error is not waited for here: it is reported as none, and
/// a failure shows at the next readback instead.
pub(super) fn scope_error(
    pop: impl std::future::Future<Output = Option<wgpu::Error>>,
) -> Option<wgpu::Error> {
    let mut pop = std::pin::pin!(pop);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match pop.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(e) => e,
        std::task::Poll::Pending => None,
    }
}
