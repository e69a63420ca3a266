#!/usr/bin/env python3
"""VAE decode with the spatial tiles on 1 worker vs N CPU workers (`osp decode --devices`), same total threads.

    scripts/vae_devices_bench.py --bundle WFVAE_BUNDLE --latents z.safetensors [--threads 2] [--workers 2] [--rounds 3]
        [--osp target/release/osp] [--json docs/measurements/vae_decode_devices.json] [-- extra osp decode flags]

Runs each configuration `--rounds` times alternating (ratios taken in one run), reports the median `decode_s` of the
JSON line `osp decode` prints, writes the JSON and prints markdown rows. The outputs are bit-identical (tested in
runtime/tests/video.rs), so only time is compared.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--latents", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--osp", default="target/release/osp")
    ap.add_argument("--json")
    ap.add_argument("extra", nargs="*")
    a = ap.parse_args()
    configs = {"1 worker": [], f"{a.workers} workers": ["--devices", ",".join(str(i) for i in range(a.workers))]}
    times = {name: [] for name in configs}
    env = {k: v for k, v in os.environ.items() if not k.startswith("OSP_")}
    for _ in range(a.rounds):
        for name, flags in configs.items():
            cmd = [a.osp, "--threads", str(a.threads), "decode", "--bundle", a.bundle, "--latents", a.latents, *flags, *a.extra]
            out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
            times[name].append(json.loads(out.strip().splitlines()[-1])["decode_s"])
    base = statistics.median(times["1 worker"])
    rows = [{"config": n, "threads_total": a.threads, "decode_s_median": statistics.median(t), "decode_s": t,
             "speedup": base / statistics.median(t)} for n, t in times.items()]
    result = {"bundle": a.bundle, "latents": a.latents, "extra": a.extra, "rounds": a.rounds, "rows": rows}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
    print("| config | threads in all | decode s (median) | speed-up |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['threads_total']} | {r['decode_s_median']:.3f} | {r['speedup']:.2f}x |")


if __name__ == "__main__":
    sys.exit(main())
