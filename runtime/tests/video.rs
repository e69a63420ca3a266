//! The video path on the real clips in `../shared/reference/assets/` (bikes.mp4 640x272, 250
//! frames at 25 fps; carphone_pristine.mp4 176x144, 120 frames): decoding, sampling, encoding,
//! bad input, and `osp reconstruct` / `osp eval` end to end on the stand-in VAE bundle made by
//! `tests/fixtures/make_vae_fixture.py`.

use std::path::{Path, PathBuf};
use std::process::Command;

use ndarray::Array4;
use osp_runtime::metrics::{psnr_per_frame, PSNR_IDENTICAL};
use osp_runtime::video::{self, EncodeOptions};
use osp_runtime::Error;

fn asset(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/reference/assets").join(name)
}

fn vae_bundle() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vae_bundle")
}

fn frame_sum(frames: &Array4<u8>, t: usize) -> u64 {
    frames.index_axis(ndarray::Axis(0), t).iter().map(|&v| v as u64).sum()
}

// Reference values from decord (upstream's reader), which equals `ffmpeg -pix_fmt rgb24` here:
//   vr = decord.VideoReader("bikes.mp4"); d = vr.get_batch(np.linspace(0, 33, 17, dtype=int)).asnumpy()
//   [int(d[i].astype(np.uint64).sum()) for i in (0, 1, 16)] -> 70391934, 70772540, 35315356
//   d[0, 0, 0], d[16, 271, 639], d[1, 100, 200] -> [108, 97, 90], [23, 28, 27], [88, 77, 70]
#[test]
fn bikes_frames_and_pixels_match_the_upstream_reader() {
    let path = asset("bikes.mp4");
    let info = video::probe(&path).unwrap();
    assert_eq!((info.width, info.height, info.declared_frames), (640, 272, 250));
    assert_eq!(info.fps, Some(25.0));
    let frames = video::read_video(&path, 17, 2).unwrap();
    assert_eq!(frames.shape(), &[17, 272, 640, 3]);
    assert_eq!([frame_sum(&frames, 0), frame_sum(&frames, 1), frame_sum(&frames, 16)], [70391934, 70772540, 35315356]);
    let px = |t: usize, y: usize, x: usize| [0, 1, 2].map(|c| frames[[t, y, x, c]]);
    assert_eq!(px(0, 0, 0), [108, 97, 90]);
    assert_eq!(px(16, 271, 639), [23, 28, 27]);
    assert_eq!(px(1, 100, 200), [88, 77, 70]);
}

// a = decord.VideoReader("carphone_pristine.mp4").get_batch(range(120)).asnumpy()
// int(a.astype(np.uint64).sum()) -> 920819352; the last frame's sum -> 7736373
#[test]
fn carphone_decodes_every_frame() {
    let frames = video::read_all(&asset("carphone_pristine.mp4"), None).unwrap();
    assert_eq!(frames.shape(), &[120, 144, 176, 3]);
    assert_eq!(frames.iter().map(|&v| v as u64).sum::<u64>(), 920819352);
    assert_eq!(frame_sum(&frames, 119), 7736373);
}

