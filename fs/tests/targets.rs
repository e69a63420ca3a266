//! The write helpers on every kind of target: a regular file, a missing folder, a device node, a
//! FIFO, symbolic links, a folder, a read-only folder (as a non-root user), a full disk, and the
//! collection of temporaries left by dead processes. Every node is made in a fresh temporary folder;
//! nothing is written near `/dev`.
//!
//! Cases that need privileges say so and are skipped without them: making a device node and
//! mounting a 64 KiB tmpfs need root; the read-only folder case runs in a child process as `nobody`
//! when the suite runs as root (root ignores permissions).

use std::io::{ErrorKind, Read};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use osp_fs::{collect_stale, temporaries, write_bytes, write_via_path, write_with, Collected, Error, StagedDir};

struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("osp-fs-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).output();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn euid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

fn no_temporaries(dir: &Path) {
    let left = temporaries(dir).unwrap();
    assert!(left.is_empty(), "temporaries left in {}: {left:?}", dir.display());
}

#[test]
fn regular_file_is_replaced_atomically_keeping_its_mode() {
    let s = Scratch::new("regular");
    let p = s.path().join("out.json");
    write_bytes(&p, b"one").unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"one");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    write_with(&p, |w| w.write_all(b"two")).unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"two");
    assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
    write_via_path::<Error>(&p, |tmp| {
        assert_eq!(tmp.parent(), Some(s.path()), "the temporary is a sibling");
        std::fs::write(tmp, b"three").map_err(|e| Error::Io { action: "test", path: tmp.into(), source: e })
    })
    .unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"three");
    no_temporaries(s.path());
}

#[test]
fn failed_writes_leave_the_target_and_no_temporary() {
    let s = Scratch::new("fail");
    let p = s.path().join("out.bin");
    write_bytes(&p, b"keep").unwrap();
    let err = write_with(&p, |w| {
        w.write_all(&[0u8; 100_000])?;
        Err(std::io::Error::new(ErrorKind::StorageFull, "No space left on device (simulated)"))
    })
    .unwrap_err();
    assert!(err.to_string().contains("out.bin") && err.to_string().contains("No space"), "{err}");
    #[derive(Debug)]
    enum Failed {
        Fs(#[allow(dead_code)] Error),
        Encoder,
    }
    impl From<Error> for Failed {
        fn from(e: Error) -> Self {
            Failed::Fs(e)
        }
    }
    let err = write_via_path::<Failed>(&p, |tmp| {
        std::fs::write(tmp, b"half").unwrap();
        Err(Failed::Encoder)
    })
    .unwrap_err();
    assert!(matches!(err, Failed::Encoder), "{err:?}");
    assert_eq!(std::fs::read(&p).unwrap(), b"keep");
    no_temporaries(s.path());
}

#[test]
fn missing_folder_is_named() {
    let s = Scratch::new("missing");
    let p = s.path().join("no/such/out.mp4");
    let err = write_bytes(&p, b"x").unwrap_err();
    assert!(matches!(err, Error::MissingParent { .. }), "{err:?}");
    assert!(matches!(osp_fs::check_file_target(&p), Err(Error::MissingParent { .. })));
    assert!(osp_fs::check_file_target(s.path().join("new.json")).is_ok());
    assert!(err.to_string().contains(&s.path().join("no/such").display().to_string()), "{err}");
    let err = StagedDir::create(&p).err().unwrap();
    assert!(matches!(err, Error::MissingParent { .. }), "{err:?}");
    write_bytes(s.path().join("file"), b"x").unwrap();
    let err = write_bytes(s.path().join("file/out"), b"x").unwrap_err();
    assert!(matches!(err, Error::ParentNotAFolder { .. }), "{err:?}");
}

#[test]
fn folders_sockets_and_dangling_links_are_refused() {
    let s = Scratch::new("refuse");
    let d = s.path().join("dir");
    std::fs::create_dir(&d).unwrap();
    let err = write_bytes(&d, b"x").unwrap_err();
    assert!(err.to_string().contains("a folder"), "{err}");
    assert!(d.is_dir());
    let sock_path = s.path().join("sock");
    let _sock = std::os::unix::net::UnixListener::bind(&sock_path).unwrap();
    let err = write_bytes(&sock_path, b"x").unwrap_err();
    assert!(err.to_string().contains("a socket"), "{err}");
    let dangling = s.path().join("dangling");
    std::os::unix::fs::symlink(s.path().join("nowhere"), &dangling).unwrap();
    let err = write_bytes(&dangling, b"x").unwrap_err();
    assert!(matches!(err, Error::DanglingLink { .. }), "{err:?}");
    assert!(!s.path().join("nowhere").exists());
    let file = s.path().join("file");
    write_bytes(&file, b"x").unwrap();
    let err = StagedDir::create(&file).err().unwrap();
    assert!(err.to_string().contains("regular file") || err.to_string().contains("neither"), "{err}");
    no_temporaries(s.path());
}

#[test]
fn symlink_is_written_through_to_its_file() {
    let s = Scratch::new("link");
    let real_dir = s.path().join("real");
    std::fs::create_dir(&real_dir).unwrap();
    let real = real_dir.join("data.safetensors");
    write_bytes(&real, b"old").unwrap();
    let link = s.path().join("link.safetensors");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    write_bytes(&link, b"new").unwrap();
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the link stays a link");
    assert_eq!(std::fs::read(&real).unwrap(), b"new");
    no_temporaries(s.path());
    no_temporaries(&real_dir);
    let dir_link = s.path().join("dirlink");
    std::os::unix::fs::symlink(&real_dir, &dir_link).unwrap();
    assert!(write_bytes(&dir_link, b"x").unwrap_err().to_string().contains("a folder"));
    assert!(StagedDir::create(&dir_link).err().unwrap().to_string().contains("symbolic link"));
}

#[test]
fn fifo_is_streamed_into_never_replaced() {
    let s = Scratch::new("fifo");
    let fifo = s.path().join("pipe");
    let made = Command::new("mkfifo").arg(&fifo).status();
    if !made.map(|st| st.success()).unwrap_or(false) {
        eprintln!("SKIPPED: mkfifo is not available");
        return;
    }
    for round in 0..2 {
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                std::fs::File::open(&fifo).unwrap().read_to_end(&mut got).unwrap();
                got
            })
        };
        let payload = vec![round as u8 + 7; 300_000];
        if round == 0 {
            write_bytes(&fifo, &payload).unwrap();
        } else {
            write_via_path::<Error>(&fifo, |tmp| {
                assert!(!tmp.starts_with(s.path()), "a stream's temporary is not next to the FIFO");
                std::fs::write(tmp, &payload).map_err(|e| Error::Io { action: "test", path: tmp.into(), source: e })
            })
            .unwrap();
        }
        assert_eq!(reader.join().unwrap(), payload);
        assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo(), "still a FIFO");
    }
    assert!(StagedDir::create(&fifo).err().is_some());
    no_temporaries(s.path());
}

