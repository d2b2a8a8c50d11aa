//! GPU memory and transfers: buffers from the pool, uploads, readbacks (blocking and async),
//! clears and copies in stream order.

use wgpu::util::DeviceExt;

use super::context::{convert_error, scope_error};
use super::pool::{size_class, PoolStats};
use super::GpuContext;
use crate::error::{Error, Result};

impl GpuContext {
    /// Counters of the buffer pool.
    pub fn pool_stats(&self) -> PoolStats {
        self.pool.stats()
    }

    /// Resets the pool's peak to its current footprint.
    pub fn reset_peak_memory(&self) {
        self.pool.reset_peak();
    }

    /// Frees the pool's unused buffers.
    pub fn trim_pool(&self) {
        self.pool.trim();
    }

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

    pub(super) fn create_storage(&self, class: u64, what: &str) -> Result<wgpu::Buffer> {
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
        let verr = scope_error(vscope.pop());
        let oom = scope_error(scope.pop());
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
        if scope_error(scope.pop()).is_some() {
            return Err(Error::OutOfMemory {
                what: what.to_string(),
                bytes: class,
            });
        }
        self.pool.created(class);
        Ok((buffer, class))
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
        pollster::block_on(self.read_async(buffer, bytes))
    }

    /// [`GpuContext::read`] as a future: it completes when the buffer is mapped. On native
    /// backends the device is polled to completion first (mapping needs a poll there); in a
    /// browser the mapping completes through the event loop while the caller awaits.
    pub(crate) async fn read_async(&self, buffer: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>> {
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
        let (tx, rx) = futures_channel::oneshot::channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.poll_native()?;
        match rx.await {
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
}
