#!/usr/bin/env python3
"""Largest and mean absolute difference of one f32 tensor (default `sample`) between a reference safetensors file
and others, e.g. f32 graph forms against `trainer/examples/wfvae_decode_f64.rs` (docs/benchmarks.md, Winograd).

Plain Python 3 (no numpy). Usage: compare_outputs.py [--tensor NAME] REFERENCE OTHER [OTHER ...]
"""
import argparse
import sys
from array import array
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_kernels import read_safetensors  # noqa: E402  (one copy of the safetensors reader)


def read_f32(path, name):
    tensors = read_safetensors(Path(path))
    if name not in tensors:
        raise SystemExit(f"{path}: no tensor `{name}` (has {sorted(tensors)})")
    dtype, shape, blob = tensors[name]
    if dtype != "F32":
        raise SystemExit(f"{path}: `{name}` is {dtype}, expected F32")
    values = array("f")
    values.frombytes(blob)
    return shape, values


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tensor", default="sample")
    ap.add_argument("reference")
    ap.add_argument("others", nargs="+")
    args = ap.parse_args()
    shape, ref = read_f32(args.reference, args.tensor)
    print(f"reference {args.reference}: shape {shape}, max |value| {max(abs(v) for v in ref):.4g}")
    for path in args.others:
        other_shape, other = read_f32(path, args.tensor)
        if other_shape != shape:
            raise SystemExit(f"{path}: shape {other_shape}, expected {shape}")
        diffs = [abs(a - b) for a, b in zip(other, ref)]
        over = sum(d > 1e-5 for d in diffs)
        print(f"{path}: max |diff| {max(diffs):.3e}, mean {sum(diffs) / len(diffs):.3e}, "
              f"over 1e-5: {over} of {len(diffs)}")


if __name__ == "__main__":
    main()
