#!/usr/bin/env python3
"""Run `imagen bench` and `tools/reference/bench_torch.py` back to back with the same flags and
print both and the ratio (PyTorch time / imagen time; above 1 means imagen is faster).

    python tools/bench_compare.py --arch sd15 --component unet --latent 64 --batch 2 --runs 3 [--threads 2]
        [--imagen target/release/imagen] [--python .venv/bin/python] [--backend cpu] [--channels C]
        [--dtype f32|f16]

With a GPU backend (`--backend wgpu`) PyTorch runs on CUDA (`--device cuda`), in the same dtype
(f16 = PyTorch fp16, whose attention is `scaled_dot_product_attention` through diffusers).
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def last_json(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-4000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    for f, d in [("--arch", "sd15"), ("--component", "unet"), ("--latent", "64"), ("--batch", "2"), ("--steps", "1"),
                 ("--runs", "3"), ("--threads", "2"), ("--backend", "cpu"), ("--dtype", "f32"),
                 ("--imagen", str(ROOT / "target" / "release" / "imagen")), ("--python", sys.executable)]:
        ap.add_argument(f, default=d)
    ap.add_argument("--channels", help="channels of the single-op components (conv, attention, ...)")
    a = ap.parse_args()
    common = ["--arch", a.arch, "--component", a.component, "--latent", a.latent, "--batch", a.batch,
              "--steps", a.steps, "--runs", a.runs] + (["--channels", a.channels] if a.channels else [])
    ours = last_json([a.imagen, "bench", *common, "--backend", a.backend, "--dtype", a.dtype, "--json"])
    device = "cpu" if a.backend == "cpu" else "cuda"
    torch = last_json([a.python, str(ROOT / "tools/reference/bench_torch.py"), *common, "--threads", a.threads,
                       "--device", device, "--dtype", {"f32": "fp32", "f16": "fp16"}[a.dtype]])
    for r in (ours, torch):
        print(json.dumps(r))
    gib = 1 << 30
    print(f"{a.arch} {a.component}: imagen {ours['median_s']:.3f} s ({ours['gflop_per_s']:.1f} GFLOP/s, "
          f"{(ours['peak_rss_bytes'] or 0) / gib:.2f} GiB) | PyTorch {torch['median_s']:.3f} s "
          f"({torch['gflop_per_s']:.1f} GFLOP/s, {torch['peak_rss_bytes'] / gib:.2f} GiB) | "
          f"ratio {torch['median_s'] / ours['median_s']:.2f}x | GFLOP {ours['gflop']:.1f} vs {torch['gflop']:.1f}")


if __name__ == "__main__":
    main()
