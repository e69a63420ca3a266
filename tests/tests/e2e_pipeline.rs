//! End-to-end parity (issue 5): the pipeline bundle exported from the official run's components
//! (`../shared/reference/e2e/`) replays that run (its initial latents, per-step ancestral noise and
//! float32 schedule) and must reproduce, prompt by prompt, the text embeddings, every step's
//! latents and model outputs, the decoded video and the uint8 frames in `io.safetensors`, on every
//! CPU backend. The streaming decoder must give the whole decoder's video.
//!
//! `cargo test --release -p osp-tests --test e2e_pipeline -- --nocapture` (prints the max diffs).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{ensure, Context, Result};
use ndarray::ArrayD;
use osp_export::models::pipeline::{export_pipeline, PipelineExportOptions, PipelineSources};
use osp_export::ExportOptions;
use osp_graphs::pipeline::PipelineDefaults;
use osp_graphs::{Approx, Comparison};
use osp_runtime::pipeline::noise::{ReplayNoise, SeededNoise};
use osp_runtime::pipeline::{DecodeOptions, GenerateObserver, GenerateRequest, Pipeline, StepRecord};
use osp_runtime::scheduler::SampleMethod;
use osp_runtime::session::Backend;
use osp_runtime::text::TextPositions;
use osp_runtime::{read_safetensors, SessionOptions, Tensor};
use osp_tests::{check_close, copy_dir, cpu_backends, shared_reference};

fn e2e_dir() -> PathBuf {
    shared_reference().join("e2e")
}

fn recording() -> &'static BTreeMap<String, Tensor> {
    static IO: OnceLock<BTreeMap<String, Tensor>> = OnceLock::new();
    IO.get_or_init(|| {
        read_safetensors(&e2e_dir().join("io.safetensors")).expect("the e2e recording should be readable")
    })
}

fn meta() -> Result<serde_json::Value> {
    let path = e2e_dir().join("meta.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(serde_json::from_str(&text)?)
}

fn rec_f32(key: &str) -> Result<Vec<f32>> {
    match recording().get(key) {
        Some(Tensor::F32(a)) => Ok(a.iter().copied().collect()),
        Some(other) => anyhow::bail!("`{key}` is {}", other.describe()),
        None => anyhow::bail!("the recording has no `{key}`"),
    }
}

fn rec_u8(key: &str) -> Result<Vec<u8>> {
    match recording().get(key) {
        Some(Tensor::U8(a)) => Ok(a.iter().copied().collect()),
        _ => anyhow::bail!("the recording has no u8 `{key}`"),
    }
}

/// The pipeline bundle, exported once per test binary.
fn bundle() -> Result<&'static Path> {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    if DIR.get().is_none() {
        let dir = tempfile::tempdir()?;
        let out = dir.path().join("e2e.pipeline");
        let sources = PipelineSources::from_dir(&e2e_dir())?;
        let opts = PipelineExportOptions {
            graph: ExportOptions::default(),
            text_encoder_precision: None,
            defaults: PipelineDefaults::open_sora_plan_v13(),
        };
        export_pipeline(&sources, &opts, &out)?;
        let _ = DIR.set((dir, out));
    }
    Ok(&DIR.get().expect("the bundle was just exported").1)
}

/// The recorded run's request (meta.json `settings`), replaying its schedule.
fn request(meta: &serde_json::Value, defaults: &PipelineDefaults) -> Result<GenerateRequest> {
    let s = &meta["settings"];
    let num = |k: &str| s[k].as_u64().map(|v| v as usize).with_context(|| format!("settings.{k}"));
    let prompts = s["prompts"]
        .as_array()
        .context("settings.prompts")?
        .iter()
        .map(|p| p.as_str().map(str::to_string).context("a prompt"))
        .collect::<Result<_>>()?;
    Ok(GenerateRequest {
        prompts,
        prompt_template: Some(defaults.positive_prompt_template.clone()),
        negative_prompt: defaults.negative_prompt.clone(),
        num_frames: num("num_frames")?,
        height: num("height")?,
        width: num("width")?,
        num_sampling_steps: num("num_sampling_steps")?,
        guidance_scale: s["guidance_scale"].as_f64().context("guidance_scale")? as f32,
        guidance_rescale: 0.0,
        sample_method: SampleMethod::EulerAncestralDiscrete,
        num_samples_per_prompt: num("num_samples_per_prompt")?,
        max_sequence_length: num("max_sequence_length")?,
        decode: DecodeOptions::default(),
        recorded_schedule: Some((rec_f32("scheduler.timesteps")?, rec_f32("scheduler.sigmas")?)),
        prediction_type: None,
        rescale_betas_zero_snr: false,
        keep_decoded: true,
    })
}

