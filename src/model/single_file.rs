//! Key mapping for the text encoders and the VAE of an original single-file SD-XL checkpoint
//! (`sd_xl_base_1.0.safetensors`) to transformers / diffusers names. The UNet's mapping is in
//! [`keymap`](super::keymap). Derived from the configs, so it holds for other layer counts.
//!
//! Each map takes a full checkpoint key and returns the store entries it provides: none for
//! keys of other components and deliberately unused tensors (the VAE encoder, `position_ids`,
//! `logit_scale`), the renamed (and, for OpenCLIP's fused attention and text projection,
//! sliced or transposed) tensors, or the original key unchanged for unknown keys of the
//! component, so that the loader reports them as unexpected.

use super::clip::ClipTextConfig;
use super::vae::VaeConfig;
use super::weights::Transform;

/// Prefix of CLIP-L (transformers `CLIPTextModel` names underneath).
pub const CLIP_L_PREFIX: &str = "conditioner.embedders.0.transformer.";
/// Prefix of OpenCLIP ViT-bigG's text tower (OpenCLIP names underneath).
pub const BIG_G_PREFIX: &str = "conditioner.embedders.1.model.";
/// Prefix of the VAE (LDM `AutoencoderKL` names underneath).
pub const VAE_PREFIX: &str = "first_stage_model.";

type Entries = Vec<(String, Transform)>;

fn one(name: String) -> Entries {
    vec![(name, Transform::Identity)]
}

/// CLIP-L: the names under [`CLIP_L_PREFIX`] are already transformers names;
/// `position_ids` (a buffer) is dropped.
pub fn clip_l_key(key: &str) -> Entries {
    match key.strip_prefix(CLIP_L_PREFIX) {
        None => vec![],
        Some(k) if k.ends_with("embeddings.position_ids") => vec![],
        Some(k) => one(k.to_string()),
    }
}

/// OpenCLIP bigG -> transformers `CLIPTextModelWithProjection` names.
pub struct BigGKeyMap {
    layers: usize,
    hidden: usize,
}

impl BigGKeyMap {
    /// The mapping for a text tower of `cfg`'s layer count and width.
    pub fn new(cfg: &ClipTextConfig) -> Self {
        BigGKeyMap {
            layers: cfg.num_hidden_layers,
            hidden: cfg.hidden_size,
        }
    }

    /// The entries a checkpoint key provides (see the module docs).
    pub fn map(&self, key: &str) -> Entries {
        let Some(k) = key.strip_prefix(BIG_G_PREFIX) else {
            return vec![];
        };
        self.map_inner(k).unwrap_or_else(|| one(key.to_string()))
    }

    fn map_inner(&self, k: &str) -> Option<Entries> {
        let simple = |s: &str| Some(one(s.to_string()));
        match k {
            "logit_scale" => return Some(vec![]),
            "token_embedding.weight" => {
                return simple("text_model.embeddings.token_embedding.weight")
            }
            "positional_embedding" => {
                return simple("text_model.embeddings.position_embedding.weight")
            }
            "ln_final.weight" => return simple("text_model.final_layer_norm.weight"),
            "ln_final.bias" => return simple("text_model.final_layer_norm.bias"),
            "text_projection" => {
                return Some(vec![(
                    "text_projection.weight".into(),
                    Transform::Transpose,
                )])
            }
            _ => {}
        }
        let rest = k.strip_prefix("transformer.resblocks.")?;
        let (idx, tail) = rest.split_once('.')?;
        let i: usize = idx.parse().ok()?;
        if i >= self.layers || idx != i.to_string() {
            return None;
        }
        let p = format!("text_model.encoder.layers.{i}.");
        let c = self.hidden;
        let split = |suffix: &str| {
            ["q", "k", "v"]
                .iter()
                .enumerate()
                .map(|(n, w)| {
                    (
                        format!("{p}self_attn.{w}_proj.{suffix}"),
                        Transform::Rows {
                            start: n * c,
                            len: c,
                        },
                    )
                })
                .collect()
        };
        match tail {
            "attn.in_proj_weight" => return Some(split("weight")),
            "attn.in_proj_bias" => return Some(split("bias")),
            _ => {}
        }
        const RENAMES: [(&str, &str); 5] = [
            ("ln_1.", "layer_norm1."),
            ("ln_2.", "layer_norm2."),
            ("attn.out_proj.", "self_attn.out_proj."),
            ("mlp.c_fc.", "mlp.fc1."),
            ("mlp.c_proj.", "mlp.fc2."),
        ];
        RENAMES.iter().find_map(|(from, to)| {
            let param = tail.strip_prefix(from)?;
            matches!(param, "weight" | "bias").then(|| one(format!("{p}{to}{param}")))
        })
    }
}

/// LDM VAE -> diffusers `AutoencoderKL` names, decode path only (`post_quant_conv` and the
/// decoder); the encoder and `quant_conv` are dropped.
pub struct VaeKeyMap {
    /// (original prefix, diffusers prefix, is a resnet)
    prefixes: Vec<(String, String, bool)>,
}

