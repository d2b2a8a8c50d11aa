//! Layers with weights, named and laid out as PyTorch's modules (`nn.Linear`, `nn.Conv2d`,
//! `nn.GroupNorm`, `nn.LayerNorm`). The models build them from checkpoints
//! (`crate::model::layers`); each forward is one or two ops.

use crate::error::Result;
use crate::gpu::GpuContext;
use crate::ops::{conv2d, matmul, norm};
use crate::tensor::Tensor;

/// `nn.Linear`: weight `[out, in]`, optional bias `[out]`.
pub struct Linear {
    /// `[out, in]` as in PyTorch, or `[in, out]` when `in_out` (CPU adapters: see
    /// `crate::model::layers`).
    /// The weight.
    pub weight: Tensor,
    /// The bias `[out]`, when the layer has one.
    pub bias: Option<Tensor>,
    /// The weight is stored transposed, `[in, out]`.
    pub in_out: bool,
}

impl Linear {
    /// `x [..., in] -> [..., out]`, plus `residual` (same shape as the output) when given.
    pub fn forward(
        &self,
        ctx: &GpuContext,
        x: &Tensor,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        if self.in_out {
            matmul::linear_in_out(ctx, x, &self.weight, self.bias.as_ref(), residual)
        } else {
            matmul::linear(ctx, x, &self.weight, self.bias.as_ref(), residual)
        }
    }
}

/// `nn.Conv2d` with square kernel, weight `[out, in, k, k]` and bias `[out]`.
pub struct Conv2d {
    /// `[out, in, k, k]`.
    pub weight: Tensor,
    /// `[out]`.
    pub bias: Tensor,
    /// Stride of both spatial dims.
    pub stride: usize,
    /// Zero padding of both spatial dims.
    pub padding: usize,
}

impl Conv2d {
    /// NCHW convolution, plus `residual` (same shape as the output) when given.
    pub fn forward(
        &self,
        ctx: &GpuContext,
        x: &Tensor,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let opts = conv2d::Conv2dOptions {
            stride: self.stride,
            padding: self.padding,
            bias: Some(&self.bias),
            residual,
            kernel: Default::default(),
        };
        conv2d::conv2d(ctx, x, &self.weight, &opts)
    }
}

/// `nn.GroupNorm` (affine).
pub struct GroupNorm {
    /// Scale `[C]`.
    pub weight: Tensor,
    /// Shift `[C]`.
    pub bias: Tensor,
    /// Number of groups (divides C).
    pub groups: usize,
    /// Added to the variance.
    pub eps: f32,
}

impl GroupNorm {
    /// GroupNorm of `x [B, C, ...]`.
    pub fn forward(&self, ctx: &GpuContext, x: &Tensor) -> Result<Tensor> {
        self.run(ctx, x, false)
    }

    /// GroupNorm of `x [B, C, ...]` followed by SiLU, in one kernel.
    pub fn forward_silu(&self, ctx: &GpuContext, x: &Tensor) -> Result<Tensor> {
        self.run(ctx, x, true)
    }

    fn run(&self, ctx: &GpuContext, x: &Tensor, silu: bool) -> Result<Tensor> {
        norm::group_norm(
            ctx,
            x,
            self.groups,
            &self.weight,
            &self.bias,
            self.eps,
            silu,
        )
    }
}

/// `nn.LayerNorm` (affine) over the last dim.
pub struct LayerNorm {
    /// Scale `[C]`.
    pub weight: Tensor,
    /// Shift `[C]`.
    pub bias: Tensor,
    /// Added to the variance.
    pub eps: f32,
}

impl LayerNorm {
    /// LayerNorm of `x [..., C]` over its last dim.
    pub fn forward(&self, ctx: &GpuContext, x: &Tensor) -> Result<Tensor> {
        norm::layer_norm(ctx, x, &self.weight, Some(&self.bias), self.eps)
    }
}