/// Compares `actual` with `expected` after dividing both by the largest `|expected|`.
fn check_scaled(what: &str, actual: &[f32], expected: &[f32]) -> Result<Comparison> {
    check_scaled_at(what, actual, expected, Approx::Approximate)
}

/// [`check_scaled`] at `level`.
fn check_scaled_at(what: &str, actual: &[f32], expected: &[f32], level: Approx) -> Result<Comparison> {
    let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs())).max(f32::MIN_POSITIVE);
    let a: Vec<f32> = actual.iter().map(|v| v / scale).collect();
    let e: Vec<f32> = expected.iter().map(|v| v / scale).collect();
    check_close(&format!("{what} (divided by its scale {scale})"), &a, &e, level)
}

#[derive(Default)]
struct Steps(BTreeMap<(usize, usize), [ArrayD<f32>; 4]>);

impl GenerateObserver for Steps {
    fn step(&mut self, prompt: usize, step: usize, _total: usize, r: &StepRecord<'_>) {
        let parts = [r.latents.clone(), r.dit_out.clone(), r.guided.clone(), r.prev_sample.clone()];
        self.0.insert((prompt, step), parts);
    }
}

/// The largest scaled diff of each kind, for the report.
#[derive(Default, Debug)]
struct Worst {
    text: f64,
    latents: f64,
    dit_out: f64,
    decoded: f64,
    frames: f64,
    /// uint8 values that differ from the recording (by one level), of all compared.
    frames_differing: (usize, usize),
}

fn replay(backend: Backend) -> Result<Worst> {
    Ok(replay_with(backend, TextPositions::Padded)?.0)
}

