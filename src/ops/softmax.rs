//! softmax kernels (placeholder).

crate::shader_family!(pub SHADER, "softmax");
