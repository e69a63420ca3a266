//! Where the sampling noise comes from: a seeded generator ([`SeededNoise`]) or tensors recorded
//! from another implementation ([`ReplayNoise`]).
//!
//! The seeded generator is xoshiro256++ (state from SplitMix64 of the seed mixed with the prompt
//! index) and Box-Muller in f64, rounded to f32. Each prompt has its own stream: its initial
//! latents `[n, c, t, h, w]` are drawn first, then one `[n, c, t, h, w]` tensor per scheduler step
//! (also at the last step, as upstream draws there too), so a prompt's video does not depend on the
//! other prompts of the run. Torch's Mersenne-Twister stream is not reproduced: to match an
//! upstream run, replay its recorded noise.
//!
//! Replay files use the key names of the recording in `reference/e2e/io.safetensors`:
//! `p{prompt}.latents.init_randn` (standard normal, multiplied by the scheduler's
//! `init_noise_sigma`) or `p{prompt}.latents.init` (already scaled, used as is), and
//! `p{prompt}.step{i}.noise` (standard normal, the scheduler scales it).

use std::collections::BTreeMap;
use std::path::Path;

use ndarray::{ArrayD, IxDyn};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::io::read_safetensors;
use crate::tensor::Tensor;

/// Initial latents as a noise source provides them.
#[derive(Debug, Clone, PartialEq)]
pub enum InitLatents {
    /// Standard normal; the pipeline multiplies by `init_noise_sigma`.
    StandardNormal(ArrayD<f32>),
    /// Already multiplied by `init_noise_sigma`.
    Scaled(ArrayD<f32>),
}

/// A source of initial latents and per-step noise.
pub trait NoiseSource {
    /// Initial latents of prompt `prompt` with `shape` `[n, c, t, h, w]`.
    fn init_latents(&mut self, prompt: usize, shape: &[usize]) -> Result<InitLatents>;
    /// Standard normal noise for step `step` of prompt `prompt`.
    fn step_noise(&mut self, prompt: usize, step: usize, shape: &[usize]) -> Result<ArrayD<f32>>;
}

/// xoshiro256++ (Blackman and Vigna), seeded through SplitMix64. The whole state is four `u64`s and
/// serialises (`{"s": [..]}`), so a training run can save it in a checkpoint and resume with exactly
/// the same draws; the trainer uses this generator for its noise, timesteps, dropout and shuffling.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xoshiro256 {
    s: [u64; 4],
}

