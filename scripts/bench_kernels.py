#!/usr/bin/env python3
"""Kernel benchmarks of issue #17 (fp32, exact): the same seeded random-weight models exported with the
previous lowering (`before`) and the current one (`after`), timed side by side in one run.

Cases (ort-cpu, `--threads`, default 2):
  dit1280   DiT, release geometry, 4 layers, hidden 2304 (24 x 96), latent 5x32x32 -> 1280 tokens
  dit4096   DiT, 8 layers, hidden 768 (8 x 96), latent 4x64x64 -> 4096 tokens
  vae       release WFVAE decode 5x32x32 -> 17x256x256, whole clip and streamed (one latent per call);
            `vae_whole` / `vae_streamed` run one of the two
Each DiT round is one `osp run-graph --warmup 1 --repeats N` process per variant (`--repeats`, default 1;
the round's sample is the median of its N runs); each WFVAE round one
`osp decode` per variant and mode. Rounds alternate the variants; the table shows the median of the
rounds, the ratio before/after and each variant's peak RSS (the child's `ru_maxrss`).

`--attention-table`: instead, one transformer block (hidden 768, 8 x 96 heads, GELU MLP) exported with
each attention form (`onnx`, `ms`, `decomposed`), with a key bias (the `attention_mask` input, fed all ones)
and without one (`attention_mask: false`: a bias-free call; `--attention auto` writes it as `ms`, and the
biased one as `onnx`), run at 1k/4k/16k tokens on ort-cpu (and tract with `--tract`): time and peak RSS.

Variants are export flags (`before`: `osp-export ... --lowering reference --attention onnx`, the previous
lowering; `after`: the defaults; `conv3d` / `folded` / `winograd-f2` / `winograd-f4`: the WFVAE with that
`--video-conv` (5-D convolutions, folded 4-D ones, Winograd F(2x2, 3x3) or F(4x4, 3x3) for the 3x3 ones); `step`: DiT only, the defaults' `transformer_cached` graph, the pipeline's denoising
step, on the 32 real text tokens with their cross-attention keys and values computed once by `transformer_text`,
untimed, as the pipeline does per prompt; ratios are against `before`; a variant whose flags equal an earlier
one's for a model is skipped for it);
bundles are exported once into --work.
Plain Python 3 (no numpy). Build first:
  cargo build --release -p osp-runtime --features tract && cargo build --release -p osp-export
  scripts/bench_kernels.py --work /tmp/osp-kernels [--cases dit1280,dit4096,vae] [--rounds 3]
  scripts/bench_kernels.py --work /tmp/osp-kernels --cases vae_whole --variants conv3d,folded --rounds 3
  scripts/bench_kernels.py --work /tmp/osp-kernels --attention-table [--tract] [--tokens 1024,4096,16384]
      [--forms onnx,ms,decomposed] [--key-bias key,none] [--backends ort-cpu,tract]
"""

import argparse
import json
import os
import random
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vae_decode_table import run_capped, write_latents  # noqa: E402  (one copy of these helpers)

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO.parent / "shared/reference/configs"
# variant -> extra `osp-export` flags per model
VARIANTS = {
    "before": {"dit": ["--lowering", "reference"], "wfvae": ["--lowering", "reference", "--video-conv", "conv3d"]},
    "after": {"dit": [], "wfvae": []},
    # the WFVAE video-convolution forms, whatever the default is
    "conv3d": {"dit": [], "wfvae": ["--video-conv", "conv3d"]},
    "folded": {"dit": [], "wfvae": ["--video-conv", "folded"]},
    "winograd-f2": {"dit": None, "wfvae": ["--video-conv", "winograd-f2"]},
    "winograd-f4": {"dit": None, "wfvae": ["--video-conv", "winograd-f4"]},
    # the pipeline's denoising step: the `after` export's `transformer_cached` on the real text tokens,
    # with the cross-attention keys and values from one `transformer_text` run (once per prompt, untimed)
    "step": {"dit": [], "wfvae": None},
}
STEP = "step"
TEXT_TOKENS = 512  # release max_sequence_length
REAL_TEXT_TOKENS = 32
DIT_CASES = {
    # name: (config overrides, latent [c, t, h, w])
    "dit1280": ({"num_layers": 4}, [8, 5, 32, 32]),
    "dit4096": (
        {"num_layers": 8, "num_attention_heads": 8, "attention_head_dim": 96, "cross_attention_dim": 768},
        [8, 4, 64, 64],
    ),
}
VAE_MODES = {"whole": ["--no-streaming", "--no-tiling"], "streamed": ["--no-tiling", "--chunk", "1"]}


