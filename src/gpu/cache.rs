//! The shader-module and compute-pipeline caches (one per family, entry point and dtype).

use std::sync::Arc;

use super::context::scope_error;
use super::kernel::Kernel;
use super::GpuContext;
use crate::error::{Error, Result};
use crate::tensor::DType;

/// Pipeline cache key: (family, entry point, storage dtype).
pub(super) type PipelineKey = (&'static str, &'static str, DType);

impl GpuContext {
    /// Shader module for a family and dtype (cached).
    pub(super) fn module(&self, kernel: &Kernel, dtype: DType) -> Result<Arc<wgpu::ShaderModule>> {
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
        if let Some(e) = scope_error(scope.pop()) {
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
        if let Some(e) = scope_error(scope.pop()) {
            return Err(Error::Gpu(format!(
                "pipeline '{}::{}' ({dtype:?}) failed: {e}",
                kernel.family.name, kernel.entry
            )));
        }
        let pipeline = Arc::new(pipeline);
        self.pipelines.lock().unwrap().insert(key, pipeline.clone());
        Ok(pipeline)
    }
}
