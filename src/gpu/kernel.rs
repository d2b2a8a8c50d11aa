//! Kernel identities and WGSL preprocessing.
//!
//! Every shader file in `shaders/` is written once against the storage alias `ST`; the engine
//! prepends `alias ST = f32;` or `enable f16; alias ST = f16;` to get the f32 and f16 variants.
//! Kernels load `ST`, compute in f32 and store `ST(...)`: f16 storage, f32 accumulation.
//! `shaders/include/common.wgsl` (shared helper functions) follows the header in every family.

use crate::tensor::DType;

/// Helpers every family may use (`shaders/include/common.wgsl`), prepended after the header.
const COMMON: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/shaders/include/common.wgsl"
));

/// One WGSL file (a kernel family).
#[derive(Debug)]
pub struct ShaderFamily {
    /// Family name (the file stem in `shaders/`).
    pub name: &'static str,
    /// WGSL source without the dtype header.
    pub source: &'static str,
}

/// One entry point of a family.
#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    /// The family (WGSL file) the entry point is in.
    pub family: &'static ShaderFamily,
    /// Name of the `@compute` entry point.
    pub entry: &'static str,
}

impl ShaderFamily {
    /// Full WGSL text for storage dtype `dtype` (F32 and U32 kernels get the f32 header).
    pub fn source_for(&self, dtype: DType) -> String {
        let header = match dtype {
            DType::F16 => "enable f16;\nalias ST = f16;\n",
            DType::F32 | DType::U32 => "alias ST = f32;\n",
        };
        format!("{header}{COMMON}{}", self.source)
    }

    /// Declares a kernel of this family.
    pub const fn kernel(&'static self, entry: &'static str) -> Kernel {
        Kernel {
            family: self,
            entry,
        }
    }
}

/// Declares a `static` [`ShaderFamily`] from `shaders/<file>.wgsl`.
#[macro_export]
#[doc(hidden)]
macro_rules! shader_family {
    ($vis:vis $ident:ident, $name:literal) => {
        #[doc = concat!("The `", $name, "` kernel family (`shaders/", $name, ".wgsl`).")]
        $vis static $ident: $crate::gpu::ShaderFamily = $crate::gpu::ShaderFamily {
            name: $name,
            source: include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/", $name, ".wgsl")),
        };
    };
}
