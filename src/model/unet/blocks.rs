//! The UNet's levels (diffusers `unet_2d_blocks.py`): `DownBlock2D` / `CrossAttnDownBlock2D`,
//! `UpBlock2D` / `CrossAttnUpBlock2D` and `UNetMidBlock2DCrossAttn`, as the modules that hold
//! their weights. The forward that threads the skips through them is the UNet's.

use crate::nn::Conv2d;

use super::resnet::ResnetBlock2D;
use super::transformer_2d::Transformer2DModel;

/// One level of the down path (`DownBlock2D` or `CrossAttnDownBlock2D`).
pub struct DownBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
    pub downsampler: Option<Conv2d>,
}

/// One level of the up path (`UpBlock2D` or `CrossAttnUpBlock2D`).
pub struct UpBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
    pub upsampler: Option<Conv2d>,
}

/// `UNetMidBlock2DCrossAttn`.
pub struct MidBlock {
    pub resnets: [ResnetBlock2D; 2],
    pub attention: Transformer2DModel,
}
