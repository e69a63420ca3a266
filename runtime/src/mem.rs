//! Process memory: resident sizes (for `tracing` at debug level around long, memory-bound loops
//! such as tiled VAE decoding), and glibc allocator settings that keep such loops flat: a fixed
//! mmap threshold and giving freed heap pages back to the system between graph runs.

use std::fmt;

/// Resident memory of this process, in bytes, from `/proc/self/status` (Linux).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Resident set size now (`VmRSS`).
    pub rss: u64,
    /// Peak resident set size so far (`VmHWM`; what `getrusage` reports as `ru_maxrss`).
    pub peak: u64,
    /// Resident anonymous memory (heap, tensors; `RssAnon`).
    pub anon: u64,
    /// Resident file-backed pages (`RssFile`): memory-mapped weights count here, once per mapping
    /// even when several mappings share the same page-cache pages.
    pub file: u64,
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mib = |b: u64| b >> 20;
        write!(
            f,
            "rss {} MiB (peak {}, anon {}, file {})",
            mib(self.rss),
            mib(self.peak),
            mib(self.anon),
            mib(self.file)
        )
    }
}

/// This process's resident memory; `None` off Linux or when `/proc/self/status` cannot be read.
pub fn usage() -> Option<Usage> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |key: &str| -> Option<u64> {
        let kb = status.lines().find_map(|l| l.strip_prefix(key))?.trim().strip_suffix("kB")?.trim();
        Some(kb.parse::<u64>().ok()? * 1024)
    };
    Some(Usage { rss: field("VmRSS:")?, peak: field("VmHWM:")?, anon: field("RssAnon:")?, file: field("RssFile:")? })
}

/// Resets this process's peak resident size (`VmHWM`) to its resident size now, so that a later
/// [`usage`] reports the peak since this call (Linux: `5` written to `/proc/self/clear_refs`).
/// `false` when it cannot be reset (another OS, or `/proc` read-only).
pub fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// [`usage`] for log fields: `-` where it cannot be read.
pub fn usage_str() -> String {
    usage().map_or_else(|| "-".to_string(), |u| u.to_string())
}

/// Memory the host can give this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostMemory {
    /// Bytes.
    pub available: u64,
    /// Where the number comes from.
    pub source: String,
}

/// The memory this process can still allocate: `MemAvailable` of `/proc/meminfo`, or the cgroup
/// v2 limit less its usage (`memory.max - memory.current`) when that is smaller (containers);
/// `None` off Linux or when neither can be read.
pub fn host_available() -> Option<HostMemory> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| {
        let kb = t.lines().find_map(|l| l.strip_prefix("MemAvailable:"))?.trim().strip_suffix("kB")?.trim();
        Some(HostMemory { available: kb.parse::<u64>().ok()? * 1024, source: "MemAvailable in /proc/meminfo".into() })
    });
    let read_u64 = |p: &str| std::fs::read_to_string(p).ok().and_then(|s| s.trim().parse::<u64>().ok());
    let cgroup = read_u64("/sys/fs/cgroup/memory.max").map(|max| {
        let used = read_u64("/sys/fs/cgroup/memory.current").unwrap_or(0);
        HostMemory {
            available: max.saturating_sub(used),
            source: "the cgroup limit, /sys/fs/cgroup/memory.max less memory.current".into(),
        }
    });
    match (meminfo, cgroup) {
        (Some(m), Some(c)) => Some(if c.available < m.available { c } else { m }),
        (m, c) => m.or(c),
    }
}

/// The allocation size from which [`pin_mmap_threshold`] has glibc serve blocks with their own
/// memory mapping.
pub const MMAP_THRESHOLD: usize = 1 << 20;

