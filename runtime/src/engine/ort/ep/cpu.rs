//! The ONNX Runtime CPU execution provider.

use ort::ep::ExecutionProviderDispatch;

pub fn dispatch() -> ExecutionProviderDispatch {
    ort::ep::CPU::default().build().error_on_failure()
}