def write_safetensors(path, tensors, seed):
    """`tensors`: name -> (shape, fill) with fill 'normal', 'uniform' or a list of values."""
    rng = random.Random(seed)
    raw = {}
    for name, (shape, fill) in tensors.items():
        n = 1
        for d in shape:
            n *= d
        if fill == "normal":
            values = [rng.gauss(0.0, 1.0) for _ in range(n)]
        elif fill == "uniform":
            values = [rng.uniform(0.0, 1000.0) for _ in range(n)]
        else:
            values = fill
        raw[name] = ("F32", shape, struct.pack(f"<{n}f", *values))
    write_raw_safetensors(path, raw)


def read_safetensors(path):
    """name -> (dtype, shape, raw little-endian bytes)."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    return {k: (v["dtype"], v["shape"], body[v["data_offsets"][0]:v["data_offsets"][1]])
            for k, v in header.items() if k != "__metadata__"}


def write_raw_safetensors(path, tensors):
    """`tensors`: name -> (dtype, shape, raw bytes)."""
    header, offset = {}, 0
    for name, (dtype, shape, blob) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    tmp = path.with_suffix(".partial")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for _, _, blob in tensors.values():
            f.write(blob)
    tmp.rename(path)


def step_inputs(args, osp, env, case, inputs):
    """The `step` variant's `transformer_cached` inputs: the case's latent and timestep, the first
    REAL_TEXT_TOKENS text rows (the real tokens) and the keys and values `transformer_text` makes of them."""
    out = args.work / f"{case}_step_inputs.safetensors"
    if out.is_file():
        return out
    full = read_safetensors(inputs)
    dtype, shape, blob = full["encoder_hidden_states"]
    row = shape[-1] * 4
    text_in = args.work / f"{case}_step_text_inputs.safetensors"
    write_raw_safetensors(text_in, {"encoder_hidden_states": (dtype, shape[:2] + [REAL_TEXT_TOKENS, shape[-1]],
                                                              blob[:REAL_TEXT_TOKENS * row])})
    kv = args.work / f"{case}_step_kv.safetensors"
    cmd = [str(osp), "--threads", str(args.threads), "run-graph", str(args.work / f"{case}_{STEP}"),
           "transformer_text", "--inputs", str(text_in), "--out", str(kv)]
    status, _, _, _, _ = run(cmd, env, args.timeout_s, args.cap_gib)
    if status != "ok":
        raise SystemExit(f"transformer_text failed for {case}")
    tensors = {k: full[k] for k in ("hidden_states", "timestep")}
    tensors["encoder_attention_mask"] = ("F32", [1, 1, REAL_TEXT_TOKENS], struct.pack(f"<{REAL_TEXT_TOKENS}f", *[1.0] * REAL_TEXT_TOKENS))
    tensors.update(read_safetensors(kv))
    write_raw_safetensors(out, tensors)
    return out


def export(osp_export, kind, config, flags, out, env):
    if (out / "manifest.json").is_file():
        return
    cmd = [str(osp_export), kind, "--config", str(config), "--seed", "0", "--out", str(out)] + flags
    print("exporting:", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, env=env)


def run(cmd, env, timeout_s, cap_gib):
    print("running:", " ".join(cmd), file=sys.stderr, flush=True)
    status, wall, rss, out, err, cpu = run_capped(cmd, int(cap_gib * 2**30), timeout_s, env)
    if status != "ok":
        print(err[-2000:], file=sys.stderr)
    return status, wall, rss, out, cpu


def run_ms(out):
    """The median of the process's timed runs (`--repeats`)."""
    for line in out.splitlines():
        if line.startswith('{"run_ms"'):
            return statistics.median(json.loads(line)["run_ms"])
    return None


