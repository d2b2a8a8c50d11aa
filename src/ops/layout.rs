//! layout kernels (placeholder).

crate::shader_family!(pub SHADER, "layout");