/// Fixes glibc's mmap threshold at [`MMAP_THRESHOLD`] for the whole process (once; a no-op off
/// glibc). glibc raises the threshold each time a mapped block is freed (up to 32 MiB), after
/// which blocks of tensor size come from the heap and fragment it: a graph run again with the
/// same shapes (the streaming VAE decoder on the next tile) then peaks higher than its first run
/// (measured +290 MiB at the second tile, docs/measurements). With a fixed threshold every block
/// of 1 MiB and more is mapped and returned on free, at a few percent more system time.
pub fn pin_mmap_threshold() {
    static PINNED: std::sync::Once = std::sync::Once::new();
    PINNED.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            /// `M_MMAP_THRESHOLD` of glibc's `malloc.h`.
            const M_MMAP_THRESHOLD: std::os::raw::c_int = -3;
            extern "C" {
                fn mallopt(param: std::os::raw::c_int, value: std::os::raw::c_int) -> std::os::raw::c_int;
            }
            // SAFETY: mallopt only changes glibc's allocator parameters under its lock.
            let ok = unsafe { mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD as std::os::raw::c_int) };
            if ok != 1 {
                tracing::warn!(threshold = MMAP_THRESHOLD, "glibc refused to fix the mmap threshold");
            }
        }
    });
}

/// The environment variable that keeps `osp` from restarting with huge-page malloc
/// ([`restart_with_malloc_huge_pages`]): `0` turns the restart off.
pub const MALLOC_HUGE_PAGES_ENV: &str = "OSP_MALLOC_HUGE_PAGES";
/// The glibc tunable that makes malloc ask for transparent huge pages
/// (`madvise(MADV_HUGEPAGE)`) on the blocks it maps.
pub const MALLOC_HUGE_PAGES_TUNABLE: &str = "glibc.malloc.hugetlb=1";
const TUNABLES_ENV: &str = "GLIBC_TUNABLES";
/// The kernel's transparent-huge-page mode (`always [madvise] never`).
const THP_MODE_FILE: &str = "/sys/kernel/mm/transparent_hugepage/enabled";

/// The `GLIBC_TUNABLES` value to restart with, or why not: `tunables` and `opt_out` are the
/// environment's `GLIBC_TUNABLES` and [`MALLOC_HUGE_PAGES_ENV`], `thp_mode` the content of the
/// kernel's THP mode file. Only the `madvise` mode gains (`always` maps huge pages without being
/// asked, `never` refuses them); a `glibc.malloc.hugetlb` already set, by the user or by the
/// restart itself, is kept.
fn huge_pages_restart(tunables: Option<&str>, opt_out: Option<&str>, thp_mode: Option<&str>) -> Result<String, String> {
    if let Some(t) = tunables.filter(|t| t.contains("glibc.malloc.hugetlb")) {
        return Err(format!("{TUNABLES_ENV}={t}"));
    }
    if opt_out == Some("0") {
        return Err(format!("off ({MALLOC_HUGE_PAGES_ENV}=0)"));
    }
    let mode = thp_mode.and_then(|m| Some(m.split_once('[')?.1.split_once(']')?.0));
    if mode != Some("madvise") {
        return Err(format!("off (transparent huge pages: {})", mode.unwrap_or("unknown")));
    }
    Ok(match tunables {
        Some(t) if !t.is_empty() => format!("{t}:{MALLOC_HUGE_PAGES_TUNABLE}"),
        _ => MALLOC_HUGE_PAGES_TUNABLE.to_string(),
    })
}

/// [`huge_pages_restart`] for this process's environment and kernel.
fn huge_pages_restart_here() -> Result<String, String> {
    let tunables = std::env::var(TUNABLES_ENV).ok();
    let opt_out = std::env::var(MALLOC_HUGE_PAGES_ENV).ok();
    let mode = std::fs::read_to_string(THP_MODE_FILE).ok();
    huge_pages_restart(tunables.as_deref(), opt_out.as_deref(), mode.as_deref())
}

/// Restarts this process (the same executable, arguments and environment, through `exec`) with
/// [`MALLOC_HUGE_PAGES_TUNABLE`] added to `GLIBC_TUNABLES`, where the kernel gives transparent
/// huge pages on request only. With the fixed mmap threshold ([`pin_mmap_threshold`]) every graph
/// run maps its large intermediates afresh, and faulting them in 4 KiB pages cost the streamed
/// release WFVAE decode about 15% of its time (docs/benchmarks.md). Call it first in `main`, before
/// any thread starts. Returns without restarting off glibc Linux, where the tunable is already set,
/// with `OSP_MALLOC_HUGE_PAGES=0`, where the kernel mode is not `madvise`, or when `exec` fails
/// (its error).
pub fn restart_with_malloc_huge_pages() -> std::io::Result<()> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        if let Ok(value) = huge_pages_restart_here() {
            let exe = std::env::current_exe()?;
            let mut args = std::env::args_os();
            let mut cmd = std::process::Command::new(exe);
            if let Some(arg0) = args.next() {
                cmd.arg0(arg0);
            }
            // `exec` returns only on failure
            return Err(cmd.args(args).env(TUNABLES_ENV, value).exec());
        }
    }
    Ok(())
}

