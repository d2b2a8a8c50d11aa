//! Tensors stored in GPU buffers.

use std::sync::Arc;

use half::f16;

use crate::error::{Error, Result};
use crate::gpu::{BufferPool, GpuContext};

/// Element type of a tensor's storage. Kernels accumulate in f32 whatever the storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    /// 32-bit IEEE float.
    F32,
    /// 16-bit IEEE half float (needs the adapter's `SHADER_F16` feature).
    F16,
    /// Index tensors (gather/scatter, masks).
    U32,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::U32 => 4,
            DType::F16 => 2,
        }
    }
    /// Whether this is a floating point storage type.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16)
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::U32 => "u32",
        })
    }
}

impl std::str::FromStr for DType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(DType::F32),
            "f16" | "float16" | "half" => Ok(DType::F16),
            "u32" => Ok(DType::U32),
            other => Err(Error::Invalid(format!(
                "unknown dtype '{other}': expected f32 or f16"
            ))),
        }
    }
}

struct Storage {
    buffer: Option<wgpu::Buffer>,
    class: u64,
    pool: Arc<BufferPool>,
}

impl Drop for Storage {
    fn drop(&mut self) {
        if let Some(b) = self.buffer.take() {
            self.pool.release(b, self.class);
        }
    }
}

/// A dense, row-major tensor in a GPU storage buffer.
///
/// Cloning is cheap and shares the buffer; [`Tensor::reshape`] returns a view of the same buffer.
/// When the last handle is dropped the buffer goes back to the context's pool.
#[derive(Clone)]
pub struct Tensor {
    storage: Arc<Storage>,
    shape: Vec<usize>,
    dtype: DType,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({:?}, {})", self.shape, self.dtype)
    }
}

fn checked_numel(shape: &[usize]) -> Result<usize> {
    let mut n: usize = 1;
    for &d in shape {
        n = n
            .checked_mul(d)
            .ok_or_else(|| Error::Invalid(format!("tensor shape {shape:?} overflows")))?;
    }
    if n == 0 {
        return Err(Error::Invalid(format!(
            "tensor shape {shape:?} has no elements"
        )));
    }
    Ok(n)
}

impl Tensor {
    /// An uninitialized tensor (contents are whatever the pooled buffer held).
    pub fn empty(ctx: &GpuContext, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let n = checked_numel(shape)?;
        let bytes = (n * dtype.size()) as u64;
        let (buffer, class) = ctx.alloc(bytes, &format!("tensor {shape:?} {dtype}"))?;
        Ok(Tensor {
            storage: Arc::new(Storage {
                buffer: Some(buffer),
                class,
                pool: ctx.pool.clone(),
            }),
            shape: shape.to_vec(),
            dtype,
        })
    }

    /// A zero-filled tensor.
    pub fn zeros(ctx: &GpuContext, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let t = Self::empty(ctx, shape, dtype)?;
        ctx.clear(t.buffer(), t.size_bytes());
        Ok(t)
    }

    fn upload(ctx: &GpuContext, bytes: &[u8], shape: &[usize], dtype: DType) -> Result<Tensor> {
        checked_numel(shape)?;
        let (buffer, class) = ctx.alloc_init(bytes, &format!("tensor {shape:?} {dtype}"))?;
        Ok(Tensor {
            storage: Arc::new(Storage {
                buffer: Some(buffer),
                class,
                pool: ctx.pool.clone(),
            }),
            shape: shape.to_vec(),
            dtype,
        })
    }

    fn check_len(len: usize, shape: &[usize]) -> Result<()> {
        let n = checked_numel(shape)?;
        if len != n {
            return Err(Error::Invalid(format!(
                "data has {len} elements but shape {shape:?} needs {n}"
            )));
        }
        Ok(())
    }

    /// Uploads f32 data, converting to `dtype` (F32 or F16).
    pub fn from_f32(
        ctx: &GpuContext,
        data: &[f32],
        shape: &[usize],
        dtype: DType,
    ) -> Result<Tensor> {
        Self::check_len(data.len(), shape)?;
        match dtype {
            DType::F32 => Self::upload(ctx, bytemuck::cast_slice(data), shape, dtype),
            DType::F16 => {
                let h: Vec<f16> = data.iter().map(|&x| f16::from_f32(x)).collect();
                Self::upload(ctx, bytemuck::cast_slice(&h), shape, dtype)
            }
            DType::U32 => Err(Error::Invalid(
                "from_f32: target dtype must be f32 or f16".into(),
            )),
        }
    }

    /// Uploads f16 data as an F16 tensor.
    pub fn from_f16(ctx: &GpuContext, data: &[f16], shape: &[usize]) -> Result<Tensor> {
        Self::check_len(data.len(), shape)?;
        Self::upload(ctx, bytemuck::cast_slice(data), shape, DType::F16)
    }

