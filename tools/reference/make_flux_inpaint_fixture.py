#!/usr/bin/env python3
"""diffusers' FluxInpaintPipeline on tests/fixtures/tiny-flux-dev (run by hand after
make_flux_fixtures.py): golden/generate/tiny-flux-mask.png (white = repaint: a disc and the left
third, with grey edges that binarize) and tiny-flux-dev-inpaint.png, case appended to
cases-flux-inpaint.json.
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from diffusers import FluxInpaintPipeline
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from make_fixtures import FIX, GOLD, PROMPTS  # noqa: E402

OUT = GOLD / "generate"


def main():
    yy, xx = np.mgrid[0:64, 0:64]
    mask = np.zeros((64, 64), dtype=np.float32)
    mask[((yy - 40) ** 2 + (xx - 40) ** 2) < 15 ** 2] = 1.0
    mask[:, :20] = 1.0
    mask[:, 20:24] = 0.55  # grey: binarized to repaint
    mask[:, 24:26] = 0.45  # grey: binarized to keep
    Image.fromarray((mask * 255).round().astype("uint8"), mode="L").save(OUT / "tiny-flux-mask.png")
    pipe = FluxInpaintPipeline.from_pretrained(FIX / "tiny-flux-dev")
    init = Image.open(OUT / "tiny-sd15-init.png")
    m = Image.open(OUT / "tiny-flux-mask.png")
    img = pipe(PROMPTS[0], image=init, mask_image=m, strength=0.8, num_inference_steps=5, guidance_scale=3.5,
               width=64, height=64, max_sequence_length=64, generator=torch.Generator().manual_seed(77),
               output_type="np").images
    Image.fromarray((img[0] * 255).round().astype("uint8")).save(OUT / "tiny-flux-dev-inpaint.png")
    case = dict(model="tiny-flux-dev", kind="inpaint", seed=77, steps=5, guidance=3.5, strength=0.8, width=64,
                height=64, prompt=PROMPTS[0], negative_prompt="", true_cfg_scale=1.0, max_sequence_length=64,
                init="tiny-sd15-init.png", mask="tiny-flux-mask.png", png="tiny-flux-dev-inpaint.png")
    (OUT / "cases-flux-inpaint.json").write_text(json.dumps([case], indent=1) + "\n")
    print("inpaint case written")


if __name__ == "__main__":
    main()
