#!/usr/bin/env bash
# Idempotent machine set-up for osp: Debian build packages and the ONNX Runtime shared library.
#
# Installs (only what is missing):
#   - Debian: pkg-config, clang/libclang (bindgen), FFmpeg development libraries, the ffmpeg CLI.
#   - ONNX Runtime: the shared library from the PyPI `onnxruntime` wheel, unpacked into
#     <repo>/.osp/onnxruntime/ (no virtualenv needed). The runtime finds it there with no
#     environment variable; inference hosts set OSP_ORT_DYLIB or ORT_DYLIB_PATH instead.
#
# Safe to run any number of times; a second run does no network work.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ORT_VERSION="${OSP_ORT_VERSION:-1.32.0}"
ort_dir="$repo/.osp/onnxruntime"
ort_lib="$ort_dir/libonnxruntime.so.$ORT_VERSION"

log() { printf '[setup] %s\n' "$*" >&2; }

debian_packages=(
  pkg-config clang libclang-dev
  libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libswresample-dev
  libavfilter-dev libavdevice-dev ffmpeg
)

missing=()
for p in "${debian_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  log "Debian packages present"
fi

if [ -f "$ort_lib" ]; then
  log "ONNX Runtime $ORT_VERSION present at $ort_lib"
else
  log "fetching ONNX Runtime $ORT_VERSION from the PyPI onnxruntime wheel"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$tmp" "onnxruntime==$ORT_VERSION"
  wheel="$(ls "$tmp"/onnxruntime-*.whl)"
  python3 - "$wheel" "$tmp/lib" <<'PY'
import sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.startswith("onnxruntime/capi/libonnxruntime")]
    if not names:
        sys.exit(f"{wheel}: no onnxruntime/capi/libonnxruntime* inside")
    for n in names:
        z.extract(n, out)
PY
  mkdir -p "$ort_dir"
  # Copy under a temporary name, then rename: an interrupted run never leaves a half-written library.
  src="$(ls "$tmp"/lib/onnxruntime/capi/libonnxruntime.so.* | head -n1)"
  cp "$src" "$ort_lib.partial"
  mv "$ort_lib.partial" "$ort_lib"
  ln -sf "$(basename "$ort_lib")" "$ort_dir/libonnxruntime.so"
  log "installed $ort_lib"
fi