#[test]
fn too_short_missing_and_unreadable_videos_name_the_file_and_rule() {
    let carphone = asset("carphone_pristine.mp4");
    let e = video::read_video(&carphone, 65, 2).unwrap_err();
    assert!(matches!(e, Error::TooFewFrames { needed: 130, decoded: 120, .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("carphone_pristine.mp4") && msg.contains("needs the first 130 frames"), "{msg}");

    let dir = tempfile::tempdir().unwrap();
    let e = video::read_video(&dir.path().join("nope.mp4"), 5, 1).unwrap_err().to_string();
    assert!(e.contains("nope.mp4") && e.contains("no such file"), "{e}");

    let text = dir.path().join("notes.mp4");
    std::fs::write(&text, "not a video at all").unwrap();
    let e = video::read_video(&text, 5, 1).unwrap_err().to_string();
    assert!(e.contains("notes.mp4") && e.contains("cannot open video"), "{e}");

    // An mp4 cut short loses its index (written last): unreadable.
    let bytes = std::fs::read(asset("bikes.mp4")).unwrap();
    let cut = dir.path().join("cut.mp4");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = video::read_video(&cut, 5, 1).unwrap_err().to_string();
    assert!(e.contains("cut.mp4") && e.contains("truncated"), "{e}");
}

#[test]
fn a_truncated_stream_reports_the_frames_it_had() {
    let dir = tempfile::tempdir().unwrap();
    let frames = Array4::from_shape_fn((17, 32, 48, 3), |(t, y, x, c)| ((t * 9 + y * 3 + x * 2 + c * 40) % 256) as u8);
    let mkv = dir.path().join("clip.mkv");
    video::write_video(&mkv, frames.view(), 25.0, &EncodeOptions::default()).unwrap();
    let bytes = std::fs::read(&mkv).unwrap();
    std::fs::write(&mkv, &bytes[..bytes.len() / 2]).unwrap();
    let e = video::read_video(&mkv, 17, 1).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::TooFewFrames { needed: 17, .. }), "{e:?}");
    assert!(msg.contains("clip.mkv") && msg.contains("truncated"), "{msg}");
}

#[test]
fn h264_round_trip_keeps_count_size_and_pixels() {
    let dir = tempfile::tempdir().unwrap();
    let src = video::read_video(&asset("carphone_pristine.mp4"), 9, 1).unwrap();
    let out = dir.path().join("sub/rt.mp4");
    video::write_video(&out, src.view(), 30.0, &EncodeOptions::default()).unwrap();
    let names: Vec<_> = std::fs::read_dir(dir.path().join("sub")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("rt.mp4")], "no temporary file is left behind");
    let info = video::probe(&out).unwrap();
    assert_eq!((info.width, info.height, info.declared_frames), (176, 144, 9));
    assert_eq!(info.fps, Some(30.0));
    let back = video::read_all(&out, None).unwrap();
    assert_eq!(back.shape(), src.shape());
    // crf 18 with 4:2:0 chroma: well above 30 dB on natural video, far from identical.
    for p in psnr_per_frame(src.view(), back.view()).unwrap() {
        assert!(p > 30.0 && p < PSNR_IDENTICAL, "{p}");
    }
}

#[test]
fn png_frames_are_lossless() {
    let dir = tempfile::tempdir().unwrap();
    let src = video::read_video(&asset("carphone_pristine.mp4"), 3, 5).unwrap();
    let out = dir.path().join("frames");
    video::write_video(&out, src.view(), 30.0, &EncodeOptions::default()).unwrap();
    for t in 0..3 {
        let png = video::read_all(&out.join(format!("frame_{t:05}.png")), None).unwrap();
        assert_eq!(png.index_axis(ndarray::Axis(0), 0), src.index_axis(ndarray::Axis(0), t));
    }
}

