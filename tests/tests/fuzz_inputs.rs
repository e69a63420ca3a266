//! Bounded mutation fuzzing of every kind of file users hand to osp: a bundle's `manifest.json`, a
//! pipeline bundle's `pipeline.json`, safetensors files (`osp run-graph --inputs`, `osp decode
//! --latents`, trainer checkpoints) and the trainer's annotation JSON. A few hundred seeded
//! mutations of each ([`osp_tests::file_fuzz`]): byte flips, truncation, JSON-aware mutations and
//! safetensors header-length corruption. The loaders run in-process; every case must succeed or
//! fail with an error naming the file, never panic or hang. A few cases run through the real CLIs.
//!
//! `cargo test --release --locked -p osp-tests --test fuzz_inputs` (the CLI cases need the `osp`
//! and `osp-train` binaries: `cargo build --release --locked -p osp-runtime --bin osp -p
//! osp-trainer --bin osp-train`). `OSP_FUZZ_VERBOSE=1` prints every case before it runs;
//! `OSP_FUZZ_CASES=N` runs N cases per kind instead of 300, `OSP_FUZZ_SEED=S` the one case `S`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ndarray::{ArrayD, IxDyn};
use osp_export::models::pipeline::{export_pipeline, PipelineExportOptions, PipelineSources};
use osp_export::ExportOptions;
use osp_graphs::pipeline::PipelineDefaults;
use osp_graphs::Dim;
use osp_runtime::pipeline::PipelineSpec;
use osp_runtime::vae::Vae;
use osp_runtime::{Backend, Bundle, SessionOptions, Tensor};
use osp_tests::file_fuzz::{self as fuzz, Mutant};
use osp_tests::fuzz::Mutator;
use osp_tests::{block_bundle, copy_dir};
use osp_trainer::data::{read_data_file, DataConfig, Dataset, VaeClips};
use osp_trainer::train::{check_checkpoint, CheckpointFiles, Rng, TrainingState};

/// The weights file of a trainer checkpoint's `model/`.
const WEIGHTS: &str = "diffusion_pytorch_model.safetensors";
/// Cases per file kind (`OSP_FUZZ_CASES` overrides it for a deeper run).
const CASES: u64 = 300;
/// The seeds to run: `0..CASES`, `0..OSP_FUZZ_CASES`, or `OSP_FUZZ_SEED` alone.
fn cases() -> std::ops::Range<u64> {
    let var = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    match var("OSP_FUZZ_SEED") {
        Some(seed) => seed..seed + 1,
        None => 0..var("OSP_FUZZ_CASES").unwrap_or(CASES),
    }
}

/// A case running longer than this is a hang.
const PER_CASE: Duration = Duration::from_secs(20);

/// The tiny official pipeline of `../shared/reference/e2e`, exported once per test binary (small
/// defaults: 9 x 64 x 96, 2 steps).
fn pipeline_bundle() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = dir.path().join("e2e.pipeline");
        let defaults = PipelineDefaults {
            num_frames: 9,
            height: 64,
            width: 96,
            num_sampling_steps: 2,
            max_sequence_length: 16,
            ..PipelineDefaults::open_sora_plan_v13()
        };
        let opts = PipelineExportOptions { graph: ExportOptions::default(), text_encoder_precision: None, defaults };
        let sources = PipelineSources::from_dir(&osp_tests::shared_reference().join("e2e")).expect("e2e sources");
        export_pipeline(&sources, &opts, &out).expect("export the pipeline");
        (dir, out)
    })
    .1
}

/// `Ok(false)` (rejected, as it should be) when `message` names `path` (the full path).
fn names(message: &str, path: &Path) -> Result<bool, String> {
    if message.contains(&*path.to_string_lossy()) {
        Ok(false)
    } else {
        Err(format!("the error does not name {}: {message}", path.display()))
    }
}

/// Zero inputs for every input of `graph` as its spec gives them (symbols set to 2), or `None`
/// when a dim is too large to build.
fn spec_inputs(bundle: &Bundle, graph: &str) -> Option<Vec<(String, Tensor)>> {
    let spec = bundle.manifest().graph(graph).ok()?;
    spec.inputs
        .iter()
        .map(|t| {
            let shape: Option<Vec<usize>> = t
                .dims
                .iter()
                .map(|d| match d {
                    Dim::Fixed(v) if *v <= 256 => Some(*v),
                    Dim::Fixed(_) => None,
                    Dim::Symbolic(_) => Some(2),
                })
                .collect();
            let shape = shape.filter(|s| s.iter().product::<usize>() <= 1 << 16)?;
            Some((t.name.clone(), Tensor::zeros(t.dtype, &shape).ok()?))
        })
        .collect()
}

