//! `ResnetBlock2D` (diffusers `resnet.py`).

use crate::error::Result;
use crate::gpu::GpuContext;
use crate::model::config::UNetConfig;
use crate::model::weights::WeightLoader;
use crate::nn::{Conv2d, GroupNorm, Linear};
use crate::ops::elementwise;
use crate::tensor::Tensor;

/// `ResnetBlock2D` (time embedding added after conv1, "default" scale-shift).
pub struct ResnetBlock2D {
    /// `norm1` on the `Cin` input channels, followed by SiLU.
    pub norm1: GroupNorm,
    /// `conv1`: 3x3, `Cin -> Cout`.
    pub conv1: Conv2d,
    /// `time_emb_proj`: `time_embed_dim -> Cout` on `SiLU(emb)`, added per channel after `conv1`.
    pub time_emb_proj: Linear,
    /// `norm2` on `Cout` channels, followed by SiLU.
    pub norm2: GroupNorm,
    /// `conv2`: 3x3, `Cout -> Cout`; adds the shortcut.
    pub conv2: Conv2d,
    /// `conv_shortcut`: 1x1, `Cin -> Cout`, when the widths differ; otherwise the identity.
    pub conv_shortcut: Option<Conv2d>,
}

impl ResnetBlock2D {
    pub(crate) fn load(
        l: &mut WeightLoader,
        p: &str,
        cfg: &UNetConfig,
        inp: usize,
        out: usize,
    ) -> Self {
        let (g, eps) = (cfg.norm_num_groups, cfg.norm_eps);
        ResnetBlock2D {
            norm1: GroupNorm::load(l, &format!("{p}.norm1"), inp, g, eps),
            conv1: Conv2d::load(l, &format!("{p}.conv1"), inp, out, 3, 1, 1),
            time_emb_proj: Linear::load(
                l,
                &format!("{p}.time_emb_proj"),
                cfg.time_embed_dim(),
                out,
                true,
            ),
            norm2: GroupNorm::load(l, &format!("{p}.norm2"), out, g, eps),
            conv2: Conv2d::load(l, &format!("{p}.conv2"), out, out, 3, 1, 1),
            conv_shortcut: (inp != out)
                .then(|| Conv2d::load(l, &format!("{p}.conv_shortcut"), inp, out, 1, 1, 0)),
        }
    }

    /// `x [B, Cin, H, W]`, `emb_silu = SiLU(emb) [B, T]` -> `[B, Cout, H, W]`.
    pub(crate) fn forward(
        &self,
        ctx: &GpuContext,
        x: &Tensor,
        emb_silu: &Tensor,
    ) -> Result<Tensor> {
        let h = self.norm1.forward_silu(ctx, x)?;
        let h = self.conv1.forward(ctx, &h, None)?;
        let t = self.time_emb_proj.forward(ctx, emb_silu, None)?;
        let (b, c) = (t.shape()[0], t.shape()[1]);
        let h = elementwise::add(ctx, &h, &t.reshape(&[b, c, 1, 1])?)?;
        let h = self.norm2.forward_silu(ctx, &h)?;
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(ctx, x, None)?,
            None => x.clone(),
        };
        self.conv2.forward(ctx, &h, Some(&shortcut))
    }
}
