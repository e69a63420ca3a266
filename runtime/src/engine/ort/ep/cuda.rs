//! The ONNX Runtime CUDA execution provider (needs the `cuda` feature and a GPU build of the
//! ONNX Runtime library, e.g. the `onnxruntime-gpu` wheel).

use ort::ep::ExecutionProviderDispatch;

use crate::error::Result;
use crate::session::GpuOptions;

/// The CUDA provider options (ONNX Runtime's keys) for device `device_id` under `gpu`.
pub fn provider_options(device_id: i32, gpu: &GpuOptions) -> Vec<(&'static str, String)> {
    let flag = |on: bool| if on { "1" } else { "0" }.to_string();
    let mut options = vec![
        ("device_id", device_id.to_string()),
        ("use_tf32", flag(gpu.tf32)),
        ("cudnn_conv_algo_search", gpu.conv_algo_search.ort_value().to_string()),
        ("arena_extend_strategy", gpu.arena_extend.ort_value().to_string()),
    ];
    if let Some(limit) = gpu.memory_limit {
        options.push(("gpu_mem_limit", limit.to_string()));
    }
    options
}

#[cfg(feature = "cuda")]
pub fn dispatch(device_id: i32, gpu: &GpuOptions) -> Result<ExecutionProviderDispatch> {
    use ort::ep::ArbitrarilyConfigurableExecutionProvider;

    let mut ep = ort::ep::CUDA::default();
    for (key, value) in provider_options(device_id, gpu) {
        ep = ep.with_arbitrary_config(key, value);
    }
    Ok(ep.build().error_on_failure())
}

#[cfg(not(feature = "cuda"))]
pub fn dispatch(_device_id: i32, _gpu: &GpuOptions) -> Result<ExecutionProviderDispatch> {
    Err(crate::error::Error::BackendUnavailable {
        backend: "ort-cuda".into(),
        why: "osp-runtime was built without the `cuda` feature (rebuild with `--features cuda`)".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{ArenaExtend, ConvAlgoSearch};

    #[test]
    fn options_use_onnx_runtime_keys() {
        let defaults = provider_options(0, &GpuOptions::default());
        assert_eq!(
            defaults,
            [
                ("device_id", "0"),
                ("use_tf32", "1"),
                ("cudnn_conv_algo_search", "EXHAUSTIVE"),
                ("arena_extend_strategy", "kNextPowerOfTwo")
            ]
            .map(|(k, v)| (k, v.to_string()))
        );
        let parity = GpuOptions {
            tf32: false,
            conv_algo_search: ConvAlgoSearch::Heuristic,
            arena_extend: ArenaExtend::SameAsRequested,
            memory_limit: Some(1 << 30),
            ..GpuOptions::default()
        };
        let opts = provider_options(3, &parity);
        let get = |k: &str| opts.iter().find(|(key, _)| *key == k).map(|(_, v)| v.as_str());
        assert_eq!(get("device_id"), Some("3"));
        assert_eq!(get("use_tf32"), Some("0"));
        assert_eq!(get("cudnn_conv_algo_search"), Some("HEURISTIC"));
        assert_eq!(get("arena_extend_strategy"), Some("kSameAsRequested"));
        assert_eq!(get("gpu_mem_limit"), Some("1073741824"));
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn the_provider_is_built_without_a_gpu() {
        // Registration (which needs the GPU library) happens at session build; building the
        // dispatch with every option must not.
        let ep = dispatch(0, &GpuOptions { tf32: false, ..GpuOptions::default() }).unwrap();
        assert_eq!(ep.name(), "CUDAExecutionProvider");
    }
}
