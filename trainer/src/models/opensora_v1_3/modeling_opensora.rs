//! `OpenSoraT2V_v1_3`: the text-to-video diffusion transformer (v-prediction of latent video).
//!
//! Upstream: <https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/models/diffusion/opensora_v1_3/modeling_opensora.py#L26-L289>
//!
//! Run: `osp-train forward dit --config config.json --weights diffusion_pytorch_model.safetensors.index.json --inputs in.safetensors --out out.safetensors`

// The derive names the record types after the upstream class (`OpenSoraT2V_v1_3Record`).
#![allow(non_camel_case_types)]

use burn::module::{Module, Param};
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::ada_layer_norm_single::AdaLayerNormSingle;
use super::attn_processor::{Skiparse, MASK_BIAS};
use super::basic_transformer_block::{layer_norm, BasicTransformerBlock, BlockInputs};
use super::config::{Dims, OpenSoraT2V_v1_3Config};
use super::official_shapes::official_shapes;
use super::patch_embed_2d::PatchEmbed2D;
use super::pixart_alpha_text_projection::PixArtAlphaTextProjection;
use super::rope3d::RoPE3D;
use crate::checkpoint::{load_module, Checkpoint, LoadOptions, LoadReport};
use crate::error::{Error, Result};
use crate::models::autocast::{self, ComputeDType};

/// `norm_out` is built with a fixed eps, whatever `norm_eps` says.
const NORM_OUT_EPS: f64 = 1e-6;

/// The v1.3 DiT. Field names are the PyTorch attribute names, so Burn paths are the official
/// diffusers keys (`transformer_blocks.0.attn1.to_q.weight`, `scale_shift_table`, ...).
#[derive(Module, Debug)]
pub struct OpenSoraT2V_v1_3<B: Backend> {
    pub caption_projection: PixArtAlphaTextProjection<B>,
    pub pos_embed: PatchEmbed2D<B>,
    pub transformer_blocks: Vec<BasicTransformerBlock<B>>,
    /// `[2, d]`: rows shift, scale of the output modulation.
    pub scale_shift_table: Param<Tensor<B, 2>>,
    pub proj_out: Linear<B>,
    pub adaln_single: AdaLayerNormSingle<B>,
    #[module(skip)]
    dims: Dims,
    #[module(skip)]
    kinds: Vec<Skiparse>,
    #[module(skip)]
    rope: RoPE3D,
    /// Autocast dtype of the forward pass (a runtime setting, not a parameter; `None`: float32).
    #[module(skip)]
    compute_dtype: ComputeDType,
}

/// The forward pass with what it computed on the way (for parity checks).
#[derive(Debug, Clone)]
pub struct ForwardTrace<B: Backend> {
    /// `[b, c_out, t, h, w]`.
    pub sample: Tensor<B, 5>,
    /// Patch tokens `[b, n, d]`.
    pub pos_embed: Tensor<B, 3>,
    /// adaLN-single modulation `[b, 6 d]`.
    pub timestep: Tensor<B, 2>,
    /// `[b, d]`.
    pub embedded_timestep: Tensor<B, 2>,
    /// `[b, 1, l, d]`.
    pub caption_projection: Tensor<B, 4>,
    /// Output of every block, `[b, n, d]`.
    pub blocks: Vec<Tensor<B, 3>>,
}

