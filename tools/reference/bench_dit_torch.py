#!/usr/bin/env python3
"""PyTorch side of `imagen bench --arch flux|sd35m` (src/bench/dit.rs), random weights, the same
inputs, CPU, fp32 or bf16 (the model cast to bf16, as PyTorch users run it):

- `--arch flux`: diffusers' FluxTransformer2DModel at FLUX.1-dev's full width with one
  double-stream and one single-stream block (512² = 1024 packed tokens at --latent 64,
  --text-tokens T5 tokens);
- `--arch sd35m`: SD3.5 Medium's whole SD3Transformer2DModel (--latent 128 = 1024², 77 CLIP +
  --text-tokens T5 tokens).

    .venv/bin/python tools/reference/bench_dit_torch.py --arch flux --dtype bf16 [--latent 64] [--text-tokens 512]

Prints one JSON line in the Rust bench's shape.
"""

import argparse
import json
import statistics
import time

import torch
from diffusers import FluxTransformer2DModel, SD3Transformer2DModel
from diffusers.pipelines.flux.pipeline_flux import FluxPipeline


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="flux", choices=["flux", "sd35m"])
    p.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    p.add_argument("--latent", type=int, default=64)
    p.add_argument("--text-tokens", type=int, default=512)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    if a.arch == "sd35m":
        return sd35m(a, dtype)
    model = FluxTransformer2DModel(num_layers=1, num_single_layers=1, guidance_embeds=True).eval().to(dtype)
    side = a.latent // 2
    b, n_img, n_txt = a.batch, side * side, a.text_tokens
    x = torch.randn(b, n_img, 64, dtype=dtype)
    ctx = torch.randn(b, n_txt, 4096, dtype=dtype)
    pooled = torch.randn(b, 768, dtype=dtype)
    img_ids = FluxPipeline._prepare_latent_image_ids(b, side, side, "cpu", dtype)
    txt_ids = torch.zeros(n_txt, 3, dtype=dtype)
    t, g = torch.full((b,), 0.5, dtype=dtype), torch.full((b,), 3.5, dtype=dtype)

    def run():
        with torch.no_grad():
            return model(hidden_states=x, encoder_hidden_states=ctx, pooled_projections=pooled, timestep=t,
                         img_ids=img_ids, txt_ids=txt_ids, guidance=g).sample

    run()
    times = []
    for _ in range(a.runs):
        s = time.perf_counter()
        run()
        times.append(time.perf_counter() - s)
    d, n = 3072, n_img + n_txt
    flops = b * (2 * n * 12 * d * d + 4 * n * n * d) * 2 + b * (2 * n_img * 64 * d * 2 + 2 * n_txt * 4096 * d)
    med = statistics.median(times)
    print(json.dumps({
        "tool": "torch", "arch": "flux", "component": "blocks", "dtype": a.dtype, "torch": torch.__version__,
        "shape": f"{b}x{n_img}x64 + {n_txt} text tokens", "median_s": med, "runs_s": times,
        "gflop": flops / 1e9, "gflop_per_s": flops / 1e9 / med,
        "params": sum(p.numel() for p in model.parameters()),
    }))


def sd35m(a, dtype):
    model = SD3Transformer2DModel(
        sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64, num_attention_heads=24,
        joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048, out_channels=16,
        pos_embed_max_size=384, dual_attention_layers=tuple(range(13)), qk_norm="rms_norm",
    ).eval().to(dtype)
    b, l, n_txt = a.batch, a.latent, 77 + a.text_tokens
    x = torch.randn(b, 16, l, l, dtype=dtype)
    ctx = torch.randn(b, n_txt, 4096, dtype=dtype)
    pooled = torch.randn(b, 2048, dtype=dtype)
    t = torch.full((b,), 500.0, dtype=dtype)

    def run():
        with torch.no_grad():
            return model(hidden_states=x, encoder_hidden_states=ctx, pooled_projections=pooled, timestep=t).sample

    run()
    times = []
    for _ in range(a.runs):
        s = time.perf_counter()
        run()
        times.append(time.perf_counter() - s)
    d, ni, n = 1536, (l // 2) ** 2, (l // 2) ** 2 + n_txt
    flops = b * (24 * (2 * n * 12 * d * d + 4 * n * n * d) + 13 * (2 * ni * 4 * d * d + 4 * ni * ni * d)
                 + 2 * ni * 64 * d * 2 + 2 * n_txt * 4096 * d)
    med = statistics.median(times)
    print(json.dumps({
        "tool": "torch", "arch": "sd35m", "component": "transformer", "dtype": a.dtype, "torch": torch.__version__,
        "shape": f"{b}x16x{l}x{l} + {n_txt} text tokens", "median_s": med, "runs_s": times,
        "gflop": flops / 1e9, "gflop_per_s": flops / 1e9 / med,
        "params": sum(p.numel() for p in model.parameters()),
    }))


if __name__ == "__main__":
    main()
