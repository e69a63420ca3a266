//! Non-finite checks at the stage boundaries of generation and decoding: text embeddings, every
//! denoising step's model output and latents, the latents given to the VAE decoder and its
//! output. One NaN anywhere turns into black pixels after quantisation (`NaN as u8 == 0`), so a
//! corrupt weight file or input would otherwise become a normal-looking video; instead the stage,
//! step and prompt are reported as [`Error::NonFinite`].
//!
//! A check is one read-only pass over values already on the host, and only counts and locates
//! when a value is bad: finite values pass through untouched.

use std::fmt;

use ndarray::{ArrayViewD, Dimension};

use crate::error::{Error, Result};

/// Where non-finite values appeared and how many.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NonFinite {
    /// The stage boundary (`text encoder output`, `transformer output`, `VAE decoder output`, ...).
    pub stage: String,
    /// The denoising step (0-based), for per-step stages.
    pub step: Option<usize>,
    /// The prompt's index and text (template applied), when a prompt was being generated.
    pub prompt: Option<(usize, String)>,
    /// Non-finite values (NaN and infinities).
    pub count: usize,
    /// Of which NaN.
    pub nan: usize,
    /// Values checked.
    pub total: usize,
    /// Index of the first non-finite value (row-major) in the checked tensor.
    pub first_index: Vec<usize>,
    /// Shape of the checked tensor.
    pub shape: Vec<usize>,
}

impl fmt::Display for NonFinite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "non-finite values in the {}", self.stage)?;
        if let Some(step) = self.step {
            write!(f, " at denoising step {step}")?;
        }
        if let Some((i, text)) = &self.prompt {
            write!(f, " of prompt {i} ({text:?})")?;
        }
        write!(
            f,
            ": {} of {} values are not finite ({} NaN, {} infinite), the first at index {:?} of shape {:?}; \
             stopped, since they would quantise to a black or garbage video: check the weight files (copy or \
             export the bundle again) and the inputs",
            self.count,
            self.total,
            self.nan,
            self.count - self.nan,
            self.first_index,
            self.shape
        )
    }
}

/// `Err(Error::NonFinite)` naming `stage` when `values` holds a NaN or an infinity.
pub fn check(stage: &str, values: ArrayViewD<'_, f32>) -> Result<()> {
    let all_finite = match values.as_slice_memory_order() {
        Some(s) => s.iter().all(|v| v.is_finite()),
        None => values.iter().all(|v| v.is_finite()),
    };
    if all_finite {
        return Ok(());
    }
    let mut count = 0;
    let mut nan = 0;
    let mut first_index = None;
    for (index, v) in values.indexed_iter() {
        if !v.is_finite() {
            count += 1;
            nan += usize::from(v.is_nan());
            if first_index.is_none() {
                first_index = Some(index.slice().to_vec());
            }
        }
    }
    Err(Error::NonFinite(Box::new(NonFinite {
        stage: stage.to_string(),
        step: None,
        prompt: None,
        count,
        nan,
        total: values.len(),
        first_index: first_index.unwrap_or_default(),
        shape: values.shape().to_vec(),
    })))
}

impl Error {
    /// Adds the denoising step to a [`Error::NonFinite`]; other errors pass through.
    pub fn at_step(mut self, step: usize) -> Self {
        if let Error::NonFinite(r) = &mut self {
            r.step.get_or_insert(step);
        }
        self
    }

    /// Adds the prompt to a [`Error::NonFinite`]; other errors pass through.
    pub fn for_prompt(mut self, index: usize, text: &str) -> Self {
        if let Error::NonFinite(r) = &mut self {
            r.prompt.get_or_insert_with(|| (index, text.to_string()));
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use ndarray::{ArrayD, IxDyn};

    use super::*;

    #[test]
    fn finite_values_pass_and_bad_ones_are_counted_and_located() {
        let mut a = ArrayD::<f32>::from_elem(IxDyn(&[2, 3, 4]), 0.5);
        check("x", a.view()).unwrap();
        // A transposed (non-standard) view is checked too.
        check("x", a.view().reversed_axes()).unwrap();
        /// Values set at `[i, j, k]`; the expected count, NaN count and first index.
        type Case<'a> = (&'a [(usize, usize, usize, f32)], usize, usize, [usize; 3]);
        let cases: &[Case] = &[
            (&[(1, 2, 3, f32::NAN)], 1, 1, [1, 2, 3]),
            (&[(0, 1, 0, f32::INFINITY), (1, 0, 0, f32::NAN)], 2, 1, [0, 1, 0]),
            (&[(0, 0, 1, f32::NEG_INFINITY)], 1, 0, [0, 0, 1]),
        ];
        for (bad, count, nan, first) in cases {
            a.fill(0.5);
            for &(i, j, k, v) in *bad {
                a[[i, j, k]] = v;
            }
            let Err(Error::NonFinite(r)) = check("transformer output", a.view()) else { panic!("{bad:?} passed") };
            assert_eq!((r.count, r.nan, r.total, r.first_index.as_slice()), (*count, *nan, 24, &first[..]));
            let e = Error::NonFinite(r).at_step(3).for_prompt(1, "A cat.").at_step(9).to_string();
            assert!(
                e.starts_with(
                    "non-finite values in the transformer output at denoising step 3 of prompt 1 (\"A cat.\"):"
                ),
                "{e}"
            );
            assert!(e.contains(&format!("{count} of 24 values are not finite ({nan} NaN")), "{e}");
        }
    }
}
