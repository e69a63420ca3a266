//! The data pipeline on a generated shapes data set: planning, buckets, deterministic order and
//! resumable positions, missing and corrupt files skipped, decoded pixels that keep the shape's
//! colour and motion.

use std::collections::BTreeSet;

use osp_trainer::data::shapes::{generate, ShapesConfig, ShapesItem};
use osp_trainer::data::{read_data_file, DataConfig, DataPosition, Dataset};

fn config(seed: u64) -> DataConfig {
    DataConfig {
        num_frames: 9,
        train_fps: 16.0,
        sample_rate: 1,
        max_height: 32,
        max_width: 32,
        max_hxw: None,
        min_hxw: None,
        force_resolution: true,
        hw_stride: 16,
        ae_stride_t: 4,
        total_batch_size: 2,
        min_bucket_items: 2,
        drop_short_ratio: 0.0,
        speed_factor: 1.0,
        vae_clips: None,
        seed,
    }
}

#[test]
fn shapes_data_plans_loads_and_skips_bad_files() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("shapes");
    let items =
        generate(&out, &ShapesConfig { count: 6, num_frames: 9, height: 32, width: 32, seed: 3 }).expect("generate");
    let again = tempfile::tempdir().expect("temp dir");
    let items2 =
        generate(&again.path().join("s"), &ShapesConfig { count: 6, num_frames: 9, height: 32, width: 32, seed: 3 })
            .expect("generate");
    assert_eq!(
        std::fs::read(out.join("videos/00002.mp4")).expect("read"),
        std::fs::read(again.path().join("s/videos/00002.mp4")).expect("read"),
        "same seed, same bytes"
    );
    assert_eq!(items.iter().map(|i| i.color).collect::<Vec<_>>(), items2.iter().map(|i| i.color).collect::<Vec<_>>());

    // Add a missing file and a corrupt one to the annotation.
    let anno_path = out.join("annotation.json");
    let mut anno: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&anno_path).expect("read")).expect("json");
    let mut missing = anno[0].clone();
    missing["path"] = "videos/missing.mp4".into();
    let mut corrupt = anno[0].clone();
    corrupt["path"] = "videos/corrupt.mp4".into();
    std::fs::write(out.join("videos/corrupt.mp4"), b"not a video at all").expect("write");
    anno.push(missing);
    anno.push(corrupt);
    std::fs::write(&anno_path, serde_json::to_string(&anno).expect("json")).expect("write");

    let sources = read_data_file(&out.join("data.txt")).expect("data file");
    let ds = Dataset::build(&sources, config(7)).expect("plan");
    assert_eq!(ds.stats.missing_file, 1, "{:?}", ds.stats);
    assert_eq!(ds.samples.len(), 7, "6 good + the corrupt one (found when decoded)");
    assert!(ds.samples.iter().all(|s| s.shape() == (9, 32, 32)));

    // Deterministic order; positions resume.
    assert_eq!(ds.epoch_batches(0), Dataset::build(&sources, config(7)).expect("plan").epoch_batches(0));
    assert_ne!(ds.epoch_batches(0), ds.epoch_batches(1));
    let (b0, p1) = ds.batch_at(DataPosition::default()).expect("batch");
    let (b1, _) = ds.batch_at(p1).expect("batch");
    assert_eq!(vec![b0, b1], ds.epoch_batches(0)[..2].to_vec());
    let (_, wrapped) = ds.batch_at(DataPosition { epoch: 0, batch: 3 }).expect("wraps into epoch 1");
    assert_eq!(wrapped, DataPosition { epoch: 1, batch: 1 });

    // Every item loads; the corrupt one is replaced by another item of its bucket.
    let corrupt_index = ds.samples.iter().position(|s| s.rel_path.ends_with("corrupt.mp4")).expect("planned");
    let mut bad = BTreeSet::new();
    let loaded = ds.load_batch(&[corrupt_index, 0], None, &mut bad).expect("substituted");
    assert_eq!(bad, BTreeSet::from([corrupt_index]));
    assert_ne!(loaded[0].0, corrupt_index);

    // Pixels: [3, 9, 32, 32] in [-1, 1]; the shape's colour dominates and its centroid moves.
    let by_path: std::collections::BTreeMap<String, &ShapesItem> =
        items.iter().map(|i| (i.annotation.path.clone(), i)).collect();
    for (index, pixels) in ds.load_batch(&[0, 1, 2], None, &mut bad).expect("load") {
        let item = by_path[&ds.samples[index].rel_path];
        assert_eq!(pixels.len(), 3 * 9 * 32 * 32);
        assert!(pixels.iter().all(|v| (-1.0..=1.0).contains(v)));
        let plane = |c: usize, f: usize| &pixels[(c * 9 + f) * 1024..(c * 9 + f + 1) * 1024];
        let fg: Vec<usize> = (0..1024).filter(|&i| (0..3).any(|c| plane(c, 0)[i] > -0.5)).collect();
        let mean = |c: usize| fg.iter().map(|&i| plane(c, 0)[i]).sum::<f32>() / fg.len() as f32;
        let rgb = [mean(0), mean(1), mean(2)];
        let want = item.color.rgb().map(|v| f32::from(v) / 127.5 - 1.0);
        for c in 0..3 {
            assert!((rgb[c] - want[c]).abs() < 0.25, "{:?}: mean colour {rgb:?} vs {want:?}", item.color);
        }
        let centroid = |f: usize| {
            let pts: Vec<usize> = (0..1024).filter(|&i| (0..3).any(|c| plane(c, f)[i] > -0.5)).collect();
            let n = pts.len() as f32;
            (
                pts.iter().map(|&i| (i % 32) as f32).sum::<f32>() / n,
                pts.iter().map(|&i| (i / 32) as f32).sum::<f32>() / n,
            )
        };
        let (a, b) = (centroid(0), centroid(8));
        let (vx, vy) = item.direction.vector();
        assert!((b.0 - a.0) * vx + (b.1 - a.1) * vy > 8.0, "{:?}: {a:?} -> {b:?}", item.direction);
    }
}

