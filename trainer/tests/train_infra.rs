//! The generic training infrastructure on the tiny official DiT (`../shared/reference/parity/
//! dit_tiny`, random weights): resume equals an uninterrupted run, data-parallel replicas (summed
//! through Burn's collective, several trainers at once) equal one device with the whole batch,
//! gradient accumulation equals the whole batch, checkpoints load through the strict official-name
//! loader, gradient checkpointing changes nothing, and the loss falls on a fixed batch.

mod common;

use std::collections::BTreeMap;

use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
use burn::backend::{Autodiff, NdArray};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::TensorData;
use osp_graphs::Approx;
use osp_trainer::checkpoint::{Checkpoint, LoadOptions};
use osp_trainer::models::opensora_v1_3::{OpenSoraT2V_v1_3, OpenSoraT2V_v1_3Config};
use osp_trainer::train::diffusion::DdpmSchedule;
use osp_trainer::train::dit::{DitBatch, DitObjective};
use osp_trainer::train::{
    official_tensors, AdamWConfig, EmaConfig, LossScaleConfig, LrSchedule, LrSchedulerKind, OptimConfig, Rng, Trainer,
    WeightsLayout,
};

type Inner = NdArray<f32>;
type AB = Autodiff<Inner>;

const WEIGHTS: &str = "diffusion_pytorch_model.safetensors";

fn tiny_inner() -> OpenSoraT2V_v1_3<Inner> {
    let dir = common::reference_dir().join("parity/dit_tiny");
    let config = OpenSoraT2V_v1_3Config::from_json_file(dir.join("config.json")).expect("tiny config");
    let mut model = config.init::<Inner>(&Default::default()).expect("valid tiny config");
    let ckpt = Checkpoint::open(dir.join("weights.safetensors")).expect("tiny weights");
    model.load_official(&ckpt, LoadOptions::default()).expect("strict load");
    model
}

fn optim_config(ema: bool) -> OptimConfig {
    OptimConfig {
        adamw: AdamWConfig::default(),
        lr: LrSchedule::new(LrSchedulerKind::ConstantWithWarmup, 1e-3, 2, 0).expect("valid schedule"),
        max_grad_norm: Some(1.0),
        ema: ema.then(|| EmaConfig { decay: 0.99, ..Default::default() }),
        loss_scale: None,
    }
}

fn trainer<B: AutodiffBackend<InnerBackend = Inner>>(replicas: usize, ema: bool) -> Trainer<B, OpenSoraT2V_v1_3<B>> {
    let model = OpenSoraT2V_v1_3::<B>::from_inner(tiny_inner());
    Trainer::new(model, optim_config(ema), vec![Default::default(); replicas]).expect("valid trainer")
}

fn layout() -> WeightsLayout {
    WeightsLayout { file: WEIGHTS.into(), config: None, fixed: Default::default() }
}

/// The data of item `index` (fixed by the index, like a data set): latents, text and mask.
fn data(index: u64, batch: usize) -> (TensorData, TensorData, TensorData) {
    let mut r = Rng::new(1000 + index);
    let lat = TensorData::new(r.normals(batch * 8 * 16), [batch, 8, 1, 4, 4]);
    let text = TensorData::new(r.normals(batch * 4 * 32), [batch, 1, 4, 32]);
    let mut mask = vec![1.0f32; batch * 4];
    mask[3] = 0.0;
    (lat, text, TensorData::new(mask, [batch, 1, 4]))
}

fn batch(rng: &mut Rng, index: u64, size: usize) -> DitBatch {
    let (l, t, m) = data(index, size);
    DitBatch::new(&DdpmSchedule::open_sora_plan_v13(), rng, l, t, m, 1).expect("valid batch")
}

fn objective() -> DitObjective {
    DitObjective { schedule: DdpmSchedule::open_sora_plan_v13(), snr_gamma: Some(5.0) }
}

fn loss_fn<B: AutodiffBackend>(
) -> impl Fn(&OpenSoraT2V_v1_3<B>, &DitBatch) -> osp_trainer::Result<burn::tensor::Tensor<B, 1>> + Sync {
    let objective = objective();
    move |m, b| objective.loss(m, b)
}

fn weights<B: AutodiffBackend<InnerBackend = Inner>>(
    t: &Trainer<B, OpenSoraT2V_v1_3<B>>,
) -> BTreeMap<String, Vec<f32>> {
    let mut out: BTreeMap<String, Vec<f32>> = official_tensors::<Inner, _>(&t.model.valid())
        .expect("tensors")
        .into_iter()
        .map(|(n, d)| (n, d.to_vec::<f32>().expect("f32")))
        .collect();
    if let Some(ema) = &t.ema {
        for (n, d) in official_tensors::<Inner, _>(&ema.module).expect("ema tensors") {
            out.insert(format!("ema.{n}"), d.to_vec::<f32>().expect("f32"));
        }
    }
    out
}

