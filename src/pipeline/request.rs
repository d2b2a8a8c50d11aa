//! What a generation takes and gives: [`GenerateRequest`], [`Record`], [`GenerateOutput`],
//! what the step callback sees ([`StepUpdate`]) and the pruning decisions of a step
//! ([`StepMask`]).

use crate::prune::Pruning;
use crate::tensor::Tensor;

/// One image request.
#[derive(Clone, Debug)]
pub struct GenerateRequest {
    /// The text prompt, given to both text encoders.
    pub prompt: String,
    /// `None` or empty: zero embeddings (diffusers' `force_zeros_for_empty_prompt`).
    pub negative_prompt: Option<String>,
    /// Number of denoising steps (>= 1).
    pub steps: usize,
    /// Classifier-free guidance scale (diffusers' `guidance_scale`, >= 0); above 1 the UNet runs
    /// on the batch `[uncond, cond]`, at most 1 on the prompt alone.
    pub guidance: f32,
    /// Guidance rescale in `[0, 1]` (diffusers' `guidance_rescale`; 0 disables it).
    pub guidance_rescale: f32,
    /// Image width in pixels, a positive multiple of
    /// [`SdxlPipeline::size_multiple`](super::load::SdxlPipeline::size_multiple).
    pub width: usize,
    /// Image height in pixels, a positive multiple of
    /// [`SdxlPipeline::size_multiple`](super::load::SdxlPipeline::size_multiple).
    pub height: usize,
    /// Seed of the initial noise when [`GenerateRequest::latents`] is `None`.
    pub seed: u64,
    /// Initial noise `[1, 4, H/8, W/8]` before scaling by the scheduler's `init_noise_sigma`;
    /// `None`: drawn from a standard normal with `seed`.
    pub latents: Option<Vec<f32>>,
    /// Pruning inside the UNet (default: none): AT-EDM (DSAP follows the step index), ToMe,
    /// or a user-written schedule.
    pub prune: Pruning,
    /// What the run records besides the image (default: nothing).
    pub record: Record,
}

/// What a generation records besides the image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Record {
    /// Nothing: the step loop has no readback.
    #[default]
    Nothing,
    /// Every AT-EDM-pruned stack's kept tokens and G-WPR scores of every step, in
    /// [`GenerateOutput::masks`] (downloaded after the loop, not inside it).
    Masks,
    /// After every step: the latents, the step's prediction of the clean latents (for
    /// previews) and that step's masks, handed to the step callback of
    /// [`SdxlPipeline::generate_with`](super::load::SdxlPipeline::generate_with) and kept in
    /// [`GenerateOutput::step_latents`], [`GenerateOutput::step_denoised`] and
    /// [`GenerateOutput::masks`]. Costs one small readback (a wait for the GPU) per step.
    Steps,
}

impl Record {
    /// Whether masks are recorded.
    pub fn masks(self) -> bool {
        self != Record::Nothing
    }

    /// Whether every step is read back.
    pub fn steps(self) -> bool {
        self == Record::Steps
    }
}

impl Default for GenerateRequest {
    /// diffusers' SD-XL defaults: 50 steps, guidance 5.0, 1024x1024.
    fn default() -> Self {
        GenerateRequest {
            prompt: String::new(),
            negative_prompt: None,
            steps: 50,
            guidance: 5.0,
            guidance_rescale: 0.0,
            width: 1024,
            height: 1024,
            seed: 0,
            latents: None,
            prune: Pruning::None,
            record: Record::Nothing,
        }
    }
}

/// Text conditioning of one prompt pair (host copies, for inspection and saving).
pub struct PromptEmbeds {
    /// The prompt's context: both encoders' penultimate hidden states side by side,
    /// `[1, 77, C1 + C2]` (`[1, 77, 2048]` for SD-XL).
    pub prompt_embeds: Tensor,
    /// The negative prompt's context, same shape (zeros when there is no negative prompt).
    pub negative_prompt_embeds: Tensor,
    /// The prompt's pooled, projected output of `text_encoder_2`, `[1, P]` (`[1, 1280]` for SD-XL).
    pub pooled_prompt_embeds: Tensor,
    /// The negative prompt's pooled output, same shape (zeros when there is no negative prompt).
    pub negative_pooled_prompt_embeds: Tensor,
    /// Whether either prompt was cut to 75 tokens.
    pub truncated: bool,
}