#[test]
fn odd_sizes_and_unknown_extensions_are_write_errors() {
    let dir = tempfile::tempdir().unwrap();
    let odd = Array4::<u8>::zeros((2, 15, 16, 3));
    let e = video::write_video(&dir.path().join("o.mp4"), odd.view(), 30.0, &EncodeOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("o.mp4") && e.contains("even frame size"), "{e}");
    let e = video::write_video(&dir.path().join("o.xyz"), odd.view(), 30.0, &EncodeOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("unsupported output extension"), "{e}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "failed writes leave nothing");
}

#[test]
fn vae_shape_rules_are_checked() {
    assert!(video::check_vae_shape("x", 65, 512, 512).is_ok());
    let e = video::check_vae_shape("--num-frames", 64, 512, 512).unwrap_err().to_string();
    assert!(e.contains("--num-frames") && e.contains("4n + 1") && e.contains("64"), "{e}");
    let e = video::check_vae_shape("--height", 65, 500, 512).unwrap_err().to_string();
    assert!(
        e.contains("--height") && e.contains("height must be a positive multiple of 8") && e.contains("got 500"),
        "{e}"
    );
}

fn osp() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_osp"));
    for var in
        ["OSP_BACKEND", "OSP_THREADS", "OSP_VAE_BUNDLE", "OSP_VAE_TILE_SIZE", "OSP_VAE_TILE_OVERLAP", "OSP_VAE_CHUNK"]
    {
        cmd.env_remove(var);
    }
    cmd.arg("--threads").arg("2");
    cmd
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn reconstruct_writes_a_playable_mp4_of_the_right_length() {
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("rec.mp4");
    // Upstream flag spellings, with a tile small enough that the 8x12 latent is decoded in 4 tiles.
    run_ok(
        osp()
            .arg("reconstruct")
            .arg("--video_path")
            .arg(asset("bikes.mp4"))
            .arg("--rec_path")
            .arg(&rec)
            .args(["--num_frames", "9", "--height", "64", "--width", "96", "--sample_rate", "2", "--fps", "15"])
            .args(["--tile-size", "8", "--tile-overlap", "4", "--preset", "ultrafast"])
            .arg("--ae_path")
            .arg(vae_bundle()),
    );
    let info = video::probe(&rec).unwrap();
    assert_eq!((info.width, info.height, info.declared_frames, info.fps), (96, 64, 9, Some(15.0)));
    let got = video::read_all(&rec, None).unwrap();
    // The stand-in VAE averages 4x8x8 causal blocks: close to the input, far from identical.
    let input = video::read_video(&asset("bikes.mp4"), 9, 2).unwrap();
    let x = video::preprocess(input.view(), 64, 96);
    let original = video::to_u8_frames(x.index_axis(ndarray::Axis(0), 0));
    let psnr = psnr_per_frame(original.view(), got.view()).unwrap();
    assert!(psnr.iter().all(|&p| p > 12.0 && p < 40.0), "{psnr:?}");

    let grid = dir.path().join("grid.mp4");
    run_ok(
        osp()
            .arg("reconstruct")
            .arg("--video-path")
            .arg(asset("bikes.mp4"))
            .arg("--rec-path")
            .arg(&grid)
            .args(["--num-frames", "5", "--height", "64", "--width", "64", "--grid", "--preset", "ultrafast"])
            .arg("--bundle")
            .arg(vae_bundle()),
    );
    let g = video::read_all(&grid, None).unwrap();
    assert_eq!(g.shape(), &[5, 64, 128, 3]);
}

#[test]
fn reconstruct_rejects_bad_shapes_and_bad_videos_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("rec.mp4");
    let base = |frames: &str, h: &str, video: &Path| {
        let mut c = osp();
        c.arg("reconstruct").arg("--video-path").arg(video).arg("--rec-path").arg(&rec);
        c.args(["--num-frames", frames, "--height", h, "--width", "64"]).arg("--bundle").arg(vae_bundle());
        c
    };
    let bikes = asset("bikes.mp4");
    for (frames, h, want) in [
        ("8", "64", "num_frames must be 4n + 1"),
        ("9", "60", "height must be a positive multiple of 8 for the 8x spatial compression, got 60"),
    ] {
        let out = base(frames, h, &bikes).output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{err}");
    }
    let cut = dir.path().join("cut.mp4");
    let bytes = std::fs::read(&bikes).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    let out = base("9", "64", &cut).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cut.mp4") && err.contains("truncated"), "{err}");
    let out = base("129", "64", &asset("carphone_pristine.mp4")).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("too few frames") && err.contains("120 decoded"), "{err}");
    assert!(!rec.exists(), "a failed run writes no output");
}

