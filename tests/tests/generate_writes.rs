//! How `osp generate` writes, on the embedded default bundle (`assets/default`), see
//! `docs/RELIABILITY.md`.
//!
//! `--dump-latents` into a FIFO streams into it (the FIFO stays a FIFO) and into a missing folder
//! fails naming the folder.
//!
//! `osp generate` killed with SIGKILL at random points: whatever the kill interrupts, the output folder and the text cache never hold
//! a half-written video under its final name, and the next run into the same folder removes every
//! temporary the killed runs left and writes a video identical to an uninterrupted run's.
//!
//! Each killed run writes its own file name (its own `--guidance_scale`), so no run replaces
//! another's video. Half the kills wait for a temporary to appear in the output folder (the video
//! being written), the others fire after a pseudo-random delay.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

fn bundle() -> PathBuf {
    osp_tests::repo_root().join("assets/default")
}

fn osp(cache: &Path, out: &Path, guidance: &str) -> Result<Command> {
    let mut cmd = Command::new(osp_tests::osp_binary()?);
    for var in ["OSP_BACKEND", "OSP_THREADS", "OSP_TEXT_CACHE", "OSP_PIPELINE_BUNDLE"] {
        cmd.env_remove(var);
    }
    cmd.env("OSP_TEXT_CACHE", cache)
        .args(["--threads", "1", "generate", "--progress", "off", "--bundle"])
        .arg(bundle())
        .args(["--text_prompt", "a red circle moving to the right", "--seed", "3", "--guidance_scale", guidance])
        .arg("--save_img_path")
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    Ok(cmd)
}

/// Temporaries (any osp naming convention) anywhere under `dir`.
fn temporaries_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return found };
    for entry in entries.flatten() {
        let path = entry.path();
        if osp_fs::is_temporary(&entry.file_name()) {
            found.push(path);
        } else if path.is_dir() {
            found.extend(temporaries_under(&path));
        }
    }
    found
}

/// Every finished video in `dir` decodes to the bundle's 9 frames of 32 x 32.
fn check_whole(dir: &Path) -> Result<usize> {
    let mut n = 0;
    for entry in std::fs::read_dir(dir)?.flatten() {
        if osp_fs::is_temporary(&entry.file_name()) {
            continue;
        }
        let frames = osp_runtime::video::read_all(&entry.path(), None)
            .with_context(|| format!("{} is not a whole video", entry.path().display()))?;
        ensure!(frames.dim() == (9, 32, 32, 3), "{}: frames {:?}", entry.path().display(), frames.dim());
        n += 1;
    }
    Ok(n)
}