def decode_ms(out):
    for line in out.splitlines():
        if line.startswith("{"):
            v = json.loads(line).get("decode_s")
            if v is not None:
                return v * 1e3
    return None


def summarise(case, variant_samples, rss, cpu=None):
    """Medians per variant; speed-ups against the first variant (the baseline), from the medians
    and per round (adjacent runs, the steadier ratio on a loaded machine)."""
    base = next(iter(variant_samples))
    row = {"case": case, "baseline": base}
    med = {}
    for v, samples in variant_samples.items():
        ok = [s for s in samples if s is not None]
        med[v] = statistics.median(ok) if ok else None
        row[f"{v}_ms"] = [round(s, 1) if s is not None else None for s in samples]
        row[f"{v}_median_ms"] = round(med[v], 1) if med[v] is not None else None
        row[f"{v}_peak_rss_gib"] = round(max(rss[v]) / 2**30, 2) if rss[v] else None
        if cpu:
            # user + system seconds of the whole process (load included): steadier than wall time
            # when other jobs share the cores
            row[f"{v}_cpu_s"] = [round(c, 1) for c in cpu[v]]
    for v in med:
        if v != base and med.get(base) and med.get(v):
            row["speedup" if v == "after" else f"speedup_{v}"] = round(med[base] / med[v], 3)
            row[f"round_ratios_{v}"] = [round(b / s, 3) if b and s else None
                                        for b, s in zip(variant_samples[base], variant_samples[v])]
    return row


