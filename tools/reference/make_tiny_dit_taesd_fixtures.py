#!/usr/bin/env python3
"""Tiny 16-channel TAESD decoders (diffusers `AutoencoderTiny`) as madebyollin's taef1 (FLUX.1,
scaling 1, shift 0) and taesd3 (SD3), the latter with a scaling and shift factor so that the
pipelines' `latents / scaling_factor + shift_factor` is exercised; and diffusers' FluxPipeline /
StableDiffusion3Pipeline PNGs with each as the VAE (run by hand after make_flux_fixtures.py
and make_sd3_fixtures.py).

Writes tests/fixtures/tiny-taef1/, tiny-taesd3/, golden/generate/tiny-flux-dev-taef1.png,
tiny-sd35-taesd3.png and cases-tiny-decoders.json.
"""

import json
import shutil
import sys
from pathlib import Path

import torch
from diffusers import AutoencoderTiny, FluxPipeline, StableDiffusion3Pipeline
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from make_fixtures import FIX, GOLD, PROMPTS, randomize  # noqa: E402

OUT = GOLD / "generate"


def tiny(name, seed, scaling, shift):
    ae = AutoencoderTiny(
        latent_channels=16, encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
        num_encoder_blocks=(1, 2, 2, 2), num_decoder_blocks=(2, 2, 2, 1), scaling_factor=scaling,
        shift_factor=shift,
    ).eval()
    randomize(ae, seed)
    out = FIX / name
    if out.exists():
        shutil.rmtree(out)
    ae.save_pretrained(out, safe_serialization=True)
    return ae


def main():
    cases = []
    flux = FluxPipeline.from_pretrained(FIX / "tiny-flux-dev")
    flux.vae = tiny("tiny-taef1", 700, 1.0, 0.0)
    kw = dict(width=64, height=48, num_inference_steps=4, guidance_scale=3.5, max_sequence_length=64)
    img = flux(PROMPTS[0], generator=torch.Generator().manual_seed(42), output_type="np", **kw).images
    Image.fromarray((img[0] * 255).round().astype("uint8")).save(OUT / "tiny-flux-dev-taef1.png")
    cases.append(dict(model="tiny-flux-dev", decoder="tiny-taef1", seed=42, steps=4, guidance=3.5, width=64,
                      height=48, prompt=PROMPTS[0], negative_prompt="", max_sequence_length=64,
                      png="tiny-flux-dev-taef1.png"))

    sd3 = StableDiffusion3Pipeline.from_pretrained(FIX / "tiny-sd35")
    sd3.vae = tiny("tiny-taesd3", 701, 1.5, 0.06)
    img = sd3(PROMPTS[0], negative_prompt="blurry, low quality", width=64, height=64, num_inference_steps=5,
              guidance_scale=4.5, max_sequence_length=64, generator=torch.Generator().manual_seed(42),
              output_type="np").images
    Image.fromarray((img[0] * 255).round().astype("uint8")).save(OUT / "tiny-sd35-taesd3.png")
    cases.append(dict(model="tiny-sd35", decoder="tiny-taesd3", seed=42, steps=5, guidance=4.5, width=64,
                      height=64, prompt=PROMPTS[0], negative_prompt="blurry, low quality", max_sequence_length=64,
                      png="tiny-sd35-taesd3.png"))
    (OUT / "cases-tiny-decoders.json").write_text(json.dumps(cases, indent=1) + "\n")
    print(len(cases), "cases")


if __name__ == "__main__":
    main()
