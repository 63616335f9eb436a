"""A full-size SD 1.5 diffusers folder with random weights (same architecture, shapes and file
layout as runwayml/stable-diffusion-v1-5, f32 or f16 safetensors), for measuring memory with a
real on-disk checkpoint where none can be downloaded. Run by hand; the output is ~4.3 GB (f32).

    .venv/bin/python tools/reference/make_full_random_sd15.py OUT_DIR [--dtype fp16]

The tokenizer and scheduler files are copied from the tiny fixture (the real CLIP vocabulary).
"""
import argparse
import shutil
import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel

sys.path.insert(0, str(Path(__file__).parent))
from bench_torch import SD15_UNET, SD15_VAE, clip_configs  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16"])
    a = ap.parse_args()
    out = Path(a.out)
    dtype = torch.float16 if a.dtype == "fp16" else torch.float32
    torch.manual_seed(0)
    tiny = Path(__file__).resolve().parents[2] / "tests/fixtures/tiny-sd15"
    out.mkdir(parents=True, exist_ok=True)
    for sub in ("tokenizer", "scheduler"):
        shutil.copytree(tiny / sub, out / sub, dirs_exist_ok=True)
    shutil.copy(tiny / "model_index.json", out / "model_index.json")
    with torch.no_grad():
        UNet2DConditionModel(**SD15_UNET).to(dtype).save_pretrained(out / "unet")
        AutoencoderKL(**SD15_VAE).to(dtype).save_pretrained(out / "vae")
        CLIPTextModel(clip_configs("sd15")[0]).to(dtype).save_pretrained(out / "text_encoder")
    total = sum(f.stat().st_size for f in out.rglob("*.safetensors"))
    print(f"{out}: {total / 1e9:.2f} GB of safetensors ({a.dtype})")


if __name__ == "__main__":
    main()