    /// Uploads u32 data (indices) as a U32 tensor.
    pub fn from_u32(ctx: &GpuContext, data: &[u32], shape: &[usize]) -> Result<Tensor> {
        Self::check_len(data.len(), shape)?;
        Self::upload(ctx, bytemuck::cast_slice(data), shape, DType::U32)
    }

    /// Shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// Storage dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    /// Size of the data in bytes.
    pub fn size_bytes(&self) -> u64 {
        (self.numel() * self.dtype.size()) as u64
    }
    /// Size as bound to a shader (rounded up to 4 bytes).
    pub(crate) fn binding_bytes(&self) -> u64 {
        self.size_bytes().div_ceil(4) * 4
    }
    /// The underlying buffer.
    pub fn buffer(&self) -> &wgpu::Buffer {
        self.storage
            .buffer
            .as_ref()
            .expect("only weight-loading placeholders have no buffer, and they are never used")
    }
    /// Whether two tensors share one buffer.
    pub fn same_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.storage, &other.storage)
    }

    /// A view with another shape of the same number of elements.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        let n = checked_numel(shape)?;
        if n != self.numel() {
            return Err(Error::shape(
                "reshape",
                format!(
                    "cannot view {:?} ({} elements) as {shape:?} ({n})",
                    self.shape,
                    self.numel()
                ),
            ));
        }
        Ok(Tensor {
            storage: self.storage.clone(),
            shape: shape.to_vec(),
            dtype: self.dtype,
        })
    }

    /// A view of this tensor's storage under any shape, for weight-loading placeholders that
    /// are never computed with (see `WeightLoader`).
    pub(crate) fn placeholder_view(&self, shape: &[usize]) -> Tensor {
        Tensor {
            storage: self.storage.clone(),
            shape: shape.to_vec(),
            dtype: self.dtype,
        }
    }

    /// A placeholder with no buffer at all (only when even a tiny allocation failed).
    pub(crate) fn detached_placeholder(shape: &[usize], dtype: DType) -> Tensor {
        let storage = Storage {
            buffer: None,
            class: 0,
            pool: Arc::default(),
        };
        Tensor {
            storage: Arc::new(storage),
            shape: shape.to_vec(),
            dtype,
        }
    }

    /// A copy in a new buffer.
    pub fn deep_clone(&self, ctx: &GpuContext) -> Result<Tensor> {
        let t = Self::empty(ctx, &self.shape, self.dtype)?;
        ctx.copy(self.buffer(), t.buffer(), self.size_bytes());
        Ok(t)
    }

    /// Raw bytes of the tensor (waits for pending GPU work).
    pub fn to_bytes(&self, ctx: &GpuContext) -> Result<Vec<u8>> {
        ctx.read(self.buffer(), self.size_bytes())
    }

    /// [`Tensor::to_bytes`] as a future.
    pub async fn to_bytes_async(&self, ctx: &GpuContext) -> Result<Vec<u8>> {
        ctx.read_async(self.buffer(), self.size_bytes()).await
    }

    /// Downloads the tensor as f32 (F16 is widened exactly).
    pub fn to_f32_vec(&self, ctx: &GpuContext) -> Result<Vec<f32>> {
        pollster::block_on(self.to_f32_vec_async(ctx))
    }

    /// [`Tensor::to_f32_vec`] as a future.
    pub async fn to_f32_vec_async(&self, ctx: &GpuContext) -> Result<Vec<f32>> {
        if self.dtype == DType::U32 {
            return Err(Error::dtype(
                "to_f32_vec",
                "tensor holds u32 indices; use to_u32_vec",
            ));
        }
        let bytes = self.to_bytes_async(ctx).await?;
        match self.dtype {
            DType::F32 => Ok(bytemuck::pod_collect_to_vec(&bytes)),
            DType::F16 => {
                let h: Vec<f16> = bytemuck::pod_collect_to_vec(&bytes);
                Ok(h.iter().map(|x| x.to_f32()).collect())
            }
            DType::U32 => Err(Error::dtype(
                "to_f32_vec",
                "tensor holds u32 indices; use to_u32_vec",
            )),
        }
    }

    /// Downloads a U32 tensor.
    pub fn to_u32_vec(&self, ctx: &GpuContext) -> Result<Vec<u32>> {
        pollster::block_on(self.to_u32_vec_async(ctx))
    }

    /// [`Tensor::to_u32_vec`] as a future.
    pub async fn to_u32_vec_async(&self, ctx: &GpuContext) -> Result<Vec<u32>> {
        if self.dtype != DType::U32 {
            return Err(Error::dtype(
                "to_u32_vec",
                format!("tensor is {}, not u32", self.dtype),
            ));
        }
        Ok(bytemuck::pod_collect_to_vec(
            &self.to_bytes_async(ctx).await?,
        ))
    }
}
