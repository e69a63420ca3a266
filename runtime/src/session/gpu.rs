//! GPU session settings: the CUDA execution provider's options, the TensorRT optimisation profile
//! (derived from the manifest's symbolic dims and a requested min/opt/max per symbol), and the key
//! TensorRT engines and timing caches are filed under (graph, precision, profile).
//!
//! Everything here is plain data and pure functions, so it is tested without a GPU; the provider
//! files (`engine/ort/ep/{cuda,tensorrt}.rs`) turn it into ONNX Runtime provider options.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use osp_graphs::{Dim, GraphSpec, Precision};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// cuDNN's convolution algorithm search (the CUDA EP's `cudnn_conv_algo_search`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ConvAlgoSearch {
    /// Benchmark every algorithm on first use (ONNX Runtime's default; slow first run).
    #[default]
    Exhaustive,
    /// cuDNN's heuristics, no benchmarking.
    Heuristic,
    /// The fixed default algorithm (`IMPLICIT_PRECOMP_GEMM`): least memory, deterministic choice.
    Default,
}

impl ConvAlgoSearch {
    /// The option value ONNX Runtime reads.
    pub fn ort_value(self) -> &'static str {
        match self {
            ConvAlgoSearch::Exhaustive => "EXHAUSTIVE",
            ConvAlgoSearch::Heuristic => "HEURISTIC",
            ConvAlgoSearch::Default => "DEFAULT",
        }
    }
}

/// How the CUDA EP's memory arena grows (`arena_extend_strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ArenaExtend {
    /// Grow by powers of two (ONNX Runtime's default).
    #[default]
    NextPowerOfTwo,
    /// Grow by exactly what is requested (less slack, more allocations).
    SameAsRequested,
}

impl ArenaExtend {
    pub fn ort_value(self) -> &'static str {
        match self {
            ArenaExtend::NextPowerOfTwo => "kNextPowerOfTwo",
            ArenaExtend::SameAsRequested => "kSameAsRequested",
        }
    }
}

/// Settings of the CUDA and TensorRT sessions (CPU backends ignore them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuOptions {
    /// TF32 tensor-core math in the CUDA EP's MatMul and Conv (ONNX Runtime's default: on). Turn
    /// it off for parity runs against float32 references.
    pub tf32: bool,
    pub conv_algo_search: ConvAlgoSearch,
    pub arena_extend: ArenaExtend,
    /// Cap of the CUDA EP's memory arena in bytes (`gpu_mem_limit`); `None`: no cap.
    pub memory_limit: Option<usize>,
    /// Let ONNX Runtime place nodes the GPU providers leave (the CUDA provider hands `Shape` and
    /// the integer ops it feeds to the CPU on purpose) on the CPU, with ONNX Runtime's placement
    /// warning on stderr (the session logs at warning level), never silently. `false`: the session
    /// sets `session.disable_cpu_ep_fallback = 1` and any CPU-placed node fails the load.
    pub allow_cpu_fallback: bool,
    /// The TensorRT optimisation profile: `(min, opt, max)` per symbolic dim, for every graph
    /// (`--trt-profile`). `None`: the graph's entry in `trt_request_profiles`, else TensorRT builds
    /// for the shapes it is first run with and rebuilds when they change.
    pub trt_profile: Option<ProfileRange>,
    /// Profiles by graph name derived from one request's shapes
    /// (`pipeline::trt_profile::request_profiles`), used where `trt_profile` is `None`.
    pub trt_request_profiles: BTreeMap<String, ProfileRange>,
}

impl Default for GpuOptions {
    fn default() -> Self {
        Self {
            tf32: true,
            conv_algo_search: ConvAlgoSearch::default(),
            arena_extend: ArenaExtend::default(),
            memory_limit: None,
            allow_cpu_fallback: true,
            trt_profile: None,
            trt_request_profiles: BTreeMap::new(),
        }
    }
}

/// `(min, opt, max)` values of symbolic dims, for a TensorRT optimisation profile.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProfileRange(pub BTreeMap<String, [usize; 3]>);

impl ProfileRange {
    /// A profile for exactly one request's shapes (min = opt = max).
    pub fn exact(bindings: &osp_graphs::SymbolBindings) -> Self {
        Self(bindings.iter().map(|(k, &v)| (k.clone(), [v; 3])).collect())
    }

