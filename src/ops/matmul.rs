//! matmul kernels (placeholder).

crate::shader_family!(pub SHADER, "matmul");