fn assert_all(a: &BTreeMap<String, Vec<f32>>, b: &BTreeMap<String, Vec<f32>>, level: Approx, what: &str) {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>(), "{what}: names");
    for (name, x) in a {
        let c = level.compare(x, &b[name]);
        assert!(c.ok(), "{what}: `{name}`: {c}");
    }
}

#[test]
fn resume_continues_exactly_like_an_uninterrupted_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    let loss = loss_fn::<AB>();
    let steps = 6;

    let mut straight = trainer::<AB>(1, true);
    let mut rng = Rng::new(42);
    for i in 0..steps {
        let b = batch(&mut rng, i, 2);
        straight.step(&[vec![b]], &loss).expect("step");
    }

    let mut first = trainer::<AB>(1, true);
    let mut rng = Rng::new(42);
    for i in 0..steps / 2 {
        let b = batch(&mut rng, i, 2);
        first.step(&[vec![b]], &loss).expect("step");
    }
    let position = serde_json::json!({ "next_index": steps / 2 });
    first.save(dir.path(), &layout(), &rng, position, serde_json::json!({}), Some(2)).expect("save");
    drop(first);

    let mut resumed = trainer::<AB>(1, true);
    let ckpt = osp_trainer::train::resolve_resume(dir.path(), "latest", &layout().checkpoint_files())
        .expect("resolve")
        .expect("a checkpoint");
    let state = resumed.resume(&ckpt, &layout()).expect("resume");
    assert_eq!(state.step, steps as usize / 2);
    assert_eq!(state.data_position["next_index"], steps / 2);
    let mut rng = state.rng;
    for i in steps / 2..steps {
        let b = batch(&mut rng, i, 2);
        resumed.step(&[vec![b]], &loss).expect("step");
    }
    assert_eq!(resumed.step, straight.step);
    let initial = weights(&trainer::<AB>(1, true));
    let moved = weights(&straight);
    assert!(initial.iter().any(|(n, v)| *v != moved[n]), "training should change the weights");
    assert_all(&weights(&resumed), &weights(&straight), Approx::Exact, "resumed vs straight");
}

#[test]
fn two_replicas_and_accumulation_equal_one_device_with_the_whole_batch() {
    let loss = loss_fn::<AB>();
    let whole = batch(&mut Rng::new(5), 0, 2);
    let shards = whole.shards(2).expect("two shards");

    let mut one = trainer::<AB>(1, false);
    let (g_one, l_one) = one.gradients(&[vec![whole.clone()]], &loss).expect("grads");
    let mut dp = trainer::<AB>(2, false);
    let (g_dp, l_dp) = dp.gradients(std::slice::from_ref(&shards), &loss).expect("grads");
    let mut acc = trainer::<AB>(1, false);
    let (g_acc, l_acc) = acc.gradients(&[vec![shards[0].clone()], vec![shards[1].clone()]], &loss).expect("grads");
    assert!(Approx::Close.compare(&[l_dp as f32], &[l_one as f32]).ok(), "loss {l_dp} vs {l_one}");
    assert!(Approx::Close.compare(&[l_acc as f32], &[l_one as f32]).ok(), "loss {l_acc} vs {l_one}");

    let norm = |t: &Trainer<AB, _>, g: &burn::optim::GradientsParams| {
        osp_trainer::train::grads::global_norm::<AB, _>(&t.model, g) as f32
    };
    let n_one = norm(&one, &g_one);
    assert!(n_one > 0.0);
    assert!(Approx::Close.compare(&[norm(&dp, &g_dp)], &[n_one]).ok());
    assert!(Approx::Close.compare(&[norm(&acc, &g_acc)], &[n_one]).ok());

    one.step(&[vec![whole]], &loss).expect("step");
    dp.step(std::slice::from_ref(&shards), &loss).expect("step");
    acc.step(&[vec![shards[0].clone()], vec![shards[1].clone()]], &loss).expect("step");
    assert_all(&weights(&dp), &weights(&one), Approx::Close, "2 replicas vs 1 device");
    assert_all(&weights(&acc), &weights(&one), Approx::Close, "2 accumulation steps vs 1 device");
}

