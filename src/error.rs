//! Error type of the engine. Every failure a user can cause (bad shapes, missing adapter,
//! out-of-memory, device loss, oversized tensors) comes back as an [`Error`](enum@Error), never a panic.

use thiserror::Error;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors produced by the engine.
#[derive(Debug, Error)]
pub enum Error {
    /// No GPU adapter matched the request.
    #[error("no GPU adapter found{0}")]
    NoAdapter(String),
    /// `request_device` failed.
    #[error("could not open the GPU device on adapter '{adapter}': {message}")]
    DeviceRequest {
        /// Name of the adapter the device was requested from.
        adapter: String,
        /// wgpu's description of the failure.
        message: String,
    },
    /// The device was lost (driver reset, GPU removed, destroyed).
    #[error("GPU device lost: {0}")]
    DeviceLost(String),
    /// An allocation failed on the GPU.
    #[error("GPU out of memory {}", oom_context(what, *bytes))]
    OutOfMemory {
        /// What the allocation was for (the buffer's label).
        what: String,
        /// Size of the failed allocation in bytes (its pool size class; 0 where wgpu reported
        /// the failure without a size).
        bytes: u64,
    },
    /// A wgpu validation or internal error that escaped our own checks.
    #[error("GPU error: {0}")]
    Gpu(String),
    /// An op received tensors of incompatible shapes.
    #[error("{op}: {message}")]
    Shape {
        /// Name of the op that rejected the shapes.
        op: &'static str,
        /// What was wrong, with the shapes involved.
        message: String,
    },
    /// An op received tensors of a dtype it does not support, or mixed dtypes.
    #[error("{op}: {message}")]
    DType {
        /// Name of the op that rejected the dtype.
        op: &'static str,
        /// What was wrong, with the dtypes involved.
        message: String,
    },
    /// A tensor is larger than the adapter lets one binding (or one buffer) be.
    #[error("{op}: tensor '{tensor}' needs {bytes} bytes, above the adapter's {limit_name} of {limit} bytes")]
    TooLarge {
        /// Name of the op that hit the limit (`alloc` for a buffer allocation).
        op: &'static str,
        /// The oversized tensor (its name, shape and dtype), buffer or dispatch grid.
        tensor: String,
        /// Size it needs in bytes (for a dispatch grid: its largest dimension, in workgroups).
        bytes: u64,
        /// Name of the adapter limit exceeded (e.g. `max_storage_buffer_binding_size`).
        limit_name: &'static str,
        /// Value of that limit, in the unit of `bytes`.
        limit: u64,
    },
    /// The adapter lacks a feature the request needs.
    #[error("unsupported on this adapter: {0}")]
    Unsupported(String),
    /// Invalid argument (bad parameter value).
    #[error("{0}")]
    Invalid(String),
    /// The run was stopped by its caller (the step callback asked to stop); nothing was written.
    #[error("cancelled")]
    Cancelled,
    /// I/O error with the path it concerns.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory the operation concerned.
        path: String,
        /// The underlying I/O error.
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn shape(op: &'static str, message: impl Into<String>) -> Self {
        Error::Shape {
            op,
            message: message.into(),
        }
    }
    pub(crate) fn dtype(op: &'static str, message: impl Into<String>) -> Self {
        Error::DType {
            op,
            message: message.into(),
        }
    }
}

/// The second half of [`Error::OutOfMemory`]'s message: the allocation, or the operation when
/// wgpu reported the failure without a size.
fn oom_context(what: &str, bytes: u64) -> String {
    if bytes == 0 {
        format!("({what})")
    } else {
        format!("while allocating {bytes} bytes for {what}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_memory_names_the_size_only_when_known() {
        let sized = Error::OutOfMemory {
            what: "unet activations".into(),
            bytes: 1 << 20,
        };
        assert_eq!(
            sized.to_string(),
            "GPU out of memory while allocating 1048576 bytes for unet activations"
        );
        let unsized_ = Error::OutOfMemory {
            what: "submitting recorded work".into(),
            bytes: 0,
        };
        assert_eq!(
            unsized_.to_string(),
            "GPU out of memory (submitting recorded work)"
        );
    }
}
