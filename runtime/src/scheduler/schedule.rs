//! The noise-schedule arithmetic shared by every scheduler, written to give the same float32 values
//! as diffusers 0.30.2 on torch 2.5.1 CPU (`torch.linspace`, `rescale_zero_terminal_snr`,
//! `torch.cumprod`, the numpy timestep spacings and `np.interp`).
//!
//! Upstream: `diffusers/schedulers/scheduling_euler_ancestral_discrete.py` (`__init__`,
//! `set_timesteps`, `rescale_zero_terminal_snr`), identical in the other schedulers.
//! Known residual difference: torch's CPU `sqrt` goes through MKL's vector sqrt, which is not always
//! correctly rounded (it differs between CPUs); here `sqrt` is the correctly rounded one, so values
//! may differ from a given torch install by an ulp or so.

use super::{BetaSchedule, SchedulerConfig, TimestepSpacing};
use crate::error::{Error, Result};

/// `torch.linspace(start, end, steps, dtype=torch.float32)` on CPU: the step is computed in float32
/// and the two halves are anchored at `start` and `end`; torch's kernel is built with FMA
/// contraction, so `start + step * i` is one fused operation.
pub fn torch_linspace_f32(start: f64, end: f64, steps: usize) -> Vec<f32> {
    let (start, end) = (start as f32, end as f32);
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| if i < halfway { step.mul_add(i as f32, start) } else { (-step).mul_add((steps - i - 1) as f32, end) })
        .collect()
}

/// `torch.cumprod` of float32 on CPU: the running product is kept in float64 and each output is
/// rounded to float32.
pub fn cumprod_f32(values: &[f32]) -> Vec<f32> {
    let mut acc = 1.0f64;
    values
        .iter()
        .map(|&v| {
            acc *= f64::from(v);
            acc as f32
        })
        .collect()
}

/// `rescale_zero_terminal_snr(betas)` (arXiv:2305.08891, Algorithm 1) in float32: shift
/// `sqrt(alphas_cumprod)` so its last value is 0, rescale so its first value is unchanged, and
/// convert back to betas (the last beta becomes exactly 1).
pub fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let alphas: Vec<f32> = betas.iter().map(|&b| 1.0 - b).collect();
    let mut sqrt_ac: Vec<f32> = cumprod_f32(&alphas).iter().map(|a| a.sqrt()).collect();
    let (Some(&first), Some(&last)) = (sqrt_ac.first(), sqrt_ac.last()) else {
        return Vec::new();
    };
    let scale = first / (first - last);
    for v in &mut sqrt_ac {
        *v = (*v - last) * scale;
    }
    let ac: Vec<f32> = sqrt_ac.iter().map(|v| v * v).collect();
    (0..ac.len())
        .map(|i| {
            let alpha = if i == 0 { ac[0] } else { ac[i] / ac[i - 1] };
            1.0 - alpha
        })
        .collect()
}

/// The most training timesteps a scheduler config may give (diffusers configs use 1000); the
/// schedule tables have one entry per timestep.
pub const MAX_TRAIN_TIMESTEPS: usize = 1_000_000;

/// The betas of `config` (before any zero-SNR rescale), validated.
pub fn betas(config: &SchedulerConfig) -> Result<Vec<f32>> {
    let n = config.num_train_timesteps;
    if !(2..=MAX_TRAIN_TIMESTEPS).contains(&n) {
        return Err(Error::InvalidSchedulerConfig {
            key: "num_train_timesteps".into(),
            why: format!("must be in 2..={MAX_TRAIN_TIMESTEPS}, got {n}"),
        });
    }
    if let Some(trained) = &config.trained_betas {
        if trained.len() != n {
            return Err(Error::InvalidSchedulerConfig {
                key: "trained_betas".into(),
                why: format!("has {} values but num_train_timesteps is {n}", trained.len()),
            });
        }
        return Ok(trained.iter().map(|&b| b as f32).collect());
    }
    let betas = match config.beta_schedule {
        BetaSchedule::Linear => torch_linspace_f32(config.beta_start, config.beta_end, n),
        BetaSchedule::ScaledLinear => {
            torch_linspace_f32(config.beta_start.sqrt(), config.beta_end.sqrt(), n).into_iter().map(|b| b * b).collect()
        }
    };
    if let Some(i) = betas.iter().position(|b| !(*b > 0.0 && *b < 1.0)) {
        return Err(Error::InvalidSchedulerConfig {
            key: "beta_start/beta_end".into(),
            why: format!("beta {i} is {}, every beta must lie in (0, 1)", betas[i]),
        });
    }
    Ok(betas)
}

/// Betas and `alphas_cumprod` as a diffusers scheduler builds them. `zero_snr` applies the rescale;
/// `clamp_last` then sets `alphas_cumprod[-1] = 2**-24` as the Euler and DPM-Solver schedulers do
/// (DDIM, DDPM and PNDM keep the exact 0).
pub fn alphas_cumprod(config: &SchedulerConfig, zero_snr: bool, clamp_last: bool) -> Result<(Vec<f32>, Vec<f32>)> {
    let mut betas = betas(config)?;
    if zero_snr {
        betas = rescale_zero_terminal_snr(&betas);
    }
    let alphas: Vec<f32> = betas.iter().map(|&b| 1.0 - b).collect();
    let mut ac = cumprod_f32(&alphas);
    if zero_snr && clamp_last {
        if let Some(last) = ac.last_mut() {
            *last = 2f32.powi(-24);
        }
    }
    Ok((betas, ac))
}