#[test]
fn device_node_is_streamed_into_never_replaced() {
    let s = Scratch::new("dev");
    let node = s.path().join("null");
    // Major 1, minor 3: the null device, made here in the scratch folder.
    let made = Command::new("mknod").arg(&node).args(["c", "1", "3"]).status();
    if !made.map(|st| st.success()).unwrap_or(false) {
        eprintln!("SKIPPED: making a device node needs root (mknod)");
        return;
    }
    let link = s.path().join("stdout-like");
    std::os::unix::fs::symlink(&node, &link).unwrap();
    for target in [&node, &link] {
        write_bytes(target, vec![1u8; 1 << 20]).unwrap();
        write_via_path::<Error>(target, |tmp| {
            std::fs::write(tmp, b"frames").map_err(|e| Error::Io { action: "test", path: tmp.into(), source: e })
        })
        .unwrap();
        assert!(std::fs::metadata(target).unwrap().file_type().is_char_device(), "still a device");
    }
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    let err = StagedDir::create(&node).err().unwrap();
    assert!(matches!(err, Error::Unsupported { .. }), "{err:?}");
    no_temporaries(s.path());
}

/// Run as a non-root user in the folder named by `OSP_FS_READONLY_DIR`; does nothing otherwise.
#[test]
fn readonly_folder_child() {
    let Some(dir) = std::env::var_os("OSP_FS_READONLY_DIR").map(PathBuf::from) else { return };
    check_readonly(&dir);
}

fn check_readonly(dir: &Path) {
    let keep = dir.join("keep.json");
    let err = write_bytes(&keep, b"new").unwrap_err();
    assert!(matches!(&err, Error::Io { source, .. } if source.kind() == ErrorKind::PermissionDenied), "{err:?}");
    assert!(err.to_string().contains("keep.json"), "{err}");
    assert!(StagedDir::create(dir.join("bundle")).is_err());
    assert_eq!(std::fs::read(&keep).unwrap(), b"old");
    no_temporaries(dir);
}