impl<B: Backend> OpenSoraT2V_v1_3<B> {
    /// Builds the module tree (use [`OpenSoraT2V_v1_3Config::init`], which validates first).
    pub(crate) fn new(config: &OpenSoraT2V_v1_3Config, dims: Dims, device: &B::Device) -> Self {
        let d = dims.hidden_size;
        let kinds: Vec<Skiparse> = (0..config.num_layers).map(|i| config.attention_kind(i)).collect();
        OpenSoraT2V_v1_3 {
            caption_projection: PixArtAlphaTextProjection::new(dims.caption_channels, d, device),
            pos_embed: PatchEmbed2D::new(dims.patch_size, dims.in_channels, d, device),
            transformer_blocks: kinds.iter().map(|&k| BasicTransformerBlock::new(config, &dims, k, device)).collect(),
            // torch.randn(2, d) / d**0.5
            scale_shift_table: Initializer::Normal { mean: 0.0, std: 1.0 / (d as f64).sqrt() }.init([2, d], device),
            proj_out: LinearConfig::new(d, dims.patch_size_t * dims.patch_size * dims.patch_size * dims.out_channels)
                .init(device),
            adaln_single: AdaLayerNormSingle::new(d, device),
            dims,
            kinds,
            rope: RoPE3D::new([
                config.interpolation_scale_t as f32,
                config.interpolation_scale_h as f32,
                config.interpolation_scale_w as f32,
            ]),
            compute_dtype: None,
        }
    }

    /// Mixed precision: with `Some(dtype)`, linear layers, the patch convolution and the
    /// attention matmuls compute in `dtype` (torch autocast's lower-precision ops) while norms,
    /// softmax, RoPE, timestep sinusoids, modulation, residuals and every parameter stay float32.
    /// `None` (the default) is the float32 forward. Fails if the backend of `device` cannot
    /// compute in `dtype` (Burn's CPU backend has no float16/bfloat16).
    pub fn with_compute_dtype(mut self, dtype: ComputeDType, device: &B::Device) -> Result<Self> {
        if !autocast::supported::<B>(dtype, device) {
            return Err(Error::UnsupportedDType {
                what: "DiT autocast".into(),
                dtype: dtype.map_or_else(|| "F32".to_string(), |d| format!("{d:?}")),
                backend: B::name(device),
            });
        }
        self.compute_dtype = dtype;
        Ok(self)
    }

    /// The autocast dtype of the forward pass (`None`: float32).
    pub fn compute_dtype(&self) -> ComputeDType {
        self.compute_dtype
    }

    /// Sizes of the model.
    pub fn dims(&self) -> Dims {
        self.dims
    }

    /// Attention layout of every block.
    pub fn attention_kinds(&self) -> &[Skiparse] {
        &self.kinds
    }

    /// Every tensor as `(official name, shape)`, in module order, without initialising any
    /// parameter (safe for the 2.7B-parameter release size).
    pub fn official_tensors(&self) -> Vec<(String, Vec<usize>)> {
        official_shapes::<B, _>(self)
    }

    /// Loads official diffusers weights strictly (see [`crate::checkpoint::load_module`]).
    pub fn load_official(&mut self, checkpoint: &Checkpoint, options: LoadOptions) -> Result<LoadReport> {
        load_module(self, checkpoint, &Default::default(), options)
    }

    /// The denoiser: latent video `hidden_states` `[b, c, t, h, w]`, `timestep` `[b]`,
    /// mT5 states `encoder_hidden_states` `[b, 1, l, caption_channels]`, optional 0/1
    /// `attention_mask` `[b, t, h, w]` (latent pixels) and `encoder_attention_mask` `[b, 1, l]`
    /// -> v-prediction `[b, c_out, t, h, w]`. A missing mask means all ones (as the pipeline
    /// passes); upstream itself requires both.
    pub fn forward(
        &self,
        hidden_states: Tensor<B, 5>,
        timestep: Tensor<B, 1>,
        encoder_hidden_states: Tensor<B, 4>,
        attention_mask: Option<Tensor<B, 4>>,
        encoder_attention_mask: Option<Tensor<B, 3>>,
    ) -> Result<Tensor<B, 5>> {
        self.run(hidden_states, timestep, encoder_hidden_states, attention_mask, encoder_attention_mask, false)
            .map(|t| t.sample)
    }

