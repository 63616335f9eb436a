#!/usr/bin/env python3
"""Golden for tiled VAE decoding (run by hand after make_fixtures.py): diffusers'
`AutoencoderKL.tiled_decode` on tiny-sd15's VAE with 32-pixel tiles (4 latents, overlap 0.25),
on latents larger than a tile in both directions, plus the untiled decode of the same latents.
Writes tests/fixtures/golden/tiny-sd15-tiled.safetensors.
"""

import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
from make_fixtures import FIX, GOLD  # noqa: E402


def main():
    vae = AutoencoderKL.from_pretrained(FIX / "tiny-sd15" / "vae").eval()
    vae.enable_tiling()
    vae.tile_sample_min_size = 32
    vae.tile_latent_min_size = 4
    vae.tile_overlap_factor = 0.25
    g = torch.Generator().manual_seed(9)
    z = torch.randn((1, 4, 11, 9), generator=g)
    with torch.no_grad():
        tiled = vae.tiled_decode(z).sample
        vae.disable_tiling()
        full = vae.decode(z).sample
    save_file({"latents": z, "tiled": tiled.contiguous(), "untiled": full.contiguous()},
              GOLD / "tiny-sd15-tiled.safetensors")
    print("tiled:", tuple(tiled.shape), "max |tiled - untiled|:", (tiled - full).abs().max().item())


if __name__ == "__main__":
    main()