#[test]
fn manifest_json_mutations() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = block_bundle(&tmp.path().join("b")).expect("block bundle");
    let manifest = dir.join("manifest.json");
    let original = std::fs::read(&manifest).expect("manifest");
    let opts = SessionOptions { threads: Some(1), ..SessionOptions::new(Backend::Tract) };
    fuzz::run(
        "manifest.json",
        cases(),
        PER_CASE,
        move |rng| fuzz::mutate_json_file(&original, rng),
        move |m| {
            std::fs::write(&manifest, &m.bytes).expect("write");
            let bundle = match Bundle::open(&dir) {
                Ok(b) => b,
                Err(e) => return names(&format!("{e:#}"), &dir),
            };
            for graph in bundle.manifest().graphs.keys() {
                let Ok(mut session) = bundle.session(graph, &opts) else { continue };
                if let Some(inputs) = spec_inputs(&bundle, graph) {
                    let refs: Vec<(&str, &Tensor)> = inputs.iter().map(|(n, t)| (n.as_str(), t)).collect();
                    let _ = session.run(&refs);
                }
            }
            Ok(true)
        },
    );
}

#[test]
fn vae_manifest_json_mutations() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("p");
    copy_dir(pipeline_bundle(), &dir).expect("copy");
    let manifest = dir.join("vae/manifest.json");
    let original = std::fs::read(&manifest).expect("manifest");
    fuzz::run(
        "vae manifest.json",
        cases(),
        PER_CASE,
        move |rng| fuzz::mutate_json_file(&original, rng),
        move |m| {
            std::fs::write(&manifest, &m.bytes).expect("write");
            let vae_dir = dir.join("vae");
            let accepted = match Bundle::open(&vae_dir) {
                Err(e) => names(&format!("{e:#}"), &vae_dir)?,
                Ok(b) => match Vae::load(&b, &SessionOptions::new(Backend::Tract)) {
                    Ok(_) => true,
                    Err(e) => names(&format!("{e:#}"), &vae_dir)?,
                },
            };
            match PipelineSpec::open(&dir) {
                Ok(_) => Ok(accepted),
                Err(e) => names(&format!("{e:#}"), &dir),
            }
        },
    );
}

#[test]
fn pipeline_json_mutations() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("p");
    copy_dir(pipeline_bundle(), &dir).expect("copy");
    let file = dir.join("pipeline.json");
    let original = std::fs::read(&file).expect("pipeline.json");
    fuzz::run(
        "pipeline.json",
        cases(),
        PER_CASE,
        move |rng| fuzz::mutate_json_file(&original, rng),
        move |m| {
            std::fs::write(&file, &m.bytes).expect("write");
            let spec = match PipelineSpec::open(&dir) {
                Ok(s) => s,
                Err(e) => return names(&format!("{e:#}"), &dir),
            };
            // The request from the file's defaults is made and checked, and its scheduler built, without a panic.
            if let Ok(prepared) = spec.default_request(vec!["A cat.".into()]).and_then(|req| spec.prepare(req)) {
                let _ = spec.latent_shape(&prepared);
            }
            Ok(true)
        },
    );
}

/// A safetensors file holding one tensor of every dtype the runtime reads.
fn tensors_file(path: &Path) {
    let f32s = Tensor::from(ArrayD::<f32>::from_shape_fn(IxDyn(&[2, 3, 4]), |i| i[2] as f32 - 1.5));
    let i64s = Tensor::from(ArrayD::<i64>::from_shape_fn(IxDyn(&[5]), |i| i[0] as i64));
    let halfs = Tensor::from(ArrayD::from_elem(IxDyn(&[3, 2]), half::f16::ONE));
    let u8s = Tensor::from(ArrayD::<u8>::from_elem(IxDyn(&[4]), 1));
    osp_runtime::write_safetensors(path, [("x", &f32s), ("ids", &i64s), ("h", &halfs), ("mask", &u8s)]).expect("write");
}