    /// [`Self::forward`], also returning the intermediates.
    pub fn forward_trace(
        &self,
        hidden_states: Tensor<B, 5>,
        timestep: Tensor<B, 1>,
        encoder_hidden_states: Tensor<B, 4>,
        attention_mask: Option<Tensor<B, 4>>,
        encoder_attention_mask: Option<Tensor<B, 3>>,
    ) -> Result<ForwardTrace<B>> {
        self.run(hidden_states, timestep, encoder_hidden_states, attention_mask, encoder_attention_mask, true)
    }

    fn check_inputs(
        &self,
        hidden_states: &Tensor<B, 5>,
        timestep: &Tensor<B, 1>,
        encoder_hidden_states: &Tensor<B, 4>,
        attention_mask: Option<&Tensor<B, 4>>,
        encoder_attention_mask: Option<&Tensor<B, 3>>,
    ) -> Result<()> {
        let dims = &self.dims;
        let [b, c, t, h, w] = hidden_states.dims();
        let p = dims.patch_size;
        if b == 0 || t == 0 || c != dims.in_channels {
            return Err(Error::input(
                "hidden_states",
                format!("must be [b >= 1, {}, t >= 1, h, w], found {:?}", dims.in_channels, hidden_states.dims()),
            ));
        }
        if h == 0 || w == 0 || h % p != 0 || w % p != 0 {
            return Err(Error::input(
                "hidden_states",
                format!("height and width must be positive multiples of patch_size {p}, found {h}x{w}"),
            ));
        }
        if timestep.dims() != [b] {
            return Err(Error::input("timestep", format!("must be [{b}], found {:?}", timestep.dims())));
        }
        let [eb, one, l, dc] = encoder_hidden_states.dims();
        if eb != b || one != 1 || l == 0 || dc != dims.caption_channels {
            return Err(Error::input(
                "encoder_hidden_states",
                format!(
                    "must be [{b}, 1, l >= 1, {}], found {:?}",
                    dims.caption_channels,
                    encoder_hidden_states.dims()
                ),
            ));
        }
        if let Some(mask) = attention_mask {
            if mask.dims() != [b, t, h, w] {
                return Err(Error::input(
                    "attention_mask",
                    format!("must be [{b}, {t}, {h}, {w}], found {:?}", mask.dims()),
                ));
            }
        }
        if let Some(mask) = encoder_attention_mask {
            if mask.dims() != [b, 1, l] {
                return Err(Error::input(
                    "encoder_attention_mask",
                    format!("must be [{b}, 1, {l}], found {:?}", mask.dims()),
                ));
            }
        }
        Ok(())
    }

    /// Video mask `[b, t, h, w]` -> key bias `[b, n]`: max-pool over each patch, then
    /// `(1 - bool) * -10000`.
    fn video_bias(&self, mask: Tensor<B, 4>) -> Tensor<B, 2> {
        let [b, t, h, w] = mask.dims();
        let p = self.dims.patch_size;
        let pooled = mask.reshape([b, t, h / p, p, w / p, p]).max_dim(5).max_dim(3);
        let keep = pooled.not_equal_elem(0.0).float();
        ((keep * -1.0) + 1.0).reshape([b, t * (h / p) * (w / p)]) * MASK_BIAS
    }

