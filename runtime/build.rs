//! Generates the SentencePiece model protobuf types from the vendored
//! `proto/sentencepiece_model.proto` (sentencepiece 0.2.0 sdist, Apache-2.0) with `protox`
//! (pure-Rust protoc), so no system protobuf compiler is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/sentencepiece_model.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
