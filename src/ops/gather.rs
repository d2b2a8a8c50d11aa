//! gather kernels (placeholder).

crate::shader_family!(pub SHADER, "gather");