    fn run(
        &self,
        hidden_states: Tensor<B, 5>,
        timestep: Tensor<B, 1>,
        encoder_hidden_states: Tensor<B, 4>,
        attention_mask: Option<Tensor<B, 4>>,
        encoder_attention_mask: Option<Tensor<B, 3>>,
        trace: bool,
    ) -> Result<ForwardTrace<B>> {
        self.check_inputs(
            &hidden_states,
            &timestep,
            &encoder_hidden_states,
            attention_mask.as_ref(),
            encoder_attention_mask.as_ref(),
        )?;
        let device = hidden_states.device();
        let [b, _, frame, h, w] = hidden_states.dims();
        let [_, _, l, _] = encoder_hidden_states.dims();
        let p = self.dims.patch_size;
        let (height, width) = (h / p, w / p);
        let n = frame * height * width;
        let d = self.dims.hidden_size;

        let attention_bias = match attention_mask {
            Some(mask) => self.video_bias(mask),
            None => Tensor::zeros([b, n], &device),
        };
        let encoder_attention_bias = match encoder_attention_mask {
            Some(mask) => ((mask * -1.0) + 1.0).reshape([b, l]) * MASK_BIAS,
            None => Tensor::zeros([b, l], &device),
        };

        let compute = self.compute_dtype;
        let pos_embed = self.pos_embed.forward(hidden_states, compute);
        let (timestep, embedded_timestep) = self.adaln_single.forward(timestep, compute);
        let caption_projection = self.caption_projection.forward(encoder_hidden_states, compute);

        let d_head = d / self.transformer_blocks.first().map_or(1, |blk| blk.attn1.heads);
        let inputs = BlockInputs {
            attention_bias,
            encoder_hidden_states: caption_projection.clone().reshape([b, l, d]),
            encoder_attention_bias,
            timestep: timestep.clone().reshape([b, 6, d]),
            rope: self.rope.tables(d_head, frame, height, width, &device),
            compute,
        };
        let mut blocks = Vec::new();
        let mut x = pos_embed.clone();
        for (i, block) in self.transformer_blocks.iter().enumerate() {
            let _span = tracing::trace_span!("dit_block", i).entered();
            x = block.forward(x, &inputs);
            if trace {
                blocks.push(x.clone());
            }
        }

        // shift, scale = (scale_shift_table[None] + embedded_timestep[:, None]).chunk(2, dim=1)
        let modulation =
            self.scale_shift_table.val().unsqueeze_dim::<3>(0) + embedded_timestep.clone().unsqueeze_dim(1);
        let shift = modulation.clone().narrow(1, 0, 1);
        let scale = modulation.narrow(1, 1, 1);
        let x = layer_norm(x, None, NORM_OUT_EPS) * (scale + 1.0) + shift;
        let x = autocast::linear(&self.proj_out, x, compute);
        let sample = self.unpatchify(x, frame, height, width);
        Ok(ForwardTrace { sample, pos_embed, timestep, embedded_timestep, caption_projection, blocks })
    }

    /// `[b, n, pt * p * p * c]` -> `[b, c, t * pt, h * p, w * p]` (einsum `nthwopqc->nctohpwq`).
    /// `pt` is 1 (validated), which keeps every intermediate within rank 6 (the ndarray limit):
    /// `[b, (t h), w, p, q, c]` -> `[b, c, (t h), p, w, q]`.
    fn unpatchify(&self, x: Tensor<B, 3>, frame: usize, height: usize, width: usize) -> Tensor<B, 5> {
        let [b, _, _] = x.dims();
        let (p, c) = (self.dims.patch_size, self.dims.out_channels);
        x.reshape([b, frame * height, width, p, p, c]).permute([0, 5, 1, 3, 2, 4]).reshape([
            b,
            c,
            frame,
            height * p,
            width * p,
        ])
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    use burn::backend::NdArray;
    use burn::tensor::TensorData;
    use osp_graphs::Approx;

    use super::*;

    type B = NdArray<f32>;

    fn fixture_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/reference/parity/dit_tiny")
    }

    fn fixture_io() -> BTreeMap<String, TensorData> {
        crate::io::read_tensors_as_f32(fixture_dir().join("io.safetensors")).expect("fixture io should read")
    }

    fn tiny_model() -> OpenSoraT2V_v1_3<B> {
        let dir = fixture_dir();
        let config = OpenSoraT2V_v1_3Config::from_json_file(dir.join("config.json")).expect("tiny config");
        let mut model = config.init::<B>(&Default::default()).expect("tiny config should be valid");
        let ckpt = Checkpoint::open(dir.join("weights.safetensors")).expect("tiny weights");
        let report = model.load_official(&ckpt, LoadOptions::default()).expect("strict load should pass");
        assert_eq!(report.applied.len(), 99);
        model
    }

