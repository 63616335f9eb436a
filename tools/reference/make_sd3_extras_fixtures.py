#!/usr/bin/env python3
"""diffusers' SD3 features beyond txt2img/img2img on tests/fixtures/tiny-sd35 (run by hand after
make_sd3_fixtures.py and make_flux_inpaint_fixture.py, whose mask it reuses):

- StableDiffusion3InpaintPipeline (a 16-channel transformer: the kept area reset to the image
  noised to the next σ after every step), strength 0.8 and 1.0. Its final latents are decoded
  here as diffusers' txt2img/img2img SD3 pipelines decode (`latents / scaling_factor +
  shift_factor`): diffusers 0.42.1's inpaint pipeline leaves out the `+ shift_factor`, which
  brightens every SD3.5 inpainting slightly; imagen decodes all SD3 outputs the same way;
- StableDiffusion3Pipeline with skip-layer guidance (`skip_guidance_layers`, scale, start/stop).

Writes golden/generate/tiny-sd35-{inpaint,inpaint-full,slg}.png and cases-sd3-extras.json.
"""

import json
import sys
from pathlib import Path

import torch
from diffusers import StableDiffusion3InpaintPipeline, StableDiffusion3Pipeline
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from make_fixtures import FIX, GOLD, PROMPTS  # noqa: E402

OUT = GOLD / "generate"


def save(img, png):
    Image.fromarray((img[0] * 255).round().astype("uint8")).save(OUT / png)


def main():
    cases = []
    pipe = StableDiffusion3Pipeline.from_pretrained(FIX / "tiny-sd35")
    inpaint = StableDiffusion3InpaintPipeline(**pipe.components)
    init = Image.open(OUT / "tiny-sd15-init.png")
    mask = Image.open(OUT / "tiny-flux-mask.png")
    for name, strength in [("inpaint", 0.8), ("inpaint-full", 1.0)]:
        lat = inpaint(PROMPTS[0], negative_prompt="blurry", image=init, mask_image=mask, strength=strength,
                      num_inference_steps=5, guidance_scale=4.5, width=64, height=64, max_sequence_length=64,
                      generator=torch.Generator().manual_seed(77), output_type="latent").images
        vae = inpaint.vae
        with torch.no_grad():
            decoded = vae.decode(lat / vae.config.scaling_factor + vae.config.shift_factor).sample
        img = inpaint.image_processor.postprocess(decoded, output_type="np")
        png = f"tiny-sd35-{name}.png"
        save(img, png)
        cases.append(dict(model="tiny-sd35", kind="inpaint", seed=77, steps=5, guidance=4.5, strength=strength,
                          width=64, height=64, prompt=PROMPTS[0], negative_prompt="blurry",
                          max_sequence_length=64, init="tiny-sd15-init.png", mask="tiny-flux-mask.png", png=png))
    slg = dict(layers=[1], scale=2.8, start=0.01, stop=0.5)
    img = pipe(PROMPTS[0], negative_prompt="blurry, low quality", width=64, height=64, num_inference_steps=8,
               guidance_scale=4.5, max_sequence_length=64, generator=torch.Generator().manual_seed(42),
               skip_guidance_layers=slg["layers"], skip_layer_guidance_scale=slg["scale"],
               skip_layer_guidance_start=slg["start"], skip_layer_guidance_stop=slg["stop"],
               output_type="np").images
    save(img, "tiny-sd35-slg.png")
    cases.append(dict(model="tiny-sd35", kind="txt2img", seed=42, steps=8, guidance=4.5, width=64, height=64,
                      prompt=PROMPTS[0], negative_prompt="blurry, low quality", max_sequence_length=64,
                      skip_layer_guidance=slg, png="tiny-sd35-slg.png"))
    (OUT / "cases-sd3-extras.json").write_text(json.dumps(cases, indent=1) + "\n")
    print(len(cases), "cases")


if __name__ == "__main__":
    main()