/// Several data-parallel trainers at once in one process share Burn's per-backend collective
/// server: each must still reduce only its own replicas, step after step, with clipping and EMA.
#[test]
fn parallel_data_parallel_trainers_each_match_one_device_over_several_steps() {
    let loss = loss_fn::<AB>();
    let mut rng = Rng::new(11);
    let batches: Vec<DitBatch> = (0..3).map(|i| batch(&mut rng, i, 4)).collect();
    let mut one = trainer::<AB>(1, true);
    for b in &batches {
        one.step(&[vec![b.clone()]], &loss).expect("step");
    }
    let expected = weights(&one);
    let initial = weights(&trainer::<AB>(1, true));
    assert!(initial.iter().any(|(n, v)| *v != expected[n]), "training should change the weights");
    let runs: Vec<BTreeMap<String, Vec<f32>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = [2, 4, 2]
            .into_iter()
            .map(|replicas| {
                let (batches, expected, loss) = (&batches, &expected, &loss);
                scope.spawn(move || {
                    let mut dp = trainer::<AB>(replicas, true);
                    for b in batches {
                        dp.step(&[b.shards(replicas).expect("equal shards")], loss).expect("step");
                    }
                    let all = weights(&dp);
                    let mut actual = all.clone();
                    let mut expected = expected.clone();
                    // Attention key biases have an exactly zero gradient (adding `b` to every key
                    // adds `q.b` to all logits of a query, which softmax ignores): their gradients
                    // are rounding noise that AdamW normalises into full learning-rate steps.
                    for w in [&mut actual, &mut expected] {
                        w.retain(|name, _| !name.ends_with("to_k.bias"));
                    }
                    assert_all(&actual, &expected, Approx::Close, &format!("{replicas} replicas vs 1 device"));
                    all
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("data-parallel run")).collect()
    });
    // Two replicas sum in a fixed order: equal runs are bit-identical, key biases included.
    assert_all(&runs[0], &runs[2], Approx::Exact, "2 replicas, run twice");
}

#[test]
fn checkpoints_load_through_the_strict_official_loader() {
    let dir = tempfile::tempdir().expect("temp dir");
    let loss = loss_fn::<AB>();
    let mut t = trainer::<AB>(1, true);
    let mut rng = Rng::new(1);
    for i in 0..2 {
        let b = batch(&mut rng, i, 2);
        t.step(&[vec![b]], &loss).expect("step");
    }
    let mut saved = Vec::new();
    for _ in 0..3 {
        let b = batch(&mut rng, 9, 2);
        t.step(&[vec![b]], &loss).expect("step");
        saved.push(
            t.save(dir.path(), &layout(), &rng, serde_json::json!(null), serde_json::json!({}), Some(2)).expect("save"),
        );
    }
    let left: Vec<usize> = osp_trainer::train::checkpoint::list_checkpoints(dir.path())
        .expect("list")
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(left, vec![4, 5], "--checkpoints_total_limit 2 keeps the newest two");
    let last = saved.last().expect("saved");
    let names: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").map(|e| e.expect("entry").file_name()).collect();
    assert!(
        names.iter().all(|n| !n.to_string_lossy().contains(".tmp") && !osp_fs::is_temporary(n)),
        "no temporary folder left: {names:?}"
    );

    let ours = weights(&t);
    for (sub, prefix) in [("model", ""), ("model_ema", "ema.")] {
        let ckpt = Checkpoint::open(last.join(sub).join(WEIGHTS)).expect("open");
        let mut fresh = tiny_inner();
        let report = fresh.load_official(&ckpt, LoadOptions::default()).expect("strict load");
        assert_eq!(report.applied.len(), 99);
        for (name, data) in official_tensors::<Inner, _>(&fresh).expect("tensors") {
            assert_eq!(data.to_vec::<f32>().expect("f32"), ours[&format!("{prefix}{name}")], "{sub}: `{name}`");
        }
    }
}

#[test]
fn gradient_checkpointing_gives_the_same_gradients() {
    type Ck = Autodiff<Inner, BalancedCheckpointing>;
    let b = batch(&mut Rng::new(8), 0, 2);
    let plain = trainer::<AB>(1, false);
    let (g1, l1) = plain.gradients(&[vec![b.clone()]], &loss_fn::<AB>()).expect("grads");
    let ck = trainer::<Ck>(1, false);
    let (g2, l2) = ck.gradients(&[vec![b]], &loss_fn::<Ck>()).expect("grads");
    assert_eq!(l1, l2);
    let n1 = osp_trainer::train::grads::global_norm::<AB, _>(&plain.model, &g1) as f32;
    let n2 = osp_trainer::train::grads::global_norm::<Ck, _>(&ck.model, &g2) as f32;
    assert!(Approx::Close.compare(&[n2], &[n1]).ok(), "{n2} vs {n1}");
}

#[test]
fn loss_falls_on_a_fixed_batch() {
    let loss = loss_fn::<AB>();
    let mut t = trainer::<AB>(1, false);
    t.config.lr = LrSchedule::new(LrSchedulerKind::Constant, 3e-3, 0, 0).expect("valid");
    // One fixed batch with fixed noise and timesteps: the loss must go down.
    let fixed = batch(&mut Rng::new(3), 0, 2);
    let first = t.step(&[vec![fixed.clone()]], &loss).expect("step").loss;
    let mut last = first;
    for _ in 0..30 {
        last = t.step(&[vec![fixed.clone()]], &loss).expect("step").loss;
    }
    assert!(last < 0.5 * first, "loss should at least halve in 31 steps: {first} -> {last}");
}

fn scaled_trainer(growth_interval: usize) -> Trainer<AB, OpenSoraT2V_v1_3<AB>> {
    let mut config = optim_config(false);
    config.loss_scale = Some(LossScaleConfig { growth_interval, ..Default::default() });
    Trainer::new(OpenSoraT2V_v1_3::<AB>::from_inner(tiny_inner()), config, vec![Default::default()])
        .expect("valid trainer")
}

/// Dynamic loss scaling (torch's GradScaler, on for `--mixed_precision fp16`) scales by powers of
/// two, so without overflow it changes no bit of the training: the same weights after every
/// update as an unscaled run, the scale growing after `growth_interval` clean updates, and the
/// scaler's state surviving a checkpoint.
#[test]
fn loss_scaling_without_overflow_trains_bit_identically_and_resumes() {
    let loss = loss_fn::<AB>();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut plain = trainer::<AB>(1, false);
    let mut scaled = scaled_trainer(2);
    let mut rng_a = Rng::new(7);
    let mut rng_b = Rng::new(7);
    let mut scales = Vec::new();
    for i in 0..3 {
        let a = plain.step(&[vec![batch(&mut rng_a, i, 2)]], &loss).expect("step");
        let b = scaled.step(&[vec![batch(&mut rng_b, i, 2)]], &loss).expect("step");
        assert_eq!((a.loss, a.lr, a.grad_norm), (b.loss, b.lr, b.grad_norm), "update {}", i + 1);
        assert!(!b.skipped);
        scales.push(b.loss_scale.expect("a scaled run reports its scale"));
    }
    assert_eq!(scales, [65536.0, 65536.0, 131072.0], "the scale doubles after 2 clean updates");
    assert_all(&weights(&scaled), &weights(&plain), Approx::Exact, "scaled vs unscaled");

    scaled.save(dir.path(), &layout(), &rng_b, serde_json::json!({}), serde_json::json!({}), None).expect("save");
    let mut resumed = scaled_trainer(2);
    let ckpt = osp_trainer::train::resolve_resume(dir.path(), "latest", &layout().checkpoint_files())
        .expect("resolve")
        .expect("a checkpoint");
    let state = resumed.resume(&ckpt, &layout()).expect("resume");
    assert_eq!(resumed.loss_scale, scaled.loss_scale, "the scaler's state is restored");
    let mut rng_c = state.rng;
    let b = scaled.step(&[vec![batch(&mut rng_b, 3, 2)]], &loss).expect("step");
    let c = resumed.step(&[vec![batch(&mut rng_c, 3, 2)]], &loss).expect("step");
    assert_eq!((b.loss_scale, b.lr), (c.loss_scale, c.lr));
    assert_eq!(b.loss_scale, Some(131072.0));
    assert_eq!(scaled.loss_scale.map(|s| s.scale), Some(262144.0), "4 clean updates: grown twice");
    assert_all(&weights(&resumed), &weights(&scaled), Approx::Exact, "resumed vs straight under loss scaling");
}

/// An update whose scaled gradients overflow is skipped: the weights, AdamW and the learning-rate
/// schedule stay where they were and the scale halves; training then goes on exactly as if that
/// batch had never come.
#[test]
fn an_overflowing_update_is_skipped_and_the_scale_backs_off() {
    let objective = objective();
    // `true` marks a batch whose loss is multiplied by 1e38: finite (the loss check passes), but
    // times the 2^16 scale it is infinite, and so are its gradients.
    let loss = move |m: &OpenSoraT2V_v1_3<AB>, (b, overflow): &(DitBatch, bool)| {
        let l = objective.loss(m, b)?;
        Ok(if *overflow { l.mul_scalar(1e38) } else { l })
    };
    let mut clean = scaled_trainer(2000);
    let mut hit = scaled_trainer(2000);
    let mut rng_a = Rng::new(9);
    let mut rng_b = Rng::new(9);
    clean.step(&[vec![(batch(&mut rng_a, 0, 2), false)]], &loss).expect("step");
    hit.step(&[vec![(batch(&mut rng_b, 0, 2), false)]], &loss).expect("step");
    let before = weights(&hit);
    let optimizer_steps = hit.optimizer.steps();
    let mut spare = Rng::new(123);
    let s = hit.step(&[vec![(batch(&mut spare, 1, 2), true)]], &loss).expect("an overflow is not an error");
    assert!(s.skipped && !s.grad_norm.is_finite(), "{s:?}");
    assert_eq!(s.loss_scale, Some(65536.0));
    assert_all(&weights(&hit), &before, Approx::Exact, "weights after a skipped update");
    assert_eq!(hit.optimizer.steps(), optimizer_steps, "AdamW did not step");
    let state = hit.loss_scale.expect("scaler state");
    assert_eq!((state.scale, state.growth_tracker, state.skipped), (32768.0, 0, 1));

    let a = clean.step(&[vec![(batch(&mut rng_a, 2, 2), false)]], &loss).expect("step");
    let b = hit.step(&[vec![(batch(&mut rng_b, 2, 2), false)]], &loss).expect("step");
    assert_eq!(a.lr, b.lr, "the schedule did not advance on the skipped update");
    assert_eq!(b.loss_scale, Some(32768.0));
    assert_all(&weights(&hit), &weights(&clean), Approx::Exact, "after the skipped batch");
}

#[test]
fn latest_falls_back_to_the_newest_complete_checkpoint() {
    use osp_trainer::train::{check_checkpoint, resolve_resume};
    let dir = tempfile::tempdir().expect("temp dir");
    let loss = loss_fn::<AB>();
    let files = layout().checkpoint_files();
    let mut t = trainer::<AB>(1, true);
    let mut rng = Rng::new(3);
    for i in 0..3 {
        let b = batch(&mut rng, i, 2);
        t.step(&[vec![b]], &loss).expect("step");
        t.save(dir.path(), &layout(), &rng, serde_json::json!(null), serde_json::json!({}), None).expect("save");
    }
    let ckpt = |s: usize| dir.path().join(format!("checkpoint-{s}"));
    assert_eq!(resolve_resume(dir.path(), "latest", &files).expect("resolve"), Some(ckpt(3)));

    // Truncated optimizer state in the newest: resume from checkpoint-2, whose state loads.
    let opt = ckpt(3).join("optimizer.safetensors");
    let bytes_opt = std::fs::read(&opt).expect("read");
    std::fs::write(&opt, &bytes_opt[..bytes_opt.len() - 4]).expect("truncate");
    let err = check_checkpoint(&ckpt(3), &files).expect_err("truncated").to_string();
    assert!(err.contains("optimizer.safetensors") && err.contains("truncated"), "{err}");
    assert_eq!(resolve_resume(dir.path(), "latest", &files).expect("resolve"), Some(ckpt(2)));
    let mut resumed = trainer::<AB>(1, true);
    assert_eq!(resumed.resume(&ckpt(2), &layout()).expect("resume").step, 2);

    // Named explicitly, a broken checkpoint is an error naming the file, never replaced.
    let err = resolve_resume(dir.path(), "checkpoint-3", &files).expect_err("explicit").to_string();
    assert!(err.contains("--resume_from_checkpoint") && err.contains("optimizer.safetensors"), "{err}");

    // An empty EMA file and a missing state make the other two incomplete: an error naming all three.
    std::fs::write(ckpt(2).join("model_ema").join(WEIGHTS), b"").expect("empty");
    std::fs::remove_file(ckpt(1).join("training_state.json")).expect("remove");
    let err = resolve_resume(dir.path(), "latest", &files).expect_err("nothing complete").to_string();
    for part in ["checkpoint-3", "checkpoint-2", "model_ema", "checkpoint-1", "training_state.json"] {
        assert!(err.contains(part), "`{part}` missing from: {err}");
    }
    // A header length field past the end of the file.
    let model = ckpt(3).join("model").join(WEIGHTS);
    let mut bytes = std::fs::read(&model).expect("read");
    bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&model, bytes).expect("write");
    std::fs::write(&opt, &bytes_opt).expect("restore the optimizer state");
    let err = check_checkpoint(&ckpt(3), &files).expect_err("bad header length").to_string();
    assert!(err.contains("header length field"), "{err}");
}
