#!/usr/bin/env python3
"""Golden images from diffusers' own pipelines on the tiny fixtures (run by hand after
make_fixtures.py; writes tests/fixtures/golden/generate/*.png and cases.json).

Every case uses a CPU torch.Generator seeded with the case's seed, as `imagen generate --rng torch`.
"""

import json
from pathlib import Path

import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    PNDMScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
)
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures"
OUT = FIX / "golden" / "generate"

SCHEDULERS = {
    "pndm": (PNDMScheduler, {}),
    "ddim": (DDIMScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "dpmpp_2m": (DPMSolverMultistepScheduler, {}),
    "dpmpp_2m_karras": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
    "lcm": (LCMScheduler, {}),
}

PROMPT = "a photograph of an astronaut riding a horse"
NEGATIVE = "blurry, low quality"


def to_png(images: np.ndarray, path: Path):
    # VaeImageProcessor.numpy_to_pil: (x * 255).round() to u8, after (x / 2 + 0.5).clamp(0, 1).
    Image.fromarray((images[0] * 255).round().astype("uint8")).save(path)


def init_image(w, h):
    g = torch.Generator().manual_seed(7)
    # A smooth picture (not noise): gradients plus a few blobs, so img2img has structure to keep.
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    r = 0.5 + 0.5 * torch.sin(6 * x + torch.rand(1, generator=g) * 3)
    gch = 0.5 + 0.5 * torch.cos(5 * y)
    b = (x + y) / 2
    img = torch.stack([r, gch, b], -1).numpy()
    return Image.fromarray((img * 255).round().astype("uint8"))


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    cases = []
    for model, size in [("tiny-sd15", (64, 64)), ("tiny-sd2", (80, 48))]:
        pipe = StableDiffusionPipeline.from_pretrained(FIX / model, safety_checker=None, requires_safety_checker=False)
        base_config = pipe.scheduler.config
        for name, (cls, extra) in SCHEDULERS.items():
            pipe.scheduler = cls.from_config(base_config, **extra)
            w, h = size
            case = dict(
                model=model, kind="txt2img", scheduler=name, seed=1234, steps=5, guidance=7.5,
                width=w, height=h, prompt=PROMPT, negative_prompt=NEGATIVE,
            )
            g = torch.Generator().manual_seed(case["seed"])
            img = pipe(
                PROMPT, negative_prompt=NEGATIVE, width=w, height=h, num_inference_steps=case["steps"],
                guidance_scale=case["guidance"], generator=g, output_type="np",
            ).images
            case["png"] = f"{model}-{name}-txt2img.png"
            to_png(img, OUT / case["png"])
            cases.append(case)

        # image-to-image, every scheduler, strength 0.6 (steps actually run: floor(5 * 0.6) = 3)
        i2i = StableDiffusionImg2ImgPipeline(**pipe.components)
        init = init_image(*size)
        init.save(OUT / f"{model}-init.png")
        for name in SCHEDULERS:
            cls, extra = SCHEDULERS[name]
            i2i.scheduler = cls.from_config(base_config, **extra)
            case = dict(
                model=model, kind="img2img", scheduler=name, seed=99, steps=5, guidance=7.5, strength=0.6,
                width=size[0], height=size[1], prompt=PROMPT, negative_prompt="", init=f"{model}-init.png",
            )
            g = torch.Generator().manual_seed(case["seed"])
            img = i2i(
                PROMPT, image=init, strength=case["strength"], num_inference_steps=case["steps"],
                guidance_scale=case["guidance"], generator=g, output_type="np",
            ).images
            case["png"] = f"{model}-{name}-img2img.png"
            to_png(img, OUT / case["png"])
            cases.append(case)
    (OUT / "cases.json").write_text(json.dumps(cases, indent=1) + "\n")
    print(len(cases), "cases written to", OUT)


if __name__ == "__main__":
    main()
