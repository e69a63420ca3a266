#!/usr/bin/env bash
# The GPU checks of issue #16 (docs/parallel_gpu.md), at most 10 minutes. Nothing is built on the
# GPU host: `prepare` builds here what `run` executes there.
#
#   scripts/gpu_check.sh prepare   # build host: target/gpu_check/ (carry it to the GPU host)
#   scripts/gpu_check.sh run       # GPU host, from the repository root
#
# 1. NCCL collectives bit-exact against the reference (world size 1 on a one-GPU host: NCCL
#    refuses two ranks on one GPU), a buffer on the wrong device refused, an abort seen by every
#    rank (runtime/examples/nccl_check.rs).
# 2. When a GPU build of ONNX Runtime is present (OSP_ORT_DYLIB pointing at its
#    libonnxruntime.so, the CUDA provider next to it) and a check binary was carried in
#    target/gpu_check/ort_cuda_check (with its arguments in target/gpu_check/ort_cuda_check.args,
#    e.g. the tiny DiT single vs SP on ort-cuda), it runs; otherwise the step says it is skipped.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$repo/target/gpu_check"

case "${1:-run}" in
prepare)
    cd "$repo"
    mkdir -p "$out"
    cargo build --release --locked -p osp-runtime --features nccl --example nccl_check
    cp target/release/examples/nccl_check "$out/nccl_check"
    if ldd "$out/nccl_check" | grep -q 'libav'; then
        echo "[gpu_check] nccl_check links FFmpeg; it would not start on a bare GPU host" >&2
        exit 1
    fi
    du -sh "$out" >&2
    echo "[gpu_check] prepared $out; carry it (run tool: carry [\"target/gpu_check\"]) and call: scripts/gpu_check.sh run" >&2
    ;;
run)
    [[ -x "$out/nccl_check" ]] || { echo "[gpu_check] $out/nccl_check missing: run 'scripts/gpu_check.sh prepare' first" >&2; exit 1; }
    command -v nvidia-smi >/dev/null && nvidia-smi -L
    # The image ships CUDA and NCCL as Python wheels (../shared/NOTES.md): find them unless given.
    find_lib() { find /opt /usr /usr/local -name "$1" -print -quit 2>/dev/null || true; }
    export OSP_NCCL_LIBRARY="${OSP_NCCL_LIBRARY:-$(find_lib 'libnccl.so.2')}"
    export OSP_CUDART_LIBRARY="${OSP_CUDART_LIBRARY:-$(find_lib 'libcudart.so.1[0-9]*')}"
    echo "[gpu_check] NCCL: ${OSP_NCCL_LIBRARY:-not found}; CUDA runtime: ${OSP_CUDART_LIBRARY:-not found}" >&2
    status=0
    echo "[gpu_check] 1/2 NCCL collectives vs the reference" >&2
    timeout 240 "$out/nccl_check" --devices "${OSP_GPU_DEVICES:-0}" || status=1
    echo "[gpu_check] 2/2 ort-cuda check" >&2
    if [[ -n "${OSP_ORT_DYLIB:-}" && -x "$out/ort_cuda_check" ]]; then
        # shellcheck disable=SC2046
        timeout 300 "$out/ort_cuda_check" $(cat "$out/ort_cuda_check.args" 2>/dev/null) || status=1
    else
        echo "[gpu_check] SKIPPED: needs OSP_ORT_DYLIB (a GPU ONNX Runtime build) and $out/ort_cuda_check" >&2
    fi
    echo "[gpu_check] $([[ $status == 0 ]] && echo passed || echo FAILED)" >&2
    exit $status
    ;;
*)
    echo "usage: scripts/gpu_check.sh prepare|run" >&2
    exit 2
    ;;
esac
