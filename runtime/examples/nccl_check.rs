//! The NCCL part of the GPU check (`scripts/gpu_check.sh`, docs/parallel_gpu.md): NCCL
//! all-to-all and all-gather on the given CUDA devices match the reference bit for bit (odd,
//! empty and megabyte sizes), device buffers on another device are refused, and an abort reaches
//! every rank. Small and free of FFmpeg, so it runs on a bare GPU host.
//!
//! `OSP_NCCL_LIBRARY=... OSP_CUDART_LIBRARY=... nccl_check [--devices 0]`
//! (needs `--features nccl`). Exit status 0 and `ok` lines on success.

use std::marker::PhantomData;

use anyhow::{bail, ensure, Context, Result};
use osp_runtime::parallel::nccl::{check_against_reference, nccl_version, NcclComm};
use osp_runtime::parallel::workers::parse_devices;
use osp_runtime::parallel::{Buffer, BufferMut, Collective, CollectiveError};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let devices = match args.as_slice() {
        [] => vec![0],
        [flag, list] if flag == "--devices" => parse_devices(list).map_err(anyhow::Error::msg).context("--devices")?,
        _ => bail!("usage: nccl_check [--devices 0,1,...]"),
    };
    println!("NCCL version {}", nccl_version()?);
    for bytes in [0usize, 1, 7, 4096, (1 << 20) + 3] {
        check_against_reference(&devices, bytes * devices.len()).with_context(|| format!("{bytes} bytes per rank"))?;
        println!("ok: all_to_all and all_gather of {bytes} bytes per rank on devices {devices:?} match the reference");
    }
    let comms = NcclComm::init_all(&devices)?;
    let wrong = Buffer::Cuda { device: devices[0] + 1000, ptr: 0, bytes: 1, _life: PhantomData };
    let e = comms[0].all_gather(wrong, BufferMut::Host(&mut vec![0; comms.len()])).err().context("wrong device")?;
    ensure!(matches!(e, CollectiveError::Unsupported { .. }), "a buffer on another device: {e}");
    println!("ok: a buffer on another device is refused ({e})");
    comms[0].abort("gpu_check abort");
    let last = &comms[comms.len() - 1];
    let e = last.all_gather(Buffer::Host(&[1]), BufferMut::Host(&mut vec![0; comms.len()])).err().context("abort")?;
    ensure!(matches!(e, CollectiveError::Aborted { rank: 0, .. }), "after an abort: {e}");
    println!("ok: after rank 0 aborts, rank {} gets: {e}", last.rank());
    Ok(())
}
