//! The ONNX Runtime TensorRT execution provider (needs the `tensorrt` feature and a GPU build of
//! the ONNX Runtime library with the TensorRT provider next to it).
//!
//! Engines and the timing cache live under one cache directory:
//! `<cache_dir>/engines/<graph>*` and `<cache_dir>/timing/`.

use std::path::Path;

use ort::ep::ExecutionProviderDispatch;

use crate::error::Result;

#[cfg(feature = "tensorrt")]
pub fn dispatch(device_id: i32, cache_dir: &Path, graph: &str) -> Result<ExecutionProviderDispatch> {
    use crate::error::Error;

    let engines = cache_dir.join("engines");
    let timing = cache_dir.join("timing");
    for dir in [&engines, &timing] {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.clone(), source })?;
    }
    Ok(ort::ep::TensorRT::default()
        .with_device_id(device_id)
        .with_engine_cache(true)
        .with_engine_cache_path(engines.display())
        .with_engine_cache_prefix(graph)
        .with_timing_cache(true)
        .with_timing_cache_path(timing.display())
        .build()
        .error_on_failure())
}

#[cfg(not(feature = "tensorrt"))]
pub fn dispatch(_device_id: i32, _cache_dir: &Path, _graph: &str) -> Result<ExecutionProviderDispatch> {
    Err(crate::error::Error::BackendUnavailable {
        backend: "ort-tensorrt".into(),
        why: "osp-runtime was built without the `tensorrt` feature (rebuild with `--features tensorrt`)".into(),
    })
}
