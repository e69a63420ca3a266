#!/usr/bin/env python3
"""The release WFVAE decode table (issue #3): time and peak RSS of `osp decode` on the release
config with random weights, whole vs chunked vs chunked+tiled, for 17/49/93 frames at 256x256 and
480x640 (latent frames 5/13/24), plus tract vs ort on one configuration.

Each configuration runs in its own process under an address-space cap (RLIMIT_AS) and a wall-time
limit; peak RSS is the child's own `ru_maxrss` (os.wait4). Runs whose memory estimate (scaled from
the smallest measured run of the same mode) exceeds the cap are not started and reported as such.
Prints a markdown table and writes JSON. Plain Python 3 (no numpy).

Build first (tract is optional; without it the tract row is skipped):
  cargo build --release -p osp-runtime --features tract && cargo build --release -p osp-export
  scripts/vae_decode_table.py --work /tmp/vae-table [--only 17x256] [--cap-gib 8] [--timeout-s 480]
"""

import argparse
import json
import os
import random
import resource
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO.parent / "shared/reference/configs/wfvae_d8_release_config.json"
SIZES = [(17, 256, 256), (49, 256, 256), (93, 256, 256), (17, 480, 640), (49, 480, 640), (93, 480, 640)]
# (label, decode flags, backend)
MODES = [
    ("whole", ["--no-streaming", "--no-tiling"], "ort-cpu"),
    ("chunked", ["--no-tiling"], "ort-cpu"),
    ("chunked+tiled", [], "ort-cpu"),
]
TRACT_CASE = ((17, 256, 256), "chunked+tiled")