    fn tensor<const D: usize>(io: &BTreeMap<String, TensorData>, name: &str) -> Tensor<B, D> {
        crate::io::take_tensor::<B, D>(io, name, &Default::default()).expect("fixture tensor")
    }

    fn assert_close<const D: usize>(name: &str, actual: Tensor<B, D>, expected: &TensorData) {
        assert_eq!(actual.dims().to_vec(), expected.shape.to_vec(), "{name}: shape");
        let a = actual.into_data().to_vec::<f32>().expect("f32 data");
        let e = expected.to_vec::<f32>().expect("f32 data");
        let c = Approx::Approximate.compare(&a, &e);
        eprintln!("{name}: {c}");
        assert!(c.ok(), "{name}: {c}");
    }

    /// `model` on the fixture's video inputs with the video mask `mask` (an input key).
    fn run_video(model: &OpenSoraT2V_v1_3<B>, io: &BTreeMap<String, TensorData>, mask: &str) -> ForwardTrace<B> {
        model
            .forward_trace(
                tensor(io, "input.hidden_states"),
                tensor(io, "input.timestep"),
                tensor(io, "input.encoder_hidden_states"),
                Some(tensor(io, mask)),
                Some(tensor(io, "input.encoder_attention_mask")),
            )
            .expect("forward")
    }

    #[test]
    fn parity_full_mask_with_intermediates() {
        let io = fixture_io();
        let trace = run_video(&tiny_model(), &io, "input.attention_mask");
        assert_close("inter.pos_embed", trace.pos_embed, &io["inter.pos_embed"]);
        assert_close("inter.adaln_single.0", trace.timestep, &io["inter.adaln_single.0"]);
        assert_close("inter.adaln_single.1", trace.embedded_timestep, &io["inter.adaln_single.1"]);
        assert_close("inter.caption_projection", trace.caption_projection, &io["inter.caption_projection"]);
        assert_eq!(trace.blocks.len(), 4);
        for (i, block) in trace.blocks.into_iter().enumerate() {
            // the fixture stores (S, B, D)
            assert_close(
                &format!("inter.block{i}.out_sbd"),
                block.swap_dims(0, 1),
                &io[&format!("inter.block{i}.out_sbd")],
            );
        }
        assert_close("output.sample", trace.sample, &io["output.sample"]);
    }

    #[test]
    fn autocast_runs_the_matmuls_in_the_compute_dtype_and_keeps_f32_results() {
        use burn::tensor::{DType, FloatDType};
        let io = fixture_io();
        let run = |model: &OpenSoraT2V_v1_3<B>| run_video(model, &io, "input.attention_mask_padded");
        let plain = run(&tiny_model());
        let model =
            tiny_model().with_compute_dtype(Some(FloatDType::F64), &Default::default()).expect("ndarray has f64");
        assert_eq!(model.compute_dtype(), Some(FloatDType::F64));
        let cast = run(&model);
        let pairs = [
            ("pos_embed", cast.pos_embed.into_data(), plain.pos_embed.into_data()),
            ("timestep", cast.timestep.into_data(), plain.timestep.into_data()),
            ("caption_projection", cast.caption_projection.into_data(), plain.caption_projection.into_data()),
            ("sample", cast.sample.clone().into_data(), plain.sample.clone().into_data()),
        ];
        let blocks = cast.blocks.into_iter().zip(plain.blocks).map(|(c, p)| ("block", c.into_data(), p.into_data()));
        let mut differs = false;
        for (name, c, p) in pairs.into_iter().chain(blocks) {
            // every activation between autocast ops is float32 again
            assert_eq!(c.dtype, DType::F32, "{name}");
            let (c, p) = (c.to_vec::<f32>().expect("f32 data"), p.to_vec::<f32>().expect("f32 data"));
            let cmp = Approx::Approximate.compare(&c, &p);
            assert!(cmp.ok(), "{name}: autocast f64 vs f32: {cmp}");
            differs |= c != p;
        }
        // the f64 matmuls round differently: the cast path really ran
        assert!(differs, "autocast f64 gave bit-identical results to float32");
        assert_close("output.sample_padded_mask (autocast f64)", cast.sample, &io["output.sample_padded_mask"]);
        let back = model.with_compute_dtype(None, &Default::default()).expect("f32");
        assert_eq!(
            run(&back).sample.into_data().to_vec::<f32>().expect("f32 data"),
            plain.sample.into_data().to_vec::<f32>().expect("f32 data")
        );
    }

