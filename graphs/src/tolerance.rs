//! Named tolerance levels for comparing tensors (see `docs/PARITY.md`).
//!
//! A value passes when `|a - e| <= atol + rtol * |e|`; a level may allow a small fraction of
//! outliers. `Cosine(c)` compares whole tensors by cosine similarity instead.

use std::fmt;

/// A named tolerance level. Call sites name a level, never a bare number.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Approx {
    /// Bit-identical.
    Exact,
    /// Same arithmetic reordered (speed transforms in f32: chunked vs whole, fused vs decomposed,
    /// batched vs single): 1e-5 absolute.
    Close,
    /// f32 against the PyTorch reference: 1e-4 absolute.
    Approximate,
    /// Half precision (f16/bf16) against an f32 reference: atol 5e-2, rtol 1e-2, 0.1% outliers.
    VeryApproximate,
    /// 8-bit frames made by truncating float video: within one level (a float an ulp either side
    /// of an integer boundary truncates to neighbouring levels).
    OneLevel,
    /// End-to-end latents or frames: cosine similarity at least this value.
    Cosine(f64),
}

impl Approx {
    /// `(atol, rtol, allowed outlier fraction)`; `None` for `Cosine`.
    pub fn bounds(self) -> Option<(f64, f64, f64)> {
        match self {
            Approx::Exact => Some((0.0, 0.0, 0.0)),
            Approx::Close => Some((1e-5, 0.0, 0.0)),
            Approx::Approximate => Some((1e-4, 0.0, 0.0)),
            Approx::VeryApproximate => Some((5e-2, 1e-2, 1e-3)),
            Approx::OneLevel => Some((1.0, 0.0, 0.0)),
            Approx::Cosine(_) => None,
        }
    }

    /// Compares `actual` with `expected` element by element (same length required).
    pub fn compare<A, E>(self, actual: &[A], expected: &[E]) -> Comparison
    where
        A: Copy + Into<f64>,
        E: Copy + Into<f64>,
    {
        let mut c = Comparison {
            level: self,
            len: expected.len(),
            len_mismatch: actual.len() != expected.len(),
            ..Comparison::default()
        };
        let (mut dot, mut na, mut ne) = (0.0f64, 0.0f64, 0.0f64);
        let (atol, rtol, _) = self.bounds().unwrap_or((0.0, 0.0, 0.0));
        for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
            let (a, e): (f64, f64) = (a.into(), e.into());
            if !a.is_finite() && !(a.is_nan() && e.is_nan()) && a != e {
                c.non_finite += 1;
            }
            let d = (a - e).abs();
            if d > c.max_abs || d.is_nan() {
                c.max_abs = if d.is_nan() { f64::INFINITY } else { d };
                c.worst_index = i;
            }
            if e != 0.0 {
                c.max_rel = c.max_rel.max(d / e.abs());
            }
            if !(d <= atol + rtol * e.abs()) {
                c.outliers += 1;
            }
            dot += a * e;
            na += a * a;
            ne += e * e;
        }
        c.cosine = if na == 0.0 && ne == 0.0 { 1.0 } else { dot / (na.sqrt() * ne.sqrt()) };
        c
    }
}

impl fmt::Display for Approx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Approx::Cosine(c) => write!(f, "Cosine({c})"),
            other => {
                let (a, r, o) = other.bounds().expect("non-cosine levels have bounds");
                write!(f, "{other:?}(atol {a:e}, rtol {r:e}, outliers {o})")
            }
        }
    }
}

/// The result of a comparison; `ok()` applies the level.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Comparison {
    pub level: Approx,
    pub len: usize,
    pub len_mismatch: bool,
    pub max_abs: f64,
    pub max_rel: f64,
    pub worst_index: usize,
    pub outliers: usize,
    pub non_finite: usize,
    pub cosine: f64,
}

impl Default for Comparison {
    fn default() -> Self {
        Self {
            level: Approx::Exact,
            len: 0,
            len_mismatch: false,
            max_abs: 0.0,
            max_rel: 0.0,
            worst_index: 0,
            outliers: 0,
            non_finite: 0,
            cosine: 1.0,
        }
    }
}

impl Comparison {
    pub fn ok(&self) -> bool {
        if self.len_mismatch || self.non_finite > 0 {
            return false;
        }
        match self.level {
            Approx::Cosine(min) => self.cosine >= min,
            level => {
                let (_, _, frac) = level.bounds().expect("non-cosine levels have bounds");
                (self.outliers as f64) <= frac * self.len as f64
            }
        }
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at {}: max |diff| {:.3e} (index {}), max rel {:.3e}, outliers {}/{}, non-finite {}, cosine {:.7}{}",
            if self.ok() { "pass" } else { "FAIL" },
            self.level,
            self.max_abs,
            self.worst_index,
            self.max_rel,
            self.outliers,
            self.len,
            self.non_finite,
            self.cosine,
            if self.len_mismatch { " (LENGTH MISMATCH)" } else { "" },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_accept_and_reject() {
        let e = [1.0f32, -2.0, 3.0, 0.0];
        assert!(Approx::Exact.compare(&e, &e).ok());
        let a = [1.00005f32, -2.0, 3.0, 0.0];
        assert!(Approx::Approximate.compare(&a, &e).ok());
        assert!(!Approx::Close.compare(&a, &e).ok());
        let b = [1.0002f32, -2.0, 3.0, 0.0];
        assert!(!Approx::Approximate.compare(&b, &e).ok());
        assert!(Approx::Cosine(0.999).compare(&b, &e).ok());
        assert!(!Approx::Exact.compare(&e[..3], &e).ok(), "length mismatch fails");
        let nan = [f32::NAN, -2.0, 3.0, 0.0];
        assert!(!Approx::VeryApproximate.compare(&nan, &e).ok(), "NaN fails");
    }
}
