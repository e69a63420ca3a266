//! Winograd minimal filtering `F(m x m, 3 x 3)` (Lavin and Gray, 2015) for the WFVAE's 3x3
//! spatial convolutions: every output tile of `m x m` pixels reads an input tile of
//! `a x a = (m + 2) x (m + 2)` pixels, transformed as `V = B^T d B`; the kernel is transformed
//! once at export as `U = G g G^T`; the `a^2` transform components multiply independently over
//! the channels (and time taps) and the tile comes back as `Y = A^T M A`.
//!
//! The transforms below use the interpolation points `0, 1, -1` (`m = 2`) and `0, 1, -1, 2, -2`
//! (`m = 4`), plus the point at infinity. Column 1 of `A^T` is all ones for both tiles, so a
//! bias added to component `(1, 1)` of `M` reaches every output pixel exactly once
//! ([`bias`]).

use crate::error::{Error, Result};
use crate::options::VideoConv;
use crate::tensor::HostTensor;

/// One Winograd tile size, with its transform matrices (row-major, f64).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tile {
    /// `F(2x2, 3x3)`.
    F2,
    /// `F(4x4, 3x3)`.
    F4,
}

const BT2: [f64; 16] = [1., 0., -1., 0., 0., 1., 1., 0., 0., -1., 1., 0., 0., 1., 0., -1.];
const G2: [f64; 12] = [1., 0., 0., 0.5, 0.5, 0.5, 0.5, -0.5, 0.5, 0., 0., 1.];
const AT2: [f64; 8] = [1., 1., 1., 0., 0., 1., -1., -1.];

#[rustfmt::skip]
const BT4: [f64; 36] = [
    4., 0., -5., 0., 1., 0.,
    0., -4., -4., 1., 1., 0.,
    0., 4., -4., -1., 1., 0.,
    0., -2., -1., 2., 1., 0.,
    0., 2., -1., -2., 1., 0.,
    0., 4., 0., -5., 0., 1.,
];
#[rustfmt::skip]
const G4: [f64; 18] = [
    1. / 4., 0., 0.,
    -1. / 6., -1. / 6., -1. / 6.,
    -1. / 6., 1. / 6., -1. / 6.,
    1. / 24., 1. / 12., 1. / 6.,
    1. / 24., -1. / 12., 1. / 6.,
    0., 0., 1.,
];
#[rustfmt::skip]
const AT4: [f64; 24] = [
    1., 1., 1., 1., 1., 0.,
    0., 1., -1., 2., -2., 0.,
    0., 1., 1., 4., 4., 0.,
    0., 1., -1., 8., -8., 1.,
];

impl Tile {
    /// The tile a [`VideoConv`] writes its 3x3 convolutions with, if any.
    pub fn of(video_conv: VideoConv) -> Option<Tile> {
        match video_conv {
            VideoConv::WinogradF2 => Some(Tile::F2),
            VideoConv::WinogradF4 => Some(Tile::F4),
            VideoConv::Conv3d | VideoConv::Folded => None,
        }
    }

    /// Output pixels per tile side.
    pub fn m(self) -> usize {
        match self {
            Tile::F2 => 2,
            Tile::F4 => 4,
        }
    }

    /// Input tile side `a = m + 2`.
    pub fn a(self) -> usize {
        self.m() + 2
    }

    /// Transform components per tile, `a^2`.
    pub fn components(self) -> usize {
        self.a() * self.a()
    }