#[test]
fn killed_generation_leaves_nothing_that_the_next_run_keeps() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let cache = tmp.path().join("cache");
    let reference = tmp.path().join("reference");
    let out = tmp.path().join("out");

    let started = Instant::now();
    let run = osp(&cache, &reference, "4.0")?.output()?;
    ensure!(run.status.success(), "reference run failed: {}", String::from_utf8_lossy(&run.stderr));
    let full = started.elapsed();
    let video = |dir: &Path| -> Result<PathBuf> {
        let files: Vec<_> = std::fs::read_dir(dir)?.flatten().map(|e| e.path()).collect();
        ensure!(files.len() == 1, "one video expected in {}: {files:?}", dir.display());
        Ok(files[0].clone())
    };
    let reference_video = std::fs::read(video(&reference)?)?;

    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let (mut killed_writing, mut left) = (0, std::collections::BTreeSet::new());
    for attempt in 0..8 {
        let guidance = format!("{}.5", attempt + 1);
        let mut child = osp(&cache, &out, &guidance)?.spawn()?;
        let wait_for_temporary = attempt % 2 == 0;
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let delay = full.mul_f64(0.2 + 0.9 * ((seed >> 33) as f64 / (1u64 << 31) as f64));
        let start = Instant::now();
        loop {
            if child.try_wait()?.is_some() {
                break;
            }
            let writing = !temporaries_under(&out).is_empty();
            if (wait_for_temporary && writing) || (!wait_for_temporary && start.elapsed() >= delay) {
                child.kill()?;
                killed_writing += usize::from(writing);
                break;
            }
            if start.elapsed() > full * 20 + Duration::from_secs(20) {
                child.kill()?;
                anyhow::bail!("attempt {attempt}: osp generate did not finish");
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        child.wait()?;
        left.extend(temporaries_under(&out).into_iter().chain(temporaries_under(&cache)));
        check_whole(&out).with_context(|| format!("after kill {attempt}"))?;
    }
    eprintln!("8 kills: {killed_writing} while a temporary existed, {} temporaries left: {left:?}", left.len());
    // Leftovers of a dead process in the shapes every writer uses, whether or not a kill above hit one.
    let dead = {
        let mut c = Command::new("true").spawn()?;
        let pid = c.id();
        c.wait()?;
        pid
    };
    std::fs::write(out.join(format!(".x.mp4.osp-tmp-{dead}-0")), b"half a video")?;
    std::fs::write(out.join(format!(".y.mp4.tmp-{dead}")), b"half a video")?;
    let bucket = std::fs::read_dir(&cache)?.flatten().find(|e| e.path().is_dir()).context("a cache bucket")?;
    std::fs::write(bucket.path().join(format!(".k.safetensors.osp-tmp-{dead}-1")), b"half an entry")?;
    std::fs::write(bucket.path().join(format!("k.tmp-{dead}")), b"half an entry")?;

    let run = osp(&cache, &out, "4.0")?.output()?;
    ensure!(run.status.success(), "the run after the kills failed: {}", String::from_utf8_lossy(&run.stderr));
    let remaining: Vec<_> = temporaries_under(&out).into_iter().chain(temporaries_under(&cache)).collect();
    ensure!(remaining.is_empty(), "temporaries left after the next run: {remaining:?}");
    check_whole(&out)?;
    let name = video(&reference)?.file_name().context("name")?.to_owned();
    let again = std::fs::read(out.join(name))?;
    ensure!(again == reference_video, "the video after the kills differs from the uninterrupted run's");
    Ok(())
}

#[test]
fn dump_latents_streams_into_a_fifo_and_names_a_missing_folder() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let cache = tmp.path().join("cache");
    let out = tmp.path().join("out");
    let missing = tmp.path().join("no/such/dump.safetensors");
    let run = osp(&cache, &out, "4.0")?.arg("--dump-latents").arg(&missing).output()?;
    let msg = String::from_utf8_lossy(&run.stderr);
    ensure!(!run.status.success(), "a dump into a missing folder should fail");
    ensure!(msg.contains("--dump-latents") && msg.contains(&tmp.path().join("no/such").display().to_string()), "{msg}");
    ensure!(!msg.contains("graph loaded") && !out.exists(), "a bad --dump-latents must fail before any work:\n{msg}");

    let fifo = tmp.path().join("dump.pipe");
    if !Command::new("mkfifo").arg(&fifo).status().map(|s| s.success()).unwrap_or(false) {
        eprintln!("SKIPPED: mkfifo is not available");
        return Ok(());
    }
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo))
    };
    let run = osp(&cache, &out, "4.0")?.arg("--dump-latents").arg(&fifo).output()?;
    if !run.status.success() {
        // Releases the reader if osp never opened the FIFO (O_NONBLOCK: fails at once if nobody reads).
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::OpenOptions::new().write(true).custom_flags(0o4000).open(&fifo);
        anyhow::bail!("dump into a FIFO failed: {}", String::from_utf8_lossy(&run.stderr));
    }
    let bytes = reader.join().map_err(|_| anyhow::anyhow!("reader panicked"))??;
    use std::os::unix::fs::FileTypeExt;
    ensure!(std::fs::symlink_metadata(&fifo)?.file_type().is_fifo(), "the FIFO was replaced");
    let copy = tmp.path().join("dump.safetensors");
    std::fs::write(&copy, &bytes)?;
    let dump = osp_runtime::read_safetensors(&copy)?;
    ensure!(dump.contains_key("p0.latents.final"), "dump keys: {:?}", dump.keys().collect::<Vec<_>>());
    ensure!(temporaries_under(tmp.path()).is_empty(), "{:?}", temporaries_under(tmp.path()));
    Ok(())
}