fn splitmix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Xoshiro256 {
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        Self { s: [splitmix64(&mut x), splitmix64(&mut x), splitmix64(&mut x), splitmix64(&mut x)] }
    }

    /// An independent generator for stream `stream` of `seed` (e.g. one per data-parallel rank).
    pub fn derive(seed: u64, stream: u64) -> Self {
        Self::new(seed ^ stream.wrapping_mul(0xD134_2543_DE82_EF95).rotate_left(17))
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = (s[0].wrapping_add(s[3])).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in `0..n` (`n > 0`), without modulo bias.
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0, "the range should not be empty");
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % n;
            }
        }
    }

    /// One standard normal value (Box-Muller, cosine branch): two uniforms per call, so the state
    /// advances by a fixed amount per value.
    pub fn normal(&mut self) -> f32 {
        let u1 = 1.0 - self.uniform(); // (0, 1]
        let u2 = self.uniform();
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }

    /// `len` standard normal values (Box-Muller, both outputs used; an odd `len` drops the last sine).
    pub fn normals(&mut self, len: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(len + 1);
        while out.len() < len {
            let u1 = 1.0 - self.uniform();
            let u2 = self.uniform();
            let r = (-2.0 * u1.ln()).sqrt();
            let (sin, cos) = (std::f64::consts::TAU * u2).sin_cos();
            out.push((r * cos) as f32);
            out.push((r * sin) as f32);
        }
        out.truncate(len);
        out
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// The seeded generator of the module docs.
#[derive(Debug, Clone)]
pub struct SeededNoise {
    seed: u64,
    streams: BTreeMap<usize, Xoshiro256>,
}

impl SeededNoise {
    pub fn new(seed: u64) -> Self {
        Self { seed, streams: BTreeMap::new() }
    }

    fn draw(&mut self, prompt: usize, shape: &[usize]) -> Result<ArrayD<f32>> {
        let seed = self.seed ^ (prompt as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
        let rng = self.streams.entry(prompt).or_insert_with(|| Xoshiro256::new(seed));
        let len = shape.iter().product();
        ArrayD::from_shape_vec(IxDyn(shape), rng.normals(len))
            .map_err(|e| Error::Tensor { name: "noise".into(), why: e.to_string() })
    }
}

impl NoiseSource for SeededNoise {
    fn init_latents(&mut self, prompt: usize, shape: &[usize]) -> Result<InitLatents> {
        self.streams.remove(&prompt);
        Ok(InitLatents::StandardNormal(self.draw(prompt, shape)?))
    }

    fn step_noise(&mut self, prompt: usize, _step: usize, shape: &[usize]) -> Result<ArrayD<f32>> {
        self.draw(prompt, shape)
    }
}

/// Recorded tensors (see the module docs for the key names); a missing tensor or a shape
/// mismatch is an error naming the key. Without a step-noise file, step noise falls back to
/// `fallback` (a seeded source).
pub struct ReplayNoise {
    init: Option<(String, BTreeMap<String, Tensor>)>,
    steps: Option<(String, BTreeMap<String, Tensor>)>,
    fallback: SeededNoise,
}

fn take(file: &str, tensors: &BTreeMap<String, Tensor>, key: &str, shape: &[usize]) -> Result<Option<ArrayD<f32>>> {
    let Some(t) = tensors.get(key) else {
        return Ok(None);
    };
    let a = match t {
        Tensor::F32(a) => a.clone(),
        other => {
            return Err(Error::InvalidInput {
                name: format!("{file}: `{key}`"),
                rule: format!("must be f32, got {}", other.describe()),
            })
        }
    };
    if a.shape() != shape {
        return Err(Error::InvalidInput {
            name: format!("{file}: `{key}`"),
            rule: format!("must have the latent shape {shape:?} of this run, got {:?}", a.shape()),
        });
    }
    Ok(Some(a))
}

impl ReplayNoise {
    /// Reads the files; either may be absent (`None`): then that part comes from `fallback`.
    pub fn open(init: Option<&Path>, steps: Option<&Path>, fallback: SeededNoise) -> Result<Self> {
        let read = |p: Option<&Path>| -> Result<Option<(String, BTreeMap<String, Tensor>)>> {
            p.map(|p| Ok((p.display().to_string(), read_safetensors(p)?))).transpose()
        };
        Ok(Self { init: read(init)?, steps: read(steps)?, fallback })
    }

    /// Checks, before any model work, that every tensor a run of `prompts` prompts with `steps`
    /// noisy steps needs is present with `shape`.
    pub fn check(&self, prompts: usize, steps: usize, shape: &[usize]) -> Result<()> {
        for p in 0..prompts {
            if let Some((file, t)) = &self.init {
                let a = take(file, t, &format!("p{p}.latents.init_randn"), shape)?;
                let b = take(file, t, &format!("p{p}.latents.init"), shape)?;
                if a.is_none() && b.is_none() {
                    return Err(Error::InvalidInput {
                        name: format!("--init-latents {file}"),
                        rule: format!("must hold `p{p}.latents.init_randn` or `p{p}.latents.init` {shape:?}"),
                    });
                }
            }
            if let Some((file, t)) = &self.steps {
                for i in 0..steps {
                    if take(file, t, &format!("p{p}.step{i}.noise"), shape)?.is_none() {
                        return Err(Error::InvalidInput {
                            name: format!("--step-noise {file}"),
                            rule: format!("must hold `p{p}.step{i}.noise` {shape:?} (one per step and prompt)"),
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

impl NoiseSource for ReplayNoise {
    fn init_latents(&mut self, prompt: usize, shape: &[usize]) -> Result<InitLatents> {
        let fallback = self.fallback.init_latents(prompt, shape)?;
        let Some((file, t)) = &self.init else {
            return Ok(fallback);
        };
        if let Some(a) = take(file, t, &format!("p{prompt}.latents.init_randn"), shape)? {
            return Ok(InitLatents::StandardNormal(a));
        }
        match take(file, t, &format!("p{prompt}.latents.init"), shape)? {
            Some(a) => Ok(InitLatents::Scaled(a)),
            None => Err(Error::InvalidInput {
                name: format!("--init-latents {file}"),
                rule: format!("has no `p{prompt}.latents.init_randn` or `p{prompt}.latents.init`"),
            }),
        }
    }

    fn step_noise(&mut self, prompt: usize, step: usize, shape: &[usize]) -> Result<ArrayD<f32>> {
        let Some((file, t)) = &self.steps else {
            return self.fallback.step_noise(prompt, step, shape);
        };
        take(file, t, &format!("p{prompt}.step{step}.noise"), shape)?.ok_or_else(|| Error::InvalidInput {
            name: format!("--step-noise {file}"),
            rule: format!("has no `p{prompt}.step{step}.noise`"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_noise_is_standard_normal_and_reproducible() {
        let mut a = SeededNoise::new(7);
        let x = match a.init_latents(0, &[2, 3, 50, 50]).unwrap() {
            InitLatents::StandardNormal(x) => x,
            _ => unreachable!(),
        };
        let n = x.len() as f64;
        let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = x.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.02 && (var - 1.0).abs() < 0.03, "mean {mean} var {var}");
        let s1 = a.step_noise(0, 0, &[4]).unwrap();
        let mut b = SeededNoise::new(7);
        b.init_latents(0, &[2, 3, 50, 50]).unwrap();
        assert_eq!(b.step_noise(0, 0, &[4]).unwrap(), s1);
        // Another prompt has another stream; another seed another everything.
        assert_ne!(b.init_latents(1, &[4]).unwrap(), SeededNoise::new(7).init_latents(0, &[4]).unwrap());
        assert_ne!(
            SeededNoise::new(8).init_latents(0, &[4]).unwrap(),
            SeededNoise::new(7).init_latents(0, &[4]).unwrap()
        );
    }

    #[test]
    fn same_seed_same_stream_and_state_round_trips() {
        let mut a = Xoshiro256::new(7);
        let mut b = Xoshiro256::new(7);
        assert_eq!(
            (0..10).map(|_| a.next_u64()).collect::<Vec<_>>(),
            (0..10).map(|_| b.next_u64()).collect::<Vec<_>>()
        );
        let saved = serde_json::to_string(&a).expect("state serialises");
        let mut c: Xoshiro256 = serde_json::from_str(&saved).expect("state parses");
        assert_eq!(a.normal(), c.normal());
        assert_ne!(Xoshiro256::new(7).next_u64(), Xoshiro256::new(8).next_u64());
    }

    #[test]
    fn normals_have_unit_moments() {
        let mut r = Xoshiro256::new(1);
        let v = r.normals(20000);
        let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|&x| (f64::from(x) - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 0.03, "mean {mean}");
        assert!((var - 1.0).abs() < 0.05, "variance {var}");
    }

    #[test]
    fn below_stays_in_range_and_shuffle_permutes() {
        let mut r = Xoshiro256::new(3);
        assert!((0..1000).all(|_| r.below(7) < 7));
        let mut v: Vec<usize> = (0..50).collect();
        r.shuffle(&mut v);
        let mut sorted = v.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_ne!(v, sorted);
    }
}
