//! The decode loop of `model.generate(input_ids, max_new_tokens=N)` for one sequence: one prefill
//! over the prompt, then one KV-cache decode step per new token; greedy (`argmax`) or sampling
//! through the warpers; stops after `max_new_tokens` or after the first token in the eos set,
//! which is kept, as transformers does.
//!
//! The model is behind [`CausalLm`], which owns its KV cache (on the device where the backend
//! allows), so the loop never sees cache tensors.

use super::config::GenerationConfig;
use super::warpers;
use crate::pipeline::noise::Xoshiro256;

/// A causal language model with its own KV cache.
pub trait CausalLm {
    /// The error of a model call.
    type Error;

    /// Clears the cache and runs `ids` (the whole prompt, positions `0..n`); returns the logits
    /// of the last position (`[vocab]`).
    fn prefill(&mut self, ids: &[u32]) -> Result<Vec<f32>, Self::Error>;

    /// Runs `id` at the next position, appending it to the cache; returns its logits.
    fn decode(&mut self, id: u32) -> Result<Vec<f32>, Self::Error>;
}

/// How the next token is chosen.
pub enum Decoding<'a> {
    /// `argmax` of the raw logits (`do_sample=False`).
    Greedy,
    /// The warpers of `config`, then one draw from `rng`.
    Sample { config: &'a GenerationConfig, rng: &'a mut Xoshiro256 },
}

/// What [`generate`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    /// The new tokens only (an eos that stopped generation included).
    pub ids: Vec<u32>,
    /// Whether generation stopped at an eos token (else at `max_new_tokens`).
    pub stopped_at_eos: bool,
}

/// A failure of [`generate`]: the model's, or logits that cannot be decoded.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError<E> {
    #[error(transparent)]
    Model(E),
    #[error("step {step}: the model returned {got} logits, expected a non-empty row with no NaN")]
    BadLogits { step: usize, got: usize },
    #[error("the prompt is empty")]
    EmptyPrompt,
}

/// Generates up to `max_new_tokens` tokens after `prompt`.
pub fn generate<M: CausalLm>(
    model: &mut M,
    prompt: &[u32],
    max_new_tokens: usize,
    eos: &[u32],
    mut decoding: Decoding<'_>,
) -> Result<Generation, GenerateError<M::Error>> {
    if prompt.is_empty() {
        return Err(GenerateError::EmptyPrompt);
    }
    let mut ids = Vec::with_capacity(max_new_tokens);
    if max_new_tokens == 0 {
        return Ok(Generation { ids, stopped_at_eos: false });
    }
    let mut logits = model.prefill(prompt).map_err(GenerateError::Model)?;
    for step in 0..max_new_tokens {
        let _span = tracing::trace_span!("refiner_step", step).entered();
        if logits.is_empty() || logits.iter().any(|v| v.is_nan()) {
            return Err(GenerateError::BadLogits { step, got: logits.len() });
        }
        let next = match &mut decoding {
            Decoding::Greedy => warpers::argmax(&logits),
            Decoding::Sample { config, rng } => {
                warpers::warp(&mut logits, config);
                warpers::sample(&logits, rng)
            }
        } as u32;
        ids.push(next);
        if eos.contains(&next) {
            return Ok(Generation { ids, stopped_at_eos: true });
        }
        if step + 1 < max_new_tokens {
            logits = model.decode(next).map_err(GenerateError::Model)?;
        }
    }
    Ok(Generation { ids, stopped_at_eos: false })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fake model: the next token is a function of the whole sequence so far, so a cache bug
    /// (a lost or repeated token) changes the output.
    pub(crate) struct Counting {
        pub vocab: usize,
        pub seq: Vec<u32>,
        pub calls: Vec<&'static str>,
    }

    impl Counting {
        fn logits(&self) -> Vec<f32> {
            let h = self.seq.iter().fold(7u64, |h, &t| h.wrapping_mul(31).wrapping_add(u64::from(t)));
            let mut l = vec![0.0; self.vocab];
            l[(h % self.vocab as u64) as usize] = 5.0;
            l
        }
    }

    impl CausalLm for Counting {
        type Error = std::convert::Infallible;
        fn prefill(&mut self, ids: &[u32]) -> Result<Vec<f32>, Self::Error> {
            self.seq = ids.to_vec();
            self.calls.push("prefill");
            Ok(self.logits())
        }
        fn decode(&mut self, id: u32) -> Result<Vec<f32>, Self::Error> {
            self.seq.push(id);
            self.calls.push("decode");
            Ok(self.logits())
        }
    }

    /// Recomputing the whole sequence every step (no cache) gives the same tokens.
    fn uncached(vocab: usize, prompt: &[u32], n: usize, eos: &[u32]) -> Vec<u32> {
        let mut seq = prompt.to_vec();
        let mut out = vec![];
        for _ in 0..n {
            let m = Counting { vocab, seq: seq.clone(), calls: vec![] };
            let t = warpers::argmax(&m.logits()) as u32;
            out.push(t);
            seq.push(t);
            if eos.contains(&t) {
                break;
            }
        }
        out
    }

    #[test]
    fn greedy_with_the_cache_equals_recomputing_and_stops_at_eos() {
        let mut m = Counting { vocab: 13, seq: vec![], calls: vec![] };
        let g = generate(&mut m, &[1, 2, 3], 20, &[], Decoding::Greedy).unwrap();
        assert_eq!(g.ids, uncached(13, &[1, 2, 3], 20, &[]));
        assert!(!g.stopped_at_eos);
        assert_eq!(m.calls.len(), 20, "one prefill and 19 decodes");
        assert_eq!(m.calls.iter().filter(|c| **c == "prefill").count(), 1);

        let eos = g.ids[5];
        let first = g.ids.iter().position(|&t| t == eos).unwrap();
        let mut m = Counting { vocab: 13, seq: vec![], calls: vec![] };
        let stopped = generate(&mut m, &[1, 2, 3], 20, &[99, eos], Decoding::Greedy).unwrap();
        assert_eq!(stopped.ids, g.ids[..=first]);
        assert!(stopped.stopped_at_eos);
        assert_eq!(stopped.ids, uncached(13, &[1, 2, 3], 20, &[99, eos]));
    }

    #[test]
    fn sampling_is_reproducible_per_seed() {
        let config = GenerationConfig { do_sample: true, temperature: 5.0, top_k: 0, ..Default::default() };
        let run = |seed| {
            let mut m = Counting { vocab: 13, seq: vec![], calls: vec![] };
            let mut rng = Xoshiro256::new(seed);
            generate(&mut m, &[4], 30, &[], Decoding::Sample { config: &config, rng: &mut rng }).unwrap().ids
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
        let mut m = Counting { vocab: 13, seq: vec![], calls: vec![] };
        assert!(matches!(generate(&mut m, &[], 3, &[], Decoding::Greedy), Err(GenerateError::EmptyPrompt)));
        assert!(generate(&mut m, &[1], 0, &[], Decoding::Greedy).unwrap().ids.is_empty());
    }
}