/// `((1 - alphas_cumprod) / alphas_cumprod) ** 0.5` in float32 (the training sigmas, in timestep order).
pub fn train_sigmas(alphas_cumprod: &[f32]) -> Vec<f32> {
    alphas_cumprod.iter().map(|&a| ((1.0 - a) / a).sqrt()).collect()
}

/// `np.interp(x, arange(len(fp)), fp)` in float64.
pub fn interp_unit_grid(x: f64, fp: &[f32]) -> f64 {
    let last = fp.len() - 1;
    if x <= 0.0 {
        return f64::from(fp[0]);
    }
    if x >= last as f64 {
        return f64::from(fp[last]);
    }
    let j = x.floor() as usize;
    let (y0, y1) = (f64::from(fp[j]), f64::from(fp[j + 1]));
    if x == j as f64 {
        return y0;
    }
    let slope = y1 - y0;
    slope * (x - j as f64) + y0
}

/// Inference sigmas: the training sigmas interpolated at `timesteps`, then `final_sigma` appended,
/// rounded to float32 (`np.concatenate([np.interp(...), [0.0]]).astype(np.float32)`).
pub fn interpolated_sigmas(alphas_cumprod: &[f32], timesteps: &[f64], final_sigma: f32) -> Vec<f32> {
    let sigmas = train_sigmas(alphas_cumprod);
    timesteps.iter().map(|&t| interp_unit_grid(t, &sigmas) as f32).chain(std::iter::once(final_sigma)).collect()
}

/// `np.arange(start, 0, -step)` for a float step, as numpy fills it: `start + i * delta` with
/// `delta = (start - step) - start` and `ceil(start / step)` values.
pub fn np_arange_down(start: f64, step: f64) -> Vec<f64> {
    let len = (start / step).ceil().max(0.0) as usize;
    let delta = (start - step) - start;
    (0..len).map(|i| start + i as f64 * delta).collect()
}

/// `np.linspace(start, stop, num)` in float64 (endpoint included).
pub fn np_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut y: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    y[num - 1] = stop;
    y
}

/// Inference timesteps in descending order, before any per-scheduler cast, for the spacings of
/// `EulerDiscreteScheduler.set_timesteps` (`linspace` keeps fractions) and of DDIM (`round_linspace`).
pub fn spaced_timesteps(
    spacing: TimestepSpacing,
    num_train: usize,
    n: usize,
    steps_offset: usize,
    round_linspace: bool,
) -> Vec<f64> {
    match spacing {
        TimestepSpacing::Linspace => {
            let mut t = np_linspace(0.0, (num_train - 1) as f64, n);
            if round_linspace {
                t.iter_mut().for_each(|v| *v = v.round_ties_even());
            } else {
                t.iter_mut().for_each(|v| *v = f64::from(*v as f32));
            }
            t.reverse();
            t
        }
        TimestepSpacing::Leading => {
            let ratio = num_train / n;
            (0..n).rev().map(|i| (i * ratio + steps_offset) as f64).collect()
        }
        TimestepSpacing::Trailing => np_arange_down(num_train as f64, num_train as f64 / n as f64)
            .into_iter()
            .map(|v| v.round_ties_even() - 1.0)
            .collect(),
    }
}

/// Checks `n` against `1..=num_train_timesteps` (diffusers fails later and less clearly).
pub fn check_steps(method: &str, n: usize, num_train: usize) -> Result<()> {
    if n == 0 || n > num_train {
        return Err(Error::InvalidSamplingSteps {
            method: method.to_string(),
            steps: n,
            rule: format!("the number of sampling steps must be in 1..={num_train} (num_train_timesteps)"),
        });
    }
    Ok(())
}

/// Converts an integer-valued timestep into an index of `alphas_cumprod`.
pub fn timestep_index(method: &str, t: i64, len: usize) -> Result<usize> {
    usize::try_from(t).ok().filter(|&i| i < len).ok_or_else(|| Error::SchedulerStep {
        method: method.to_string(),
        why: format!("timestep {t} is outside the training schedule 0..{len}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailing_spacing_matches_numpy() {
        let t = spaced_timesteps(TimestepSpacing::Trailing, 1000, 4, 0, false);
        assert_eq!(t, vec![999.0, 749.0, 499.0, 249.0]);
        // arange(1000, 0, -333.33..) = 1000, 666.67, 333.33 -> rounded 1000, 667, 333.
        let t = spaced_timesteps(TimestepSpacing::Trailing, 1000, 3, 0, false);
        assert_eq!(t, vec![999.0, 666.0, 332.0]);
        assert_eq!(spaced_timesteps(TimestepSpacing::Trailing, 1000, 1000, 0, false).len(), 1000);
    }

    #[test]
    fn leading_and_linspace_spacings() {
        let t = spaced_timesteps(TimestepSpacing::Leading, 1000, 4, 1, false);
        assert_eq!(t, vec![751.0, 501.0, 251.0, 1.0]);
        let t = spaced_timesteps(TimestepSpacing::Linspace, 1000, 3, 0, true);
        assert_eq!(t, vec![999.0, 500.0, 0.0]);
    }

    #[test]
    fn rescaled_schedule_ends_at_zero() {
        let b = torch_linspace_f32(1e-4, 0.02, 1000);
        let r = rescale_zero_terminal_snr(&b);
        assert_eq!(r[999], 1.0);
        // The first sqrt(alphas_cumprod) is kept, so the first beta barely moves.
        assert!(osp_graphs::Approx::Close.compare(&r[..1], &b[..1]).ok(), "{} vs {}", r[0], b[0]);
    }
}