#[test]
fn safetensors_mutations() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().to_path_buf();
    let source = dir.join("source.safetensors");
    tensors_file(&source);
    let inputs = std::fs::read(&source).expect("read");
    // A trainer checkpoint: the tiny official DiT's weights (all f32).
    let weights =
        std::fs::read(osp_tests::shared_reference().join("parity/dit_tiny/weights.safetensors")).expect("dit weights");
    // A checkpoint folder whose model weights are the mutant.
    let ckpt_dir = dir.join("checkpoint-1");
    std::fs::create_dir_all(ckpt_dir.join("model")).expect("mkdir");
    std::fs::write(ckpt_dir.join("optimizer.safetensors"), &inputs).expect("write");
    let state = TrainingState {
        step: 1,
        optimizer_steps: 1,
        ema_steps: None,
        rng: Rng::new(0),
        data_position: serde_json::Value::Null,
        run_config: serde_json::json!({}),
        aux_optimizer_steps: None,
        loss_scale: None,
    };
    std::fs::write(ckpt_dir.join("training_state.json"), serde_json::to_string(&state).expect("json")).expect("write");
    fuzz::run(
        "safetensors",
        cases(),
        PER_CASE,
        move |rng| {
            let checkpoint = rng.below(2) == 0;
            let mut m = fuzz::mutate_safetensors(if checkpoint { &weights } else { &inputs }, rng);
            m.what = format!("{}: {}", if checkpoint { "checkpoint" } else { "inputs" }, m.what);
            m
        },
        move |m: &Mutant| {
            let path = dir.join("m.safetensors");
            std::fs::write(&path, &m.bytes).expect("write");
            let check = |r: Result<(), String>| match r {
                Ok(()) => Ok(true),
                Err(e) => names(&e, &path),
            };
            let accepted = check(osp_runtime::read_safetensors(&path).map(drop).map_err(|e| format!("{e:#}")))?;
            // The resume completeness check (headers only) agrees with a full parse.
            let ckpt_dir = dir.join("checkpoint-1");
            std::fs::copy(&path, ckpt_dir.join("model").join(WEIGHTS)).expect("copy");
            let complete = check_checkpoint(&ckpt_dir, &CheckpointFiles::new(WEIGHTS, &[]));
            let parses = safetensors::SafeTensors::deserialize(&m.bytes).is_ok();
            if complete.is_ok() != parses {
                return Err(format!("the checkpoint check says {complete:?}, a full parse says {parses}"));
            }
            if let Err(e) = complete {
                names(&e.to_string(), &ckpt_dir.join("model").join(WEIGHTS))?;
            }
            check(osp_trainer::io::read_tensors(&path).map(drop).map_err(|e| e.to_string()))?;
            check(osp_trainer::io::read_tensors_as_f32(&path).map(drop).map_err(|e| e.to_string()))?;
            check(osp_trainer::io::read_int_tensors(&path).map(drop).map_err(|e| e.to_string()))?;
            let opened = osp_trainer::checkpoint::Checkpoint::open(&path);
            match opened {
                Err(e) => {
                    check(Err(e.to_string()))?;
                }
                Ok(ckpt) => {
                    for name in ckpt.names() {
                        let snapshot = ckpt.get(name).expect("a listed name");
                        check(
                            snapshot
                                .to_data()
                                .map(drop)
                                .map_err(|e| format!("{} tensor `{name}`: {e:?}", path.display())),
                        )?;
                    }
                }
            }
            Ok(accepted)
        },
    );
}

/// A `--data` file over an annotation of videos and images with every field given, and empty
/// media files (planning never opens them).
fn annotation_setup(root: &Path) -> (PathBuf, PathBuf) {
    let media = root.join("media");
    std::fs::create_dir_all(media.join("v")).expect("mkdir");
    let mut items = Vec::new();
    for i in 0..8 {
        let (path, extra) = if i % 4 == 3 {
            (format!("v/img{i}.jpg"), serde_json::json!({}))
        } else {
            (
                format!("v/clip{i}.mp4"),
                serde_json::json!({"num_frames": 40 + 8 * i, "fps": 24.0, "cut": [i, 30 + 8 * i]}),
            )
        };
        std::fs::write(media.join(&path), b"").expect("media");
        let mut item = serde_json::json!({
            "path": path, "cap": ["a red circle", "a circle"], "resolution": {"height": 64, "width": 96},
            "aes": 5.5, "crop": [0, 96, 0, 64]
        });
        item.as_object_mut().expect("object").extend(extra.as_object().expect("object").clone());
        items.push(item);
    }
    let anno = root.join("anno.json");
    std::fs::write(&anno, serde_json::to_string_pretty(&items).expect("json")).expect("write");
    let data = root.join("data.txt");
    std::fs::write(&data, format!("{},{}\n", media.display(), anno.display())).expect("write");
    (anno, data)
}

