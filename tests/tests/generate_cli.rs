//! `osp generate` end to end on the pipeline bundle exported from the tiny official components in
//! `../shared/reference/e2e/`: each bad input is refused with an error naming its flag and rule,
//! a seed gives identical files and another seed different ones, mp4 / gif / png are written,
//! and a replay of the recorded noise reproduces the official frames.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use osp_graphs::Approx;
use osp_runtime::{read_safetensors, Tensor};

fn e2e() -> PathBuf {
    osp_tests::shared_reference().join("e2e")
}

fn osp(cache: &Path) -> Command {
    let mut cmd = Command::new(osp_tests::osp_binary().expect("the osp binary should be built"));
    for var in ["OSP_BACKEND", "OSP_THREADS", "OSP_TEXT_CACHE", "OSP_PIPELINE_BUNDLE"] {
        cmd.env_remove(var);
    }
    cmd.env("OSP_TEXT_CACHE", cache)
        .args(["--threads", "2", "generate", "--progress", "off", "--bundle"])
        .arg(osp_tests::small_e2e_pipeline());
    cmd
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn generate(tmp: &Path, out_dir: &str, extra: &[&str]) -> Output {
    osp(&tmp.join("cache"))
        .args(["--text_prompt", "A cat.", "--save_img_path"])
        .arg(tmp.join(out_dir))
        .args(extra)
        .output()
        .expect("osp should run")
}

#[test]
fn bad_inputs_name_the_flag_and_the_rule() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: &[(&[&str], &[&str])] = &[
        (&["--num_frames", "8"], &["--num_frames", "4n + 1", "got 8"]),
        (&["--num-frames", "0"], &["--num_frames", "4n + 1"]),
        (&["--height", "48"], &["--height", "multiple of 32", "got 48"]),
        (&["--width", "100"], &["--width", "multiple of 32", "got 100"]),
        (&["--num_sampling_steps", "0"], &["--num_sampling_steps", "at least 1"]),
        (&["--num_sampling_steps", "1001"], &["1001"]),
        (&["--guidance_scale", "0.5"], &["--guidance_scale", ">= 1"]),
        (&["--guidance-rescale", "1.5"], &["--guidance-rescale", "[0, 1]"]),
        (&["--num_samples_per_prompt", "0"], &["--num_samples_per_prompt", "at least 1"]),
        (&["--max_sequence_length", "1"], &["--max_sequence_length", "at least 2"]),
        (&["--prompt-template", "no slot"], &["--prompt-template", "{}"]),
        (&["--stream-chunk", "0"], &["--stream-chunk"]),
    ];
    for (args, needles) in cases {
        // `-v`: "graph loaded" is an info line.
        let out = generate(tmp.path(), "bad", &[*args, &["-v"]].concat());
        let msg = text(&out);
        assert!(!out.status.success(), "{args:?} should fail");
        for n in *needles {
            assert!(msg.contains(n), "{args:?}: `{n}` not in:\n{msg}");
        }
        assert!(!msg.contains("graph loaded"), "{args:?} must fail before any model loads:\n{msg}");
    }
    let out = osp(&tmp.path().join("cache")).args(["--text_prompt", "  "]).output().unwrap();
    assert!(!out.status.success() && text(&out).contains("--text_prompt"), "{}", text(&out));
    let missing = tmp.path().join("none.safetensors");
    std::fs::write(&missing, b"").unwrap();
    let out = generate(tmp.path(), "bad", &["--init-latents", missing.to_str().unwrap()]);
    assert!(!out.status.success() && text(&out).contains("none.safetensors"), "{}", text(&out));
}

fn file_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap())
        })
        .collect();
    files.sort();
    files
}

