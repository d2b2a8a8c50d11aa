//! Error type of the engine. Every failure a user can cause (bad shapes, missing adapter,
//! out-of-memory, device loss, oversized tensors) comes back as an [`Error`], never a panic.

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
    DeviceRequest { adapter: String, message: String },
    /// The device was lost (driver reset, GPU removed, destroyed).
    #[error("GPU device lost: {0}")]
    DeviceLost(String),
    /// An allocation failed on the GPU.
    #[error("GPU out of memory while allocating {bytes} bytes for {what}")]
    OutOfMemory { what: String, bytes: u64 },
    /// A wgpu validation or internal error that escaped our own checks.
    #[error("GPU error: {0}")]
    Gpu(String),
    /// An op received tensors of incompatible shapes.
    #[error("{op}: {message}")]
    Shape { op: &'static str, message: String },
    /// An op received tensors of a dtype it does not support, or mixed dtypes.
    #[error("{op}: {message}")]
    DType { op: &'static str, message: String },
    /// A tensor is larger than the adapter lets one binding (or one buffer) be.
    #[error("{op}: tensor '{tensor}' needs {bytes} bytes, above the adapter's {limit_name} of {limit} bytes")]
    TooLarge {
        op: &'static str,
        tensor: String,
        bytes: u64,
        limit_name: &'static str,
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
        path: String,
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