/// A generated image and what led to it.
pub struct GenerateOutput {
    /// The text conditioning the run used.
    pub embeds: PromptEmbeds,
    /// Final latents (before the division by the VAE scaling factor), of shape `latent_shape`.
    pub latents_final: Vec<f32>,
    /// `[1, 4, H/8, W/8]` for SD-XL.
    pub latent_shape: [usize; 4],
    /// Decoded image `[1, 3, H, W]`, about -1..1, not clamped.
    pub image: Vec<f32>,
    /// Image width in pixels.
    pub width: usize,
    /// Image height in pixels.
    pub height: usize,
    /// With [`Record::Masks`] or [`Record::Steps`]: per step, per pruned stack.
    pub masks: Vec<StepMask>,
    /// Wall time of each denoising step in ms, from recording its first op to the end of the
    /// step. With [`Record::Steps`] the step ends with a readback, so this is the GPU time of the
    /// step plus that (small) readback; without, it is recording and submission only (the GPU
    /// may still be running the step).
    pub step_ms: Vec<f64>,
    /// With [`Record::Steps`]: the latents after each step, each of shape `latent_shape`.
    pub step_latents: Vec<Vec<f32>>,
    /// With [`Record::Steps`]: each step's prediction of the clean latents,
    /// `x0 = x_i - sigma_i * eps` (what previews show; the last one is the final latents).
    pub step_denoised: Vec<Vec<f32>>,
}

/// What the step callback of
/// [`SdxlPipeline::generate_with`](super::load::SdxlPipeline::generate_with) sees after each
/// denoising step.
#[derive(Clone, Copy, Debug)]
pub struct StepUpdate<'a> {
    /// Index of the finished step (0-based).
    pub step: usize,
    /// Total number of denoising steps of the run.
    pub steps: usize,
    /// Wall time of the step (see [`GenerateOutput::step_ms`]).
    pub ms: f64,
    /// With [`Record::Steps`]: the latents after the step, of shape `latent_shape`.
    pub latents: Option<&'a [f32]>,
    /// With [`Record::Steps`]: the step's prediction of the clean latents.
    pub denoised: Option<&'a [f32]>,
    /// With [`Record::Steps`]: this step's masks (empty otherwise; with [`Record::Masks`] the
    /// masks are downloaded after the loop into [`GenerateOutput::masks`]).
    pub masks: &'a [StepMask],
    /// `[1, 4, H/8, W/8]`.
    pub latent_shape: [usize; 4],
}

/// The pruning decisions of one stack at one step (host copies).
#[derive(Clone, Debug)]
pub struct StepMask {
    /// The denoising step (0-based).
    pub step: usize,
    /// diffusers module name of the stack.
    pub stack: String,
    /// The stack's token grid `[rows, columns]` (tokens are row-major on it).
    pub grid: [usize; 2],
    /// Kept token indices `[B, k]`, ascending per row (B = 2 with CFG: uncond, cond).
    pub kept: Vec<u32>,
    /// `[B, k]`.
    pub kept_shape: [usize; 2],
    /// G-WPR importance `[B, N]`.
    pub scores: Vec<f32>,
    /// `[B, N]`.
    pub scores_shape: [usize; 2],
}

impl StepMask {
    /// Per token of batch row `b` (the last row is the conditional image with CFG), row-major
    /// on [`StepMask::grid`]: whether the stack kept it. Out-of-range indices are ignored.
    pub fn kept_mask(&self, b: usize) -> Vec<bool> {
        let n = self.grid[0] * self.grid[1];
        let k = self.kept_shape[1];
        let mut on = vec![false; n];
        for &j in self.kept.get(b * k..(b + 1) * k).unwrap_or(&[]) {
            if let Some(f) = on.get_mut(j as usize) {
                *f = true;
            }
        }
        on
    }
}

impl GenerateOutput {
    /// RGB8 pixels, row-major (`clamp(x / 2 + 0.5, 0, 1) * 255`, rounded).
    pub fn rgb8(&self) -> Vec<u8> {
        let plane = self.width * self.height;
        let mut out = Vec::with_capacity(plane * 3);
        for p in 0..plane {
            for c in 0..3 {
                let v = (self.image[c * plane + p] * 0.5 + 0.5).clamp(0.0, 1.0);
                out.push((v * 255.0).round() as u8);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_mask_marks_the_kept_tokens_of_a_row_on_the_grid() {
        let m = StepMask {
            step: 0,
            stack: "mid_block.attentions.0".into(),
            grid: [2, 3],
            kept: vec![0, 5, 1, 2, 4, 9],
            kept_shape: [2, 3],
            scores: vec![0.0; 12],
            scores_shape: [2, 6],
        };
        // Row 0 keeps [0, 5, 1]; row 1 keeps [2, 4, 9], 9 out of range (ignored).
        assert_eq!(m.kept_mask(0), [true, true, false, false, false, true]);
        assert_eq!(m.kept_mask(1), [false, false, true, false, true, false]);
        assert_eq!(m.kept_mask(5), [false; 6], "a missing row keeps nothing");
    }
}