fn data_config(vae: bool) -> DataConfig {
    DataConfig {
        num_frames: 9,
        train_fps: if vae { 0.0 } else { 16.0 },
        sample_rate: 2,
        max_height: 32,
        max_width: 32,
        max_hxw: None,
        min_hxw: None,
        force_resolution: true,
        hw_stride: 16,
        ae_stride_t: 4,
        total_batch_size: 2,
        min_bucket_items: 1,
        drop_short_ratio: 0.0,
        speed_factor: if vae { 1.0 } else { 1.5 },
        vae_clips: vae.then_some(VaeClips { dynamic_sample: true }),
        seed: 3,
    }
}

#[test]
fn annotation_json_mutations() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let (anno, data) = annotation_setup(tmp.path());
    let original = std::fs::read(&anno).expect("read");
    for vae in [false, true] {
        let plan = Dataset::build(&read_data_file(&data).expect("data file"), data_config(vae));
        assert!(plan.is_ok_and(|d| d.samples.len() == 8), "the seed annotation plans every item");
    }
    fuzz::run(
        "annotation JSON",
        cases(),
        PER_CASE,
        move |rng| fuzz::mutate_json_file(&original, rng),
        move |m| {
            std::fs::write(&anno, &m.bytes).expect("write");
            let mut accepted = true;
            for vae in [false, true] {
                let sources = read_data_file(&data).expect("the data file is not mutated");
                let dataset = match Dataset::build(&sources, data_config(vae)) {
                    Ok(d) => d,
                    Err(e) => {
                        accepted &= names(&e.to_string(), &anno)?;
                        continue;
                    }
                };
                for epoch in 0..2 {
                    for batch in dataset.epoch_batches(epoch) {
                        for (k, &i) in batch.iter().enumerate() {
                            let frames = dataset.clip_frames(i, Some(k as f64 / 2.0));
                            if frames.len() != dataset.samples[i].frames {
                                return Err(format!(
                                    "item {i}: {} frames, planned {}",
                                    frames.len(),
                                    dataset.samples[i].frames
                                ));
                            }
                        }
                    }
                }
                let _ = dataset.batch_at(Default::default());
            }
            Ok(accepted)
        },
    );
}

