//! DiT training under autocast (`--mixed_precision`) on the tiny official DiT, on the CPU: Burn's
//! ndarray backend has no float16/bfloat16, so the plumbing runs with float64 as the compute
//! dtype (test-only; the CLI offers bf16 and fp16 only). Every parameter gets a float32
//! gradient, gradients and the AdamW update match the float32 run, and the CLI refuses bf16 on
//! the CPU naming the flag, the backend and the dtype.

mod common;

use burn::backend::{Autodiff, NdArray};
use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{DType, FloatDType, Tensor};
use osp_graphs::Approx;
use osp_trainer::checkpoint::{Checkpoint, LoadOptions};
use osp_trainer::models::opensora_v1_3::{OpenSoraT2V_v1_3, OpenSoraT2V_v1_3Config};
use osp_trainer::train::diffusion::DdpmSchedule;
use osp_trainer::train::dit::{DitBatch, DitObjective};
use osp_trainer::train::{official_tensors, AdamWConfig, LrSchedule, LrSchedulerKind, OptimConfig, Rng, Trainer};

type Inner = NdArray<f32>;
type AB = Autodiff<Inner>;

fn trainer(compute: Option<FloatDType>) -> Trainer<AB, OpenSoraT2V_v1_3<AB>> {
    let dir = common::reference_dir().join("parity/dit_tiny");
    let config = OpenSoraT2V_v1_3Config::from_json_file(dir.join("config.json")).expect("tiny config");
    let mut model = config.init::<Inner>(&Default::default()).expect("valid tiny config");
    let ckpt = Checkpoint::open(dir.join("weights.safetensors")).expect("tiny weights");
    model.load_official(&ckpt, LoadOptions::default()).expect("strict load");
    let model = model.with_compute_dtype(compute, &Default::default()).expect("ndarray computes in f64");
    let optim = OptimConfig {
        // AdamW's first update is lr * g / (|g| + epsilon): with the default 1e-8 it is lr * sign(g)
        // even for gradients that are rounding noise (~1e-9: the cross-attention key bias shifts
        // every score of a query alike, so its true gradient is 0), which would compare two
        // random signs. An epsilon above that noise keeps the update a continuous function of g.
        adamw: AdamWConfig { epsilon: 1e-6, ..AdamWConfig::default() },
        lr: LrSchedule::new(LrSchedulerKind::Constant, 1e-4, 0, 0).expect("valid schedule"),
        max_grad_norm: Some(1.0),
        ema: None,
        loss_scale: None,
    };
    Trainer::new(OpenSoraT2V_v1_3::<AB>::from_inner(model), optim, vec![Default::default()]).expect("valid trainer")
}

fn batch() -> DitBatch {
    let mut r = Rng::new(77);
    let lat = burn::tensor::TensorData::new(r.normals(2 * 8 * 2 * 16), [2, 8, 2, 4, 4]);
    let text = burn::tensor::TensorData::new(r.normals(2 * 4 * 32), [2, 1, 4, 32]);
    let mask = burn::tensor::TensorData::new(vec![1.0f32, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0], [2, 1, 4]);
    DitBatch::new(&DdpmSchedule::open_sora_plan_v13(), &mut r, lat, text, mask, 1).expect("valid batch")
}

/// Each parameter's gradient in module order: `(dtype, values)`, `None` where it has none.
fn gradients(model: &OpenSoraT2V_v1_3<AB>, grads: &GradientsParams) -> Vec<Option<(DType, Vec<f32>)>> {
    struct Collect<'a> {
        grads: &'a GradientsParams,
        out: Vec<Option<(DType, Vec<f32>)>>,
    }
    impl ModuleVisitor<AB> for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
            let g = self.grads.get::<Inner, D>(param.id);
            self.out.push(g.map(|g| {
                let dtype = g.dtype();
                (dtype, g.into_data().convert::<f32>().to_vec::<f32>().expect("f32 data"))
            }));
        }
    }
    let mut c = Collect { grads, out: Vec::new() };
    model.visit(&mut c);
    c.out
}

