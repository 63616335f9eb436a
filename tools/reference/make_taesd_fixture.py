#!/usr/bin/env python3
"""A tiny TAESD (diffusers `AutoencoderTiny`) in its diffusers folder layout and its decoder's
output on fixed latents (run by hand). Writes tests/fixtures/tiny-taesd/ and
tests/fixtures/golden/tiny-taesd.safetensors.
"""

import shutil
import sys
from pathlib import Path

import torch
from diffusers import AutoencoderTiny
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
from make_fixtures import FIX, GOLD, randomize  # noqa: E402


def main():
    torch.manual_seed(0)
    vae = AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
        num_encoder_blocks=(1, 2, 2, 2), num_decoder_blocks=(2, 2, 2, 1),
    ).eval()
    randomize(vae, 600)
    out = FIX / "tiny-taesd"
    if out.exists():
        shutil.rmtree(out)
    vae.save_pretrained(out, safe_serialization=True)
    g = torch.Generator().manual_seed(10)
    z = torch.randn((1, 4, 7, 9), generator=g) * 2
    with torch.no_grad():
        img = vae.decode(z).sample
    save_file({"latents": z, "image": img.contiguous()}, GOLD / "tiny-taesd.safetensors")
    print("tiny TAESD:", tuple(img.shape))


if __name__ == "__main__":
    main()