def ab_table(args, osp, osp_export, env):
    rows = []
    cases = args.cases.split(",")
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}: choose from {sorted(VARIANTS)}")

    def distinct(model):
        def key(v):
            return (VARIANTS[v][model], v == STEP)
        return [v for v in variants if VARIANTS[v][model] is not None
                and key(v) not in [key(u) for u in variants[:variants.index(v)]]]

    dit_variants = distinct("dit")
    vae_variants = distinct("wfvae")
    for case in [c for c in cases if c in DIT_CASES]:
        overrides, latent = DIT_CASES[case]
        cfg = json.loads((CONFIGS / "opensora_t2v_v1_3_2b_config.json").read_text())
        cfg.update(overrides)
        cfg_path = args.work / f"{case}_config.json"
        cfg_path.write_text(json.dumps(cfg, indent=1))
        inputs = args.work / f"{case}_inputs.safetensors"
        if not inputs.is_file():
            mask = [1.0] * REAL_TEXT_TOKENS + [0.0] * (TEXT_TOKENS - REAL_TEXT_TOKENS)
            write_safetensors(inputs, {
                "hidden_states": ([1] + latent, "normal"),
                "timestep": ([1], [500.0]),
                "encoder_hidden_states": ([1, 1, TEXT_TOKENS, cfg["caption_channels"]], "normal"),
                "encoder_attention_mask": ([1, 1, TEXT_TOKENS], mask),
            }, seed=1)
        samples = {v: [] for v in dit_variants}
        rss = {v: [] for v in dit_variants}
        graph_inputs = {}
        for v in dit_variants:
            # `before` is the pre-#17 export (ONNX `Attention` everywhere) unless --attention pins one form
            form = args.attention or ("onnx" if v == "before" else "auto")
            flags = ["--attention", form] + VARIANTS[v]["dit"]
            export(osp_export, "dit", cfg_path, flags, args.work / f"{case}_{v}", env)
            graph_inputs[v] = ("transformer", inputs)
            if v == STEP:
                graph_inputs[v] = ("transformer_cached", step_inputs(args, osp, env, case, inputs))
        for r in range(args.rounds):
            for v in (dit_variants if r % 2 == 0 else dit_variants[::-1]):
                graph, graph_in = graph_inputs[v]
                cmd = [str(osp), "--threads", str(args.threads), "run-graph", str(args.work / f"{case}_{v}"),
                       graph, "--inputs", str(graph_in), "--out", str(args.work / f"{case}_{v}_out.safetensors"),
                       "--warmup", "1", "--repeats", str(args.repeats)]
                status, wall, peak, out, cpu = run(cmd, env, args.timeout_s, args.cap_gib)
                samples[v].append(run_ms(out) if status == "ok" else None)
                rss[v].append(peak)
        rows.append(summarise(case, samples, rss))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    vae_modes = [m for m in VAE_MODES if "vae" in cases or f"vae_{m}" in cases]
    if vae_modes:
        cfg_path = CONFIGS / "wfvae_d8_release_config.json"
        lat = args.work / "z_5x32x32.safetensors"
        if not lat.is_file():
            write_latents(lat, [1, 8, 5, 32, 32], seed=5032)
        for v in vae_variants:
            export(osp_export, "wfvae", cfg_path, VARIANTS[v]["wfvae"], args.work / f"wfvae_{v}", env)
        for mode in vae_modes:
            mode_flags = VAE_MODES[mode]
            samples = {v: [] for v in vae_variants}
            rss = {v: [] for v in vae_variants}
            cpus = {v: [] for v in vae_variants}
            for r in range(args.rounds):
                for v in (vae_variants if r % 2 == 0 else vae_variants[::-1]):
                    cmd = [str(osp), "--threads", str(args.threads), "decode", "--bundle", str(args.work / f"wfvae_{v}"),
                           "--latents", str(lat)] + mode_flags
                    status, wall, peak, out, cpu = run(cmd, env, args.timeout_s, args.cap_gib)
                    samples[v].append(decode_ms(out) if status == "ok" else None)
                    rss[v].append(peak)
                    cpus[v].append(cpu)
            rows.append(summarise(f"vae_{mode}", samples, rss, cpus))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(f"\n| case | variant | ms (median of {args.rounds}) | speedup vs the first variant | per-round ratios | peak RSS GiB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        for v in [v for v in variants if f"{v}_median_ms" in r]:
            sp = r.get("speedup" if v == "after" else f"speedup_{v}", "" if v == r["baseline"] else None)
            rr = r.get(f"round_ratios_{v}", "")
            print(f"| {r['case']} | {v} | {r.get(f'{v}_median_ms')} | {sp} | {rr} | {r.get(f'{v}_peak_rss_gib')} |")
    return rows


ATTENTION_FORMS = ["onnx", "ms", "decomposed"]


def attention_table(args, osp, osp_export, env):
    """One transformer block per attention form and key bias (with: `attention_mask` input, all ones;
    without: `attention_mask: false`, a bias-free call), per sequence length and backend."""
    rows = []
    backends = ["ort-cpu"] + (["tract"] if args.tract else [])
    biases = {b: b == "key" for b in args.key_bias.split(",")}
    forms = args.forms.split(",")
    for bias, with_mask in biases.items():
        block = {"hidden_size": 768, "num_attention_heads": 8, "attention_head_dim": 96, "ff_inner_dim": 3072,
                 "norm_eps": 1e-5, "attention_mask": with_mask}
        cfg_path = args.work / f"attn_block_{bias}_config.json"
        cfg_path.write_text(json.dumps(block))
        for form in forms:
            export(osp_export, "transformer-block", cfg_path, ["--attention", form],
                   args.work / f"attn_block_{bias}_{form}", env)
    for tokens in [int(t) for t in args.tokens.split(",")]:
        for bias, with_mask in biases.items():
            inputs = args.work / f"attn_inputs_{bias}_{tokens}.safetensors"
            if not inputs.is_file():
                tensors = {"hidden_states": ([1, tokens, 768], "normal")}
                if with_mask:
                    tensors["attention_mask"] = ([1, tokens], [1.0] * tokens)
                write_safetensors(inputs, tensors, seed=tokens)
            for backend in [b for b in backends if b in args.backends.split(",")]:
                for form in forms:
                    if backend == "tract" and form == "ms" and with_mask:
                        continue  # tract parses MultiHeadAttention only without a bias input
                    cmd = [str(osp), "--backend", backend, "--threads", str(args.threads), "run-graph",
                           str(args.work / f"attn_block_{bias}_{form}"), "block", "--inputs", str(inputs),
                           "--out", str(args.work / "attn_out.safetensors"), "--warmup", "1",
                           "--repeats", str(args.rounds)]
                    status, wall, peak, out, cpu = run(cmd, env, args.timeout_s, args.cap_gib)
                    ms = None
                    for line in out.splitlines():
                        if line.startswith('{"run_ms"'):
                            ms = statistics.median(json.loads(line)["run_ms"])
                    rows.append({"tokens": tokens, "backend": backend, "key_bias": bias, "attention": form,
                                 "status": status, "median_ms": ms and round(ms, 1),
                                 "peak_rss_gib": round(peak / 2**30, 2), "wall_s": round(wall, 1)})
                    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(f"\n| tokens | backend | key bias | attention | block ms (median of {args.rounds}) | peak RSS GiB | status |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['tokens']} | {r['backend']} | {r['key_bias']} | {r['attention']} | {r['median_ms']} "
              f"| {r['peak_rss_gib']} | {r['status']} |")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/osp-kernels"), help="bundles, inputs, results")
    ap.add_argument("--bin-dir", type=Path, default=None, help="folder with osp and osp-export (default: target/release)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=1,
                    help="DiT cases: timed runs per process after the warm-up; a round's sample is their median")
    ap.add_argument("--cases", default="dit1280,dit4096,vae")
    ap.add_argument("--variants", default="before,after,folded", help=f"comma-separated, of {sorted(VARIANTS)}")
    ap.add_argument("--attention", default=None,
                    help="DiT attention form of every variant (default: `before` onnx, the others auto)")
    ap.add_argument("--attention-table", action="store_true")
    ap.add_argument("--tokens", default="1024,4096,16384", help="attention table sequence lengths")
    ap.add_argument("--tract", action="store_true", help="attention table: tract rows too")
    ap.add_argument("--forms", default=",".join(ATTENTION_FORMS), help="attention table: forms (onnx,ms,decomposed)")
    ap.add_argument("--key-bias", default="key,none", help="attention table: with (key) and/or without (none) a key bias")
    ap.add_argument("--backends", default="ort-cpu,tract", help="attention table: backends (tract needs --tract)")
    ap.add_argument("--cap-gib", type=float, default=10.0, help="address-space cap per run, GiB (runs over it are reported as such)")
    ap.add_argument("--timeout-s", type=int, default=900, help="wall-time limit per run")
    ap.add_argument("--json", type=Path, default=None, help="results file (default: <work>/kernels.json)")
    args = ap.parse_args()

    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    bins = args.bin_dir or target / "release"
    osp, osp_export = bins / "osp", bins / "osp-export"
    for b in (osp, osp_export):
        if not b.is_file():
            raise SystemExit(f"{b} is missing: build it first (see the header of {__file__})")
    args.work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, RUST_LOG="warn", RUST_BACKTRACE="0")
    ort = REPO / ".osp/onnxruntime/libonnxruntime.so"
    if "OSP_ORT_DYLIB" not in env and ort.is_file():
        env["OSP_ORT_DYLIB"] = str(ort)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    rows = attention_table(args, osp, osp_export, env) if args.attention_table else ab_table(args, osp, osp_export, env)
    result = {"started": started, "threads": args.threads, "rounds": args.rounds, "repeats": args.repeats,
              "nproc": os.cpu_count(),
              "load_avg_1m_after": round(os.getloadavg()[0], 2),
              "table": "attention_forms" if args.attention_table else "before_after", "rows": rows}
    path = args.json or args.work / ("attention_forms.json" if args.attention_table else "kernels.json")
    tmp = path.with_suffix(".partial")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.rename(path)
    print(f"\nwrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
