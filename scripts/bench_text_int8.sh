#!/usr/bin/env bash
# Issue #17's before/after table: mT5 encode of a ~20-token prompt at 512 positions vs its real
# tokens (f32, int8) and the release-width DiT forward, f32 vs int8 and the cached-text step.
# Seeded bundles (mT5 2 layers at xxl width, DiT 4 layers at 2304 / 1280 tokens), medians of
# OSP_BENCH_ROUNDS (default 3) after a warm-up, ratios from one run. Prints the markdown rows for
# docs/benchmarks.md and writes docs/measurements/text_int8.json. ~10 min and ~6 GB of temporary
# disk on 2 cores; OSP_BENCH_THREADS (default 2) sets the ONNX Runtime threads.
#
#   scripts/bench_text_int8.sh
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo test --release --locked -p osp-tests --test perf_text_int8 -- --ignored --nocapture
