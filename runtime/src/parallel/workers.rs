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
            let mut opts = base.clone();
            match &mut opts.backend {
                Backend::OrtCuda { device_id } | Backend::OrtTensorRt { device_id, .. } => *device_id = d,
                Backend::OrtCpu | Backend::Tract => opts.threads = Some(cpu_threads),
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
}
