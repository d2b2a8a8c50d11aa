//! `EulerDiscreteScheduler` as diffusers configures it for SD-XL (scaled-linear betas,
//! "leading" timestep spacing with `steps_offset` 1, epsilon prediction, no churn).
//!
//! The tables are computed like diffusers: betas, cumulative alphas and the sigma table in f32
//! (torch), the interpolation of sigmas at the chosen timesteps in f64 (numpy), then the
//! schedule is stored as f32.

use crate::error::{Error, Result};

/// Scheduler settings (diffusers' `scheduler_config.json` fields we support).
#[derive(Clone, Debug, PartialEq)]
pub struct EulerConfig {
    /// Number of training timesteps, the length of the beta table.
    pub num_train_timesteps: usize,
    /// First beta of the scaled-linear schedule (betas run from `beta_start` to `beta_end` linearly
    /// in their square roots).
    pub beta_start: f32,
    /// Last beta of the scaled-linear schedule.
    pub beta_end: f32,
    /// Offset added to every timestep of the "leading" spacing.
    pub steps_offset: usize,
}

impl Default for EulerConfig {
    /// SD-XL base's scheduler config.
    fn default() -> Self {
        EulerConfig {
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            steps_offset: 1,
        }
    }
}

impl EulerConfig {
    /// Reads `scheduler/scheduler_config.json`, refusing settings this scheduler does not
    /// implement (naming the field).
    pub fn from_json(text: &str) -> Result<Self> {
        let v: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| Error::Invalid(format!("scheduler config: {e}")))?;
        let get = |k: &str| v.get(k).filter(|x| !x.is_null());
        let check = |k: &str, want: &str| -> Result<()> {
            match get(k).and_then(|x| x.as_str()) {
                Some(s) if s != want => Err(Error::Invalid(format!(
                    "unsupported scheduler config: '{k}' is \"{s}\"; atedm supports \"{want}\""
                ))),
                _ => Ok(()),
            }
        };
        check("beta_schedule", "scaled_linear")?;
        check("timestep_spacing", "leading")?;
        check("prediction_type", "epsilon")?;
        check("interpolation_type", "linear")?;
        for flag in [
            "use_karras_sigmas",
            "use_exponential_sigmas",
            "use_beta_sigmas",
            "rescale_betas_zero_snr",
        ] {
            if get(flag).and_then(|x| x.as_bool()) == Some(true) {
                return Err(Error::Invalid(format!(
                    "unsupported scheduler config: '{flag}' is true"
                )));
            }
        }
        if get("trained_betas").is_some() {
            return Err(Error::Invalid(
                "unsupported scheduler config: 'trained_betas' is set".into(),
            ));
        }
        let d = Self::default();
        let num = |k: &str| get(k).and_then(|x| x.as_f64());
        Ok(EulerConfig {
            num_train_timesteps: num("num_train_timesteps")
                .map_or(d.num_train_timesteps, |x| x as usize),
            beta_start: num("beta_start").map_or(d.beta_start, |x| x as f32),
            beta_end: num("beta_end").map_or(d.beta_end, |x| x as f32),
            steps_offset: num("steps_offset").map_or(d.steps_offset, |x| x as usize),
        })
    }
}

/// The schedule of one generation.
#[derive(Clone, Debug)]
pub struct EulerSchedule {
    /// Discrete timesteps given to the UNet, e.g. 981, 961, ..., 1 for 50 steps.
    pub timesteps: Vec<f32>,
    /// Sigma at each step, plus a final 0 (len = steps + 1).
    pub sigmas: Vec<f32>,
    /// Standard deviation of the initial noise: sqrt(sigma_max^2 + 1).
    pub init_noise_sigma: f32,
}