/// `config` for 40-frame clips: every frame (`--train_fps 0`), `num_frames` per clip.
fn long_config(num_frames: usize, speed_factor: f64, drop_short_ratio: f64) -> DataConfig {
    DataConfig { num_frames, train_fps: 0.0, speed_factor, drop_short_ratio, ..config(7) }
}

#[test]
fn long_videos_get_a_new_window_per_load_and_speed_and_short_rules_apply() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("shapes");
    generate(&out, &ShapesConfig { count: 4, num_frames: 40, height: 32, width: 32, seed: 5 }).expect("generate");
    let sources = read_data_file(&out.join("data.txt")).expect("data file");

    // 40 frames, clips of 9: windows start at 0..=30 (upstream's TemporalRandomCrop never
    // starts at len - size).
    let ds = Dataset::build(&sources, long_config(9, 1.0, 1.0)).expect("plan");
    let s = &ds.samples[0];
    assert_eq!((s.frames, s.starts, s.source_frames.len()), (9, 31, 40));
    assert_eq!((s.start(Some(0.0)), s.start(Some(0.999_999)), s.start(Some(1.5 / 31.0))), (0, 30, 1));
    assert_eq!(s.frame_indices(30), (30..39).collect::<Vec<_>>().as_slice());
    let mut bad = Default::default();
    let at0 = ds.load_batch(&[0], Some(&[0.0]), &mut bad).expect("load").remove(0).1;
    let at1 = ds.load_batch(&[0], Some(&[1.5 / 31.0]), &mut bad).expect("load").remove(0).1;
    let planned = ds.load_batch(&[0], None, &mut bad).expect("load").remove(0).1;
    let frame = |p: &[f32], f: usize| {
        (0..3).flat_map(|c| p[(c * 9 + f) * 1024..(c * 9 + f + 1) * 1024].to_vec()).collect::<Vec<_>>()
    };
    for f in 0..8 {
        assert_eq!(frame(&at1, f), frame(&at0, f + 1), "window 1 frame {f} is video frame {}", f + 1);
    }
    assert_ne!(frame(&at0, 0), frame(&at1, 0));
    let expected = ds.load_pixels(0, None).expect("planned window");
    assert_eq!(planned, expected);
    let e = ds.load_batch(&[0, 1], Some(&[0.0]), &mut bad).expect_err("one draw for two items");
    assert!(e.to_string().contains("1 draws for 2 items"), "{e}");

    // --speed_factor 2: 40 frames subsampled to np.linspace(0, 39, 20, dtype=int).
    let fast = Dataset::build(&sources, long_config(9, 2.0, 1.0)).expect("plan");
    let want: Vec<usize> = vec![0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32, 34, 36, 39];
    assert_eq!(fast.samples[0].source_frames, want);
    assert_eq!(fast.samples[0].starts, 11);
    // Factor 3: np.linspace(0, 39, 13, dtype=int); factor 10 is capped at 40 / 9 (9 frames).
    let f3 = Dataset::build(&sources, long_config(9, 3.0, 1.0)).expect("plan");
    assert_eq!(f3.samples[0].source_frames, vec![0, 3, 6, 9, 13, 16, 19, 22, 26, 29, 32, 35, 39]);
    let f10 = Dataset::build(&sources, long_config(9, 10.0, 1.0)).expect("plan");
    assert_eq!((f10.samples[0].source_frames.len(), f10.samples[0].starts), (9, 1));

    // Too long: 40 > 5 * 5 frames, unless the speed factor widens the span.
    let e = Dataset::build(&sources, long_config(5, 1.0, 1.0)).expect_err("all too long");
    assert!(e.to_string().contains("too_long: 4"), "{e}");
    assert_eq!(Dataset::build(&sources, long_config(5, 2.0, 1.0)).expect("plan").samples.len(), 4);

    // Short videos (40 < 45 frames): dropped with ratio 1, kept with ratio 0 and cut to 37 = 4n+1.
    let e = Dataset::build(&sources, long_config(45, 1.0, 1.0)).expect_err("all too short");
    assert!(e.to_string().contains("too_short: 4"), "{e}");
    let kept = Dataset::build(&sources, long_config(45, 1.0, 0.0)).expect("plan");
    assert!(kept.samples.iter().all(|s| (s.frames, s.starts) == (37, 1)));

    for (flag, config) in
        [("--speed_factor", long_config(9, 0.5, 1.0)), ("--drop_short_ratio", long_config(9, 1.0, 1.5))]
    {
        let e = Dataset::build(&sources, config).expect_err("bad flag");
        assert!(e.to_string().contains(flag), "{e}");
    }
}