#[test]
fn folder_reconstruction_then_eval_against_the_origins() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real");
    std::fs::create_dir_all(real.join("nested")).unwrap();
    std::fs::copy(asset("carphone_pristine.mp4"), real.join("carphone.mp4")).unwrap();
    std::fs::copy(asset("bikes.mp4"), real.join("nested/bikes.mp4")).unwrap();
    let gen = dir.path().join("gen");
    run_ok(
        osp()
            .arg("reconstruct")
            .arg("--real_video_dir")
            .arg(&real)
            .arg("--generated_video_dir")
            .arg(&gen)
            .args(["--num-frames", "5", "--height", "48", "--width", "48", "--output_origin", "--sample_fps", "24"])
            .args(["--sample-rate", "2", "--preset", "ultrafast"])
            .arg("--bundle")
            .arg(vae_bundle()),
    );
    for rel in ["carphone.mp4", "nested/bikes.mp4", "origin/carphone.mp4", "origin/nested/bikes.mp4"] {
        let info = video::probe(&gen.join(rel)).unwrap();
        assert_eq!((info.width, info.height, info.declared_frames, info.fps), (48, 48, 5, Some(12.0)), "{rel}");
    }

    let report = dir.path().join("report.json");
    let stdout = run_ok(
        osp()
            .arg("eval")
            .arg("--real_video_dir")
            .arg(gen.join("origin"))
            .arg("--generated_video_dir")
            .arg(&gen)
            .arg("--json")
            .arg(&report),
    );
    assert!(stdout.contains("carphone.mp4") && stdout.contains("psnr") && stdout.contains("ssim"), "{stdout}");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(json["frames"], 5, "only the top-level carphone.mp4 is paired: {json}");
    let psnr = json["mean"]["psnr"].as_f64().unwrap();
    let ssim = json["mean"]["ssim"].as_f64().unwrap();
    assert!(psnr > 12.0 && psnr < 60.0 && ssim > 0.2 && ssim < 1.0, "{json}");

    // The same folder against itself is identical.
    let stdout = run_ok(
        osp()
            .arg("eval")
            .arg("--real-video-dir")
            .arg(&gen)
            .arg("--generated-video-dir")
            .arg(&gen)
            .args(["--metric", "psnr"]),
    );
    assert!(stdout.contains("100.0000"), "{stdout}");
}

/// Tiled decoding through a real ONNX session equals whole decoding (the stand-in decoder is
/// per latent pixel, so any difference would come from the tiling plan or the blending).
#[test]
fn tiled_decoding_through_the_bundle_equals_whole_decoding() {
    use osp_graphs::Approx;
    use osp_runtime::vae::{DecodeOptions, TilingConfig, Vae};
    use osp_runtime::{Bundle, SessionOptions};

    let bundle = Bundle::open(vae_bundle()).unwrap();
    let mut vae = Vae::load(&bundle, &SessionOptions::default().with_threads(1)).unwrap();
    let z = ndarray::Array5::from_shape_fn((1, 4, 3, 10, 14), |(_, c, t, y, x)| {
        ((c * 37 + t * 11 + y * 7 + x * 3) % 19) as f32 / 9.5 - 1.0
    });
    let whole = vae.decode(z.view(), &DecodeOptions::whole()).unwrap();
    assert_eq!(whole.shape(), &[1, 3, 9, 80, 112]);
    for (tile_size, overlap) in [(4, 2), (6, 1), (16, 8)] {
        let opts = DecodeOptions { chunk: None, tiling: Some(TilingConfig { tile_size, overlap }) };
        let tiled = vae.decode(z.view(), &opts).unwrap();
        let c = Approx::Exact.compare(tiled.as_slice().unwrap(), whole.as_slice().unwrap());
        assert!(c.ok(), "tile {tile_size} overlap {overlap}: {c:?}");
    }
}