impl EulerSchedule {
    /// The schedule for `steps` denoising steps.
    pub fn new(cfg: &EulerConfig, steps: usize) -> Result<Self> {
        let n = cfg.num_train_timesteps;
        if steps == 0 {
            return Err(Error::Invalid(
                "the number of steps must be at least 1".into(),
            ));
        }
        if steps > n {
            return Err(Error::Invalid(format!(
                "{steps} steps is more than the scheduler's {n} training timesteps"
            )));
        }
        // torch: linspace(sqrt(start), sqrt(end), n, dtype=float32) ** 2, in f32.
        let (a, b) = (cfg.beta_start.sqrt(), cfg.beta_end.sqrt());
        let mut table = Vec::with_capacity(n);
        let mut cum = 1f32;
        for i in 0..n {
            let s = linspace_f32(a, b, n, i);
            let beta = s * s;
            cum *= 1.0 - beta;
            table.push(((1.0 - cum) / cum).sqrt());
        }
        // numpy: timesteps = (arange(steps) * (n // steps)).round()[::-1] + offset.
        let ratio = n / steps;
        let timesteps: Vec<f32> = (0..steps)
            .rev()
            .map(|i| (i * ratio + cfg.steps_offset) as f32)
            .collect();
        let mut sigmas: Vec<f32> = timesteps
            .iter()
            .map(|&t| interp(&table, t as f64) as f32)
            .collect();
        let max = sigmas.iter().fold(0f32, |m, &s| m.max(s));
        sigmas.push(0.0);
        Ok(EulerSchedule {
            timesteps,
            sigmas,
            init_noise_sigma: (max * max + 1.0).sqrt(),
        })
    }

    /// Factor of `scale_model_input` at step `i`: 1 / sqrt(sigma^2 + 1).
    pub fn input_scale(&self, i: usize) -> f32 {
        let s = self.sigmas[i];
        1.0 / (s * s + 1.0).sqrt()
    }

    /// The Euler step size at step `i`: sigma_{i+1} - sigma_i (x += eps * dt).
    pub fn dt(&self, i: usize) -> f32 {
        self.sigmas[i + 1] - self.sigmas[i]
    }
}

/// Element `i` of torch.linspace(start, end, n) in f32, computed as torch's CPU kernel does:
/// `start + step * i` for the first half, `end - step * (n - 1 - i)` for the second.
fn linspace_f32(start: f32, end: f32, n: usize, i: usize) -> f32 {
    if n == 1 {
        return start;
    }
    let step = (end - start) / (n - 1) as f32;
    if i < n / 2 {
        start + step * i as f32
    } else {
        end - step * (n - 1 - i) as f32
    }
}

/// numpy.interp of `table` (at x = 0, 1, 2, ...) at `x`.
fn interp(table: &[f32], x: f64) -> f64 {
    let last = table.len() - 1;
    if x <= 0.0 {
        return table[0] as f64;
    }
    if x >= last as f64 {
        return table[last] as f64;
    }
    let i = x.floor() as usize;
    let f = x - i as f64;
    table[i] as f64 + (table[i + 1] as f64 - table[i] as f64) * f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdxl_50_steps_matches_diffusers() {
        // Values from diffusers' EulerDiscreteScheduler with the SD-XL config (sdxl.md).
        let s = EulerSchedule::new(&EulerConfig::default(), 50).unwrap();
        assert_eq!(s.timesteps.len(), 50);
        assert_eq!(s.timesteps[0], 981.0);
        assert_eq!(s.timesteps[1], 961.0);
        assert_eq!(s.timesteps[49], 1.0);
        assert!((s.sigmas[0] - 13.120411).abs() < 2e-5, "{}", s.sigmas[0]);
        assert!(
            (s.init_noise_sigma - 13.158464).abs() < 2e-5,
            "{}",
            s.init_noise_sigma
        );
        assert_eq!(s.sigmas[50], 0.0);
        assert!(s.sigmas.windows(2).all(|w| w[0] > w[1]));
    }

    #[test]
    fn bad_step_counts_and_configs_are_errors() {
        assert!(EulerSchedule::new(&EulerConfig::default(), 0)
            .unwrap_err()
            .to_string()
            .contains("at least 1"));
        assert!(EulerSchedule::new(&EulerConfig::default(), 1001).is_err());
        let e = EulerConfig::from_json(r#"{"timestep_spacing": "trailing"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("timestep_spacing"), "{e}");
        let e = EulerConfig::from_json(r#"{"use_karras_sigmas": true}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("use_karras_sigmas"), "{e}");
        let c = EulerConfig::from_json(
            r#"{"beta_start": 0.001, "steps_offset": 0, "use_karras_sigmas": false}"#,
        )
        .unwrap();
        assert_eq!((c.beta_start, c.steps_offset), (0.001, 0));
    }
}
