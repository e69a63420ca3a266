//! Composite helpers named like PyTorch layers (`nn.Linear`, `nn.LayerNorm`, RMSNorm, GELU(tanh), SiLU).
//!
//! `linear` keeps the weight in PyTorch layout `[out, in]` under its PyTorch key and never stores a
//! transposed copy: 2-D inputs use `Gemm(transB = 1)` (no transpose anywhere); N-D inputs use
//! `MatMul(x, Transpose(W))`, whose `Transpose` of an initializer is constant-folded by ONNX Runtime
//! (basic graph optimizations) and by tract (declutter), so neither transposes at run time. (N-D
//! inputs reshaped to 2-D for a `Gemm` with the bias would save the bias `Add`, but tract 0.23.9
//! mistypes an f16 `Gemm`'s output as f32.)

use osp_graphs::DType;

use super::{Attr, GraphBuilder, Value};
use crate::error::{Error, Result};
use crate::options::Lowering;
use crate::tensor::HostTensor;

impl GraphBuilder {
    /// `nn.Linear`: `x @ weight^T + bias`, `x` `[.., in]`, `weight` `[out, in]`, `bias` `[out]`.
    pub fn linear(&mut self, x: &Value, weight: &Value, bias: Option<&Value>) -> Result<Value> {
        if weight.rank() != Some(2) {
            return Err(Error::builder("linear", format!("weight `{}` must be 2-D [out, in]", weight.name())));
        }
        if x.rank() == Some(2) {
            return self.gemm(x, weight, bias, false, true);
        }
        let wt = self.transpose(weight, &[1, 0])?;
        let y = self.matmul(x, &wt)?;
        match bias {
            Some(b) => self.add(&y, b),
            None => Ok(y),
        }
    }

    /// `nn.LayerNorm` over the last axis with affine `weight`/`bias`.
    pub fn layer_norm(&mut self, x: &Value, weight: &Value, bias: &Value, eps: f64) -> Result<Value> {
        self.layer_normalization(x, weight, Some(bias), eps)
    }

    /// `nn.LayerNorm(elementwise_affine = False)` over the last axis of size `dim`.
    pub fn layer_norm_no_affine(&mut self, x: &Value, dim: usize, eps: f64) -> Result<Value> {
        let ones = HostTensor::from_f32(vec![dim], &vec![1.0; dim])?.cast_float(x.dtype())?;
        let scale = self.constant(&ones);
        self.layer_normalization(x, &scale, None, eps)
    }

    /// RMSNorm (T5 `T5LayerNorm`): `x * 1/sqrt(mean(x^2, -1) + eps) * weight`, computed in f32
    /// (the nodes are marked keep-f32), the result cast back to `x`'s dtype.
    pub fn rms_norm(&mut self, x: &Value, weight: &Value, eps: f64) -> Result<Value> {
        let out_dtype = x.dtype();
        let y = self.in_f32(|b| {
            let xf = if x.dtype() == DType::F32 { x.clone() } else { b.cast(x, DType::F32) };
            let wf = if weight.dtype() == DType::F32 { weight.clone() } else { b.cast(weight, DType::F32) };
            let sq = b.mul(&xf, &xf)?;
            let mean = b.reduce_mean(&sq, &[-1], true)?;
            let eps = b.scalar(eps, DType::F32)?;
            let var = b.add(&mean, &eps)?;
            let std = b.sqrt(&var)?;
            let inv = b.reciprocal(&std)?;
            let normed = b.mul(&xf, &inv)?;
            b.mul(&normed, &wf)
        })?;
        Ok(if out_dtype == DType::F32 { y } else { self.cast(&y, out_dtype) })
    }

    /// GELU, tanh approximation, decomposed so every backend runs it:
    /// `0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))`.
    /// In the `Fast` [`Lowering`] this is one ONNX `Gelu` (opset 20, `approximate = "tanh"`, the
    /// same formula), kept in f32 (ONNX Runtime's CPU kernel is f32 only).
    pub fn gelu_tanh(&mut self, x: &Value) -> Result<Value> {
        if self.lowering() == Lowering::Fast {
            let out_dtype = x.dtype();
            let y = self.in_f32(|b| {
                let xf = if x.dtype() == DType::F32 { x.clone() } else { b.cast(x, DType::F32) };
                Ok(b.node(
                    "Gelu",
                    "",
                    &[Some(&xf)],
                    vec![("approximate", Attr::String("tanh".into()))],
                    &[(DType::F32, xf.rank())],
                )
                .remove(0))
            })?;
            return Ok(if out_dtype == DType::F32 { y } else { self.cast(&y, out_dtype) });
        }
        let c = self.scalar_like((2.0 / std::f64::consts::PI).sqrt(), x)?;
        let k = self.scalar_like(0.044715, x)?;
        let half = self.scalar_like(0.5, x)?;
        let one = self.scalar_like(1.0, x)?;
        let x2 = self.mul(x, x)?;
        let x3 = self.mul(&x2, x)?;
        let kx3 = self.mul(&k, &x3)?;
        let inner = self.add(x, &kx3)?;
        let scaled = self.mul(&c, &inner)?;
        let t = self.tanh(&scaled)?;
        let onep = self.add(&one, &t)?;
        let hx = self.mul(&half, x)?;
        self.mul(&hx, &onep)
    }

    /// SiLU: `x * sigmoid(x)`.
    pub fn silu(&mut self, x: &Value) -> Result<Value> {
        let s = self.sigmoid(x)?;
        self.mul(x, &s)
    }
}
