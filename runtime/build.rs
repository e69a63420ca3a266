//! Generates protobuf types with `protox` (pure-Rust protoc), so no system protobuf compiler is
//! needed: the SentencePiece model (`proto/sentencepiece_model.proto` at the workspace root,
//! sentencepiece 0.2.0 sdist, Apache-2.0) and ONNX (`proto/onnx.proto`, onnx 1.23.2 wheel, the one
//! copy `export/` also compiles), read only, to check graph files (`osp inspect`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["../proto/sentencepiece_model.proto", "../proto/onnx.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(protos, ["../proto"])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