/// The replay with the text encoded at `positions`; also returns each prompt's step records and
/// final latents.
fn replay_with(backend: Backend, positions: TextPositions) -> Result<(Worst, Vec<(Steps, ArrayD<f32>)>)> {
    let meta = meta()?;
    let opts = SessionOptions::new(backend).with_threads(2);
    let mut pipeline = Pipeline::open(bundle()?, &opts, None)?.with_text_positions(positions);
    let mut runs = Vec::new();
    let req = pipeline.prepare(request(&meta, &pipeline.manifest().defaults)?)?;
    let io = e2e_dir().join("io.safetensors");
    let mut noise = ReplayNoise::open(Some(&io), Some(&io), SeededNoise::new(0))?;
    let steps = pipeline.scheduler(&req)?.timesteps().len();
    noise.check(req.prompts.len(), steps, &pipeline.latent_shape(&req))?;
    let mut worst = Worst::default();
    for p in 0..req.prompts.len() {
        let detail = &meta["prompts_detail"][p];
        ensure!(pipeline.templated(&req, &req.prompts[p]) == detail["templated_prompt"].as_str().unwrap_or_default());
        ensure!(req.negative_prompt == detail["negative_prompt"].as_str().unwrap_or_default());
        let mut observer = Steps::default();
        let out = pipeline.generate_prompt(&req, p, &mut noise, &mut observer)?;

        for (side, emb) in [("pos", Some(&out.positive)), ("neg", out.negative.as_ref())] {
            let emb = emb.context("guidance > 1 encodes the negative prompt")?;
            let Tensor::I64(mask) = &emb.mask else { anyhow::bail!("mask dtype") };
            let want = match recording().get(&format!("p{p}.text.{side}.attention_mask")) {
                Some(Tensor::I64(m)) => m.iter().copied().collect::<Vec<_>>(),
                _ => anyhow::bail!("no recorded mask"),
            };
            let mut recorded = rec_f32(&format!("p{p}.text.{side}.embeds"))?;
            if positions == TextPositions::Real {
                // Only the real tokens: the recording's first `l` positions, all unmasked.
                let l = want.iter().take_while(|&&m| m == 1).count();
                ensure!(want[l..].iter().all(|&m| m == 0), "p{p} {side}: the recorded mask is a prefix");
                recorded.truncate(l * emb.embeddings.shape()[2]);
                ensure!(mask.iter().copied().collect::<Vec<_>>() == want[..l], "p{p} {side} attention mask");
            } else {
                ensure!(mask.iter().copied().collect::<Vec<_>>() == want, "p{p} {side} attention mask");
            }
            let c = check_close(
                &format!("p{p}.text.{side}.embeds"),
                &emb.embeddings.to_f32_vec(),
                &recorded,
                Approx::Approximate,
            )?;
            worst.text = worst.text.max(c.max_abs);
        }
        for i in 0..steps {
            let parts = observer.0.get(&(p, i)).with_context(|| format!("step {i} not observed"))?;
            for (k, (name, actual)) in ["latents", "dit_out", "guided", "prev_sample"].iter().zip(parts).enumerate() {
                let key = format!("p{p}.step{i}.{name}");
                let c = check_scaled(&key, &actual.iter().copied().collect::<Vec<_>>(), &rec_f32(&key)?)?;
                if k == 1 {
                    worst.dit_out = worst.dit_out.max(c.max_abs);
                } else {
                    worst.latents = worst.latents.max(c.max_abs);
                }
            }
        }
        let key = format!("p{p}.latents.final");
        check_scaled(&key, &out.latents.iter().copied().collect::<Vec<_>>(), &rec_f32(&key)?)?;
        let key = format!("p{p}.vae.decoded");
        let decoded = out.decoded.as_ref().context("keep_decoded is set")?;
        let c = check_close(&key, &decoded.iter().copied().collect::<Vec<_>>(), &rec_f32(&key)?, Approx::Approximate)?;
        worst.decoded = worst.decoded.max(c.max_abs);
        ensure!(out.frames.len() == 1, "one sample per prompt");
        let key = format!("p{p}.video.final");
        let frames: Vec<f32> = out.frames[0].iter().map(|&v| f32::from(v)).collect();
        let want: Vec<f32> = rec_u8(&key)?.into_iter().map(f32::from).collect();
        let c = check_close(&key, &frames, &want, Approx::OneLevel)?;
        worst.frames = worst.frames.max(c.max_abs);
        let exact = Approx::Exact.compare(&frames, &want);
        worst.frames_differing.0 += exact.outliers;
        worst.frames_differing.1 += exact.len;
        runs.push((observer, out.latents));
    }
    Ok((worst, runs))
}

#[test]
fn official_run_is_replayed_on_every_cpu_backend() -> Result<()> {
    for backend in cpu_backends() {
        let worst = replay(backend.clone()).with_context(|| format!("backend {}", backend.name()))?;
        println!("e2e replay on {}: max scaled diffs {worst:?}", backend.name());
    }
    Ok(())
}

/// Exactness of [`TextPositions::Real`]: mT5 runs on the real tokens only and the transformer reads
/// only those (the CFG batch's longest), and the run still replays the recording at the same
/// tolerances, and equals the padded run within `Close` at every step.
#[test]
fn real_text_positions_replay_the_official_run_like_padded_ones() -> Result<()> {
    let (worst, real) = replay_with(Backend::OrtCpu, TextPositions::Real)?;
    println!("e2e replay with real text positions: max scaled diffs {worst:?}");
    let (_, padded) = replay_with(Backend::OrtCpu, TextPositions::Padded)?;
    ensure!(real.len() == padded.len() && !real.is_empty());
    for (p, ((steps_r, final_r), (steps_p, final_p))) in real.iter().zip(&padded).enumerate() {
        ensure!(steps_r.0.len() == steps_p.0.len(), "p{p}: step count");
        for (key, parts_r) in &steps_r.0 {
            let parts_p = steps_p.0.get(key).context("step observed in both runs")?;
            for (name, (a, b)) in
                ["latents", "dit_out", "guided", "prev_sample"].iter().zip(parts_r.iter().zip(parts_p))
            {
                let what = format!("p{p} step {}: {name}, real vs padded text", key.1);
                let (a, b): (Vec<f32>, Vec<f32>) = (a.iter().copied().collect(), b.iter().copied().collect());
                check_scaled_at(&what, &a, &b, Approx::Close)?;
            }
        }
        let (a, b): (Vec<f32>, Vec<f32>) = (final_r.iter().copied().collect(), final_p.iter().copied().collect());
        check_scaled_at(&format!("p{p} final latents, real vs padded text"), &a, &b, Approx::Close)?;
    }
    Ok(())
}