    #[test]
    fn half_autocast_is_refused_on_ndarray() {
        use burn::tensor::FloatDType;
        for dtype in [FloatDType::BF16, FloatDType::F16] {
            let err =
                tiny_model().with_compute_dtype(Some(dtype), &Default::default()).expect_err("no half on ndarray");
            let msg = err.to_string();
            assert!(matches!(err, Error::UnsupportedDType { .. }), "{msg}");
            assert!(msg.contains("ndarray") && msg.contains(&format!("{dtype:?}")), "{msg}");
        }
    }

    #[test]
    fn parity_padded_video_mask() {
        let io = fixture_io();
        let sample = run_video(&tiny_model(), &io, "input.attention_mask_padded").sample;
        assert_close("output.sample_padded_mask", sample, &io["output.sample_padded_mask"]);
    }

    #[test]
    fn parity_image_input_and_missing_mask_means_ones() {
        let model = tiny_model();
        let io = fixture_io();
        let x: Tensor<B, 5> = tensor(&io, "input.hidden_states_image");
        let [b, _, t, h, w] = x.dims();
        let run = |mask: Option<Tensor<B, 4>>| {
            model
                .forward(
                    x.clone(),
                    tensor(&io, "input.timestep_image"),
                    tensor(&io, "input.encoder_hidden_states"),
                    mask,
                    Some(tensor(&io, "input.encoder_attention_mask")),
                )
                .expect("forward")
        };
        let with_ones = run(Some(Tensor::ones([b, t, h, w], &Default::default())));
        assert_close("output.sample_image", with_ones.clone(), &io["output.sample_image"]);
        let without = run(None).into_data().to_vec::<f32>().expect("f32 data");
        let c = Approx::Exact.compare(&without, &with_ones.into_data().to_vec::<f32>().expect("f32 data"));
        assert!(c.ok(), "no mask vs ones: {c}");
    }

    #[test]
    fn parity_cfg_guided_sample() {
        let model = tiny_model();
        let io = fixture_io();
        let device = Default::default();
        let x: Tensor<B, 5> = tensor(&io, "input.hidden_states");
        let x0 = x.narrow(0, 0, 1);
        let x_cfg = Tensor::cat(vec![x0.clone(), x0], 0);
        let t = Tensor::<B, 1>::from_data(TensorData::new(vec![999.0f32, 999.0], [2]), &device);
        let [_, _, frames, h, w] = x_cfg.dims();
        let out = model
            .forward(
                x_cfg,
                t,
                tensor(&io, "input.encoder_hidden_states"),
                Some(Tensor::ones([2, frames, h, w], &device)),
                Some(tensor(&io, "input.encoder_attention_mask")),
            )
            .expect("forward");
        let uncond = out.clone().narrow(0, 0, 1);
        let cond = out.narrow(0, 1, 1);
        let guided = uncond.clone() + (cond - uncond) * 7.5;
        assert_close("output.cfg_guided_7p5_sample0", guided, &io["output.cfg_guided_7p5_sample0"]);
    }

