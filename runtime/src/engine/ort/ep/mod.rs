//! One file per ONNX Runtime execution provider (ort's `src/ep/*.rs` layout). Each returns an
//! `ExecutionProviderDispatch` with `.error_on_failure()`, so a provider that cannot register fails
//! the session instead of silently running on the CPU.

pub mod cpu;
pub mod cuda;
pub mod tensorrt;
