//! Generates the ONNX protobuf types from the vendored `proto/onnx.proto` at the workspace root
//! (onnx 1.23.2 wheel; the runtime compiles the same file) with `protox` (pure-Rust protoc), so no
//! system protobuf compiler is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "../proto/onnx.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["../proto"])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