    #[test]
    fn release_preset_names_and_shapes_match_the_manifest() {
        #[derive(serde::Deserialize)]
        struct Manifest {
            tensors: Vec<Entry>,
            layer_attention_kinds: Vec<Kind>,
        }
        #[derive(serde::Deserialize)]
        struct Entry {
            name: String,
            shape: Vec<usize>,
        }
        #[derive(serde::Deserialize)]
        struct Kind {
            layer: usize,
            skiparse: String,
        }
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/reference/manifests/opensora_t2v_v1_3_2b.json");
        let text = std::fs::read_to_string(&path).expect("manifest should read");
        let manifest: Manifest = serde_json::from_str(&text).expect("manifest should parse");
        // Parameters are lazy: nothing of the 2.7B parameters is allocated here.
        let model = OpenSoraT2V_v1_3Config::v1_3_2b_122().init::<B>(&Default::default()).expect("release config");
        let ours: BTreeMap<String, Vec<usize>> = model.official_tensors().into_iter().collect();
        let theirs: BTreeMap<String, Vec<usize>> = manifest.tensors.into_iter().map(|e| (e.name, e.shape)).collect();
        assert_eq!(theirs.len(), 687);
        assert_eq!(ours, theirs);
        assert_eq!(ours.values().map(|s| s.iter().product::<usize>()).sum::<usize>(), 2_771_981_600);
        for kind in manifest.layer_attention_kinds {
            let want = match kind.skiparse.as_str() {
                "full" => Skiparse::Full,
                "single" => Skiparse::Single(4),
                "group" => Skiparse::Group(4),
                other => panic!("unknown kind {other}"),
            };
            assert_eq!(model.attention_kinds()[kind.layer], want, "layer {}", kind.layer);
        }
    }

    #[test]
    fn lazy_names_equal_the_loading_path() {
        use burn::store::ModuleSnapshot;
        let config = OpenSoraT2V_v1_3Config {
            num_layers: 3,
            norm_elementwise_affine: true,
            ..OpenSoraT2V_v1_3Config::from_json_file(fixture_dir().join("config.json")).expect("tiny config")
        };
        let model = config.init::<B>(&Default::default()).expect("config");
        let lazy = model.official_tensors();
        let collected: Vec<(String, Vec<usize>)> = model
            .collect(None, Some(crate::remap::burn_to_official()), crate::remap::SKIP_ENUM_VARIANTS)
            .into_iter()
            .map(|s| (s.full_path(), s.shape.to_vec()))
            .collect();
        assert_eq!(lazy, collected);
        assert!(lazy.iter().any(|(n, _)| n == "transformer_blocks.2.norm2.weight"));
    }

    #[test]
    fn strict_loading_reports_missing_unexpected_and_wrong_shape() {
        let dir = fixture_dir();
        let config = OpenSoraT2V_v1_3Config::from_json_file(dir.join("config.json")).expect("tiny config");
        let fresh = || config.init::<B>(&Default::default()).expect("config");
        let ckpt = || Checkpoint::open(dir.join("weights.safetensors")).expect("tiny weights");

        let mut missing = ckpt();
        missing.remove("transformer_blocks.3.ff.net.2.bias");
        match fresh().load_official(&missing, LoadOptions::default()) {
            Err(Error::MissingTensor { path }) => {
                assert_eq!(path, "transformer_blocks.3.ff.net.2.bias")
            }
            other => panic!("expected MissingTensor, got {other:?}"),
        }

        let mut unexpected = ckpt();
        let extra = unexpected.get("scale_shift_table").expect("present").clone();
        unexpected.insert("norm_out.weight", extra);
        match fresh().load_official(&unexpected, LoadOptions::default()) {
            Err(Error::UnexpectedTensor { path }) => assert_eq!(path, "norm_out.weight"),
            other => panic!("expected UnexpectedTensor, got {other:?}"),
        }

        let mut wrong = ckpt();
        let other = wrong.get("transformer_blocks.0.scale_shift_table").expect("present").clone();
        wrong.insert("scale_shift_table", other);
        match fresh().load_official(&wrong, LoadOptions::default()) {
            Err(Error::ShapeMismatch { path, expected, found }) => {
                assert_eq!(path, "scale_shift_table");
                assert_eq!((expected, found), (vec![2, 48], vec![6, 48]));
            }
            other => panic!("expected ShapeMismatch, got {other:?}"),
        }

        let partial = fresh().load_official(&missing, LoadOptions { allow_partial: true }).expect("partial load");
        assert_eq!(partial.missing, vec!["transformer_blocks.3.ff.net.2.bias".to_string()]);
    }

