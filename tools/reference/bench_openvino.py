#!/usr/bin/env python3
"""OpenVINO side of the CPU benchmark: the same random-weight full-size diffusers modules as
`bench_torch.py` (SD 1.5 UNet at 64x64 latents batch 2, the VAE decode of 64x64 latents to 512x512),
converted with `openvino.convert_model`, static shapes, compiled for the CPU with
`INFERENCE_PRECISION_HINT` bf16 or f32 and 2 threads. Conversion takes minutes; the timing is of
`infer` only.

    pip install openvino   # 2026.4 on PyPI
    .venv/bin/python tools/reference/bench_openvino.py --component unet --precision bf16 [--runs 5]

Prints one JSON line in the shape of `imagen bench --json`.
"""

import argparse
import json
import resource
import statistics
import time

import numpy as np
import openvino as ov
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from bench_torch import SD15_UNET, SD15_VAE


class Unet(torch.nn.Module):
    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, x, t, ctx):
        return self.unet(x, t, encoder_hidden_states=ctx).sample


class Decode(torch.nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, z):
        return self.vae.decode(z).sample


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--component", default="unet", help="unet or vae-decode")
    ap.add_argument("--precision", default="bf16", help="bf16 or f32 (INFERENCE_PRECISION_HINT)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.manual_seed(0)
    with torch.inference_mode():
        if a.component == "unet":
            module = Unet(UNet2DConditionModel(**SD15_UNET).eval())
            inputs = (torch.randn(2, 4, 64, 64), torch.tensor(981.0), torch.randn(2, 77, 768))
            shapes = [[2, 4, 64, 64], [], [2, 77, 768]]
        elif a.component == "vae-decode":
            module = Decode(AutoencoderKL(**SD15_VAE).eval())
            inputs = (torch.randn(1, 4, 64, 64),)
            shapes = [[1, 4, 64, 64]]
        else:
            raise SystemExit(f"unknown --component {a.component!r} (unet, vae-decode)")
        t0 = time.perf_counter()
        model = ov.convert_model(module, example_input=inputs)
    # a dict: a list of shapes raises
    model.reshape({model.inputs[i]: ov.PartialShape(s) for i, s in enumerate(shapes)})
    compiled = ov.Core().compile_model(model, "CPU", {
        "INFERENCE_PRECISION_HINT": a.precision,
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": a.threads,
    })
    convert_s = time.perf_counter() - t0
    request = compiled.create_infer_request()
    feed = {i: x.numpy() for i, x in enumerate(inputs)}
    request.infer(feed)  # warm-up
    times = []
    for _ in range(a.runs):
        t = time.perf_counter()
        request.infer(feed)
        times.append(time.perf_counter() - t)
    out = request.get_output_tensor(0).data
    assert np.isfinite(out).all()
    med = statistics.median(times)
    print(json.dumps({
        "tool": f"openvino-{ov.__version__.split('-')[0]}-cpu-{a.threads}t", "arch": "sd15",
        "component": a.component, "dtype": a.precision, "median_s": med, "min_s": min(times), "runs_s": times,
        "convert_s": convert_s, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }))


if __name__ == "__main__":
    main()