#[test]
fn readonly_folder_is_a_clear_error() {
    let s = Scratch::new("ro");
    let ro = s.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    write_bytes(ro.join("keep.json"), b"old").unwrap();
    std::fs::set_permissions(s.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    if euid() != Some(0) {
        check_readonly(&ro);
        return;
    }
    use std::os::unix::process::CommandExt;
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "readonly_folder_child", "--nocapture", "--test-threads=1"])
        .env("OSP_FS_READONLY_DIR", &ro)
        .uid(65534)
        .gid(65534)
        .output();
    match out {
        Ok(out) if out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed") => {}
        Ok(out) if String::from_utf8_lossy(&out.stderr).contains("Permission denied") && !out.status.success() => {
            eprintln!("SKIPPED: the test binary cannot run as nobody: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(out) => panic!(
            "read-only case as nobody failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => eprintln!("SKIPPED: cannot start the test binary as nobody: {e}"),
    }
}

#[test]
fn full_disk_leaves_the_old_file_and_no_temporary() {
    let s = Scratch::new("full");
    let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"]).arg(s.path()).output();
    if !mounted.map(|o| o.status.success()).unwrap_or(false) {
        eprintln!("SKIPPED: mounting a 64 KiB tmpfs needs root; the simulated ENOSPC case covers the error path");
        return;
    }
    let p = s.path().join("video.mp4");
    write_bytes(&p, vec![3u8; 16 << 10]).unwrap();
    let err = write_bytes(&p, vec![4u8; 256 << 10]).unwrap_err();
    assert!(
        matches!(&err, Error::Io { source, .. } if source.kind() == ErrorKind::StorageFull),
        "expected a full-disk error, got {err:?}"
    );
    assert!(err.to_string().contains("video.mp4"), "{err}");
    assert_eq!(std::fs::read(&p).unwrap(), vec![3u8; 16 << 10]);
    no_temporaries(s.path());
    let staged = StagedDir::create(s.path().join("bundle")).unwrap();
    let big = std::fs::write(staged.path().join("w.onnx.data"), vec![5u8; 256 << 10]);
    assert!(big.is_err());
    drop(staged);
    no_temporaries(s.path());
    assert!(!s.path().join("bundle").exists());
}

#[test]
fn staged_folder_replaces_only_at_commit() {
    let s = Scratch::new("staged");
    let target = s.path().join("checkpoint-2");
    let staged = StagedDir::create(&target).unwrap();
    std::fs::write(staged.path().join("a"), b"1").unwrap();
    assert!(!target.exists());
    assert_eq!(staged.commit().unwrap(), target);
    assert_eq!(std::fs::read(target.join("a")).unwrap(), b"1");
    let staged = StagedDir::create(&target).unwrap();
    std::fs::write(staged.path().join("b"), b"2").unwrap();
    drop(staged);
    assert!(target.join("a").exists(), "an uncommitted stage changes nothing");
    no_temporaries(s.path());
    let staged = StagedDir::create(&target).unwrap();
    std::fs::create_dir(staged.path().join("model")).unwrap();
    std::fs::write(staged.path().join("model/b"), b"2").unwrap();
    staged.commit().unwrap();
    assert!(!target.join("a").exists() && target.join("model/b").exists(), "replaced as a whole");
    no_temporaries(s.path());
    osp_fs::remove_dir(&target).unwrap();
    assert!(!target.exists());
    no_temporaries(s.path());
}

/// The pid of a process that has exited.
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

#[test]
fn stale_temporaries_of_dead_processes_are_collected() {
    let s = Scratch::new("stale");
    let d = s.path();
    let dead = dead_pid();
    let me = std::process::id();
    let files = [
        format!(".a.mp4.osp-tmp-{dead}-3"),
        format!(".a.mp4.tmp-{dead}"),
        format!("ab.tmp-{dead}"),
        format!("x.npz.partial-{dead}"),
        "manifest.json.partial".to_string(),
        format!(".b.mp4.osp-tmp-{me}-0"),
        "user.mp4".to_string(),
        "download.partial".to_string(),
    ];
    for f in &files {
        std::fs::write(d.join(f), b"x").unwrap();
    }
    std::fs::create_dir_all(d.join(format!(".checkpoint-4.tmp-{dead}/model"))).unwrap();
    std::fs::create_dir_all(d.join(format!(".ck.osp-old-{dead}-0"))).unwrap();
    std::fs::write(d.join(format!(".ck.osp-old-{dead}-0/kept")), b"1").unwrap();
    std::fs::create_dir_all(d.join(format!(".present.osp-old-{dead}-1"))).unwrap();
    std::fs::create_dir_all(d.join("present")).unwrap();
    let collected = collect_stale(d).unwrap();
    let removed: Vec<_> = collected
        .iter()
        .filter_map(|c| match c {
            Collected::Removed(p) => Some(p.file_name().unwrap().to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    let mut want = vec![
        format!(".a.mp4.osp-tmp-{dead}-3"),
        format!(".a.mp4.tmp-{dead}"),
        format!(".checkpoint-4.tmp-{dead}"),
        format!(".present.osp-old-{dead}-1"),
        format!("ab.tmp-{dead}"),
        "manifest.json.partial".to_string(),
        format!("x.npz.partial-{dead}"),
    ];
    want.sort();
    let mut removed_sorted = removed.clone();
    removed_sorted.sort();
    assert_eq!(removed_sorted, want);
    assert!(
        collected.contains(&Collected::Restored { from: d.join(format!(".ck.osp-old-{dead}-0")), to: d.join("ck") })
    );
    assert_eq!(std::fs::read(d.join("ck/kept")).unwrap(), b"1");
    for kept in [format!(".b.mp4.osp-tmp-{me}-0"), "user.mp4".into(), "download.partial".into(), "present".into()] {
        assert!(d.join(&kept).exists(), "{kept} must stay");
    }
    assert!(collect_stale(d).unwrap().is_empty(), "a second pass finds nothing");
    assert!(collect_stale(&d.join("missing")).unwrap().is_empty());
}
