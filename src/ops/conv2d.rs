//! conv2d kernels (placeholder).

crate::shader_family!(pub SHADER, "conv2d");