def latent_shape(frames, h, w):
    if (frames - 1) % 4 or h % 8 or w % 8:
        raise SystemExit(f"{frames}x{h}x{w}: frames must be 4n+1 and sizes multiples of 8")
    return [1, 8, (frames - 1) // 4 + 1, h // 8, w // 8]


def write_latents(path, shape, seed):
    """A safetensors file with one f32 tensor `z` of standard-normal values."""
    rng = random.Random(seed)
    n = 1
    for d in shape:
        n *= d
    header = json.dumps({"z": {"dtype": "F32", "shape": shape, "data_offsets": [0, 4 * n]}}).encode()
    header += b" " * ((8 - len(header) % 8) % 8)
    tmp = path.with_suffix(".partial")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
        f.write(struct.pack(f"<{n}f", *(rng.gauss(0.0, 1.0) for _ in range(n))))
    tmp.rename(path)


def run_capped(cmd, cap_bytes, timeout_s, env):
    """Runs `cmd` under RLIMIT_AS = cap_bytes; returns (status, wall_s, maxrss_bytes, stdout, stderr,
    cpu_s). CPU seconds (user + system) are what the run costs whatever else loads the machine."""

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (cap_bytes, cap_bytes))
        os.setsid()

    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=limit, env=env)
    timed_out = threading.Event()

    def kill():
        timed_out.set()
        os.killpg(proc.pid, signal.SIGKILL)

    timer = threading.Timer(timeout_s, kill)
    timer.start()
    out_chunks, err_chunks = [], []
    readers = [
        threading.Thread(target=lambda: out_chunks.append(proc.stdout.read())),
        threading.Thread(target=lambda: err_chunks.append(proc.stderr.read())),
    ]
    for r in readers:
        r.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    timer.cancel()
    for r in readers:
        r.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    stdout, stderr = b"".join(out_chunks).decode(errors="replace"), b"".join(err_chunks).decode(errors="replace")
    maxrss = usage.ru_maxrss * 1024
    cpu = usage.ru_utime + usage.ru_stime
    if timed_out.is_set():
        return f"stopped after {timeout_s} s", wall, maxrss, stdout, stderr, cpu
    if proc.returncode == 0:
        return "ok", wall, maxrss, stdout, stderr, cpu
    low = stderr.lower()
    if any(k in low for k in ("bad_alloc", "bad allocation", "failed to allocate", "memory allocation", "cannot allocate", "out of memory")):
        return f"over cap ({cap_bytes / 2**30:.0f} GiB)", wall, maxrss, stdout, stderr, cpu
    return f"error (exit {proc.returncode})", wall, maxrss, stdout, stderr, cpu


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/osp-vae-table"), help="bundle, latents and results")
    ap.add_argument("--bin-dir", type=Path, default=None, help="folder with osp and osp-export (default: target/release)")
    ap.add_argument("--cap-gib", type=float, default=8.0, help="address-space cap per run, GiB")
    ap.add_argument("--timeout-s", type=int, default=480, help="wall-time limit per run")
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads")
    ap.add_argument("--chunk", type=int, default=1, help="latents per streamed call (chunked modes)")
    ap.add_argument("--only", action="append", default=[], help="sizes to run, as FRAMESxH or FRAMESxHxW (repeatable)")
    ap.add_argument("--modes", default="whole,chunked,chunked+tiled,tract", help="comma-separated modes to run")
    ap.add_argument("--json", type=Path, default=None, help="results file (default: <work>/results.json)")
    ap.add_argument("--not-run", metavar="REASON", default=None,
                    help="record the selected rows as not run for REASON (e.g. the time left) instead of running")
    ap.add_argument("--tiling-diff", action="store_true",
                    help="instead of the table: tiled vs untiled difference at 480x640 (5 frames, default tiles)")
    args = ap.parse_args()

    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    bins = args.bin_dir or target / "release"
    osp, osp_export = bins / "osp", bins / "osp-export"
    for b in (osp, osp_export):
        if not b.is_file():
            raise SystemExit(f"{b} is missing: build it first (see the header of {__file__})")
    args.work.mkdir(parents=True, exist_ok=True)
    results_path = args.json or args.work / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else []
    env = dict(os.environ, RUST_LOG="warn", RUST_BACKTRACE="0")
    ort = REPO / ".osp/onnxruntime/libonnxruntime.so"
    if "OSP_ORT_DYLIB" not in env and ort.is_file():
        env["OSP_ORT_DYLIB"] = str(ort)

    bundle = args.work / "wfvae_release"
    if not (bundle / "manifest.json").is_file():
        print(f"exporting the release config with random weights to {bundle}", file=sys.stderr)
        subprocess.run([str(osp_export), "wfvae", "--config", str(CONFIG), "--seed", "0", "--out", str(bundle)],
                       check=True, env=env)

    if args.tiling_diff:
        tiling_diff(args, osp, bundle, env)
        return

    wanted = set(args.modes.split(","))
    sizes = [s for s in SIZES if not args.only or any(
        o in (f"{s[0]}x{s[1]}", f"{s[0]}x{s[1]}x{s[2]}") for o in args.only)]
    cap = int(args.cap_gib * 2**30)
    cases = [(s, label, flags, backend) for s in sizes for (label, flags, backend) in MODES if label in wanted]
    if "tract" in wanted and TRACT_CASE[0] in sizes:
        flags = dict((m[0], m[1]) for m in MODES)[TRACT_CASE[1]]
        cases.append((TRACT_CASE[0], TRACT_CASE[1], flags, "tract"))

    for (frames, h, w), label, flags, backend in cases:
        shape = latent_shape(frames, h, w)
        lat = args.work / f"z_{frames}x{h}x{w}.safetensors"
        if not lat.is_file():
            write_latents(lat, shape, seed=frames * 1000 + h)
        key = dict(frames=frames, height=h, width=w, mode=label, backend=backend, threads=args.threads,
                   chunk=None if label == "whole" else args.chunk)
        results = [r for r in results if {k: r.get(k) for k in key} != key]
        # Estimate from the smallest measured run of the same mode and backend: the weights (one
        # copy per loaded graph) plus activations growing with frames x h x w (whole) or h x w
        # (streamed, untiled).
        estimate = None
        weights = (bundle / "decoder.onnx.data").stat().st_size * (1 if label == "whole" else 3)
        done = [r for r in results if r["mode"] == label and r["backend"] == backend and r["status"] == "ok"]
        if done and label != "chunked+tiled":
            ref = min(done, key=lambda r: r["frames"] * r["height"] * r["width"])
            scale = (h * w) / (ref["height"] * ref["width"])
            if label == "whole":
                scale *= frames / ref["frames"]
            estimate = weights + (ref["peak_rss_bytes"] - weights) * max(scale, 1.0)
        row = dict(key, latents=shape)
        same = [r for r in results if r["mode"] == "chunked" and r["backend"] == backend
                and r.get("chunk") == args.chunk and (r["frames"], r["height"], r["width"]) == (frames, h, w)]
        if label == "chunked+tiled" and shape[3] <= 32 and shape[4] <= 32 and same:
            # One default tile covers the latent: the decode is the chunked one, call for call.
            row.update({k: same[0].get(k) for k in ("wall_s", "decode_s", "peak_rss_bytes", "cpu_s")},
                       status=f"= chunked (one {shape[3]}x{shape[4]} tile); {same[0]['status']}")
        elif estimate is not None and estimate > cap:
            row.update(status=f"not run: estimated {estimate / 2**30:.1f} GiB > cap {args.cap_gib:g} GiB",
                       wall_s=None, decode_s=None, peak_rss_bytes=None)
        elif args.not_run:
            row.update(status=f"not run: {args.not_run}", wall_s=None, decode_s=None, peak_rss_bytes=None)
        else:
            cmd = [str(osp), "--backend", backend, "--threads", str(args.threads), "decode", "--bundle", str(bundle),
                   "--latents", str(lat)] + flags + ([] if label == "whole" else ["--chunk", str(args.chunk)])
            print(f"running {frames}x{h}x{w} {label} on {backend}: {' '.join(cmd)}", file=sys.stderr, flush=True)
            status, wall, rss, out, err, cpu = run_capped(cmd, cap, args.timeout_s, env)
            decode_s = None
            for line in out.splitlines():
                if line.startswith("{"):
                    decode_s = json.loads(line).get("decode_s")
            row.update(status=status, wall_s=round(wall, 2), decode_s=decode_s and round(decode_s, 2),
                       peak_rss_bytes=rss, cpu_s=round(cpu, 1), load_avg_1m_after=round(os.getloadavg()[0], 2))
            if status != "ok":
                row["stderr_tail"] = err[-600:]
        print(json.dumps(row), file=sys.stderr, flush=True)
        results.append(row)
        tmp = results_path.with_suffix(".partial")
        tmp.write_text(json.dumps(results, indent=1))
        tmp.rename(results_path)

    print_table(results)


