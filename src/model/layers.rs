//! Building the [`crate::nn`] layers from a checkpoint: each `load` asks a [`WeightLoader`] for
//! the module's tensors under its PyTorch name (`{p}.weight`, `{p}.bias`).

use crate::model::weights::WeightLoader;
use crate::nn::{Conv2d, GroupNorm, LayerNorm, Linear};

impl Linear {
    /// Loads `{p}.weight` `[out, in]` (and `{p}.bias`). On CPU adapters the weight is stored
    /// transposed, `[in, out]` (one GPU transpose at load): the register-blocked matmul then
    /// reads neighbouring output features across lanes (see docs/kernels.md).
    pub fn load(l: &mut WeightLoader, p: &str, inp: usize, out: usize, bias: bool) -> Self {
        let (weight, in_out) = l.get_linear(&format!("{p}.weight"), out, inp);
        Linear {
            weight,
            bias: bias.then(|| l.get(&format!("{p}.bias"), &[out])),
            in_out,
        }
    }
}

impl Conv2d {
    /// Loads `{p}.weight` `[out, inp, k, k]` and `{p}.bias` `[out]`.
    pub fn load(
        l: &mut WeightLoader,
        p: &str,
        inp: usize,
        out: usize,
        k: usize,
        stride: usize,
        padding: usize,
    ) -> Self {
        Conv2d {
            weight: l.get(&format!("{p}.weight"), &[out, inp, k, k]),
            bias: l.get(&format!("{p}.bias"), &[out]),
            stride,
            padding,
        }
    }
}

impl GroupNorm {
    /// Loads `{p}.weight` and `{p}.bias` `[channels]`.
    pub fn load(l: &mut WeightLoader, p: &str, channels: usize, groups: usize, eps: f32) -> Self {
        GroupNorm {
            weight: l.get(&format!("{p}.weight"), &[channels]),
            bias: l.get(&format!("{p}.bias"), &[channels]),
            groups,
            eps,
        }
    }
}

impl LayerNorm {
    /// Loads `{p}.weight` and `{p}.bias` `[channels]`.
    pub fn load(l: &mut WeightLoader, p: &str, channels: usize, eps: f32) -> Self {
        LayerNorm {
            weight: l.get(&format!("{p}.weight"), &[channels]),
            bias: l.get(&format!("{p}.bias"), &[channels]),
            eps,
        }
    }
}