/// Whether malloc asks for huge pages in this process, for logs: `glibc.malloc.hugetlb` in
/// `GLIBC_TUNABLES`, or why not.
pub fn malloc_huge_pages_state() -> String {
    huge_pages_restart_here().map_or_else(|why| why, |_| "off (not restarted)".to_string())
}

/// Returns the free pages at the top of the heap and in glibc's arenas to the system
/// (`malloc_trim(0)`), so that buffers freed between tiles do not stay resident while the next
/// tile's differently sized buffers are allocated elsewhere. A no-op off glibc.
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> std::os::raw::c_int;
        }
        // SAFETY: malloc_trim only walks glibc's own allocator state under its locks; it has no
        // preconditions and any pointer it frees was already free.
        unsafe {
            malloc_trim(0);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn huge_pages_restart_only_in_madvise_mode_and_only_once() {
        let madvise = Some("always [madvise] never\n");
        assert_eq!(super::huge_pages_restart(None, None, madvise), Ok("glibc.malloc.hugetlb=1".to_string()));
        assert_eq!(
            super::huge_pages_restart(Some("glibc.malloc.arena_max=2"), None, madvise),
            Ok("glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1".to_string())
        );
        // set already (by the user, or by the restart itself): no second restart
        assert!(super::huge_pages_restart(Some("glibc.malloc.hugetlb=0"), None, madvise).is_err());
        assert!(super::huge_pages_restart(Some("glibc.malloc.hugetlb=1"), None, madvise).is_err());
        assert!(super::huge_pages_restart(None, Some("0"), madvise).unwrap_err().contains("OSP_MALLOC_HUGE_PAGES=0"));
        // the tunable in effect is reported even with the opt-out set
        let both = super::huge_pages_restart(Some("glibc.malloc.hugetlb=1"), Some("0"), madvise).unwrap_err();
        assert_eq!(both, "GLIBC_TUNABLES=glibc.malloc.hugetlb=1");
        for mode in [Some("[always] madvise never"), Some("always madvise [never]"), Some("garbage"), None] {
            assert!(super::huge_pages_restart(None, None, mode).is_err(), "{mode:?}");
        }
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn host_memory_is_read() {
        let host = super::host_available().expect("/proc/meminfo should be readable on Linux");
        assert!(host.available > 1 << 20 && !host.source.is_empty(), "{host:?}");
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn resident_size_is_read_and_grows_with_a_touched_buffer() {
        // Other tests of this process allocate and free concurrently, which can hide one
        // buffer's growth: half the buffer is margin, and a few attempts are allowed.
        let mut seen = Vec::new();
        for _ in 0..3 {
            let before = super::usage().expect("/proc/self/status should be readable on Linux");
            assert!(before.rss > 0 && before.peak >= before.rss && before.anon <= before.rss);
            let buf = std::hint::black_box(vec![1u8; 128 << 20]);
            let after = super::usage().expect("/proc/self/status should be readable on Linux");
            assert!(after.peak >= after.rss);
            drop(buf);
            super::release_free_heap();
            if after.anon >= before.anon + (64 << 20) {
                return;
            }
            seen.push(format!("{before} -> {after}"));
        }
        panic!("a touched 128 MiB buffer never showed in RssAnon: {seen:?}");
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn the_peak_resets_to_the_resident_size() {
        // As above, concurrent tests can hold memory at the reset: a few attempts are allowed.
        let mut seen = Vec::new();
        for _ in 0..3 {
            let buf = std::hint::black_box(vec![1u8; 256 << 20]);
            drop(buf);
            super::release_free_heap();
            let high = super::usage().expect("/proc/self/status should be readable on Linux");
            assert!(super::reset_peak(), "/proc/self/clear_refs should be writable");
            let after = super::usage().expect("/proc/self/status should be readable on Linux");
            if after.peak + (128 << 20) <= high.peak {
                return;
            }
            seen.push(format!("{high} -> {after}"));
        }
        panic!("the peak never fell by the freed 256 MiB buffer: {seen:?}");
    }
}