#[test]
fn streaming_decode_equals_whole_decode_of_the_recorded_latents() -> Result<()> {
    let opts = SessionOptions::new(Backend::OrtCpu).with_threads(2);
    let mut pipeline = Pipeline::open(bundle()?, &opts, None)?;
    let latents = match recording().get("p0.latents.final") {
        Some(Tensor::F32(a)) => a.clone(),
        _ => anyhow::bail!("no recorded final latents"),
    };
    let whole = pipeline.decode_latents(&latents, &DecodeOptions::default())?;
    check_close(
        "whole decode vs recording",
        &whole.iter().copied().collect::<Vec<_>>(),
        &rec_f32("p0.vae.decoded")?,
        Approx::Approximate,
    )?;
    for chunk in [1, 2, 3] {
        let streamed = pipeline.decode_latents(&latents, &DecodeOptions { chunk: Some(chunk), tiling: None })?;
        check_close(
            &format!("streamed (chunk {chunk}) vs whole"),
            &streamed.iter().copied().collect::<Vec<_>>(),
            &whole.iter().copied().collect::<Vec<_>>(),
            Approx::Close,
        )?;
    }
    Ok(())
}

#[test]
fn inconsistent_components_are_refused_at_export_and_at_load() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // A DiT whose caption_channels disagree with the text encoder's d_model.
    let src = e2e_dir();
    for f in std::fs::read_dir(&src)? {
        let f = f?;
        if f.path().is_file() {
            std::fs::copy(f.path(), dir.path().join(f.file_name()))?;
        }
    }
    let cfg_path = dir.path().join("transformer_config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path)?)?;
    cfg["caption_channels"] = serde_json::json!(48);
    std::fs::write(&cfg_path, serde_json::to_string(&cfg)?)?;
    let opts = PipelineExportOptions {
        graph: ExportOptions::default(),
        text_encoder_precision: None,
        defaults: PipelineDefaults::open_sora_plan_v13(),
    };
    let out = dir.path().join("bad.pipeline");
    let err = export_pipeline(&PipelineSources::from_dir(dir.path())?, &opts, &out).unwrap_err().to_string();
    ensure!(err.contains("caption_channels (48)") && err.contains("d_model (32)"), "{err}");
    ensure!(!out.exists(), "nothing is written when the check fails");

    // At load: a valid bundle whose pipeline.json asks for a spatial multiple the DiT cannot patch.
    let copy = dir.path().join("copy.pipeline");
    copy_dir(bundle()?, &copy)?;
    let json = copy.join("pipeline.json");
    let mut m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json)?)?;
    m["defaults"]["spatial_multiple"] = serde_json::json!(24);
    std::fs::write(&json, serde_json::to_string(&m)?)?;
    let err = osp_runtime::pipeline::PipelineSpec::open(&copy).unwrap_err().to_string();
    ensure!(err.contains("spatial_multiple (24)"), "{err}");
    Ok(())
}

