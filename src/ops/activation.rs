//! activation kernels (placeholder).

crate::shader_family!(pub SHADER, "activation");
