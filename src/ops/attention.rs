//! attention kernels (placeholder).

crate::shader_family!(pub SHADER, "attention");