#[test]
fn released_folder_layout_exports_the_same_pipeline() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let src = e2e_dir();
    let layout = [
        ("transformer", "transformer_config.json", "config.json"),
        ("transformer", "transformer.safetensors", "diffusion_pytorch_model.safetensors"),
        ("vae", "vae_config.json", "config.json"),
        ("vae", "vae.safetensors", "merged.safetensors"),
        ("mt5", "text_encoder_config.json", "config.json"),
        ("mt5", "text_encoder.safetensors", "model.safetensors"),
        ("mt5", "tokenizer.json", "tokenizer.json"),
    ];
    for (sub, from, to) in layout {
        std::fs::create_dir_all(dir.path().join(sub))?;
        std::fs::copy(src.join(from), dir.path().join(sub).join(to))?;
    }
    let sources = PipelineSources::from_released(
        &dir.path().join("transformer"),
        &dir.path().join("vae"),
        &dir.path().join("mt5"),
        None,
    )?;
    let opts = PipelineExportOptions {
        graph: ExportOptions::default(),
        text_encoder_precision: None,
        defaults: PipelineDefaults::open_sora_plan_v13(),
    };
    let out = dir.path().join("released.pipeline");
    export_pipeline(&sources, &opts, &out)?;
    // The default scheduler (upstream's release flags) equals the recorded run's scheduler_config.json.
    let released = osp_runtime::pipeline::PipelineSpec::open(&out)?;
    let flat = osp_runtime::pipeline::PipelineSpec::open(bundle()?)?;
    for method in [SampleMethod::EulerAncestralDiscrete, SampleMethod::Ddim, SampleMethod::Pndm] {
        ensure!(released.scheduler_config(method) == flat.scheduler_config(method), "{method}");
    }
    for sub in ["text_encoder", "transformer", "vae"] {
        // Same graphs and weights (source_sha256); only the checkpoint's file name differs.
        let mut a = osp_graphs::BundleManifest::load(&out.join(sub))?;
        let mut b = osp_graphs::BundleManifest::load(&bundle()?.join(sub))?;
        ensure!(a.provenance.source_sha256.is_some(), "{sub}: the checkpoint hash is recorded");
        a.provenance.source = None;
        b.provenance.source = None;
        ensure!(a == b, "{sub} manifests differ between layouts");
    }
    // A second checkpoint in a folder is ambiguous.
    std::fs::copy(src.join("vae.safetensors"), dir.path().join("vae/other.safetensors"))?;
    let err = PipelineSources::from_released(
        &dir.path().join("transformer"),
        &dir.path().join("vae"),
        &dir.path().join("mt5"),
        None,
    )
    .unwrap_err()
    .to_string();
    ensure!(err.contains("several"), "{err}");
    Ok(())
}

/// Noise for `n` samples of prompt 0: the recorded prompt-0 tensors repeated `n` times.
struct Repeated {
    n: usize,
}

impl Repeated {
    fn tile(&self, key: &str, shape: &[usize]) -> osp_runtime::Result<ArrayD<f32>> {
        let one =
            rec_f32(key).map_err(|e| osp_runtime::Error::InvalidInput { name: key.into(), rule: e.to_string() })?;
        let all: Vec<f32> = (0..self.n).flat_map(|_| one.iter().copied()).collect();
        ArrayD::from_shape_vec(ndarray::IxDyn(shape), all)
            .map_err(|e| osp_runtime::Error::InvalidInput { name: key.into(), rule: e.to_string() })
    }
}

impl osp_runtime::pipeline::noise::NoiseSource for Repeated {
    fn init_latents(
        &mut self,
        _prompt: usize,
        shape: &[usize],
    ) -> osp_runtime::Result<osp_runtime::pipeline::noise::InitLatents> {
        Ok(osp_runtime::pipeline::noise::InitLatents::StandardNormal(self.tile("p0.latents.init_randn", shape)?))
    }

    fn step_noise(&mut self, _prompt: usize, step: usize, shape: &[usize]) -> osp_runtime::Result<ArrayD<f32>> {
        self.tile(&format!("p0.step{step}.noise"), shape)
    }
}

/// Several samples per prompt run as one CFG batch `[neg, neg, pos, pos]`; with the same noise in
/// every sample, each must equal the single-sample run (upstream pairs masks with the wrong
/// prompts here; each prompt runs on its own in osp, and the batch order is checked).
#[test]
fn samples_of_one_prompt_batch_like_single_runs() -> Result<()> {
    let meta = meta()?;
    let mut pipeline = Pipeline::open(bundle()?, &SessionOptions::new(Backend::OrtCpu).with_threads(2), None)?;
    let mut req = request(&meta, &pipeline.manifest().defaults)?;
    req.prompts.truncate(1);
    req.num_samples_per_prompt = 2;
    let req = pipeline.prepare(req)?;
    let out = pipeline.generate_prompt(&req, 0, &mut Repeated { n: 2 }, &mut Steps::default())?;
    let want = rec_f32("p0.latents.final")?;
    let half = want.len();
    let got: Vec<f32> = out.latents.iter().copied().collect();
    for k in 0..2 {
        let c = check_scaled(&format!("sample {k} of 2"), &got[k * half..(k + 1) * half], &want)?;
        println!("batch of 2, sample {k}: max scaled diff {:.3e}", c.max_abs);
    }
    ensure!(out.frames.len() == 2 && out.frames[0] == out.frames[1], "both samples give the same frames");
    Ok(())
}

