//! Key mapping from the original (Stability "single-file") checkpoint layout to diffusers
//! module names. Derived from the UNet config, so it holds for any layers-per-block count.

use super::config::{DownKind, UNetConfig, UpKind};

/// Prefix of the UNet's tensors in a single-file SD-XL checkpoint.
pub const UNET_PREFIX: &str = "model.diffusion_model.";

const RESNET_RENAMES: [(&str, &str); 6] = [
    ("in_layers.0.", "norm1."),
    ("in_layers.2.", "conv1."),
    ("emb_layers.1.", "time_emb_proj."),
    ("out_layers.0.", "norm2."),
    ("out_layers.3.", "conv2."),
    ("skip_connection.", "conv_shortcut."),
];

/// Maps original UNet keys (without [`UNET_PREFIX`]) to diffusers keys.
pub struct UNetKeyMap {
    /// (original prefix, diffusers prefix, is a resnet)
    prefixes: Vec<(String, String, bool)>,
}

impl UNetKeyMap {
    /// The mapping for a UNet of `cfg`'s levels, blocks and layer counts.
    pub fn new(cfg: &UNetConfig) -> Self {
        let mut p: Vec<(String, String, bool)> = Vec::new();
        let mut add = |o: String, d: String, resnet: bool| p.push((o, d, resnet));
        add(
            "time_embed.0.".into(),
            "time_embedding.linear_1.".into(),
            false,
        );
        add(
            "time_embed.2.".into(),
            "time_embedding.linear_2.".into(),
            false,
        );
        add(
            "label_emb.0.0.".into(),
            "add_embedding.linear_1.".into(),
            false,
        );
        add(
            "label_emb.0.2.".into(),
            "add_embedding.linear_2.".into(),
            false,
        );
        add("input_blocks.0.0.".into(), "conv_in.".into(), false);
        add("out.0.".into(), "conv_norm_out.".into(), false);
        add("out.2.".into(), "conv_out.".into(), false);
        let levels = cfg.block_out_channels.len();
        let mut n = 1;
        for i in 0..levels {
            for j in 0..cfg.layers_per_block[i] {
                add(
                    format!("input_blocks.{n}.0."),
                    format!("down_blocks.{i}.resnets.{j}."),
                    true,
                );
                if cfg.down_blocks[i] == DownKind::CrossAttn {
                    add(
                        format!("input_blocks.{n}.1."),
                        format!("down_blocks.{i}.attentions.{j}."),
                        false,
                    );
                }
                n += 1;
            }
            if i + 1 < levels {
                add(
                    format!("input_blocks.{n}.0.op."),
                    format!("down_blocks.{i}.downsamplers.0.conv."),
                    false,
                );
                n += 1;
            }
        }
        add(
            "middle_block.0.".into(),
            "mid_block.resnets.0.".into(),
            true,
        );
        add(
            "middle_block.1.".into(),
            "mid_block.attentions.0.".into(),
            false,
        );
        add(
            "middle_block.2.".into(),
            "mid_block.resnets.1.".into(),
            true,
        );
        let mut n = 0;
        for i in 0..levels {
            let attn = cfg.up_blocks[i] == UpKind::CrossAttn;
            let count = cfg.layers_per_block[levels - 1 - i] + 1;
            for j in 0..count {
                add(
                    format!("output_blocks.{n}.0."),
                    format!("up_blocks.{i}.resnets.{j}."),
                    true,
                );
                if attn {
                    add(
                        format!("output_blocks.{n}.1."),
                        format!("up_blocks.{i}.attentions.{j}."),
                        false,
                    );
                }
                if j + 1 == count && i + 1 < levels {
                    let slot = 1 + attn as usize;
                    add(
                        format!("output_blocks.{n}.{slot}.conv."),
                        format!("up_blocks.{i}.upsamplers.0.conv."),
                        false,
                    );
                }
                n += 1;
            }
        }
        UNetKeyMap { prefixes: p }
    }

    /// The diffusers name of an original key (given without [`UNET_PREFIX`]); `None` when the
    /// key belongs to no known module.
    pub fn map(&self, key: &str) -> Option<String> {
        let (orig, diff, resnet) = self
            .prefixes
            .iter()
            .find(|(o, _, _)| key.starts_with(o.as_str()))?;
        let rest = &key[orig.len()..];
        if *resnet {
            for (from, to) in RESNET_RENAMES {
                if let Some(tail) = rest.strip_prefix(from) {
                    return Some(format!("{diff}{to}{tail}"));
                }
            }
        }
        Some(format!("{diff}{rest}"))
    }

    /// Mapping for a whole single-file checkpoint: UNet keys are renamed, unknown UNet keys
    /// are kept under their original name (so they are reported as unexpected), and keys of
    /// other components (text encoders, VAE) are left out.
    pub fn map_checkpoint_key(&self, key: &str) -> Option<String> {
        let k = key.strip_prefix(UNET_PREFIX)?;
        Some(self.map(k).unwrap_or_else(|| key.to_string()))
    }
}
