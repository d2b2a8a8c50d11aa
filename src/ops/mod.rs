//! One module per WGSL kernel family. Each module has the GPU op(s) and, beside them, a CPU
//! reference (`cpu_*` functions, f32/f64 math on host slices) used by the tests.
//!
//! Conventions shared by all ops:
//! - float inputs of one op share one dtype (F32 or F16); the output has that dtype;
//! - kernels accumulate in f32;
//! - wrong shapes or dtypes return [`Error::Shape`] /
//!   [`Error::DType`] naming the op and the shapes.

use crate::error::{Error, Result};
use crate::gpu::ShaderFamily;
use crate::tensor::{DType, Tensor};

pub mod activation;
pub mod attention;
pub mod conv2d;
pub mod elementwise;
pub mod embedding;
pub mod fill;
pub mod gather;
pub mod guidance;
pub mod layout;
pub mod matmul;
pub mod norm;
pub mod softmax;

/// The WGSL kernel families of this layer (the engine's whole list, with pruning's:
/// [`crate::shader_families`]).
pub fn shader_families() -> Vec<&'static ShaderFamily> {
    vec![
        &activation::SHADER,
        &attention::SHADER,
        &conv2d::SHADER,
        &elementwise::SHADER,
        &embedding::SHADER,
        &fill::SHADER,
        &gather::SHADER,
        &guidance::SHADER,
        &layout::SHADER,
        &matmul::SHADER,
        &norm::SHADER,
        &softmax::SHADER,
    ]
}

/// Checks that all `tensors` have one float dtype and returns it.
pub(crate) fn float_dtype(op: &'static str, tensors: &[(&str, &Tensor)]) -> Result<DType> {
    let first = tensors[0].1.dtype();
    for (name, t) in tensors {
        if !t.dtype().is_float() {
            return Err(Error::dtype(
                op,
                format!("'{name}' is {}, expected f32 or f16", t.dtype()),
            ));
        }
        if t.dtype() != first {
            return Err(Error::dtype(
                op,
                format!(
                    "mixed dtypes: '{}' is {first} but '{name}' is {}",
                    tensors[0].0,
                    t.dtype()
                ),
            ));
        }
    }
    Ok(first)
}

/// Checks a tensor's rank.
pub(crate) fn expect_rank(op: &'static str, name: &str, t: &Tensor, rank: usize) -> Result<()> {
    if t.rank() != rank {
        return Err(Error::shape(
            op,
            format!("'{name}' must have rank {rank}, got shape {:?}", t.shape()),
        ));
    }
    Ok(())
}

/// Converts a dimension to u32 for kernel parameters.
pub(crate) fn dim32(op: &'static str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::shape(op, format!("dimension {v} exceeds u32")))
}