/// Every prompt of the recorded request through the pipeline bundle at `dir` (recorded noise and
/// schedule), without comparing anything.
fn generate_all(dir: &Path) -> Result<Vec<osp_runtime::pipeline::PromptOutput>> {
    let opts = SessionOptions::new(Backend::OrtCpu).with_threads(2);
    let mut pipeline = Pipeline::open(dir, &opts, None)?.with_text_positions(TextPositions::Real);
    let req = pipeline.prepare(request(&meta()?, &pipeline.manifest().defaults)?)?;
    let io = e2e_dir().join("io.safetensors");
    let mut noise = ReplayNoise::open(Some(&io), Some(&io), SeededNoise::new(0))?;
    (0..req.prompts.len())
        .map(|p| Ok(pipeline.generate_prompt(&req, p, &mut noise, &mut osp_runtime::pipeline::NoObserver)?))
        .collect()
}

/// `--precision int8` is approximate: the replay of the official run with int8 linear layers in
/// mT5 and the DiT, against the f32 bundle's replay. Prints the final latents' max and mean error
/// (relative to their largest magnitude) and the frames' PSNR; docs/benchmarks.md records them.
#[test]
fn int8_pipeline_replay_error_against_f32() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let int8 = tmp.path().join("int8.pipeline");
    let opts = PipelineExportOptions {
        graph: ExportOptions { precision: osp_graphs::Precision::Int8, ..ExportOptions::default() },
        text_encoder_precision: None,
        defaults: PipelineDefaults::open_sora_plan_v13(),
    };
    export_pipeline(&PipelineSources::from_dir(&e2e_dir())?, &opts, &int8)?;
    let want = generate_all(bundle()?)?;
    let got = generate_all(&int8)?;
    for (p, (g, w)) in got.iter().zip(&want).enumerate() {
        let (a, e): (Vec<f32>, Vec<f32>) = (g.latents.iter().copied().collect(), w.latents.iter().copied().collect());
        let scale = e.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diffs: Vec<f64> = a.iter().zip(&e).map(|(x, y)| f64::from((x - y).abs() / scale)).collect();
        let max = diffs.iter().copied().fold(0.0, f64::max);
        let mean = diffs.iter().sum::<f64>() / diffs.len() as f64;
        let c = Approx::Cosine(0.99).compare(&a, &e);
        let (fa, fe): (Vec<f64>, Vec<f64>) =
            (g.frames[0].iter().map(|&v| f64::from(v)).collect(), w.frames[0].iter().map(|&v| f64::from(v)).collect());
        let mse = fa.iter().zip(&fe).map(|(x, y)| (x - y).powi(2)).sum::<f64>() / fa.len() as f64;
        let psnr = if mse == 0.0 { f64::INFINITY } else { 10.0 * (255.0f64.powi(2) / mse).log10() };
        println!(
            "int8 vs f32 replay, prompt {p}: latents max err {max:.4} mean err {mean:.5} (of max |latent| {scale:.3}), \
             cosine {:.5}; frames PSNR {psnr:.2} dB",
            c.cosine
        );
        ensure!(c.ok(), "prompt {p}: int8 latents cosine {:.4} vs f32", c.cosine);
        ensure!(psnr > 20.0, "prompt {p}: int8 frames PSNR {psnr:.2} dB vs f32");
    }
    Ok(())
}

/// A parallel pipeline holds only the DiT graphs it runs (the segments, once per rank; not the
/// single transformer graph nor its cached-text pair) and one VAE per rank for the spatial tiles.
#[test]
fn a_parallel_pipeline_loads_only_the_graphs_it_runs() -> Result<()> {
    use osp_runtime::parallel::ParallelPlan;
    use osp_runtime::pipeline::{ParallelPlacement, PipelineSpec};

    let opts = SessionOptions::new(Backend::OrtCpu).with_threads(1);
    let single = Pipeline::open(bundle()?, &opts, None)?;
    let graphs = single.dit_graphs();
    ensure!(
        !graphs.is_empty() && graphs.iter().all(|g| g.starts_with("transformer")),
        "single pipeline DiT graphs {graphs:?}"
    );
    ensure!(single.parallel().is_none() && single.vae_workers() == 1, "single pipeline");
    let placement = ParallelPlacement { plan: ParallelPlan { sp: 2, cfg_groups: 2 }, ranks: vec![opts.clone(); 4] };
    let parallel = Pipeline::load_parallel(PipelineSpec::open(bundle()?)?, &opts, None, &placement)?;
    let graphs = parallel.dit_graphs();
    ensure!(
        graphs.iter().any(|g| g == "sp_pre") && graphs.iter().all(|g| g.starts_with("sp_")),
        "parallel pipeline DiT graphs {graphs:?}"
    );
    ensure!(parallel.parallel().is_some() && parallel.vae_workers() == 4, "a VAE per rank");
    Ok(())
}

