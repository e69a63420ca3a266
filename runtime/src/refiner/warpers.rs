//! transformers 4.44's sampling warpers on one row of next-token scores, in the order of
//! `GenerationMixin._get_logits_warper`: `TemperatureLogitsWarper` (when temperature != 1),
//! `TopKLogitsWarper` (when top_k != 0), `TopPLogitsWarper` (when top_p < 1), `MinPLogitsWarper`
//! (when min_p is set), each with `min_tokens_to_keep = 1` and filter value `-inf`.
//! <https://github.com/huggingface/transformers/blob/v4.44.2/src/transformers/generation/logits_process.py>
//!
//! Arithmetic follows torch on the CPU: scores stay f32; the temperature divides in f32; softmax
//! is `exp(x - max) * (1 / sum)` in f32; top-p's cumulative sum accumulates in f64 (torch's CPU
//! `cumsum` accumulation type) and is compared in f32 with `1 - top_p`. Sorting is stable (torch's
//! default sort is not, so exact ties at the top-p boundary may keep a different token).

use super::config::GenerationConfig;
use crate::pipeline::noise::Xoshiro256;

/// `min_tokens_to_keep` of every warper (single-beam sampling).
const MIN_TOKENS_TO_KEEP: usize = 1;

/// Applies the warpers `config` turns on to `scores` in place (removed entries become `-inf`).
pub fn warp(scores: &mut [f32], config: &GenerationConfig) {
    if config.temperature != 1.0 {
        temperature(scores, config.temperature);
    }
    if config.top_k != 0 {
        top_k(scores, config.top_k);
    }
    if config.top_p < 1.0 {
        top_p(scores, config.top_p);
    }
    if let Some(p) = config.min_p {
        min_p(scores, p);
    }
}

/// `scores / temperature`.
pub fn temperature(scores: &mut [f32], temperature: f64) {
    let t = temperature as f32;
    scores.iter_mut().for_each(|s| *s /= t);
}

/// Removes every score below the k-th largest (ties with it are kept).
pub fn top_k(scores: &mut [f32], k: usize) {
    let k = k.max(MIN_TOKENS_TO_KEEP).min(scores.len());
    if k == 0 {
        return;
    }
    let mut sorted = scores.to_vec();
    sorted.sort_unstable_by(|a, b| b.total_cmp(a));
    let kth = sorted[k - 1];
    scores.iter_mut().filter(|s| **s < kth).for_each(|s| *s = f32::NEG_INFINITY);
}

/// Removes the lowest-probability tokens whose cumulative probability (ascending order) is at most
/// `1 - top_p`, keeping at least the most likely one.
pub fn top_p(scores: &mut [f32], top_p: f64) {
    let order = ascending(scores);
    let sorted: Vec<f32> = order.iter().map(|&i| scores[i]).collect();
    let probs = softmax(&sorted);
    let threshold = (1.0 - top_p) as f32;
    let keep_from = order.len().saturating_sub(MIN_TOKENS_TO_KEEP);
    let mut cum = 0f64;
    for (rank, (&i, &p)) in order.iter().zip(&probs).enumerate() {
        cum += f64::from(p);
        if rank < keep_from && (cum as f32) <= threshold {
            scores[i] = f32::NEG_INFINITY;
        }
    }
}

/// Removes tokens whose probability is below `min_p` times the top probability.
pub fn min_p(scores: &mut [f32], min_p: f64) {
    let probs = softmax(scores);
    let top = probs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let scaled = min_p as f32 * top;
    // Stable descending order: the most likely token is never removed.
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    for &i in order.iter().skip(MIN_TOKENS_TO_KEEP) {
        if probs[i] < scaled {
            scores[i] = f32::NEG_INFINITY;
        }
    }
}

/// Indices of `scores` in ascending order of score (stable).
fn ascending(scores: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    order
}

/// torch's CPU softmax over the last dimension: `exp(x - max) * (1 / sum)` in f32.
pub fn softmax(scores: &[f32]) -> Vec<f32> {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut out: Vec<f32> = scores.iter().map(|&s| (s - max).exp()).collect();
    let inv = 1.0 / out.iter().sum::<f32>();
    out.iter_mut().for_each(|p| *p *= inv);
    out
}

/// The first index of the largest score (`torch.argmax`).
pub fn argmax(scores: &[f32]) -> usize {
    let mut best = 0;
    for (i, &s) in scores.iter().enumerate() {
        if s > scores[best] {
            best = i;
        }
    }
    best
}

/// Draws one token from `softmax(scores)` (`torch.multinomial(probs, 1)`'s distribution, not its
/// random stream): one uniform from `rng`, inverse CDF in f64 over the tokens with non-zero
/// probability.
pub fn sample(scores: &[f32], rng: &mut Xoshiro256) -> usize {
    let probs = softmax(scores);
    let total: f64 = probs.iter().map(|&p| f64::from(p)).sum();
    let target = rng.uniform() * total;
    let mut cum = 0f64;
    let mut last = argmax(scores);
    for (i, &p) in probs.iter().enumerate() {
        if p > 0.0 {
            cum += f64::from(p);
            last = i;
            if target < cum {
                return i;
            }
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_keeps_ties_and_top_p_keeps_one() {
        let mut s = vec![1.0, 3.0, 2.0, 3.0, 0.0];
        top_k(&mut s, 2);
        assert_eq!(s, [f32::NEG_INFINITY, 3.0, f32::NEG_INFINITY, 3.0, f32::NEG_INFINITY]);
        let mut s = vec![0.0, 10.0, 0.0];
        top_p(&mut s, 0.0);
        assert_eq!(s, [f32::NEG_INFINITY, 10.0, f32::NEG_INFINITY]);
        let mut s = vec![0.0, 0.0, 0.0, 0.0];
        top_p(&mut s, 0.5);
        assert_eq!(s.iter().filter(|v| v.is_finite()).count(), 2);
    }

    #[test]
    fn min_p_scales_with_the_top_probability() {
        let mut s = vec![0.0, (0.5f32).ln(), (0.05f32).ln()];
        min_p(&mut s, 0.1);
        assert!(s[0].is_finite() && s[1].is_finite() && s[2] == f32::NEG_INFINITY, "{s:?}");
    }

    #[test]
    fn sampling_follows_the_distribution_and_skips_removed_tokens() {
        let scores = [f32::NEG_INFINITY, 0.0, (3.0f32).ln(), f32::NEG_INFINITY];
        let mut rng = Xoshiro256::new(7);
        let mut counts = [0usize; 4];
        for _ in 0..20_000 {
            counts[sample(&scores, &mut rng)] += 1;
        }
        assert_eq!((counts[0], counts[3]), (0, 0));
        let ratio = counts[2] as f64 / counts[1] as f64;
        assert!((ratio - 3.0).abs() < 0.15, "{counts:?}");
        assert_eq!(argmax(&[1.0, 5.0, 5.0]), 1);
    }
}