#[test]
fn autocast_step_gives_f32_gradients_for_every_parameter_close_to_the_f32_step() {
    let objective = DitObjective { schedule: DdpmSchedule::open_sora_plan_v13(), snr_gamma: Some(5.0) };
    let loss = |m: &OpenSoraT2V_v1_3<AB>, b: &DitBatch| objective.loss(m, b);
    let micro = [vec![batch()]];
    let mut plain = trainer(None);
    let mut cast = trainer(Some(FloatDType::F64));
    assert_eq!(cast.model.compute_dtype(), Some(FloatDType::F64));

    let names: Vec<String> =
        official_tensors::<Inner, _>(&plain.model.valid()).expect("tensors").into_iter().map(|(n, _)| n).collect();
    assert_eq!(names.len(), 99);
    let (g_plain, l_plain) = plain.gradients(&micro, &loss).expect("f32 gradients");
    let (g_cast, l_cast) = cast.gradients(&micro, &loss).expect("autocast gradients");
    let c = Approx::Approximate.compare(&[l_cast as f32], &[l_plain as f32]);
    assert!(c.ok(), "loss {l_cast} vs {l_plain}: {c}");
    let (g_plain, g_cast) = (gradients(&plain.model, &g_plain), gradients(&cast.model, &g_cast));
    assert_eq!((g_plain.len(), g_cast.len()), (names.len(), names.len()));
    let mut differs = false;
    for ((name, p), c) in names.iter().zip(g_plain).zip(g_cast) {
        let (dtype, c) = c.unwrap_or_else(|| panic!("`{name}` has no gradient under autocast"));
        assert_eq!(dtype, DType::F32, "`{name}`: the gradient of a float32 parameter must be float32");
        let (_, p) = p.unwrap_or_else(|| panic!("`{name}` has no float32 gradient"));
        let cmp = Approx::Close.compare(&c, &p);
        assert!(cmp.ok(), "`{name}` gradient, autocast f64 vs f32: {cmp}");
        differs |= c != p;
    }
    assert!(differs, "autocast gave bit-identical gradients: the compute dtype was not used");

    let before = official_tensors::<Inner, _>(&plain.model.valid()).expect("tensors");
    let s_plain = plain.step(&micro, &loss).expect("f32 step");
    let s_cast = cast.step(&micro, &loss).expect("autocast step");
    assert_eq!((s_plain.step, s_cast.step), (1, 1));
    // parameters stay float32 and move like the float32 run's
    let after_plain = official_tensors::<Inner, _>(&plain.model.valid()).expect("tensors");
    let after_cast = official_tensors::<Inner, _>(&cast.model.valid()).expect("tensors");
    let mut moved = 0;
    for (((name, b), (_, p)), (_, c)) in before.iter().zip(&after_plain).zip(&after_cast) {
        assert_eq!(c.dtype, DType::F32, "`{name}`");
        let (b, p, c) =
            (b.to_vec::<f32>().expect("f32"), p.to_vec::<f32>().expect("f32"), c.to_vec::<f32>().expect("f32"));
        let cmp = Approx::Approximate.compare(&c, &p);
        assert!(cmp.ok(), "`{name}` after one AdamW step, autocast f64 vs f32: {cmp}");
        moved += usize::from(b != c);
    }
    assert_eq!(moved, names.len(), "every parameter is updated");
}

#[test]
fn cli_refuses_half_precision_on_the_cpu() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("run");
    let tiny = common::reference_dir().join("parity");
    for (flag, dtype) in [("bf16", "BF16"), ("fp16", "F16")] {
        let args = [
            "dit",
            "--model_config",
            &common::arg(&tiny.join("dit_tiny/config.json")),
            "--ae_path",
            &common::arg(&tiny.join("wfvae_tiny")),
            "--data",
            &common::arg(&dir.path().join("data.txt")),
            "--output_dir",
            &common::arg(&out),
            "--max_train_steps",
            "1",
            "--mixed_precision",
            flag,
        ];
        let run = std::process::Command::new(env!("CARGO_BIN_EXE_osp-train")).args(args).output().expect("spawn");
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success(), "--mixed_precision {flag} on the CPU must fail");
        for want in [format!("--mixed_precision {flag}"), "ndarray".to_string(), dtype.to_string()] {
            assert!(stderr.contains(&want), "the error should name `{want}`:\n{stderr}");
        }
        // refused before anything is written
        assert!(!out.exists(), "--mixed_precision {flag}: the output folder was created");
    }
}
