//! The ONNX Runtime TensorRT execution provider (needs the `tensorrt` feature and a GPU build of
//! the ONNX Runtime library with the TensorRT provider next to it).
//!
//! Engines and timing caches live under one cache directory, filed by the graph's cache key
//! ([`crate::session::gpu::trt_cache_key`]: graph, precision, profile):
//! `<cache_dir>/engines/<key>*` and `<cache_dir>/timing/<key>/`. Reduced precision follows the
//! bundle: `trt_fp16_enable` for f16 graphs, `trt_bf16_enable` for bf16 graphs, neither for f32.

use std::path::Path;

use ort::ep::ExecutionProviderDispatch;
use osp_graphs::Precision;

use crate::error::Result;
use crate::session::gpu::TrtGraph;

/// The TensorRT provider options (ONNX Runtime's keys) for one graph on device `device_id`.
pub fn provider_options(device_id: i32, cache_dir: &Path, trt: &TrtGraph) -> Vec<(&'static str, String)> {
    let flag = |on: bool| if on { "1" } else { "0" }.to_string();
    let mut options = vec![
        ("device_id", device_id.to_string()),
        ("trt_engine_cache_enable", flag(true)),
        ("trt_engine_cache_path", cache_dir.join("engines").display().to_string()),
        ("trt_engine_cache_prefix", trt.cache_key.clone()),
        ("trt_timing_cache_enable", flag(true)),
        ("trt_timing_cache_path", cache_dir.join("timing").join(&trt.cache_key).display().to_string()),
        ("trt_fp16_enable", flag(trt.precision == Precision::F16)),
    ];
    if trt.precision == Precision::Bf16 {
        options.push(("trt_bf16_enable", flag(true)));
    }
    if let Some(shapes) = &trt.shapes {
        options.push(("trt_profile_min_shapes", shapes.min.clone()));
        options.push(("trt_profile_opt_shapes", shapes.opt.clone()));
        options.push(("trt_profile_max_shapes", shapes.max.clone()));
    }
    options
}

#[cfg(feature = "tensorrt")]
pub fn dispatch(device_id: i32, cache_dir: &Path, trt: &TrtGraph) -> Result<ExecutionProviderDispatch> {
    use ort::ep::ArbitrarilyConfigurableExecutionProvider;

    use crate::error::Error;

    for dir in [cache_dir.join("engines"), cache_dir.join("timing").join(&trt.cache_key)] {
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io { path: dir.clone(), source })?;
    }
    tracing::info!(key = %trt.cache_key, profile = ?trt.shapes, "TensorRT engine cache key");
    let mut ep = ort::ep::TensorRT::default();
    for (key, value) in provider_options(device_id, cache_dir, trt) {
        ep = ep.with_arbitrary_config(key, value);
    }
    Ok(ep.build().error_on_failure())
}

#[cfg(not(feature = "tensorrt"))]
pub fn dispatch(_device_id: i32, _cache_dir: &Path, _trt: &TrtGraph) -> Result<ExecutionProviderDispatch> {
    Err(crate::error::Error::BackendUnavailable {
        backend: "ort-tensorrt".into(),
        why: "osp-runtime was built without the `tensorrt` feature (rebuild with `--features tensorrt`)".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::gpu::TrtShapes;

    fn get<'a>(opts: &'a [(&'static str, String)], key: &str) -> Option<&'a str> {
        opts.iter().find(|(k, _)| *k == key).map(|(_, v)| v.as_str())
    }

    #[test]
    fn precision_profile_and_cache_key_reach_the_options() {
        let shapes = TrtShapes { min: "x:1x2".into(), opt: "x:2x2".into(), max: "x:4x2".into() };
        let trt = TrtGraph { shapes: Some(shapes), precision: Precision::F16, cache_key: "dit-f16-0123".into() };
        let opts = provider_options(1, Path::new("/c"), &trt);
        assert_eq!(get(&opts, "device_id"), Some("1"));
        assert_eq!(get(&opts, "trt_fp16_enable"), Some("1"));
        assert_eq!(get(&opts, "trt_bf16_enable"), None);
        assert_eq!(get(&opts, "trt_engine_cache_prefix"), Some("dit-f16-0123"));
        assert_eq!(get(&opts, "trt_engine_cache_path"), Some("/c/engines"));
        assert_eq!(get(&opts, "trt_timing_cache_path"), Some("/c/timing/dit-f16-0123"));
        assert_eq!(get(&opts, "trt_profile_min_shapes"), Some("x:1x2"));
        assert_eq!(get(&opts, "trt_profile_opt_shapes"), Some("x:2x2"));
        assert_eq!(get(&opts, "trt_profile_max_shapes"), Some("x:4x2"));

        let bf16 = TrtGraph { shapes: None, precision: Precision::Bf16, cache_key: "k".into() };
        let opts = provider_options(0, Path::new("/c"), &bf16);
        assert_eq!(get(&opts, "trt_fp16_enable"), Some("0"));
        assert_eq!(get(&opts, "trt_bf16_enable"), Some("1"));
        assert_eq!(get(&opts, "trt_profile_min_shapes"), None);
        let f32 = TrtGraph { shapes: None, precision: Precision::F32, cache_key: "k".into() };
        let opts = provider_options(0, Path::new("/c"), &f32);
        assert_eq!((get(&opts, "trt_fp16_enable"), get(&opts, "trt_bf16_enable")), (Some("0"), None));
    }
}