#[test]
fn a_seed_gives_identical_files_and_another_seed_different_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let args = ["--output-format", "gif", "--seed", "7", "--num_samples_per_prompt", "2"];
    let a = generate(tmp.path(), "a", &args);
    assert!(a.status.success(), "{}", text(&a));
    let b = generate(tmp.path(), "b", &args);
    assert!(b.status.success(), "{}", text(&b));
    let (fa, fb) = (file_bytes(&tmp.path().join("a")), file_bytes(&tmp.path().join("b")));
    let names: Vec<&str> = fa.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["EulerAncestralDiscrete_0_gs7.5_s3_i0.gif", "EulerAncestralDiscrete_0_gs7.5_s3_i1.gif"]);
    assert_eq!(fa, fb, "the same seed must give identical files");
    assert_ne!(fa[0].1, fa[1].1, "two samples of one prompt differ");
    let c = generate(tmp.path(), "c", &["--output-format", "gif", "--seed", "8", "--num_samples_per_prompt", "2"]);
    assert!(c.status.success(), "{}", text(&c));
    let fc = file_bytes(&tmp.path().join("c"));
    assert_ne!(fa[0].1, fc[0].1, "another seed must give another video");
    assert!(fa[0].1.starts_with(b"GIF89a"), "a GIF file");
}