/// The TensorRT profiles `osp generate` derives for the parallel DiT's segment graphs cover every
/// symbolic dim of every segment graph the plan runs (so no engine falls back to first-seen
/// shapes), and give the ranks' shard: the CFG group's rows, the padded local frames.
#[test]
fn segment_profiles_cover_every_segment_graph() -> Result<()> {
    use osp_graphs::{BundleManifest, DitSegments};
    use osp_runtime::parallel::ParallelPlan;
    use osp_runtime::pipeline::trt_profile::segment_profiles;
    use osp_runtime::pipeline::PipelineSpec;
    use osp_runtime::session::gpu::trt_shapes;

    let spec = PipelineSpec::open(bundle()?)?;
    let req = request(&meta()?, &PipelineDefaults::open_sora_plan_v13())?;
    let dir = spec.dir().join(&spec.manifest().components.transformer);
    let manifest = BundleManifest::load(&dir)?;
    let protocol = DitSegments::read(&manifest.graphs)?.context("the e2e DiT has segments")?;
    let [_, _, frames, h, w] = spec.latent_shape(&req);
    for (sp, cfg_groups) in [(1, 1), (2, 1), (2, 2)] {
        let plan = ParallelPlan { sp, cfg_groups };
        for positions in [TextPositions::Padded, TextPositions::Real] {
            let profiles = segment_profiles(&protocol, plan, &spec, &req, positions).map_err(anyhow::Error::msg)?;
            ensure!(profiles.len() == protocol.graph_names(sp).len(), "a profile per graph at --sp {sp}");
            for (graph, range) in &profiles {
                let shapes = trt_shapes(graph, &manifest.graphs[graph], range)?;
                ensure!(shapes.is_some(), "`{graph}` has dynamic inputs, so it needs a profile");
            }
            let pre = trt_shapes("sp_pre", &manifest.graphs["sp_pre"], &profiles["sp_pre"])?.context("sp_pre")?;
            let rows = 2 * req.num_samples_per_prompt / cfg_groups;
            let local = frames.div_ceil(sp);
            ensure!(pre.opt.starts_with(&format!("hidden_states:{rows}x")), "{}", pre.opt);
            ensure!(pre.opt.contains(&format!("x{local}x")), "{} (local frames {local})", pre.opt);
            // One rank's shard, the same for every segment graph; packing only above degree 1.
            let range = &profiles[&protocol.pre].0;
            let patch = protocol.patch_size;
            let tokens = local * (h / patch) * (w / patch);
            let want =
                [("b", rows), ("t", local), ("h", h), ("w", w), ("m", tokens), ("p", sp), ("hp", protocol.heads / sp)];
            for (sym, v) in want {
                ensure!(range.get(sym) == Some(&[v; 3]), "--sp {sp}: `{sym}` {:?}, want {v}", range.get(sym));
            }
            let l = req.max_sequence_length;
            let text = if positions == TextPositions::Padded { [l; 3] } else { [1, l, l] };
            ensure!(range.get("l") == Some(&text), "`l` {:?}", range.get("l"));
            ensure!(profiles.values().all(|r| &r.0 == range), "one range for every segment graph");
            ensure!(profiles.contains_key(&protocol.pack_qkv) == (sp > 1), "pack_qkv at --sp {sp}");
        }
    }
    // A degree that leaves a rank only padding is refused with the split rule.
    if let Some(sp) = (2..=protocol.heads).find(|&p| protocol.heads % p == 0 && protocol.split(p, frames).is_err()) {
        let rule = protocol.split(sp, frames).unwrap_err();
        let plan = ParallelPlan { sp, cfg_groups: 1 };
        let e = segment_profiles(&protocol, plan, &spec, &req, TextPositions::Real).err().context("refused")?;
        ensure!(e == rule, "{e}");
    }
    Ok(())
}
