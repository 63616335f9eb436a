#!/usr/bin/env python3
"""PyTorch side of the SD 1.5 benchmark (`benches/sd15.rs` is the Rust side): the full-size UNet at
64x64 latents, batch 2, and the VAE decode of 64x64 latents to 512x512, random weights, fp32, CPU.

    .venv/bin/python tools/reference/bench_torch.py [--runs 3] [--threads 2] [--only unet|vae-decode|sdxl-unet]

sdxl-unet (only when asked): the SDXL base UNet, one step at 1024² without CFG (128x128, batch 1).

Prints one JSON line per component, in the same shape as the Rust bench.
"""

import argparse
import json
import statistics
import time

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

# runwayml/stable-diffusion-v1-5 unet/config.json and vae/config.json, less the defaults.
SD15_UNET = dict(cross_attention_dim=768, sample_size=64)
SD15_VAE = dict(
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    sample_size=512,
)


# stabilityai/stable-diffusion-xl-base-1.0 unet/config.json, less the defaults.
SDXL_UNET = dict(
    sample_size=128, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)


def bench(fn, runs):
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    meta = {"backend": f"torch-{torch.__version__}-cpu-{a.threads}t"}
    with torch.inference_mode():
        if a.only in (None, "unet"):
            unet = UNet2DConditionModel(**SD15_UNET).eval()
            lat, ctx = torch.randn(2, 4, 64, 64), torch.randn(2, 77, 768)
            t = torch.tensor([981.0, 981.0])
            med, runs = bench(lambda: unet(lat, t, encoder_hidden_states=ctx).sample, a.runs)
            print(json.dumps({"component": "unet", **meta, "shape": "2x4x64x64", "median_s": round(med, 3), "runs_s": runs}))
            del unet
        if a.only == "sdxl-unet":
            unet = UNet2DConditionModel(**SDXL_UNET).eval()
            lat, ctx = torch.randn(1, 4, 128, 128), torch.randn(1, 77, 2048)
            added = {"text_embeds": torch.randn(1, 1280), "time_ids": torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024]])}
            t = torch.tensor([981.0])
            med, runs = bench(lambda: unet(lat, t, encoder_hidden_states=ctx, added_cond_kwargs=added).sample, a.runs)
            print(json.dumps({"component": "sdxl-unet", **meta, "shape": "1x4x128x128", "median_s": round(med, 3), "runs_s": runs}))
            del unet
        if a.only in (None, "vae-decode"):
            vae = AutoencoderKL(**SD15_VAE).eval()
            z = torch.randn(1, 4, 64, 64)
            med, runs = bench(lambda: vae.decode(z).sample, a.runs)
            print(json.dumps({"component": "vae-decode", **meta, "shape": "1x4x64x64->512x512", "median_s": round(med, 3), "runs_s": runs}))


if __name__ == "__main__":
    main()