def read_sample(path):
    import array
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    values = array.array("f")
    values.frombytes(data[8 + n:])
    return header["sample"]["shape"], values


def tiling_diff(args, osp, bundle, env):
    """Decodes one 480x640 clip streamed with and without default tiling; prints the difference of
    the clamped frames in [-1, 1] units and the PSNR of tiled vs untiled (frames mapped to [0, 1])."""
    import math
    shape = latent_shape(5, 480, 640)
    lat = args.work / "z_5x480x640.safetensors"
    if not lat.is_file():
        write_latents(lat, shape, seed=5480)
    samples = {}
    for label, flags in [("untiled", ["--no-tiling"]), ("tiled", [])]:
        out = args.work / f"sample_5x480x640_{label}.safetensors"
        cmd = [str(osp), "--threads", str(args.threads), "decode", "--bundle", str(bundle), "--latents", str(lat),
               "--chunk", str(args.chunk), "--save-sample", str(out)] + flags
        print(f"running {' '.join(cmd)}", file=sys.stderr, flush=True)
        status, wall, rss, _, err, _ = run_capped(cmd, int(args.cap_gib * 2**30), args.timeout_s, env)
        if status != "ok":
            raise SystemExit(f"{label}: {status}\n{err[-2000:]}")
        samples[label] = read_sample(out)
    (shape_u, u), (shape_t, t) = samples["untiled"], samples["tiled"]
    assert shape_u == shape_t, (shape_u, shape_t)
    clamp = lambda v: -1.0 if v < -1.0 else (1.0 if v > 1.0 else v)
    max_abs, sum_abs, sum_sq = 0.0, 0.0, 0.0
    for a, b in zip(u, t):
        d = abs(clamp(a) - clamp(b))
        max_abs = max(max_abs, d)
        sum_abs += d
        sum_sq += (d / 2.0) ** 2
    n = len(u)
    mse01 = sum_sq / n
    result = dict(shape=shape_u, tile_size=32, overlap=8, chunk=2, max_abs=max_abs, mean_abs=sum_abs / n,
                  psnr_db=(10 * math.log10(1.0 / mse01) if mse01 > 0 else float("inf")))
    print(json.dumps(result))
    (args.work / "tiling_diff.json").write_text(json.dumps(result, indent=1))


def print_table(results):
    order = {s: i for i, s in enumerate(SIZES)}
    modes = [m[0] for m in MODES]
    rows = sorted(results, key=lambda r: (order.get((r["frames"], r["height"], r["width"]), 99),
                                          r["backend"] != "ort-cpu", modes.index(r["mode"])))
    print("| frames | size | latents | mode | chunk | backend | decode s | wall s | CPU s | peak RSS GiB | status |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        rss = "-"
        if r.get("peak_rss_bytes") and (r["status"].endswith("ok") or r["status"].startswith("stopped")):
            rss = ("" if r["status"].endswith("ok") else ">= ") + f"{r['peak_rss_bytes'] / 2**30:.2f}"
        print(f"| {r['frames']} | {r['height']}x{r['width']} | {'x'.join(map(str, r['latents'][2:]))} | {r['mode']} "
              f"| {r.get('chunk') or ('-' if r['mode'] == 'whole' else 2)} "
              f"| {r['backend']} ({r['threads']} thr) | {r.get('decode_s') or '-'} | {r.get('wall_s') or '-'} "
              f"| {r.get('cpu_s') or '-'} "
              f"| {rss} | {r['status']} |")


if __name__ == "__main__":
    main()