/// Runs `cmd` with a time limit; its exit code (`None`: killed by a signal) and its output.
fn run_cli(mut cmd: Command, limit: Duration) -> Result<(Option<i32>, String), String> {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn: {e}"))?;
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            let out = child.wait_with_output().map_err(|e| e.to_string())?;
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            return Ok((status.code(), text));
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            return Err(format!("still running after {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The CLI outcome of one mutant: a clean exit (0) or a failure (1) whose message names `file`;
/// a panic (101), a signal or a hang fails.
fn cli_outcome(result: Result<(Option<i32>, String), String>, file: &Path) -> Result<(), String> {
    let (code, text) = result?;
    if std::env::var_os("OSP_FUZZ_VERBOSE").is_some() {
        let error = text.lines().skip_while(|l| !l.starts_with("Error")).take(4).collect::<Vec<_>>().join(" | ");
        eprintln!("exit {code:?}: {error}");
    }
    if text.contains("panicked") {
        return Err(format!("panicked: {text}"));
    }
    match code {
        Some(0) => Ok(()),
        Some(1) => names(&text, file).map(drop),
        other => Err(format!("exit {other:?}: {text}")),
    }
}

fn osp() -> Command {
    osp_tests::osp_command(1)
}

/// A few mutants of each file kind through `osp run-graph`, `osp decode` and `osp-train vae`.
#[test]
fn mutated_files_through_the_clis() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let root = tmp.path().to_path_buf();
    let block = block_bundle(&root.join("b")).expect("block bundle");
    let inputs = root.join("in.safetensors");
    let x = Tensor::from(ArrayD::<f32>::zeros(IxDyn(&[1, 5, 32])));
    let mask = Tensor::from(ArrayD::<f32>::ones(IxDyn(&[1, 5])));
    osp_runtime::write_safetensors(&inputs, [("hidden_states", &x), ("attention_mask", &mask)]).expect("write");
    let good_inputs = std::fs::read(&inputs).expect("read");
    let vae = pipeline_bundle().join("vae");
    let latent_dim = match &Bundle::open(&vae).expect("vae bundle").manifest().model {
        osp_graphs::ModelSpec::Wfvae(v) => v.latent_dim,
        other => panic!("not a VAE bundle: {}", other.kind()),
    };
    let latents = root.join("z.safetensors");
    let z = Tensor::from(ArrayD::<f32>::zeros(IxDyn(&[1, latent_dim, 2, 4, 4])));
    osp_runtime::write_safetensors(&latents, [("z", &z)]).expect("write");
    let good_latents = std::fs::read(&latents).expect("read");
    let (anno, data) = annotation_setup(&root.join("anno"));
    let good_anno = std::fs::read(&anno).expect("read");
    let vae_config = root.join("vae_config.json");
    std::fs::copy(osp_tests::shared_reference().join("parity/wfvae_tiny/config.json"), &vae_config).expect("copy");

    let mut failures = Vec::new();
    let limit = Duration::from_secs(120);
    for seed in 0..4u64 {
        let mut rng = Mutator::new(1000 + seed);
        let m = fuzz::mutate_safetensors(&good_inputs, &mut rng);
        std::fs::write(&inputs, &m.bytes).expect("write");
        let mut cmd = osp();
        cmd.arg("run-graph")
            .arg(&block)
            .arg("block")
            .arg("--inputs")
            .arg(&inputs)
            .arg("--out")
            .arg(root.join("out.safetensors"));
        if let Err(why) = cli_outcome(run_cli(cmd, limit), &inputs) {
            failures.push(format!("run-graph --inputs seed {seed}: {}: {why}", m.what));
        }

        let m = fuzz::mutate_safetensors(&good_latents, &mut rng);
        std::fs::write(&latents, &m.bytes).expect("write");
        let mut cmd = osp();
        cmd.args(["decode", "--bundle"]).arg(&vae).arg("--latents").arg(&latents);
        if let Err(why) = cli_outcome(run_cli(cmd, limit), &latents) {
            failures.push(format!("decode --latents seed {seed}: {}: {why}", m.what));
        }

        let m = fuzz::mutate_json_file(&good_anno, &mut rng);
        std::fs::write(&anno, &m.bytes).expect("write");
        let train = osp_tests::osp_train_binary().expect("the osp-train binary should be built");
        let mut cmd = Command::new(train);
        cmd.args(["vae", "--model_config"])
            .arg(&vae_config)
            .arg("--data")
            .arg(&data)
            .arg("--ckpt_dir")
            .arg(root.join(format!("run{seed}")));
        cmd.args(["--resolution", "16", "--num_frames", "9", "--batch_size", "1", "--perceptual_weight", "0"]);
        cmd.args(["--disc_ndf", "4", "--disc_num_layers", "1", "--max_steps", "1", "--progress", "off"]);
        // The media files are empty: a plan that succeeds fails at decode, naming a media file.
        let outcome = run_cli(cmd, limit);
        let media = root.join("anno/media");
        let named = |file: &Path| cli_outcome(outcome.clone(), file);
        if let Err(why) = named(&anno).or_else(|_| named(&media)) {
            failures.push(format!("osp-train vae --data seed {seed}: {}: {why}", m.what));
        }
    }
    // pipeline.json through `osp generate` (one sampling step, the smallest video).
    let pipeline = root.join("p");
    copy_dir(pipeline_bundle(), &pipeline).expect("copy");
    let pipeline_json = pipeline.join("pipeline.json");
    let good_pipeline = std::fs::read(&pipeline_json).expect("read");
    for seed in 0..3u64 {
        let m = fuzz::mutate_json_file(&good_pipeline, &mut Mutator::new(2000 + seed));
        std::fs::write(&pipeline_json, &m.bytes).expect("write");
        let mut cmd = osp();
        cmd.env("OSP_TEXT_CACHE", root.join("cache"))
            .args(["generate", "--progress", "off", "--bundle"])
            .arg(&pipeline);
        cmd.args(["--text_prompt", "A cat.", "--num_frames", "1", "--num_sampling_steps", "1", "--save_img_path"]);
        cmd.arg(root.join(format!("gen{seed}")));
        if let Err(why) = cli_outcome(run_cli(cmd, limit), &pipeline) {
            failures.push(format!("generate seed {seed}: {}: {why}", m.what));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