    /// `B^T` `[a, a]`.
    fn bt(self) -> &'static [f64] {
        match self {
            Tile::F2 => &BT2,
            Tile::F4 => &BT4,
        }
    }

    /// `G` `[a, 3]`.
    fn g(self) -> &'static [f64] {
        match self {
            Tile::F2 => &G2,
            Tile::F4 => &G4,
        }
    }

    /// `A^T` `[m, a]`.
    fn at(self) -> &'static [f64] {
        match self {
            Tile::F2 => &AT2,
            Tile::F4 => &AT4,
        }
    }

    /// The input transform as a convolution kernel `[a^2, 1, 1, a, a]`: output channel
    /// `k = i * a + j` is component `(i, j)` of `B^T d B` for the `a x a` window `d` it reads.
    pub fn input_kernel(self) -> Result<HostTensor> {
        let (a, bt) = (self.a(), self.bt());
        let mut values = Vec::with_capacity(a.pow(4));
        for i in 0..a {
            for j in 0..a {
                for u in 0..a {
                    for v in 0..a {
                        values.push((bt[i * a + u] * bt[j * a + v]) as f32);
                    }
                }
            }
        }
        HostTensor::from_f32(vec![a * a, 1, 1, a, a], &values)
    }

    /// The output transform `[m^2, a^2]`: row `p * m + q` gives output pixel `(p, q)` of the
    /// tile from the components `k = i * a + j`.
    pub fn output_matrix(self) -> Result<HostTensor> {
        let (a, m, at) = (self.a(), self.m(), self.at());
        let mut values = Vec::with_capacity(m * m * a * a);
        for p in 0..m {
            for q in 0..m {
                for i in 0..a {
                    for j in 0..a {
                        values.push((at[p * a + i] * at[q * a + j]) as f32);
                    }
                }
            }
        }
        HostTensor::from_f32(vec![m * m, a * a], &values)
    }

    /// The kernel `[o, c, kt, 3, 3]` transformed for the grouped product convolution:
    /// `[a^2 * o, c, kt, 1, 1]`, row `k * o + oi` = component `k` of `G g[oi, :, t] G^T` (computed in
    /// f64, rounded once to f32).
    pub fn weight(self, kernel: &HostTensor) -> Result<HostTensor> {
        let &[o, c, kt, 3, 3] = kernel.shape() else {
            return Err(Error::Config(format!(
                "a Winograd kernel must be [o, c, kt, 3, 3], got shape {:?}",
                kernel.shape()
            )));
        };
        let (a, g) = (self.a(), self.g());
        let src = kernel.to_f32()?;
        let mut dst = vec![0f32; a * a * o * c * kt];
        for oi in 0..o {
            for ci in 0..c {
                for t in 0..kt {
                    let base = ((oi * c + ci) * kt + t) * 9;
                    let k3 = &src[base..base + 9];
                    // h = G k3 [a, 3]
                    let mut h = vec![0f64; a * 3];
                    for i in 0..a {
                        for y in 0..3 {
                            h[i * 3 + y] = (0..3).map(|x| g[i * 3 + x] * k3[x * 3 + y] as f64).sum();
                        }
                    }
                    for i in 0..a {
                        for j in 0..a {
                            let u: f64 = (0..3).map(|y| h[i * 3 + y] * g[j * 3 + y]).sum();
                            let k = i * a + j;
                            dst[((k * o + oi) * c + ci) * kt + t] = u as f32;
                        }
                    }
                }
            }
        }
        HostTensor::from_f32(vec![a * a * o, c, kt, 1, 1], &dst)
    }

    /// The bias `[o]` of the product convolution `[a^2 * o]`: `bias` on component `(1, 1)`, zero
    /// elsewhere (column 1 of `A^T` is all ones, so each output pixel gets it once).
    pub fn bias(self, bias: &HostTensor) -> Result<HostTensor> {
        let &[o] = bias.shape() else {
            return Err(Error::Config(format!("a Winograd bias must be 1-D, got shape {:?}", bias.shape())));
        };
        let k = self.a() + 1;
        let mut dst = vec![0f32; self.components() * o];
        dst[k * o..(k + 1) * o].copy_from_slice(&bias.to_f32()?);
        HostTensor::from_f32(vec![self.components() * o], &dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random value in [-1, 1).
    fn noise(i: usize) -> f32 {
        let x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17) ^ 0x2545_F491_4F6C_DD1D;
        ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// One `m x m` output tile through the transforms, all in f64 from the f32 tensors the graph
    /// holds, against the direct 3x3 correlation.
    fn check(tile: Tile) {
        let (a, m) = (tile.a(), tile.m());
        let (o, c) = (2, 3);
        let kernel: Vec<f32> = (0..o * c * 9).map(noise).collect();
        let kernel = HostTensor::from_f32(vec![o, c, 1, 3, 3], &kernel).unwrap();
        let u = tile.weight(&kernel).unwrap().to_f32().unwrap();
        let b = HostTensor::from_f32(vec![o], &[0.25, -0.5]).unwrap();
        let ub = tile.bias(&b).unwrap().to_f32().unwrap();
        let bin = tile.input_kernel().unwrap().to_f32().unwrap();
        let aout = tile.output_matrix().unwrap().to_f32().unwrap();
        let d: Vec<f32> = (0..c * a * a).map(|i| noise(i + 1000)).collect();
        let g = kernel.to_f32().unwrap();
        let k2 = a * a;
        // V[k][ci] = sum_{uv} bin[k][uv] d[ci][uv]
        let v: Vec<f64> = (0..k2 * c)
            .map(|kc| {
                let (k, ci) = (kc / c, kc % c);
                (0..a * a).map(|uv| bin[k * a * a + uv] as f64 * d[ci * a * a + uv] as f64).sum()
            })
            .collect();
        for oi in 0..o {
            let mm: Vec<f64> = (0..k2)
                .map(|k| {
                    ub[k * o + oi] as f64
                        + (0..c).map(|ci| u[(k * o + oi) * c + ci] as f64 * v[k * c + ci]).sum::<f64>()
                })
                .collect();
            for p in 0..m {
                for q in 0..m {
                    let y: f64 = (0..k2).map(|k| aout[(p * m + q) * k2 + k] as f64 * mm[k]).sum();
                    let mut direct = [0.25f64, -0.5][oi];
                    for ci in 0..c {
                        for dy in 0..3 {
                            for dx in 0..3 {
                                direct += g[(oi * c + ci) * 9 + dy * 3 + dx] as f64
                                    * d[ci * a * a + (p + dy) * a + (q + dx)] as f64;
                            }
                        }
                    }
                    // f32 rounding of U only (the transforms are exact in f32 for m = 2; for
                    // m = 4 the G entries 1/6, 1/12, 1/24 round too)
                    assert!((y - direct).abs() < 1e-5, "F({m}x{m}) out {oi} pixel ({p}, {q}): {y} vs {direct}");
                }
            }
        }
    }

    #[test]
    fn f2_tiles_equal_the_direct_convolution() {
        check(Tile::F2);
    }

    #[test]
    fn f4_tiles_equal_the_direct_convolution() {
        check(Tile::F4);
    }

    #[test]
    fn column_one_of_the_output_transform_is_all_ones() {
        for tile in [Tile::F2, Tile::F4] {
            let (a, m) = (tile.a(), tile.m());
            for p in 0..m {
                assert_eq!(tile.at()[p * a + 1], 1.0, "F({m}) row {p}");
            }
        }
    }

    #[test]
    fn rejects_kernels_that_are_not_3x3() {
        let k = HostTensor::from_f32(vec![1, 1, 1, 5, 5], &[0.0; 25]).unwrap();
        assert!(Tile::F2.weight(&k).is_err());
        assert!(Tile::F4.bias(&k).is_err());
    }
}
