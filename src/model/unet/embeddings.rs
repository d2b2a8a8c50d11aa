//! The UNet's timestep and added-condition embedding MLP (diffusers `embeddings.py`).

use crate::error::Result;
use crate::gpu::GpuContext;
use crate::model::weights::WeightLoader;
use crate::nn::Linear;
use crate::ops::activation::{self, Activation};
use crate::tensor::Tensor;

/// `TimestepEmbedding`: linear_1, SiLU, linear_2.
pub struct TimestepEmbeddingMlp {
    /// `linear_1`: input width -> `time_embed_dim`, with bias.
    pub linear_1: Linear,
    /// `linear_2`: `time_embed_dim -> time_embed_dim`, with bias.
    pub linear_2: Linear,
}

impl TimestepEmbeddingMlp {
    pub(crate) fn load(l: &mut WeightLoader, p: &str, inp: usize, out: usize) -> Self {
        TimestepEmbeddingMlp {
            linear_1: Linear::load(l, &format!("{p}.linear_1"), inp, out, true),
            linear_2: Linear::load(l, &format!("{p}.linear_2"), out, out, true),
        }
    }

    pub(crate) fn forward(
        &self,
        ctx: &GpuContext,
        x: &Tensor,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let h = self.linear_1.forward(ctx, x, None)?;
        let h = activation::activation(ctx, &h, Activation::Silu)?;
        self.linear_2.forward(ctx, &h, residual)
    }
}
