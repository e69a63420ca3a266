//! Per-channel statistics of a VAE's latents over a data set, for the `shift`/`scale` entries of
//! a WFVAE `config.json`: the DiT trains on `(z - shift) * scale` (upstream
//! `WFVAEModelWrapper.encode`) and generation decodes `z / scale + shift`, so `shift` is the
//! channel mean of `z` and `scale` the reciprocal of its standard deviation.
//!
//! `z = mean + std * eps` is the posterior sample, so its moments are taken exactly from the
//! posterior (no sampling noise): `E[z] = E[mean]`, `Var[z] = Var[mean] + E[std^2]`.

use crate::error::{Error, Result};

/// Running sums of posterior moments per latent channel (f64).
#[derive(Debug, Clone, PartialEq)]
pub struct LatentMoments {
    sum_mean: Vec<f64>,
    sum_mean_sq: Vec<f64>,
    sum_var: Vec<f64>,
    /// Latent values seen per channel.
    count: u64,
}

/// The result: per channel `mean` and `std` of `z`, and the config entries.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LatentStats {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    /// `mean` (the config's `shift`).
    pub shift: Vec<f64>,
    /// `1 / std` (the config's `scale`).
    pub scale: Vec<f64>,
    /// Latent values per channel the statistics were taken over.
    pub count: u64,
}

impl LatentMoments {
    pub fn new(channels: usize) -> Self {
        Self { sum_mean: vec![0.0; channels], sum_mean_sq: vec![0.0; channels], sum_var: vec![0.0; channels], count: 0 }
    }

    /// Adds a batch of posterior `mean` and `std`, both `[b, c, t, h, w]` flattened row-major.
    pub fn add(&mut self, mean: &[f32], std: &[f32], shape: [usize; 5]) -> Result<()> {
        let [b, c, t, h, w] = shape;
        if c != self.sum_mean.len() {
            return Err(Error::input(
                "latents",
                format!("have {c} channels, the statistics were started for {}", self.sum_mean.len()),
            ));
        }
        let n = b * c * t * h * w;
        if mean.len() != n || std.len() != n {
            return Err(Error::input(
                "latents",
                format!("{} mean and {} std values for shape {shape:?}", mean.len(), std.len()),
            ));
        }
        let plane = t * h * w;
        for (i, (m, s)) in mean.chunks(plane).zip(std.chunks(plane)).enumerate() {
            let ch = i % c;
            for (&m, &s) in m.iter().zip(s) {
                let (m, s) = (f64::from(m), f64::from(s));
                self.sum_mean[ch] += m;
                self.sum_mean_sq[ch] += m * m;
                self.sum_var[ch] += s * s;
            }
        }
        self.count += (b * plane) as u64;
        Ok(())
    }

    pub fn finish(&self) -> Result<LatentStats> {
        if self.count == 0 {
            return Err(Error::input("latents", "no latents were added"));
        }
        let n = self.count as f64;
        let mean: Vec<f64> = self.sum_mean.iter().map(|s| s / n).collect();
        let std: Vec<f64> = (0..mean.len())
            .map(|c| ((self.sum_mean_sq[c] / n - mean[c] * mean[c]).max(0.0) + self.sum_var[c] / n).sqrt())
            .collect();
        if let Some(c) = std.iter().position(|&s| !(s.is_finite() && s > 0.0)) {
            return Err(Error::input(
                "latents",
                format!("channel {c} has standard deviation {}: cannot normalise it", std[c]),
            ));
        }
        Ok(LatentStats {
            shift: mean.clone(),
            scale: std.iter().map(|s| 1.0 / s).collect(),
            mean,
            std,
            count: self.count,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::Rng;

    #[test]
    fn moments_of_posterior_samples_match_the_closed_form() {
        // Two channels: means spread N(3, 2^2) with posterior std 0.5, and N(-1, 0.1^2) with std 1.
        let (b, c, t, h, w) = (4, 2, 3, 5, 6);
        let n = b * c * t * h * w;
        let mut rng = Rng::new(7);
        let (mut mean, mut std) = (vec![0f32; n], vec![0f32; n]);
        for i in 0..n {
            let ch = (i / (t * h * w)) % c;
            let z = rng.normal();
            (mean[i], std[i]) = if ch == 0 { (3.0 + 2.0 * z, 0.5) } else { (-1.0 + 0.1 * z, 1.0) };
        }
        let mut m = LatentMoments::new(c);
        m.add(&mean[..n / 2], &std[..n / 2], [b / 2, c, t, h, w]).unwrap();
        m.add(&mean[n / 2..], &std[n / 2..], [b / 2, c, t, h, w]).unwrap();
        let s = m.finish().unwrap();
        assert_eq!(s.count, (b * t * h * w) as u64);
        // Direct computation per channel.
        for ch in 0..c {
            let vals: Vec<(f64, f64)> = (0..n)
                .filter(|i| (i / (t * h * w)) % c == ch)
                .map(|i| (f64::from(mean[i]), f64::from(std[i])))
                .collect();
            let k = vals.len() as f64;
            let mu = vals.iter().map(|v| v.0).sum::<f64>() / k;
            let var = vals.iter().map(|v| (v.0 - mu).powi(2) + v.1 * v.1).sum::<f64>() / k;
            assert!((s.shift[ch] - mu).abs() < 1e-9, "channel {ch} shift");
            assert!((s.std[ch] - var.sqrt()).abs() < 1e-9, "channel {ch} std");
            assert!((s.scale[ch] * s.std[ch] - 1.0).abs() < 1e-12);
        }
        // And roughly the generating distribution.
        assert!((s.shift[0] - 3.0).abs() < 0.4 && (s.std[0] - (4.25f64).sqrt()).abs() < 0.4, "{s:?}");
        assert!((s.shift[1] + 1.0).abs() < 0.05 && (s.std[1] - (1.01f64).sqrt()).abs() < 0.05, "{s:?}");
    }

    #[test]
    fn bad_input_is_named() {
        let mut m = LatentMoments::new(2);
        assert!(m.finish().unwrap_err().to_string().contains("no latents"));
        assert!(m.add(&[0.0; 6], &[1.0; 6], [1, 3, 1, 1, 2]).unwrap_err().to_string().contains("3 channels"));
        assert!(m.add(&[0.0; 3], &[1.0; 4], [1, 2, 1, 1, 2]).unwrap_err().to_string().contains("3 mean"));
        m.add(&[1.0; 4], &[0.0; 4], [1, 2, 1, 1, 2]).unwrap();
        assert!(m.finish().unwrap_err().to_string().contains("standard deviation 0"));
    }
}
