//! `atedm unet-eval`: one UNet forward on inputs from a safetensors file.

use std::path::PathBuf;

use atedm::gpu::GpuContext;
use atedm::io::{safetensors_bytes, write_atomic, HostTensor};
use atedm::model::load::load_unet;
use atedm::model::unet::{PruneStep, UNetInputs};
use atedm::model::weights::read_all_f32;
use atedm::{DType, Error, Result, Tensor};
use clap::Args;

use crate::cli::flops::PruneArgs;

#[derive(Args, Debug)]
pub struct UNetEvalArgs {
    /// A diffusers pipeline folder (its unet/ is used), a unet folder, or a single-file checkpoint.
    #[arg(long)]
    pub model: PathBuf,
    /// Diffusers config folder for a single-file checkpoint that is not SD-XL base-sized.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Inputs: sample [B,4,h,w], timestep [B] or [1], encoder_hidden_states [B,L,C],
    /// text_embeds [B,P], time_ids [B,6].
    #[arg(long)]
    pub inputs: PathBuf,
    /// Output safetensors file; receives `out` [B,4,h,w] (f32).
    #[arg(long)]
    pub output: PathBuf,
    /// Compute dtype.
    #[arg(long, default_value = "f32")]
    pub dtype: DType,
    /// Denoising step index (for DSAP).
    #[arg(long, default_value_t = 0)]
    pub step: usize,
    /// Number of denoising steps (for DSAP and FLOPs budgets).
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    #[command(flatten)]
    pub prune: PruneArgs,
}

pub fn run(ctx: &GpuContext, args: &UNetEvalArgs) -> Result<()> {
    if args.dtype == DType::U32 {
        return Err(Error::Invalid("--dtype must be f32 or f16".into()));
    }
    let unet = load_unet(ctx, &args.model, args.config.as_deref(), args.dtype)?;
    let mut inputs = read_all_f32(&args.inputs)?;
    let mut take = |name: &str| {
        inputs.remove(name).ok_or_else(|| {
            Error::Invalid(format!(
                "{}: missing tensor '{name}'",
                args.inputs.display()
            ))
        })
    };
    let (s_shape, sample) = take("sample")?;
    let (_, timestep) = take("timestep")?;
    let (e_shape, enc) = take("encoder_hidden_states")?;
    let (t_shape, text) = take("text_embeds")?;
    let (_, time_ids) = take("time_ids")?;
    let sample = Tensor::from_f32(ctx, &sample, &s_shape, args.dtype)?;
    let enc = Tensor::from_f32(ctx, &enc, &e_shape, args.dtype)?;
    let text = Tensor::from_f32(ctx, &text, &t_shape, args.dtype)?;
    let (lh, lw) = (
        s_shape.get(2).copied().unwrap_or(0),
        s_shape.get(3).copied().unwrap_or(0),
    );
    if args.step >= args.steps {
        return Err(Error::Invalid(format!(
            "--step {} must be below --steps {}",
            args.step, args.steps
        )));
    }
    let (pruning, _) = args.prune.settings(&unet.config, lh, lw, args.steps)?;
    let prune = PruneStep::new(&pruning, args.step, args.steps);
    let result = unet.forward_pruned(
        ctx,
        &UNetInputs {
            sample: &sample,
            timesteps: &timestep,
            encoder_hidden_states: &enc,
            text_embeds: &text,
            time_ids: &time_ids,
        },
        &prune,
    )?;
    let (out, records) = (result.sample, result.records);
    let data = out.to_f32_vec(ctx)?;
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        return Err(Error::Invalid(format!(
            "the UNet output has a non-finite value at index {i}"
        )));
    }
    // Kept indices of every pruned stack as int64 `mask.<module>` [B, k]; with ToMe, the merged
    // row of every token of every merged block as `slot.<module>` [B, N].
    let as_i64 = |name: String, t: &Tensor| -> Result<(String, Vec<usize>, Vec<i64>)> {
        let v: Vec<i64> = t.to_u32_vec(ctx)?.into_iter().map(i64::from).collect();
        Ok((name, t.shape().to_vec(), v))
    };
    let masks = records
        .stacks
        .iter()
        .map(|(name, r)| as_i64(format!("mask.{name}"), &r.kept))
        .chain(
            records
                .merges
                .iter()
                .map(|(name, slot)| as_i64(format!("slot.{name}"), slot)),
        )
        .collect::<Result<Vec<_>>>()?;
    let mut tensors = vec![HostTensor::F32("out", out.shape().to_vec(), &data)];
    tensors.extend(
        masks
            .iter()
            .map(|(n, s, v)| HostTensor::I64(n, s.clone(), v)),
    );
    let bytes = safetensors_bytes(&tensors)?;
    write_atomic(&args.output, &bytes)?;
    eprintln!("wrote {} (out {:?})", args.output.display(), out.shape());
    Ok(())
}