impl VaeKeyMap {
    /// The mapping for a decoder of `cfg`'s levels and layers per block.
    pub fn new(cfg: &VaeConfig) -> Self {
        let mut p: Vec<(String, String, bool)> = Vec::new();
        let mut add = |o: String, d: String, resnet: bool| p.push((o, d, resnet));
        add("post_quant_conv.".into(), "post_quant_conv.".into(), false);
        add("decoder.conv_in.".into(), "decoder.conv_in.".into(), false);
        add(
            "decoder.conv_out.".into(),
            "decoder.conv_out.".into(),
            false,
        );
        add(
            "decoder.norm_out.".into(),
            "decoder.conv_norm_out.".into(),
            false,
        );
        for (n, d) in [(1, 0), (2, 1)] {
            add(
                format!("decoder.mid.block_{n}."),
                format!("decoder.mid_block.resnets.{d}."),
                true,
            );
        }
        for (o, d) in [
            ("norm", "group_norm"),
            ("q", "to_q"),
            ("k", "to_k"),
            ("v", "to_v"),
            ("proj_out", "to_out.0"),
        ] {
            add(
                format!("decoder.mid.attn_1.{o}."),
                format!("decoder.mid_block.attentions.0.{d}."),
                false,
            );
        }
        let levels = cfg.block_out_channels.len();
        for i in 0..levels {
            let o = levels - 1 - i;
            for j in 0..cfg.layers_per_block + 1 {
                add(
                    format!("decoder.up.{o}.block.{j}."),
                    format!("decoder.up_blocks.{i}.resnets.{j}."),
                    true,
                );
            }
            if i + 1 < levels {
                add(
                    format!("decoder.up.{o}.upsample.conv."),
                    format!("decoder.up_blocks.{i}.upsamplers.0.conv."),
                    false,
                );
            }
        }
        VaeKeyMap { prefixes: p }
    }

    /// The entries a checkpoint key provides (see the module docs).
    pub fn map(&self, key: &str) -> Entries {
        let Some(k) = key.strip_prefix(VAE_PREFIX) else {
            return vec![];
        };
        if k.starts_with("encoder.") || k.starts_with("quant_conv.") {
            return vec![];
        }
        let Some((orig, diff, resnet)) = self
            .prefixes
            .iter()
            .find(|(o, _, _)| k.starts_with(o.as_str()))
        else {
            return one(key.to_string());
        };
        let rest = &k[orig.len()..];
        let rest = match rest.strip_prefix("nin_shortcut.") {
            Some(tail) if *resnet => format!("conv_shortcut.{tail}"),
            _ => rest.to_string(),
        };
        one(format!("{diff}{rest}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_g_names() {
        let m = BigGKeyMap::new(&ClipTextConfig::open_clip_big_g());
        let p = BIG_G_PREFIX;
        assert_eq!(
            m.map(&format!("{p}transformer.resblocks.31.attn.in_proj_bias")),
            vec![
                (
                    "text_model.encoder.layers.31.self_attn.q_proj.bias".to_string(),
                    Transform::Rows {
                        start: 0,
                        len: 1280
                    }
                ),
                (
                    "text_model.encoder.layers.31.self_attn.k_proj.bias".to_string(),
                    Transform::Rows {
                        start: 1280,
                        len: 1280
                    }
                ),
                (
                    "text_model.encoder.layers.31.self_attn.v_proj.bias".to_string(),
                    Transform::Rows {
                        start: 2560,
                        len: 1280
                    }
                ),
            ]
        );
        assert_eq!(
            m.map(&format!("{p}transformer.resblocks.3.mlp.c_proj.weight")),
            one("text_model.encoder.layers.3.mlp.fc2.weight".into())
        );
        // Unknown or out-of-range keys stay as they are (reported as unexpected).
        for k in [
            "transformer.resblocks.32.ln_1.weight",
            "transformer.resblocks.03.ln_1.weight",
            "attn_pool.weight",
        ] {
            assert_eq!(m.map(&format!("{p}{k}")), one(format!("{p}{k}")));
        }
        assert!(m.map(&format!("{p}logit_scale")).is_empty());
        assert!(m.map("model.diffusion_model.out.2.weight").is_empty());
    }

    #[test]
    fn vae_names() {
        let m = VaeKeyMap::new(&VaeConfig::sdxl());
        let p = VAE_PREFIX;
        let cases = [
            (
                "decoder.up.3.block.0.conv1.weight",
                "decoder.up_blocks.0.resnets.0.conv1.weight",
            ),
            (
                "decoder.up.0.block.2.nin_shortcut.bias",
                "decoder.up_blocks.3.resnets.2.conv_shortcut.bias",
            ),
            (
                "decoder.up.1.upsample.conv.weight",
                "decoder.up_blocks.2.upsamplers.0.conv.weight",
            ),
            (
                "decoder.mid.attn_1.proj_out.weight",
                "decoder.mid_block.attentions.0.to_out.0.weight",
            ),
            (
                "decoder.mid.block_2.norm2.bias",
                "decoder.mid_block.resnets.1.norm2.bias",
            ),
            ("decoder.norm_out.weight", "decoder.conv_norm_out.weight"),
        ];
        for (o, d) in cases {
            assert_eq!(m.map(&format!("{p}{o}")), one(d.into()), "{o}");
        }
        // No upsampler in the last original level (up.0), no 4th resnet.
        for k in [
            "decoder.up.0.upsample.conv.weight",
            "decoder.up.1.block.3.conv1.weight",
        ] {
            assert_eq!(m.map(&format!("{p}{k}")), one(format!("{p}{k}")));
        }
        assert!(m.map(&format!("{p}encoder.conv_in.weight")).is_empty());
        assert!(m.map(&format!("{p}quant_conv.weight")).is_empty());
    }
}
