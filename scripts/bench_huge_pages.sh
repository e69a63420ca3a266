#!/usr/bin/env bash
# A/B of `osp`'s huge-page malloc restart (docs/runtime.md, "Huge-page malloc"): the release WFVAE decode with it (the
# default) and with OSP_MALLOC_HUGE_PAGES=0, streamed (13 latents, one per call, no tiling) and whole (5 latents),
# for the bundles `wfvae_conv3d` and `wfvae_winograd-f4` that `scripts/bench_kernels.py --cases vae --variants
# conv3d,winograd-f4` exported into WORK. Prints one line per run (decode seconds, peak RSS) and whether the two
# modes' decoded samples are bit-identical. Run it with nothing else running.
#   scripts/bench_huge_pages.sh WORK [ROUNDS]
set -euo pipefail
work="${1:?usage: bench_huge_pages.sh WORK [ROUNDS]}"
rounds="${2:-2}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
osp="$repo/target/release/osp"
z13="$work/z_13x32x32.safetensors"
if [ ! -f "$z13" ]; then
  python3 -c "import sys; from pathlib import Path; sys.path.insert(0, '$repo/scripts'); from vae_decode_table import write_latents; write_latents(Path('$z13'), [1, 8, 13, 32, 32], seed=1332)"
fi
for r in $(seq "$rounds"); do
  for v in conv3d winograd-f4; do
    for mode in on off; do
      for case in streamed13 whole5; do
        if [ "$case" = streamed13 ]; then args=(--latents "$z13" --no-tiling --chunk 1); else args=(--latents "$work/z_5x32x32.safetensors" --no-tiling --no-streaming); fi
        sample="$work/hp_${v}_${case}_${mode}.safetensors"
        if [ "$mode" = off ]; then export OSP_MALLOC_HUGE_PAGES=0; else unset OSP_MALLOC_HUGE_PAGES; fi
        line=$( { /usr/bin/time -f "maxrss_kb %M" "$osp" --threads 2 decode --bundle "$work/wfvae_$v" "${args[@]}" \
          --out "$work/hp.mp4" --save-sample "$sample"; } 2>&1 | grep -o '"decode_s":[0-9.]*\|maxrss_kb [0-9]*' | tr '\n' ' ')
        echo "round $r $v $case huge_pages=$mode $line"
      done
    done
  done
done
unset OSP_MALLOC_HUGE_PAGES
for v in conv3d winograd-f4; do
  for case in streamed13 whole5; do
    if cmp -s "$work/hp_${v}_${case}_on.safetensors" "$work/hp_${v}_${case}_off.safetensors"; then same=bit-identical; else same=DIFFERENT; fi
    echo "$v $case: huge pages on vs off: $same"
  done
done
