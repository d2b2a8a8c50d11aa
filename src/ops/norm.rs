//! norm kernels (placeholder).

crate::shader_family!(pub SHADER, "norm");