    /// Sets `symbol` to `min..=max`, optimised for `opt`.
    pub fn with(mut self, symbol: impl Into<String>, min: usize, opt: usize, max: usize) -> Self {
        self.0.insert(symbol.into(), [min, opt, max]);
        self
    }

    /// Checks `1 <= min <= opt <= max` for every symbol.
    pub fn validate(&self) -> Result<()> {
        for (sym, [min, opt, max]) in &self.0 {
            if !(1 <= *min && min <= opt && opt <= max) {
                return Err(Error::TrtProfile {
                    graph: None,
                    why: format!("symbol `{sym}`: needs 1 <= min <= opt <= max, got {min}:{opt}:{max}"),
                });
            }
        }
        Ok(())
    }
}

/// Parses `sym=min:opt:max[,sym=...]`, or `sym=v` for a fixed value (the `--trt-profile` flag).
impl FromStr for ProfileRange {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let mut range = ProfileRange::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (sym, values) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}`: expected `symbol=min:opt:max` or `symbol=value`"))?;
            let nums: Vec<usize> = values
                .split(':')
                .map(|v| v.trim().parse::<usize>().map_err(|_| format!("`{part}`: `{v}` is not a whole number")))
                .collect::<std::result::Result<_, _>>()?;
            let triple = match nums[..] {
                [v] => [v; 3],
                [min, opt, max] => [min, opt, max],
                _ => return Err(format!("`{part}`: give one value or three (min:opt:max), got {}", nums.len())),
            };
            if range.0.insert(sym.trim().to_string(), triple).is_some() {
                return Err(format!("symbol `{}` is given twice", sym.trim()));
            }
        }
        if range.0.is_empty() {
            return Err("empty profile; expected `symbol=min:opt:max[,...]`".into());
        }
        range.validate().map_err(|e| e.to_string())?;
        Ok(range)
    }
}

/// The three `trt_profile_{min,opt,max}_shapes` strings of one graph: `name:d0xd1x...` for each
/// input with a symbolic dim, in manifest order, joined by `,`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrtShapes {
    pub min: String,
    pub opt: String,
    pub max: String,
}

impl fmt::Display for TrtShapes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "min {} / opt {} / max {}", self.min, self.opt, self.max)
    }
}

/// `(min, opt, max)` of `symbol` in `range`: its own entry, or for a scaled symbol `k*s` (the
/// WFVAE decoder states' `2*h`, `4*w`) without one, `k` times the entry of `s`.
fn symbol_values(range: &ProfileRange, symbol: &str) -> Option<[usize; 3]> {
    if let Some(v) = range.0.get(symbol) {
        return Some(*v);
    }
    let (k, base) = symbol.split_once('*')?;
    let k: usize = k.trim().parse().ok()?;
    range.0.get(base.trim()).map(|v| v.map(|x| k.saturating_mul(x)))
}

/// The TensorRT optimisation profile of `spec` under `range`. `None` when no input has a symbolic
/// dim (TensorRT needs no profile). Every symbol of a dynamic input must be in `range` (a scaled
/// symbol `k*s` may be given through `s`); symbols the graph does not use are ignored (one range
/// serves every graph of a bundle).
pub fn trt_shapes(graph: &str, spec: &GraphSpec, range: &ProfileRange) -> Result<Option<TrtShapes>> {
    range.validate().map_err(|e| match e {
        Error::TrtProfile { why, .. } => Error::TrtProfile { graph: Some(graph.to_string()), why },
        other => other,
    })?;
    let mut parts: [Vec<String>; 3] = Default::default();
    for input in spec.inputs.iter().filter(|t| t.dims.iter().any(|d| matches!(d, Dim::Symbolic(_)))) {
        for (which, out) in parts.iter_mut().enumerate() {
            let dims = input
                .dims
                .iter()
                .map(|d| match d {
                    Dim::Fixed(v) => Ok(v.to_string()),
                    Dim::Symbolic(s) => {
                        symbol_values(range, s).map(|v| v[which].to_string()).ok_or_else(|| Error::TrtProfile {
                            graph: Some(graph.to_string()),
                            why: format!(
                                "input `{}` {} has symbol `{s}`, which the profile does not give (it gives: {})",
                                input.name,
                                input.dims_string(),
                                range.0.keys().cloned().collect::<Vec<_>>().join(", ")
                            ),
                        })
                    }
                })
                .collect::<Result<Vec<_>>>()?;
            out.push(format!("{}:{}", input.name, dims.join("x")));
        }
    }
    if parts[0].is_empty() {
        return Ok(None);
    }
    let [min, opt, max] = parts.map(|p| p.join(","));
    Ok(Some(TrtShapes { min, opt, max }))
}

/// The name TensorRT engines and the timing cache of one graph are filed under:
/// `<graph>-<precision>-<16 hex digits>`, the digits a SHA-256 of the graph name, its precision and
/// its profile strings (`static` without a profile). Stable across runs and builds; any change of
/// the three gives a new key, so a cached engine is never used for another precision or profile.
pub fn trt_cache_key(graph: &str, precision: Precision, shapes: Option<&TrtShapes>) -> String {
    let mut h = Sha256::new();
    for part in [graph, &precision.to_string()] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    match shapes {
        Some(s) => {
            for part in [&s.min, &s.opt, &s.max] {
                h.update(part.as_bytes());
                h.update([0]);
            }
        }
        None => h.update(b"static"),
    }
    let digest = hex::encode(&h.finalize()[..8]);
    let safe: String = graph.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    format!("{safe}-{precision}-{digest}")
}

/// What the TensorRT provider of one graph's session is built with: its profile, its reduced
/// precision flags (from the bundle's precision) and its cache key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrtGraph {
    pub shapes: Option<TrtShapes>,
    pub precision: Precision,
    pub cache_key: String,
}

impl TrtGraph {
    /// The provider settings of `graph`: the profile of `gpu.trt_profile`, else of the graph's
    /// entry in `gpu.trt_request_profiles`, else none (first-seen shapes). A request profile that misses a symbol of the graph (a graph exported with dims the
    /// derivation does not know) is dropped with a warning; a `--trt-profile` that does is an error.
    pub fn new(graph: &str, spec: &GraphSpec, gpu: &GpuOptions) -> Result<Self> {
        let shapes = match (&gpu.trt_profile, gpu.trt_request_profiles.get(graph)) {
            (Some(range), _) => trt_shapes(graph, spec, range)?,
            (None, Some(range)) => trt_shapes(graph, spec, range).unwrap_or_else(|e| {
                tracing::warn!(graph, error = %e, "no TensorRT profile from the request; the engine is built for the first shapes seen");
                None
            }),
            (None, None) => None,
        };
        let cache_key = trt_cache_key(graph, spec.precision, shapes.as_ref());
        Ok(Self { shapes, precision: spec.precision, cache_key })
    }
}

#[cfg(test)]
mod tests {
    use osp_graphs::{AttentionKind, DType, TensorSpec};

    use super::*;

    fn dit_spec(precision: Precision) -> GraphSpec {
        GraphSpec {
            file: "dit.onnx".into(),
            external_data: vec![],
            inputs: vec![
                TensorSpec::new(
                    "hidden_states",
                    DType::F32,
                    [Dim::sym("b"), 8.into(), "t".into(), "h".into(), "w".into()],
                ),
                TensorSpec::new("timestep", DType::I64, [Dim::sym("b")]),
                TensorSpec::new("encoder_hidden_states", DType::F32, [Dim::sym("b"), 1.into(), "l".into(), 64.into()]),
                TensorSpec::new("scale", DType::F32, [1.into()]),
            ],
            outputs: vec![],
            attention: AttentionKind::OnnxAttention,
            precision,
            opset: 23,
            metadata: Default::default(),
        }
    }

    #[test]
    fn profile_strings_follow_the_manifest_dims() {
        let range: ProfileRange = "b=1:2:2, t=1:5:9,h=16:32:64,w=16:32:64,l=8:16:32,unused=3".parse().unwrap();
        let shapes = trt_shapes("dit", &dit_spec(Precision::F32), &range).unwrap().unwrap();
        assert_eq!(shapes.min, "hidden_states:1x8x1x16x16,timestep:1,encoder_hidden_states:1x1x8x64");
        assert_eq!(shapes.opt, "hidden_states:2x8x5x32x32,timestep:2,encoder_hidden_states:2x1x16x64");
        assert_eq!(shapes.max, "hidden_states:2x8x9x64x64,timestep:2,encoder_hidden_states:2x1x32x64");
        // A scaled symbol (`2*h`) without its own entry follows its base.
        let mut scaled = dit_spec(Precision::F32);
        scaled.inputs.push(TensorSpec::new("state", DType::F32, [Dim::sym("b"), "2*h".into(), "4*w".into()]));
        let shapes = trt_shapes("dit", &scaled, &range).unwrap().unwrap();
        assert!(shapes.min.ends_with(",state:1x32x64") && shapes.max.ends_with(",state:2x128x256"), "{shapes}");
        let given = range.clone().with("2*h", 5, 6, 7);
        assert!(trt_shapes("dit", &scaled, &given).unwrap().unwrap().opt.ends_with(",state:2x6x128"));
        // A static graph needs no profile.
        let mut fixed = dit_spec(Precision::F32);
        fixed.inputs.retain(|t| t.name == "scale");
        assert_eq!(trt_shapes("dit", &fixed, &range).unwrap(), None);
    }

    #[test]
    fn exact_profiles_come_from_a_request() {
        let bindings = [("b", 2), ("t", 5), ("h", 4), ("w", 6), ("l", 3)].map(|(k, v)| (k.to_string(), v)).into();
        let shapes = trt_shapes("dit", &dit_spec(Precision::F32), &ProfileRange::exact(&bindings)).unwrap().unwrap();
        assert_eq!(shapes.min, shapes.opt);
        assert_eq!(shapes.opt, shapes.max);
        assert_eq!(shapes.opt, "hidden_states:2x8x5x4x6,timestep:2,encoder_hidden_states:2x1x3x64");
    }

    #[test]
    fn bad_profiles_are_errors_naming_the_rule() {
        let missing = ProfileRange::default().with("b", 1, 1, 2).with("t", 1, 2, 3);
        let e = trt_shapes("dit", &dit_spec(Precision::F32), &missing).unwrap_err().to_string();
        assert!(e.contains("dit") && e.contains("hidden_states") && e.contains("`h`"), "{e}");
        let inverted = ProfileRange::default().with("b", 2, 1, 2);
        let e = trt_shapes("dit", &dit_spec(Precision::F32), &inverted).unwrap_err().to_string();
        assert!(e.contains("min <= opt <= max") && e.contains("2:1:2"), "{e}");
        for bad in ["", "b", "b=1:2", "b=x", "b=0", "b=1,b=2", "b=3:2:4"] {
            assert!(bad.parse::<ProfileRange>().is_err(), "`{bad}` should be refused");
        }
        assert_eq!("b=2".parse::<ProfileRange>().unwrap(), ProfileRange::default().with("b", 2, 2, 2));
    }

    #[test]
    fn cache_keys_are_stable_and_separate_graph_precision_and_profile() {
        let spec = dit_spec(Precision::F16);
        let a = TrtGraph::new("dit", &spec, &GpuOptions::default()).unwrap();
        assert_eq!(a.cache_key, TrtGraph::new("dit", &spec, &GpuOptions::default()).unwrap().cache_key);
        assert!(a.cache_key.starts_with("dit-f16-") && a.cache_key.len() == "dit-f16-".len() + 16, "{}", a.cache_key);
        // Pinned (Python: hashlib.sha256(b"dit\0f32\0static")): the key must not change between
        // builds, or cached engines would be orphaned.
        assert_eq!(trt_cache_key("dit", Precision::F32, None), "dit-f32-19be44fada934b67");
        let shapes = TrtShapes { min: "x:1".into(), opt: "x:2".into(), max: "x:3".into() };
        assert_eq!(trt_cache_key("dit", Precision::F16, Some(&shapes)), "dit-f16-f3605945fdb033b4");
        let profiled =
            GpuOptions { trt_profile: Some("b=1,t=1:2:3,h=4,w=4,l=2".parse().unwrap()), ..GpuOptions::default() };
        let keys = [
            a.cache_key.clone(),
            TrtGraph::new("dit", &dit_spec(Precision::Bf16), &GpuOptions::default()).unwrap().cache_key,
            TrtGraph::new("dit2", &spec, &GpuOptions::default()).unwrap().cache_key,
            TrtGraph::new("dit", &spec, &profiled).unwrap().cache_key,
        ];
        for i in 0..keys.len() {
            for j in i + 1..keys.len() {
                assert_ne!(keys[i], keys[j]);
            }
        }
        assert_eq!(trt_cache_key("a/b c", Precision::F32, None).split('-').next(), Some("a_b_c"));
    }
}
