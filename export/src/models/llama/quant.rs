//! Weight-only block quantization for ONNX Runtime's `com.microsoft` `MatMulNBits`
//! (`Y = A @ dequant(B)^T`, `B` in the PyTorch `[N, K]` layout of `nn.Linear.weight`).
//!
//! Layout (ONNX Runtime contrib op schema, `MatMulNBits`, opset 1): with `n_blocks = ceil(K /
//! block_size)` and `blob = block_size * bits / 8`,
//! - `B` u8 `[N, n_blocks, blob]`: each block's `bits`-bit values packed little end first (4-bit:
//!   element `2j` in the low nibble of byte `j`, `2j + 1` in the high nibble); a short last block is
//!   padded with zero-point values;
//! - `scales` `[N, n_blocks]` in `A`'s dtype;
//! - `zero_points` u8 `[N, ceil(n_blocks * bits / 8)]`, packed like `B` per row.
//!
//! `dequant(q) = (q - zero_point) * scale`. Quantization is asymmetric min/max per block over
//! `[min(x, 0), max(x, 0)]` (the range always holds 0, as ONNX Runtime's own quantizer does):
//! `scale = (max - min) / (2^bits - 1)`, `zero_point = round(-min / scale)`, `q = clamp(round(x /
//! scale) + zero_point)`.

/// Quantized blocks of a `[rows, k]` row-major f32 slice, appended to the three outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockQuant {
    pub bits: u32,
    pub block_size: usize,
}

impl BlockQuant {
    pub fn n_blocks(&self, k: usize) -> usize {
        k.div_ceil(self.block_size)
    }

    pub fn blob_bytes(&self) -> usize {
        self.block_size * self.bits as usize / 8
    }

    /// Bytes of one row's packed zero points.
    pub fn zero_point_bytes(&self, k: usize) -> usize {
        (self.n_blocks(k) * self.bits as usize).div_ceil(8)
    }

    fn qmax(&self) -> f32 {
        ((1u32 << self.bits) - 1) as f32
    }

    /// Quantizes one block: `(scale, zero_point, q values)` into `q` (len `block_size`).
    fn block(&self, x: &[f32], q: &mut [u8]) -> (f32, u8) {
        let qmax = self.qmax();
        let lo = x.iter().copied().fold(0.0f32, f32::min);
        let hi = x.iter().copied().fold(0.0f32, f32::max);
        let mut scale = (hi - lo) / qmax;
        if scale == 0.0 || !scale.is_finite() {
            scale = 1.0;
        }
        let zp = (-lo / scale).round().clamp(0.0, qmax);
        for (i, slot) in q.iter_mut().enumerate() {
            *slot = match x.get(i) {
                Some(&v) => ((v / scale).round() + zp).clamp(0.0, qmax) as u8,
                None => zp as u8,
            };
        }
        (scale, zp as u8)
    }

    /// Quantizes `rows` rows of `k` values each.
    pub fn quantize_rows(
        &self,
        values: &[f32],
        k: usize,
        packed: &mut Vec<u8>,
        scales: &mut Vec<f32>,
        zps: &mut Vec<u8>,
    ) {
        let mut q = vec![0u8; self.block_size];
        let mut row_zps = Vec::with_capacity(self.n_blocks(k));
        for row in values.chunks_exact(k) {
            row_zps.clear();
            for block in row.chunks(self.block_size) {
                let (scale, zp) = self.block(block, &mut q);
                scales.push(scale);
                row_zps.push(zp);
                pack(&q, self.bits, packed);
            }
            pack(&row_zps, self.bits, zps);
        }
    }
}

/// Packs `bits`-bit values (4 or 8) little end first, padding the last byte with zeros.
fn pack(values: &[u8], bits: u32, out: &mut Vec<u8>) {
    match bits {
        8 => out.extend_from_slice(values),
        4 => out.extend(values.chunks(2).map(|p| (p[0] & 0x0F) | (p.get(1).copied().unwrap_or(0) << 4))),
        _ => unreachable!("MatMulNBits bits are validated to 4 or 8"),
    }
}

/// The values `quantize_rows` stores, dequantized (for tests and error reports).
pub fn dequantize_row(q: &BlockQuant, k: usize, packed: &[u8], scales: &[f32], zps: &[u8]) -> Vec<f32> {
    let unpack = |bytes: &[u8], i: usize| -> u8 {
        match q.bits {
            8 => bytes[i],
            _ => (bytes[i / 2] >> (4 * (i % 2))) & 0x0F,
        }
    };
    (0..k)
        .map(|i| {
            let (b, j) = (i / q.block_size, i % q.block_size);
            let v = unpack(&packed[b * q.blob_bytes()..], j) as f32;
            (v - unpack(zps, b) as f32) * scales[b]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_error_is_within_half_a_step() {
        for bits in [4u32, 8] {
            let q = BlockQuant { bits, block_size: 32 };
            let k = 80; // two full blocks and a padded one
            let values: Vec<f32> = (0..2 * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0).collect();
            let (mut packed, mut scales, mut zps) = (vec![], vec![], vec![]);
            q.quantize_rows(&values, k, &mut packed, &mut scales, &mut zps);
            assert_eq!(packed.len(), 2 * q.n_blocks(k) * q.blob_bytes());
            assert_eq!(scales.len(), 2 * 3);
            assert_eq!(zps.len(), 2 * q.zero_point_bytes(k));
            for r in 0..2 {
                let nb = q.n_blocks(k);
                let row = dequantize_row(
                    &q,
                    k,
                    &packed[r * nb * q.blob_bytes()..],
                    &scales[r * nb..],
                    &zps[r * q.zero_point_bytes(k)..],
                );
                for (i, (&a, &b)) in values[r * k..(r + 1) * k].iter().zip(&row).enumerate() {
                    let step = scales[r * nb + i / 32];
                    assert!((a - b).abs() <= 0.5 * step + 1e-6, "bits {bits} row {r} [{i}]: {a} vs {b}");
                }
            }
        }
        let mut out = vec![];
        pack(&[1, 2, 3], 4, &mut out);
        assert_eq!(out, [0x21, 0x03]);
    }
}
