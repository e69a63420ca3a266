//! Session options for the workers of one stage spread over several devices (one worker thread
//! and one session per device), and the `--devices` list they come from.
//!
//! GPU backends give worker `i` CUDA device `devices[i]`. On CPU backends the entries only count
//! workers (CPU ranks); the intra-op threads (`--threads`, else every core) are split between
//! them so that the workers together use what one session would.

use crate::error::{Error, Result};
use crate::session::{Backend, SessionOptions};

/// Parses a `--devices` list: comma-separated device ordinals (`0,1,2,3`), each at most once.
pub fn parse_devices(s: &str) -> std::result::Result<Vec<i32>, String> {
    let mut devices = Vec::new();
    for part in s.split(',').map(str::trim) {
        let d: i32 = part.parse().map_err(|_| format!("`{part}` is not a device ordinal (expected e.g. `0,1`)"))?;
        if d < 0 {
            return Err(format!("device ordinal {d} is negative"));
        }
        if devices.contains(&d) {
            return Err(format!("device {d} is listed twice"));
        }
        devices.push(d);
    }
    Ok(devices)
}

/// A parsed `--devices` list ([`parse_devices`]), as one command-line value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceList(pub Vec<i32>);

impl std::str::FromStr for DeviceList {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        parse_devices(s).map(DeviceList)
    }
}

/// `base` on GPU `device` (ort-cuda / ort-tensorrt); `base` as it is on CPU backends, whose
/// device entries only label workers.
pub fn on_device(base: &SessionOptions, device: i32) -> SessionOptions {
    let mut opts = base.clone();
    if let Backend::OrtCuda { device_id } | Backend::OrtTensorRt { device_id, .. } = &mut opts.backend {
        *device_id = device;
    }
    opts
}

/// Refuses, on GPU backends, an ordinal of `devices` at or above `gpus` (the host's GPU count,
/// [`host_gpus`] for this host; unchecked when `None`). CPU backends take any labels.
pub fn check_devices_exist(backend: &Backend, devices: &[i32], gpus: Option<usize>) -> Result<()> {
    if !matches!(backend, Backend::OrtCuda { .. } | Backend::OrtTensorRt { .. }) {
        return Ok(());
    }
    let Some(n) = gpus else { return Ok(()) };
    match devices.iter().find(|&&d| d < 0 || d as usize >= n) {
        Some(d) => Err(Error::InvalidInput {
            name: "devices".into(),
            rule: format!("GPU {d} does not exist (this host has {n})"),
        }),
        None => Ok(()),
    }
}

/// The GPUs this host has (the entries of `/proc/driver/nvidia/gpus`); `None` where that cannot
/// be read.
pub fn host_gpus() -> Option<usize> {
    std::fs::read_dir("/proc/driver/nvidia/gpus").ok().map(|d| d.count())
}

/// One [`SessionOptions`] per worker: `base` on device `devices[i]` (GPU backends), or with its
/// threads split between the workers (CPU backends).
pub fn worker_options(base: &SessionOptions, devices: &[i32]) -> Result<Vec<SessionOptions>> {
    let invalid = |rule: String| Error::InvalidInput { name: "devices".into(), rule };
    if devices.is_empty() {
        return Err(invalid("at least one device is needed".into()));
    }
    if let Some((i, d)) = devices.iter().enumerate().find(|(i, d)| devices[..*i].contains(d)) {
        return Err(invalid(format!("device {d} is listed twice (entry {i}); one worker per device")));
    }
    let n = devices.len();
    let cpu_threads =
        base.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |p| p.get())).div_ceil(n).max(1);
    Ok(devices
        .iter()
        .map(|&d| {
            let mut opts = on_device(base, d);
            if matches!(opts.backend, Backend::OrtCpu | Backend::Tract) {
                opts.threads = Some(cpu_threads);
            }
            opts
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_and_bad_lists_are_refused() {
        assert_eq!(parse_devices("0,1, 3").unwrap(), vec![0, 1, 3]);
        assert_eq!(parse_devices("2").unwrap(), vec![2]);
        for bad in ["", "0,,1", "a", "-1", "0,0"] {
            assert!(parse_devices(bad).is_err(), "`{bad}`");
        }
    }

    #[test]
    fn gpu_workers_get_their_device_and_cpu_workers_share_the_threads() {
        let gpu = worker_options(&SessionOptions::new(Backend::OrtCuda { device_id: 0 }), &[2, 5]).unwrap();
        assert_eq!(
            gpu.iter().map(|o| o.backend.clone()).collect::<Vec<_>>(),
            [Backend::OrtCuda { device_id: 2 }, Backend::OrtCuda { device_id: 5 }]
        );
        let cpu = worker_options(&SessionOptions::default().with_threads(8), &[0, 1, 2]).unwrap();
        assert!(cpu.iter().all(|o| o.threads == Some(3) && o.backend == Backend::OrtCpu));
        let one_thread = worker_options(&SessionOptions::default().with_threads(1), &[0, 1]).unwrap();
        assert!(one_thread.iter().all(|o| o.threads == Some(1)));
        assert!(worker_options(&SessionOptions::default(), &[]).is_err());
        let e = worker_options(&SessionOptions::default(), &[1, 1]).unwrap_err().to_string();
        assert!(e.contains("listed twice"), "{e}");
    }

    #[test]
    fn gpu_ordinals_beyond_the_host_are_refused_and_cpu_labels_are_not() {
        let cuda = Backend::OrtCuda { device_id: 0 };
        check_devices_exist(&cuda, &[0, 1], Some(2)).unwrap();
        check_devices_exist(&cuda, &[0, 7], None).unwrap();
        let e = check_devices_exist(&cuda, &[0, 2], Some(2)).unwrap_err().to_string();
        assert!(e.contains("devices") && e.contains("GPU 2 does not exist (this host has 2)"), "{e}");
        check_devices_exist(&Backend::OrtCpu, &[0, 9], Some(0)).unwrap();
        let moved = on_device(&SessionOptions::new(cuda).with_threads(3), 4);
        assert_eq!((moved.backend, moved.threads), (Backend::OrtCuda { device_id: 4 }, Some(3)));
        assert_eq!(on_device(&SessionOptions::default().with_threads(3), 4).threads, Some(3));
    }
}
