#!/usr/bin/env bash
# The README's picture strip: frames that `osp generate` makes with the embedded default model.
#
#   ./scripts/picture_strip.sh [OUT.png]        (default docs/img/default_strip.png)
#
# Generates one video per prompt below with `osp generate --bundle assets/default` (its default
# sampling settings and seed, PNG frames so that no video codec touches the pixels), then tiles
# every other frame of each prompt into one row with ffmpeg (frames scaled 2x, nearest neighbour),
# one row per prompt. Runs scripts/setup.sh and builds `osp` first if needed, like generate.sh.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$repo/docs/img/default_strip.png}"
prompts=(
  "a red circle moving to the right"
  "a green square moving to the left"
  "a blue triangle moving up"
  "a yellow circle moving down"
)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"
osp="$CARGO_TARGET_DIR/release/osp"

"$repo/scripts/setup.sh"
if [ ! -x "$osp" ]; then
  echo "[picture_strip] building the osp release binary (once)" >&2
  (cd "$repo" && cargo build --release --locked -q -p osp-runtime --bin osp)
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# One folder of PNG frames per prompt; osp prints the folders' paths in prompt order.
mapfile -t folders < <("$osp" generate --bundle "$repo/assets/default" --no-text-cache --output-format png \
  --save_img_path "$work/frames" --text_prompt "${prompts[@]}")
if [ "${#folders[@]}" -ne "${#prompts[@]}" ]; then
  echo "[picture_strip] expected ${#prompts[@]} outputs from osp generate, got ${#folders[@]}" >&2
  exit 1
fi

rows=()
for i in "${!folders[@]}"; do
  frames=$(ls "${folders[$i]}"/frame_*.png | wc -l)
  per_row=$(((frames + 1) / 2))
  ffmpeg -loglevel error -y -start_number 0 -i "${folders[$i]}/frame_%05d.png" \
    -vf "select='not(mod(n\,2))',scale=iw*2:ih*2:flags=neighbor,tile=${per_row}x1:padding=4:margin=4:color=white" \
    -frames:v 1 -update 1 "$work/row_$i.png"
  rows+=(-i "$work/row_$i.png")
done
mkdir -p "$(dirname "$out")"
ffmpeg -loglevel error -y "${rows[@]}" -filter_complex "vstack=inputs=${#folders[@]}" -frames:v 1 -update 1 \
  -pix_fmt rgb24 "$out"
echo "$out"
