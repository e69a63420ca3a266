//! `osp-train dit` killed with SIGKILL at random points and resumed from `latest` each time: no
//! checkpoint is ever half-written under its name, the run that finishes removes every staging
//! folder the killed runs left, and its last checkpoint is byte-identical to an uninterrupted run's.
//!
//! Tiny models on CPU (the shapes data set, the tiny official WFVAE, a tiny random DiT), a
//! checkpoint every step. Half the kills wait for a checkpoint's staging folder to appear in the
//! output folder (so they land inside a checkpoint write), the others fire after a pseudo-random
//! delay. Attempts that start after the run is complete just finish.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{arg as s, DitSetup};

const STEPS: usize = 4;
const FILES: [&str; 4] = [
    "model/diffusion_pytorch_model.safetensors",
    "model_ema/diffusion_pytorch_model.safetensors",
    "optimizer.safetensors",
    "training_state.json",
];

fn setup() -> DitSetup {
    common::dit_setup(4)
}

fn train(st: &DitSetup, out: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_osp-train"));
    cmd.args(["dit", "--model_config", &s(&st.config), "--ae_path", &s(&st.ae), "--data", &s(&st.data)])
        .args(["--output_dir", &s(out), "--num_frames", "9", "--train_fps", "16", "--force_resolution"])
        .args(["--max_height", "32", "--max_width", "32", "--hw_stride", "16", "--train_batch_size", "1"])
        .args(["--max_train_steps", &STEPS.to_string(), "--learning_rate", "1e-3", "--use_ema", "--ema_decay", "0.9"])
        .args(["--checkpointing_steps", "1", "--checkpoints_total_limit", "2", "--cfg", "0.3"])
        .args(["--null_text_embed", &s(&st.null), "--seed", "7", "--progress", "off"])
        .args(["--resume_from_checkpoint", "latest"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

fn run_to_end(mut cmd: Command, what: &str) {
    let out = cmd.output().expect("spawn osp-train");
    assert!(out.status.success(), "{what} failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

/// Every `checkpoint-<step>` folder holds all its files.
fn assert_whole_checkpoints(out: &Path, when: &str) {
    for entry in std::fs::read_dir(out).expect("output dir").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("checkpoint-") {
            for f in FILES {
                assert!(entry.path().join(f).is_file(), "{when}: {name} lacks {f}");
            }
        }
    }
}

#[test]
fn killed_training_resumes_bit_for_bit_and_leaves_no_temporaries() {
    let st = setup();
    let straight = st.root.join("straight");
    let started = Instant::now();
    run_to_end(train(&st, &straight), "the uninterrupted run");
    let full = started.elapsed();

    let out = st.root.join("killed");
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let (mut kills, mut killed_writing, mut left) = (0, 0, BTreeSet::new());
    for attempt in 0..8 {
        let mut child = train(&st, &out).spawn().expect("spawn osp-train");
        let wait_for_staging = attempt % 2 == 0;
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let delay = full.mul_f64(0.3 + 0.7 * ((seed >> 33) as f64 / (1u64 << 31) as f64));
        let start = Instant::now();
        loop {
            if child.try_wait().expect("wait").is_some() {
                break;
            }
            let staging = |t: &PathBuf| t.file_name().is_some_and(|n| n.to_string_lossy().starts_with(".checkpoint-"));
            let writing = osp_fs::temporaries(&out).map(|t| t.iter().any(staging)).unwrap_or(false);
            if (wait_for_staging && writing) || (!wait_for_staging && start.elapsed() >= delay) {
                child.kill().expect("kill -9");
                kills += 1;
                killed_writing += usize::from(writing);
                break;
            }
            assert!(start.elapsed() < full * 20 + Duration::from_secs(30), "attempt {attempt}: osp-train hangs");
            std::thread::sleep(Duration::from_micros(200));
        }
        child.wait().expect("wait");
        left.extend(osp_fs::temporaries(&out).unwrap_or_default());
        assert_whole_checkpoints(&out, &format!("after kill {attempt}"));
    }
    eprintln!("{kills} kills, {killed_writing} inside a checkpoint write; temporaries left: {left:?}");

    // Leftovers of a dead writer in today's and the earlier naming, whether or not a kill above made one.
    let dead = {
        let mut c = Command::new("true").spawn().expect("spawn true");
        let pid = c.id();
        c.wait().expect("wait");
        pid
    };
    std::fs::create_dir_all(out.join(format!(".checkpoint-3.osp-tmp-{dead}-0/model"))).expect("mkdir");
    std::fs::create_dir_all(out.join(format!(".checkpoint-2.tmp-{dead}/model_ema"))).expect("mkdir");
    std::fs::write(out.join(format!(".checkpoint-2.tmp-{dead}/optimizer.safetensors")), b"half").expect("write");

    run_to_end(train(&st, &out), "the run after the kills");
    let remaining = osp_fs::temporaries(&out).expect("list");
    assert!(remaining.is_empty(), "temporaries left after resuming: {remaining:?}");
    assert_whole_checkpoints(&out, "after resuming");
    let last = format!("checkpoint-{STEPS}");
    for f in FILES.iter().take(3) {
        let a = std::fs::read(straight.join(&last).join(f)).expect("straight checkpoint");
        let b = std::fs::read(out.join(&last).join(f)).expect("resumed checkpoint");
        assert!(a == b, "{last}/{f}: the run killed {kills} times differs from the uninterrupted run");
    }
    let state = |dir: &Path| -> serde_json::Value {
        let text = std::fs::read_to_string(dir.join(&last).join("training_state.json")).expect("state");
        let mut v: serde_json::Value = serde_json::from_str(&text).expect("json");
        v.as_object_mut().expect("object").remove("run_config");
        v
    };
    assert_eq!(state(&straight), state(&out), "training state (step, RNG, data position)");
}