    #[test]
    fn sharded_checkpoint_loads_like_the_single_file() {
        let dir = fixture_dir();
        let tmp = std::env::temp_dir().join(format!("osp-dit-shards-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).expect("temp dir");
        let bytes = std::fs::read(dir.join("weights.safetensors")).expect("weights");
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
        let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
        names.sort();
        let mut weight_map = BTreeMap::new();
        for (i, part) in names.chunks(names.len().div_ceil(2)).enumerate() {
            let file = format!("diffusion_pytorch_model-{:05}-of-00002.safetensors", i + 1);
            let views: Vec<(String, safetensors::tensor::TensorView)> =
                part.iter().map(|n| (n.clone(), st.tensor(n).expect("tensor"))).collect();
            safetensors::serialize_to_file(views, None, &tmp.join(&file)).expect("write shard");
            for n in part {
                weight_map.insert(n.clone(), file.clone());
            }
        }
        let index = tmp.join("diffusion_pytorch_model.safetensors.index.json");
        let json = serde_json::json!({ "metadata": { "total_size": 0 }, "weight_map": weight_map });
        std::fs::write(&index, json.to_string()).expect("write index");

        let config = OpenSoraT2V_v1_3Config::from_json_file(dir.join("config.json")).expect("tiny config");
        let mut model = config.init::<B>(&Default::default()).expect("config");
        let report =
            model.load_official(&Checkpoint::open(&index).expect("sharded"), LoadOptions::default()).expect("load");
        assert_eq!(report.applied.len(), 99);
        let io = fixture_io();
        let sample = model
            .forward(
                tensor(&io, "input.hidden_states"),
                tensor(&io, "input.timestep"),
                tensor(&io, "input.encoder_hidden_states"),
                Some(tensor(&io, "input.attention_mask")),
                Some(tensor(&io, "input.encoder_attention_mask")),
            )
            .expect("forward");
        std::fs::remove_dir_all(&tmp).expect("cleanup");
        assert_close("output.sample (sharded)", sample, &io["output.sample"]);
    }

    #[test]
    fn bad_inputs_are_typed_errors() {
        let config = OpenSoraT2V_v1_3Config::from_json_file(fixture_dir().join("config.json")).expect("tiny config");
        let model = config.init::<B>(&Default::default()).expect("config");
        let device = Default::default();
        let t = Tensor::<B, 1>::zeros([1], &device);
        let enc = Tensor::<B, 4>::zeros([1, 1, 4, 32], &device);
        let err = model.forward(Tensor::zeros([1, 8, 1, 9, 8], &device), t.clone(), enc.clone(), None, None);
        assert!(matches!(err, Err(Error::InvalidInput { ref name, .. }) if name == "hidden_states"), "{err:?}");
        let err =
            model.forward(Tensor::zeros([1, 8, 1, 8, 8], &device), t.clone(), enc.clone().narrow(3, 0, 16), None, None);
        assert!(matches!(err, Err(Error::InvalidInput { ref name, .. }) if name == "encoder_hidden_states"), "{err:?}");
        let err = model.forward(
            Tensor::zeros([1, 8, 1, 8, 8], &device),
            t,
            enc,
            Some(Tensor::ones([1, 2, 8, 8], &device)),
            None,
        );
        assert!(matches!(err, Err(Error::InvalidInput { ref name, .. }) if name == "attention_mask"), "{err:?}");
    }
}
