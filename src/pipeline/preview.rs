//! Cheap previews of SD-XL latents: a fixed linear map from the 4 latent channels to RGB,
//! without the VAE.
//!
//! The coefficients are the SD-XL latent-to-RGB approximation that ComfyUI uses for its
//! "Latent2RGB" previews (`comfy/latent_formats.py`, class `SDXL`: `latent_rgb_factors` and
//! `latent_rgb_factors_bias`). They apply to latents in the diffusion model's space (the
//! denoising loop's latents, before the division by the VAE scaling factor) and give RGB in
//! about -1..1.

/// `LATENT_RGB[c]` is the (R, G, B) contribution of latent channel `c`.
pub const LATENT_RGB: [[f32; 3]; 4] = [
    [0.3651, 0.4232, 0.4341],
    [-0.2533, -0.0042, 0.1068],
    [0.1076, 0.1111, -0.0362],
    [-0.3165, -0.2492, -0.2188],
];

/// Added to each (R, G, B) after the map.
pub const LATENT_RGB_BIAS: [f32; 3] = [0.1084, -0.0175, -0.0011];

/// RGB8 pixels (row-major, `h x w`) of the first latent of `latents` (`[B, 4, h, w]`, f32):
/// `rgb = LATENT_RGB^T x + bias`, then `clamp((rgb + 1) / 2, 0, 1) * 255`, rounded. Non-finite
/// values give black. Returns `(w, h, pixels)`; panics if `latents` is shorter than `4 h w`.
pub fn latents_to_rgb8(latents: &[f32], shape: [usize; 4]) -> (usize, usize, Vec<u8>) {
    let (c, h, w) = (shape[1], shape[2], shape[3]);
    let plane = h * w;
    assert!(
        latents.len() >= c.min(4) * plane,
        "latents_to_rgb8: {} values for shape {shape:?}",
        latents.len()
    );
    let mut out = Vec::with_capacity(plane * 3);
    for p in 0..plane {
        let mut rgb = LATENT_RGB_BIAS;
        for (ch, coef) in LATENT_RGB.iter().enumerate().take(c) {
            let v = latents[ch * plane + p];
            for k in 0..3 {
                rgb[k] += coef[k] * v;
            }
        }
        for v in rgb {
            let v = if v.is_finite() {
                ((v + 1.0) * 0.5).clamp(0.0, 1.0)
            } else {
                0.0
            };
            out.push((v * 255.0).round() as u8);
        }
    }
    (w, h, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_latents_give_the_bias() {
        let (w, h, px) = latents_to_rgb8(&[0.0; 4 * 6], [1, 4, 2, 3]);
        assert_eq!((w, h, px.len()), (3, 2, 18));
        // (0.1084 + 1) / 2 * 255 = 141.3; (-0.0175 + 1) / 2 * 255 = 125.3; 127.4.
        assert_eq!(&px[..3], &[141, 125, 127]);
    }

    #[test]
    fn channels_map_linearly_and_clamp() {
        // One pixel, channel 0 = 1: rgb = row 0 + bias.
        let (_, _, px) = latents_to_rgb8(&[1.0, 0.0, 0.0, 0.0], [1, 4, 1, 1]);
        let want: Vec<u8> = (0..3)
            .map(|k| (((LATENT_RGB[0][k] + LATENT_RGB_BIAS[k] + 1.0) * 0.5) * 255.0).round() as u8)
            .collect();
        assert_eq!(px, want);
        let (_, _, px) = latents_to_rgb8(&[100.0, 0.0, 0.0, f32::NAN], [1, 4, 1, 1]);
        assert_eq!(px, vec![0, 0, 0], "NaN in a channel gives black");
        let (_, _, px) = latents_to_rgb8(&[100.0, 0.0, 0.0, 0.0], [1, 4, 1, 1]);
        assert_eq!(px, vec![255, 255, 255]);
    }
}