/// `osp decode`: latents from safetensors to an mp4 (tiled by default), the sample tensor saved
/// alongside, one JSON report line; `--chunk` on a bundle without streaming graphs is an error.
#[test]
fn decode_writes_the_video_and_reports_the_decode() {
    use osp_runtime::{read_safetensors, write_safetensors, Tensor};

    let dir = tempfile::tempdir().unwrap();
    let latents = dir.path().join("z.safetensors");
    let z =
        ndarray::ArrayD::from_shape_fn(vec![1, 4, 3, 6, 10], |i| ((i[1] * 5 + i[3] * 3 + i[4]) % 7) as f32 / 3.5 - 1.0);
    write_safetensors(&latents, [("z", &Tensor::F32(z))]).unwrap();
    let out = dir.path().join("clip.mp4");
    let sample = dir.path().join("sample.safetensors");
    // `osp decode` of `latents` to `out` (and the f32 sample to `sample`); its JSON report.
    let decode = |out: &std::path::Path, sample: Option<&std::path::Path>| -> serde_json::Value {
        let mut cmd = osp();
        cmd.arg("decode").arg("--bundle").arg(vae_bundle()).arg("--latents").arg(&latents).arg("--out").arg(out);
        if let Some(sample) = sample {
            cmd.arg("--save-sample").arg(sample);
        }
        cmd.args(["--tile-size", "4", "--tile-overlap", "1", "--fps", "12", "--preset", "ultrafast"]);
        serde_json::from_str(run_ok(&mut cmd).trim()).unwrap()
    };
    let report = decode(&out, Some(&sample));
    assert_eq!(report["sample"], serde_json::json!([1, 3, 9, 48, 80]), "{report}");
    assert_eq!(report["chunk"], serde_json::Value::Null, "the stand-in bundle has no streaming graphs");
    assert_eq!(report["tiling"]["tile_size"], 4);
    let info = video::probe(&out).unwrap();
    assert_eq!((info.width, info.height, info.declared_frames), (80, 48, 9));
    assert_eq!(read_safetensors(&sample).unwrap()["sample"].shape(), &[1, 3, 9, 48, 80]);

    // Without --save-sample the decode goes straight to uint8 frames: the same video.
    let frames_only = dir.path().join("frames_only.mp4");
    let report = decode(&frames_only, None);
    assert_eq!(report["sample"], serde_json::json!([1, 3, 9, 48, 80]), "{report}");
    assert_eq!(std::fs::read(&frames_only).unwrap(), std::fs::read(&out).unwrap(), "same frames, same H.264 bytes");

    // --devices: the tiles on two CPU workers (`--threads 2` split into one each) give the sample
    // of one worker with one thread, bit for bit.
    let sample_of = |threads: &str, devices: Option<&str>, name: &str| {
        let path = dir.path().join(name);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_osp"));
        cmd.env_remove("OSP_BACKEND").env_remove("OSP_VAE_TILE_SIZE").env_remove("OSP_VAE_TILE_OVERLAP");
        cmd.args(["--threads", threads, "decode", "--tile-size", "4", "--tile-overlap", "1"]);
        cmd.arg("--bundle").arg(vae_bundle()).arg("--latents").arg(&latents).arg("--save-sample").arg(&path);
        if let Some(d) = devices {
            cmd.args(["--devices", d]);
        }
        let report: serde_json::Value = serde_json::from_str(run_ok(&mut cmd).trim()).unwrap();
        assert_eq!(report["workers"], if devices.is_some() { 2 } else { 1 }, "{report}");
        read_safetensors(&path).unwrap().remove("sample").unwrap().to_f32_vec()
    };
    let one = sample_of("1", None, "one.safetensors");
    let two = sample_of("2", Some("0,1"), "two.safetensors");
    assert!(one.iter().zip(&two).all(|(a, b)| a.to_bits() == b.to_bits()) && one.len() == two.len());
    let mut cmd = osp();
    cmd.arg("decode").arg("--bundle").arg(vae_bundle()).arg("--latents").arg(&latents).args(["--devices", "0,0"]);
    let err = cmd.output().unwrap();
    assert!(!err.status.success());
    assert!(String::from_utf8_lossy(&err.stderr).contains("listed twice"));

    let err = osp()
        .arg("decode")
        .arg("--bundle")
        .arg(vae_bundle())
        .arg("--latents")
        .arg(&latents)
        .args(["--chunk", "2"])
        .output()
        .unwrap();
    assert!(!err.status.success());
    let stderr = String::from_utf8_lossy(&err.stderr);
    assert!(stderr.contains("--chunk needs a bundle with streaming decoder graphs"), "{stderr}");
}
