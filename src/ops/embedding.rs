//! embedding kernels (placeholder).

crate::shader_family!(pub SHADER, "embedding");
