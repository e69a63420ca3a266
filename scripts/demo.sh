#!/usr/bin/env bash
# The main osp job on a fresh machine. For now: export a small transformer block into a bundle and run it
# with the `osp` runtime (later: text-to-video on the embedded default bundle).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$repo/scripts/setup.sh"
cd "$repo"
cargo build --release --locked -p osp-runtime -p osp-export
out="$repo/target/demo"
mkdir -p "$out"
./target/release/osp-export transformer-block \
  --config export/configs/transformer_block_demo.json --seed 0 \
  --out "$out/block" --example-inputs "$out/inputs.safetensors" --batch 2 --tokens 64
./target/release/osp inspect "$out/block"
./target/release/osp run-graph "$out/block" block \
  --inputs "$out/inputs.safetensors" --out "$out/outputs.safetensors" "$@"
