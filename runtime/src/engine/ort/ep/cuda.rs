//! The ONNX Runtime CUDA execution provider (needs the `cuda` feature and a GPU build of the
//! ONNX Runtime library, e.g. the `onnxruntime-gpu` wheel).

use ort::ep::ExecutionProviderDispatch;

use crate::error::Result;

#[cfg(feature = "cuda")]
pub fn dispatch(device_id: i32) -> Result<ExecutionProviderDispatch> {
    Ok(ort::ep::CUDA::default().with_device_id(device_id).build().error_on_failure())
}

#[cfg(not(feature = "cuda"))]
pub fn dispatch(_device_id: i32) -> Result<ExecutionProviderDispatch> {
    Err(crate::error::Error::BackendUnavailable {
        backend: "ort-cuda".into(),
        why: "osp-runtime was built without the `cuda` feature (rebuild with `--features cuda`)".into(),
    })
}
