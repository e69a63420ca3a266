#!/usr/bin/env bash
# The README's main command: a video from a prompt with the embedded default model.
#
#   ./scripts/generate.sh "a red circle moving to the right" [more osp generate flags]
#
# Runs scripts/setup.sh (idempotent: build packages, ONNX Runtime library), builds the lean `osp`
# release binary if it is missing, generates with `osp generate --bundle assets/default` and
# prints where the video is. Output folder: $OSP_OUT (default ./sample_videos/default).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ $# -lt 1 ] || [ -z "$1" ]; then
  echo "usage: $0 \"a red circle moving to the right\" [osp generate flags...]" >&2
  exit 2
fi
prompt="$1"
shift
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"
osp="$CARGO_TARGET_DIR/release/osp"
out="${OSP_OUT:-./sample_videos/default}"

"$repo/scripts/setup.sh"
if [ ! -x "$osp" ]; then
  echo "[generate] building the osp release binary (once)" >&2
  (cd "$repo" && cargo build --release -q -p osp-runtime --bin osp)
fi
if [ ! -f "$repo/assets/default/pipeline.json" ]; then
  echo "[generate] $repo/assets/default has no bundle: run scripts/train_default.sh first" >&2
  exit 1
fi
mkdir -p "$out"
start=$(date +%s)
# osp prints the path of each file it writes on stdout (an existing video is kept: see docs/generate.md).
"$osp" generate --bundle "$repo/assets/default" --text_prompt "$prompt" --save_img_path "$out" "$@"
echo "[generate] done in $(($(date +%s) - start)) s" >&2
