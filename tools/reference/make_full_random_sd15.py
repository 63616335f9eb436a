"""A full-size SD 1.5 diffusers folder with random weights (same architecture, shapes and file
layout as runwayml/stable-diffusion-v1-5, f32 or f16 safetensors), for measuring memory with a
real on-disk checkpoint where none can be downloaded. Run by hand; the output is ~4.3 GB (f32).

    .venv/bin/python tools/reference/make_full_random_sd15.py OUT_DIR [--dtype fp16]
    .venv/bin/python tools/reference/make_full_random_sd15.py OUT_DIR --single-file OUT.safetensors

The second form converts an existing folder into one original-layout checkpoint (the key table
of make_single_file_fixture.py), the input `imagen quantize` takes.

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


def single_file(folder, out):
    from diffusers import StableDiffusionPipeline
    from make_single_file_fixture import convert_unet, convert_vae, hf_clip
    from safetensors.torch import save_file

    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    full = {}
    full.update(convert_unet(pipe.unet.state_dict(), pipe.unet.config))
    full.update(convert_vae(pipe.vae.state_dict(), pipe.vae.config))
    full.update(hf_clip(pipe.text_encoder.state_dict(), "cond_stage_model.transformer."))
    save_file({k: v.contiguous() for k, v in full.items()}, out)
    print(f"{out}: {out.stat().st_size / 1e9:.2f} GB")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16"])
    ap.add_argument("--single-file", help="convert the folder OUT_DIR into this checkpoint")
    a = ap.parse_args()
    if a.single_file:
        return single_file(Path(a.out), Path(a.single_file))
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
