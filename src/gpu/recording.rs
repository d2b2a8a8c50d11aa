//! Command recording: ops record compute passes into one pending encoder, submitted when a
//! result is read back, on [`GpuContext::flush`], or past a dispatch count.

use wgpu::util::DeviceExt;

use super::context::{convert_error, scope_error};
use super::kernel::Kernel;
use super::profile::{self, TimingSource};
use super::GpuContext;
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// Dispatches recorded since the last submit; submitted automatically past this count so a long
/// chain of ops does not hold an unbounded command buffer.
const MAX_PENDING_DISPATCHES: usize = 4096;

#[derive(Default)]
pub(super) struct Pending {
    pub(super) encoder: Option<wgpu::CommandEncoder>,
    pub(super) dispatches: usize,
}

impl GpuContext {
    /// Command buffers submitted so far (a UNet step should add one).
    pub fn submissions(&self) -> u64 {
        self.submissions.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(super) fn encoder<'p>(
        device: &wgpu::Device,
        p: &'p mut Pending,
    ) -> &'p mut wgpu::CommandEncoder {
        p.encoder.get_or_insert_with(|| {
            device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("atedm"),
            })
        })
    }

    pub(super) fn with_encoder<R>(&self, f: impl FnOnce(&mut wgpu::CommandEncoder) -> R) -> R {
        let mut p = self.pending.lock().unwrap();
        f(Self::encoder(&self.device, &mut p))
    }

    /// Submits the pending encoder while the caller holds the recording lock, so submissions
    /// reach the queue in recording order whatever the threads do.
    pub(super) fn submit_locked(&self, p: &mut Pending) -> Result<()> {
        p.dispatches = 0;
        if let Some(enc) = p.encoder.take() {
            self.submissions
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
            let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
            self.queue.submit([enc.finish()]);
            let oom = scope_error(oom.pop());
            let err = scope_error(scope.pop());
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
        pollster::block_on(self.wait_async())
    }

    /// [`GpuContext::wait`] as a future. On native backends it blocks while the device
    /// finishes its work; in a browser the work-done callback runs from the event loop.
    pub async fn wait_async(&self) -> Result<()> {
        self.flush()?;
        let (tx, rx) = futures_channel::oneshot::channel();
        self.queue.on_submitted_work_done(move || {
            let _ = tx.send(());
        });
        self.poll_native()?;
        rx.await
            .map_err(|_| Error::Gpu("the GPU never reported the work done".into()))?;
        self.check()
    }

    /// On native backends, blocks until the device has finished its submitted work (which
    /// also runs the map and work-done callbacks). In a browser the callbacks run from the
    /// event loop and this does nothing.
    pub(super) fn poll_native(&self) -> Result<()> {
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: None,
                timeout: None,
            })
            .map_err(|e| Error::Gpu(format!("waiting for the GPU: {e}")))?;
        Ok(())
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
            return Err(Error::Unsupported(format!(
                "{op}: a dispatch of {workgroups:?} workgroups exceeds the adapter's \
                 max_compute_workgroups_per_dimension of {max_wg}"
            )));
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
        if let Some(e) = scope_error(scope.pop()) {
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
