//! The UNet's levels (diffusers `unet_2d_blocks.py`): `DownBlock2D` / `CrossAttnDownBlock2D`,
//! `UpBlock2D` / `CrossAttnUpBlock2D` and `UNetMidBlock2DCrossAttn`, as the modules that hold
//! their weights. The forward that threads the skips through them is the UNet's.

use crate::nn::Conv2d;

use super::resnet::ResnetBlock2D;
use super::transformer_2d::Transformer2DModel;

/// One level of the down path (`DownBlock2D` or `CrossAttnDownBlock2D`).
pub struct DownBlock {
    /// `resnets`: `layers_per_block` of them.
    pub resnets: Vec<ResnetBlock2D>,
    /// `attentions`: one after each resnet (`CrossAttnDownBlock2D`), or none (`DownBlock2D`).
    pub attentions: Vec<Transformer2DModel>,
    /// `downsamplers.0.conv`: 3x3, stride 2, padding 1; `None` on the last level.
    pub downsampler: Option<Conv2d>,
}

/// One level of the up path (`UpBlock2D` or `CrossAttnUpBlock2D`).
pub struct UpBlock {
    /// `resnets`: `layers_per_block + 1` of them, each taking a skip concatenated on channels.
    pub resnets: Vec<ResnetBlock2D>,
    /// `attentions`: one after each resnet (`CrossAttnUpBlock2D`), or none (`UpBlock2D`).
    pub attentions: Vec<Transformer2DModel>,
    /// `upsamplers.0.conv`: 3x3 after a nearest 2x upsample; `None` on the last (full
    /// resolution) level.
    pub upsampler: Option<Conv2d>,
}

/// `UNetMidBlock2DCrossAttn`.
pub struct MidBlock {
    /// `resnets.0` and `resnets.1`, before and after the attention.
    pub resnets: [ResnetBlock2D; 2],
    /// `attentions.0`, between the two resnets.
    pub attention: Transformer2DModel,
}
