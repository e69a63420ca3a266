//! osp criterion benches. Ids encode component, dtype, shape and backend
//! (`transformer_block_onnx_attention/f32/b1_n256_d256/ort-cpu`).
//!
//! `cargo bench -p osp-benches` (all), `cargo bench -p osp-benches -- transformer_block` (one group).
//! Under `cargo test` each bench runs once as a smoke test.

mod benchmarks;

criterion::criterion_main!(benchmarks::transformer_block::benches);
