#!/usr/bin/env bash
# The whole osp test suite on a fresh machine: set-up (Debian packages, ONNX Runtime library), then every
# test of the workspace in the release profile (the one profile CI builds). Extra arguments go to
# `cargo test` (e.g. `-- --ignored` for the heavy tests listed in docs/testing.md).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$repo/scripts/setup.sh"
cd "$repo"
start=$(date +%s)
cargo test --release --workspace --all-targets --locked "$@"
cargo test --release --workspace --doc --locked
# The lean runtime on its own (no tract, as shipped): its CLI tests, including the binary-size check.
cargo test --release --locked -p osp-runtime --test cli
# The GPU feature code (CUDA and TensorRT providers, the NCCL binding and its GPU check) compiles without CUDA.
gpu_start=$(date +%s)
cargo check --release --locked -p osp-runtime --features cuda,tensorrt,nccl --all-targets
echo "[test] GPU feature check took $(( $(date +%s) - gpu_start )) s" >&2
echo "[test] suite finished in $(( $(date +%s) - start )) s" >&2