#[test]
fn mp4_png_frames_and_single_images_are_written() {
    let tmp = tempfile::tempdir().unwrap();
    let out =
        generate(tmp.path(), "mp4", &["--text_prompt", "A dog.", "--sample_method", "DDIM", "--fps", "12", "--grid"]);
    assert!(out.status.success(), "{}", text(&out));
    for i in 0..2 {
        let p = tmp.path().join(format!("mp4/DDIM_{i}_gs7.5_s3.mp4"));
        let info = osp_runtime::video::probe(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert_eq!((info.width, info.height), (96, 64));
    }
    // Upstream's grid of both prompts: 2 rows x 1 column, 1 px padding, made even for H.264.
    let info = osp_runtime::video::probe(&tmp.path().join("mp4/DDIM_gs7.5_s3.mp4")).unwrap();
    assert_eq!((info.width, info.height), (98, 132));
    let out = generate(
        tmp.path(),
        "png",
        &["--output-format", "png", "--enable_tiling", "--spatial-tiling", "--tile-size", "8", "--tile-overlap", "2"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let frames = std::fs::read_dir(tmp.path().join("png/EulerAncestralDiscrete_0_gs7.5_s3")).unwrap().count();
    assert_eq!(frames, 9);
    let out = generate(tmp.path(), "img", &["--num_frames", "1", "--guidance_scale", "1"]);
    assert!(out.status.success(), "{}", text(&out));
    let png = std::fs::read(tmp.path().join("img/EulerAncestralDiscrete_0_gs1.0_s3.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG image");
}

/// `osp generate` replaying the official e2e run (its two prompts, 4 steps, the recorded initial
/// latents, step noise and schedule) into `tmp/<name>`, dumping the latents to
/// `tmp/<name>.safetensors` (returned beside the command).
fn replay(tmp: &Path, name: &str) -> (Command, PathBuf) {
    let io = e2e().join("io.safetensors");
    let dump = tmp.join(format!("{name}.safetensors"));
    let prompt0 = "A serene lake surrounded by snow-capped mountains at sunrise, with mist rising from the water \
                   and a lone wooden boat drifting slowly.";
    let mut cmd = osp(&tmp.join("cache"));
    cmd.args(["--text_prompt", prompt0, "A cat.", "--num-sampling-steps", "4", "--save_img_path"])
        .arg(tmp.join(name))
        .arg("--init-latents")
        .arg(&io)
        .arg("--step-noise")
        .arg(&io)
        .arg("--recorded-schedule")
        .arg(&io)
        .arg("--dump-latents")
        .arg(&dump);
    (cmd, dump)
}

#[test]
fn replaying_the_recorded_noise_reproduces_the_official_frames() {
    let tmp = tempfile::tempdir().unwrap();
    let io = e2e().join("io.safetensors");
    let (mut cmd, dump) = replay(tmp.path(), "out");
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let got = read_safetensors(&dump).unwrap();
    let want = read_safetensors(&io).unwrap();
    for p in 0..2 {
        let key = format!("p{p}.video.final");
        let (Some(Tensor::U8(a)), Some(Tensor::U8(b))) = (got.get(&key), want.get(&key)) else {
            panic!("`{key}` missing");
        };
        let (a, b): (Vec<f32>, Vec<f32>) =
            (a.iter().map(|&v| v.into()).collect(), b.iter().map(|&v| v.into()).collect());
        let c = Approx::OneLevel.compare(&a, &b);
        assert!(c.ok(), "{key}: {c}");
        for i in 0..4 {
            assert!(got.contains_key(&format!("p{p}.step{i}.latents")), "step {i} dumped");
        }
        for side in ["pos", "neg"] {
            let key = format!("p{p}.text.{side}.attention_mask");
            assert_eq!(got.get(&key), want.get(&key), "{key}");
            let key = format!("p{p}.text.{side}.embeds");
            let (a, b) = (got[&key].to_f32_vec(), want[&key].to_f32_vec());
            let c = Approx::Approximate.compare(&a, &b);
            assert!(c.ok(), "{key}: {c}");
        }
    }
}

#[test]
fn bench_prints_every_stage_and_writes_json() {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("bench.json");
    let mut cmd = Command::new(osp_tests::osp_binary().expect("the osp binary should be built"));
    for var in ["OSP_BACKEND", "OSP_THREADS", "OSP_TEXT_CACHE", "OSP_PIPELINE_BUNDLE"] {
        cmd.env_remove(var);
    }
    let out = cmd
        .args(["--threads", "2", "bench", "--warmup", "0", "--repeats", "2", "--text_prompt", "A cat.", "--bundle"])
        .arg(osp_tests::small_e2e_pipeline())
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for stage in ["tokenize", "text_encode", "denoise_step", "vae_decode", "write"] {
        assert!(table.contains(stage), "{stage} missing from:\n{table}");
        let samples = report["samples_s"][stage].as_array().unwrap_or_else(|| panic!("{stage} samples"));
        let want = if stage == "denoise_step" { 2 * 3 } else { 2 };
        assert_eq!(samples.len(), want, "{stage}");
        assert!(samples.iter().all(|s| s.as_f64().is_some_and(|v| v > 0.0)), "{stage}: {samples:?}");
    }
    assert_eq!(report["backend"], "ort-cpu");
    assert_eq!(report["cfg_batch"], 2);
}

/// The DiT graphs a `-v` run of `osp` logged as loaded (`graph loaded` lines), once each.
fn dit_graphs_loaded(log: &str) -> Vec<String> {
    let mut graphs: Vec<String> = log
        .lines()
        .filter(|l| l.contains("graph loaded"))
        .filter_map(|l| l.split("graph loaded graph=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(|g| g.trim_matches('"').to_string())
        .filter(|g| g.starts_with("transformer") || g.starts_with("sp_"))
        .collect();
    graphs.sort();
    graphs.dedup();
    graphs
}

/// `--sp 2` and `--cfg-parallel` (alone and together) replay the recorded noise to the same latents
/// as one device (`Close`) and to the official frames (`OneLevel`), loading only the DiT graphs
/// they run: the segments, never the single transformer graph (whose weights would sit in memory
/// twice).
#[test]
fn sp_and_cfg_parallel_reproduce_the_single_device_run() {
    let tmp = tempfile::tempdir().unwrap();
    let io = e2e().join("io.safetensors");
    let run = |name: &str, extra: &[&str]| {
        let (mut cmd, dump) = replay(tmp.path(), name);
        let out = cmd.arg("-v").args(extra).output().unwrap();
        assert!(out.status.success(), "{name}: {}", text(&out));
        let graphs = dit_graphs_loaded(&text(&out));
        let single = graphs.iter().any(|g| g.starts_with("transformer"));
        let segments = graphs.iter().any(|g| g.starts_with("sp_"));
        assert_eq!((single, segments), (extra.is_empty(), !extra.is_empty()), "{name}: DiT graphs loaded {graphs:?}");
        read_safetensors(&dump).unwrap()
    };
    let single = run("single", &[]);
    let official = read_safetensors(&io).unwrap();
    for (name, extra) in
        [("sp2", &["--sp", "2"][..]), ("cfg", &["--cfg-parallel"]), ("both", &["--sp", "2", "--cfg-parallel"])]
    {
        let got = run(name, extra);
        assert_eq!(got.len(), single.len(), "{name}: dumped keys");
        for (key, want) in &single {
            let a = &got[key];
            match (a, want) {
                (Tensor::U8(_), Tensor::U8(_)) => {
                    let f = |t: &Tensor| -> Vec<f32> { t.to_f32_vec() };
                    let c = Approx::OneLevel.compare(&f(a), &f(want));
                    assert!(c.ok(), "{name} {key} vs one device: {c}");
                    let c = Approx::OneLevel.compare(&f(a), &f(&official[key]));
                    assert!(c.ok(), "{name} {key} vs official: {c}");
                }
                (Tensor::F32(_), Tensor::F32(_)) => {
                    let c = Approx::Close.compare(&a.to_f32_vec(), &want.to_f32_vec());
                    assert!(c.ok(), "{name} {key} vs one device: {c}");
                }
                _ => assert_eq!(a, want, "{name} {key}"),
            }
        }
    }
}

#[test]
fn parallel_flags_are_refused_before_loading() {
    let tmp = tempfile::tempdir().unwrap();
    for (extra, needles) in [
        (&["--sp", "3"][..], &["--sp", "divide the 2 attention heads"][..]),
        (&["--sp", "4"], &["--sp", "divide"]),
        (&["--cfg-parallel", "--guidance_scale", "1"], &["--cfg-parallel", "guidance"]),
        (&["--sp", "2", "--devices", "0"], &["--devices", "need 2 devices"]),
        (&["--sp", "2", "--devices", "1,1"], &["--devices", "listed twice"]),
        (&["--devices", "1,1"], &["--devices", "listed twice"]),
        (&["--devices=-1"], &["--devices", "negative"]),
        (&["--devices", "0,x"], &["--devices", "not a device ordinal"]),
        (&["--sp", "0", "--devices", "0"], &["--sp", "at least 1"]),
    ] {
        let out = generate(tmp.path(), "refused", extra);
        let msg = text(&out);
        assert!(!out.status.success(), "{extra:?} should be refused");
        for n in needles {
            assert!(msg.contains(n), "{extra:?}: `{n}` missing from: {msg}");
        }
        assert!(!tmp.path().join("refused").exists(), "{extra:?}: nothing is written");
    }
}

#[test]
fn bench_with_sp_prints_segment_compute_and_exchange_times() {
    let mut cmd = Command::new(osp_tests::osp_binary().expect("the osp binary should be built"));
    for var in ["OSP_BACKEND", "OSP_THREADS", "OSP_TEXT_CACHE", "OSP_PIPELINE_BUNDLE"] {
        cmd.env_remove(var);
    }
    let out = cmd
        .args(["--threads", "1", "bench", "--warmup", "0", "--repeats", "1", "--sp", "2", "--text_prompt", "A cat."])
        .args(["--num-sampling-steps", "2", "--bundle"])
        .arg(osp_tests::small_e2e_pipeline())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    for needle in ["parallel DiT: --sp 2", "core_full", "qkv", "post", "all_to_all", "all_gather", "total"] {
        assert!(table.contains(needle), "`{needle}` missing from:\n{table}");
    }
}

/// The PNG frames of one video folder written by `--output-format png`, in order.
fn png_frames(dir: &Path) -> ndarray::Array4<u8> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    paths.sort();
    let frames: Vec<_> = paths.iter().map(|p| osp_runtime::video::read_all(p, None).unwrap()).collect();
    let views: Vec<_> = frames.iter().map(|f| f.view()).collect();
    ndarray::concatenate(ndarray::Axis(0), &views).unwrap()
}

/// With `--sp 2` the VAE's spatial tiles are spread over the ranks' two devices (two CPU workers
/// here), and the decode is bit-identical to one worker's with the same session options: the f32
/// video of `--dump-latents` (`Vae::decode`'s path) and the written PNG frames (the uint8 path),
/// whole and streamed tiles.
#[test]
fn sp_spreads_the_vae_tiles_over_the_devices_bit_identically() {
    use osp_runtime::pipeline::{DecodeOptions, PipelineSpec};
    use osp_runtime::vae::{TilingConfig, Vae};
    use osp_runtime::{Backend, Bundle, SessionOptions};

    let tmp = tempfile::tempdir().unwrap();
    let spec = PipelineSpec::open(osp_tests::small_e2e_pipeline()).unwrap();
    let vae_bundle = Bundle::open(spec.dir().join(&spec.manifest().components.vae)).unwrap();
    // What each rank gets from `osp --threads 2 generate --sp 2` on ort-cpu.
    let mut one = Vae::load(&vae_bundle, &SessionOptions::new(Backend::OrtCpu).with_threads(2)).unwrap();
    let tiling = Some(TilingConfig { tile_size: 4, overlap: 1 });
    let tiles = ["--spatial-tiling", "--tile-size", "4", "--tile-overlap", "1"];
    let common = ["--sp", "2", "--num-sampling-steps", "2", "--seed", "5", "--text-positions", "real", "-v"];
    for (name, chunk) in [("whole", None), ("streamed", Some(1))] {
        let chunk_args: Vec<String> =
            chunk.iter().flat_map(|c: &usize| ["--stream-chunk".into(), c.to_string()]).collect();
        let chunk_args: Vec<&str> = chunk_args.iter().map(String::as_str).collect();
        let dump = tmp.path().join(format!("{name}.safetensors"));
        let out = generate(
            tmp.path(),
            &format!("{name}_dump"),
            &[&common[..], &tiles, &chunk_args, &["--dump-latents", dump.to_str().unwrap()]].concat(),
        );
        assert!(out.status.success(), "{name}: {}", text(&out));
        assert!(text(&out).contains("vae_workers=2"), "{name}: the VAE has a worker per rank:\n{}", text(&out));
        let dumped = read_safetensors(&dump).unwrap();
        let (Some(Tensor::F32(latents)), Some(Tensor::F32(decoded))) =
            (dumped.get("p0.latents.final"), dumped.get("p0.vae.decoded"))
        else {
            panic!("{name}: the dump holds the f32 final latents and decoded video")
        };
        let z = one.unnormalize(latents).unwrap();
        let opts = DecodeOptions { chunk, tiling };
        assert!(tiling.unwrap().tile_count(z.shape()[3], z.shape()[4]) > 2, "several tiles per worker");
        let want = one.decode(z.view(), &opts).unwrap();
        assert_eq!(decoded.shape(), want.shape(), "{name}");
        let differ = decoded.iter().zip(want.iter()).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        assert_eq!(differ, 0, "{name}: {differ} decoded values differ from one worker's");

        let out = generate(
            tmp.path(),
            &format!("{name}_png"),
            &[&common[..], &tiles, &chunk_args, &["--output-format", "png"]].concat(),
        );
        assert!(out.status.success(), "{name}: {}", text(&out));
        let got = png_frames(&tmp.path().join(format!("{name}_png/EulerAncestralDiscrete_0_gs7.5_s2")));
        let want = one.decode_frames(z.view(), &opts).unwrap().remove(0);
        let want = want.slice(ndarray::s![..9, ..64, ..96, ..]).to_owned();
        assert!(got == want, "{name}: the written frames differ from one worker's decode");
    }
}

/// `--devices 0,1` without `--sp`: the single DiT graph on the first device gives the one-device
/// run's latents bit for bit, and the VAE's tiles spread over two CPU workers (each with half of
/// `--threads`, as `osp decode --devices`) give one such worker's decode bit for bit, whole and
/// streamed inside tiles. (ORT's CPU kernels round differently at 1 and 2 threads, so the frames
/// match the 2-thread one-device run at `OneLevel`.)
#[test]
fn devices_alone_spread_the_vae_tiles_and_equal_one_device_bit_for_bit() {
    use osp_runtime::parallel::workers::worker_options;
    use osp_runtime::pipeline::{DecodeOptions, PipelineSpec};
    use osp_runtime::vae::{TilingConfig, Vae};
    use osp_runtime::{Backend, Bundle, SessionOptions};

    let tmp = tempfile::tempdir().unwrap();
    let spec = PipelineSpec::open(osp_tests::small_e2e_pipeline()).unwrap();
    let vae_bundle = Bundle::open(spec.dir().join(&spec.manifest().components.vae)).unwrap();
    // What each VAE worker gets from `osp --threads 2 generate --devices 0,1` on ort-cpu.
    let worker = worker_options(&SessionOptions::new(Backend::OrtCpu).with_threads(2), &[0, 1]).unwrap().remove(0);
    assert_eq!(worker.threads, Some(1));
    let mut one = Vae::load(&vae_bundle, &worker).unwrap();
    let tiling = Some(TilingConfig { tile_size: 4, overlap: 1 });
    let tiles = ["--spatial-tiling", "--tile-size", "4", "--tile-overlap", "1"];
    let common =
        ["--num-sampling-steps", "2", "--seed", "5", "--text-positions", "real", "-v", "--output-format", "png"];
    let bits = |t: &Tensor| t.to_f32_vec().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    for (name, chunk) in [("whole", None), ("streamed", Some(1))] {
        let chunk_args: Vec<String> =
            chunk.iter().flat_map(|c: &usize| ["--stream-chunk".into(), c.to_string()]).collect();
        let chunk_args: Vec<&str> = chunk_args.iter().map(String::as_str).collect();
        let run = |devices: &[&str]| {
            let tag = format!("{name}_{}", devices.len());
            let dump = tmp.path().join(format!("{tag}.safetensors"));
            let out = generate(
                tmp.path(),
                &tag,
                &[&common[..], &tiles, &chunk_args, devices, &["--dump-latents", dump.to_str().unwrap()]].concat(),
            );
            let log = text(&out);
            assert!(out.status.success(), "{tag}: {log}");
            let workers = if devices.is_empty() { "vae_workers=1" } else { "vae_workers=2" };
            assert!(log.contains(workers), "{tag}: {workers} expected in:\n{log}");
            let graphs = dit_graphs_loaded(&log);
            assert!(
                !graphs.is_empty() && graphs.iter().all(|g| g.starts_with("transformer")),
                "{tag}: the single DiT graph, got {graphs:?}"
            );
            let frames = png_frames(&tmp.path().join(format!("{tag}/EulerAncestralDiscrete_0_gs7.5_s2")));
            (read_safetensors(&dump).unwrap(), frames)
        };
        let (plain, plain_frames) = run(&[]);
        let (spread, frames) = run(&["--devices", "0,1"]);
        assert_eq!(plain.keys().collect::<Vec<_>>(), spread.keys().collect::<Vec<_>>(), "{name}: dumped keys");
        for (key, want) in plain.iter().filter(|(k, _)| !k.contains(".vae.") && !k.contains(".video.")) {
            assert!(bits(&spread[key]) == bits(want), "{name} {key}: differs from the one-device run");
        }
        let Some(Tensor::F32(latents)) = spread.get("p0.latents.final") else { panic!("{name}: final latents") };
        let Some(decoded) = spread.get("p0.vae.decoded") else { panic!("{name}: the decoded video") };
        let z = one.unnormalize(latents).unwrap();
        let opts = DecodeOptions { chunk, tiling };
        assert!(tiling.unwrap().tile_count(z.shape()[3], z.shape()[4]) > 2, "several tiles per worker");
        let want = one.decode(z.view(), &opts).unwrap();
        assert_eq!(decoded.shape(), want.shape(), "{name}");
        assert!(bits(decoded) == bits(&Tensor::F32(want.into_dyn())), "{name}: the decode differs from one worker's");
        let want = one.decode_frames(z.view(), &opts).unwrap().remove(0);
        let want = want.slice(ndarray::s![..9, ..64, ..96, ..]).to_owned();
        assert!(frames == want, "{name}: the written frames differ from one worker's decode");
        let f = |a: &ndarray::Array4<u8>| a.iter().map(|&v| f32::from(v)).collect::<Vec<_>>();
        let c = Approx::OneLevel.compare(&f(&frames), &f(&plain_frames));
        assert!(c.ok(), "{name}: frames vs the one-device run: {c}");
    }
}
