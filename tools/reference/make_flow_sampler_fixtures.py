#!/usr/bin/env python3
"""Goldens for the flow-matching samplers other than Euler, on the tiny FLUX.1-dev and SD3.5
fixtures (run by hand after make_flux_fixtures.py and make_sd3_fixtures.py).

- `heun`: diffusers' FlowMatchHeunDiscreteScheduler from the model's scheduler config. SD3's
  pipelines take it as is. FluxPipeline cannot (it passes its own σ, which that scheduler's
  `set_timesteps` does not accept), so the FLUX case runs the same Heun update over FLUX's own
  shifted σ (`FluxHeun` below): imagen's definition of Heun on FLUX.
- `dpmpp_2m`: DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction")
  with `flow_shift` the model's `shift` (SD3), or dynamic shifting by μ (FLUX.1-dev's config).

Writes golden/generate/tiny-{sd35,flux-dev}-{heun,dpmpp_2m}*.png and cases-flow-samplers.json.
"""

import json
import sys
from pathlib import Path

import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    FluxPipeline,
    StableDiffusion3Img2ImgPipeline,
    StableDiffusion3Pipeline,
)
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from make_fixtures import FIX, GOLD, PROMPTS  # noqa: E402

OUT = GOLD / "generate"


class FluxHeun(FlowMatchHeunDiscreteScheduler):
    """FlowMatchHeunDiscreteScheduler on the σ FlowMatchEulerDiscreteScheduler computes for
    FLUX (the pipeline's σ, shifted by μ), each but the first visited twice."""

    def __init__(self, euler_config, **kw):
        super().__init__(**kw)
        self.euler_config = euler_config

    def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, mu=None):
        euler = FlowMatchEulerDiscreteScheduler.from_config(self.euler_config)
        euler.set_timesteps(num_inference_steps, sigmas=sigmas, mu=mu)
        s = euler.sigmas[:-1].to(torch.float32)
        t = s * self.config.num_train_timesteps
        self.timesteps = torch.cat([t[:1], t[1:].repeat_interleave(2)])
        s = torch.cat([s, torch.zeros(1)])
        self.sigmas = torch.cat([s[:1], s[1:-1].repeat_interleave(2), s[-1:]])
        self.num_inference_steps = num_inference_steps
        self.prev_derivative = None
        self.dt = None
        self._step_index = None
        self._begin_index = None


def save(img, png):
    Image.fromarray((img[0] * 255).round().astype("uint8")).save(OUT / png)


def main():
    cases = []
    sd3 = StableDiffusion3Pipeline.from_pretrained(FIX / "tiny-sd35")
    euler_config = sd3.scheduler.config
    for name, sched, steps in [
        ("heun", FlowMatchHeunDiscreteScheduler.from_config(euler_config), 4),
        ("dpmpp_2m", DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction",
                                                 flow_shift=euler_config.shift), 6),
    ]:
        sd3.scheduler = sched
        img = sd3(PROMPTS[0], negative_prompt="blurry, low quality", width=64, height=64, num_inference_steps=steps,
                  guidance_scale=4.5, max_sequence_length=64, generator=torch.Generator().manual_seed(42),
                  output_type="np").images
        png = f"tiny-sd35-{name}.png"
        save(img, png)
        cases.append(dict(model="tiny-sd35", scheduler=name, kind="txt2img", seed=42, steps=steps, guidance=4.5,
                          width=64, height=64, prompt=PROMPTS[0], negative_prompt="blurry, low quality",
                          max_sequence_length=64, png=png))
    i2i = StableDiffusion3Img2ImgPipeline(**sd3.components)
    i2i.scheduler = FlowMatchHeunDiscreteScheduler.from_config(euler_config)
    img = i2i(PROMPTS[0], image=Image.open(OUT / "tiny-sd15-init.png"), strength=0.7, num_inference_steps=5,
              guidance_scale=4.5, max_sequence_length=64, generator=torch.Generator().manual_seed(99),
              output_type="np").images
    save(img, "tiny-sd35-heun-img2img.png")
    cases.append(dict(model="tiny-sd35", scheduler="heun", kind="img2img", seed=99, steps=5, guidance=4.5,
                      strength=0.7, width=64, height=64, prompt=PROMPTS[0], negative_prompt="",
                      max_sequence_length=64, init="tiny-sd15-init.png", png="tiny-sd35-heun-img2img.png"))

    flux = FluxPipeline.from_pretrained(FIX / "tiny-flux-dev")
    flux_config = flux.scheduler.config
    for name, sched, steps in [
        ("dpmpp_2m", DPMSolverMultistepScheduler.from_config(flux_config, use_flow_sigmas=True,
                                                             prediction_type="flow_prediction"), 6),
        ("heun", FluxHeun(flux_config, shift=flux_config.shift), 4),
    ]:
        flux.scheduler = sched
        img = flux(PROMPTS[0], width=64, height=48, num_inference_steps=steps, guidance_scale=3.5,
                   max_sequence_length=64, generator=torch.Generator().manual_seed(42), output_type="np").images
        png = f"tiny-flux-dev-{name}.png"
        save(img, png)
        cases.append(dict(model="tiny-flux-dev", scheduler=name, kind="txt2img", seed=42, steps=steps,
                          guidance=3.5, width=64, height=48, prompt=PROMPTS[0], negative_prompt="",
                          max_sequence_length=64, png=png))
    (OUT / "cases-flow-samplers.json").write_text(json.dumps(cases, indent=1) + "\n")
    print(len(cases), "cases")


if __name__ == "__main__":
    main()
