#!/usr/bin/env python3
"""Tiny distilled-model fixtures (run by hand after make_fixtures.py):

- tests/fixtures/tiny-lcm/: an LCM-distilled SD 1.5-style UNet (`time_cond_proj_dim`: the guidance
  scale enters as an embedding, no unconditional pass) with LCMScheduler, saved as diffusers'
  LatentConsistencyModelPipeline; golden PNG from that pipeline.
- tests/fixtures/tiny-turbo/: SD-Turbo style (SD 2 architecture, Euler ancestral on trailing
  timesteps, 1 step, guidance 0) through StableDiffusionPipeline.
Cases go to golden/generate/cases-distilled.json.
"""

import json
import shutil
import sys
from pathlib import Path

import torch
from diffusers import (
    EulerAncestralDiscreteScheduler,
    LatentConsistencyModelPipeline,
    LCMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from make_fixtures import (  # noqa: E402
    FIX, GOLD, PROMPTS, add_text_model_prefix, make_tokenizer, randomize, text_encoder, unet, vae,
)

OUT = GOLD / "generate"


def finish(pipe, name, tok):
    out = FIX / name
    if out.exists():
        shutil.rmtree(out)
    pipe.save_pretrained(out, safe_serialization=True)
    (out / "tokenizer" / "tokenizer.json").unlink(missing_ok=True)
    for f in ["vocab.json", "merges.txt"]:
        shutil.copy(tok.vocab_dir / f, out / "tokenizer" / f)
    add_text_model_prefix(out)


def png(images, name):
    Image.fromarray((images[0] * 255).round().astype("uint8")).save(OUT / name)
    return name


def main():
    torch.manual_seed(0)
    cases = []

    # ---- LCM-distilled ----
    tok = make_tokenizer("<|endoftext|>")
    te = text_encoder("quick_gelu", 3)
    un = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16, 16), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8, attention_head_dim=2, norm_num_groups=4, time_cond_proj_dim=6,
    ).eval()
    va = vae()
    for i, m in enumerate([te, un, va]):
        randomize(m, 400 + i)
    lcm = LCMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        original_inference_steps=50, set_alpha_to_one=True, steps_offset=1, prediction_type="epsilon",
        timestep_scaling=10.0,
    )
    pipe = LatentConsistencyModelPipeline(
        vae=va, text_encoder=te, tokenizer=tok, unet=un, scheduler=lcm, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    finish(pipe, "tiny-lcm", tok)
    for steps, guidance in [(4, 8.5), (2, 1.0)]:
        g = torch.Generator().manual_seed(5)
        img = pipe(PROMPTS[0], num_inference_steps=steps, guidance_scale=guidance, width=64, height=64,
                   generator=g, output_type="np").images
        cases.append(dict(model="tiny-lcm", kind="txt2img", scheduler="lcm", seed=5, steps=steps,
                          guidance=guidance, width=64, height=64, prompt=PROMPTS[0], negative_prompt="",
                          png=png(img, f"tiny-lcm-{steps}steps.png")))

    # ---- SD-Turbo style ----
    tok2 = make_tokenizer("!")
    te2, un2, va2 = text_encoder("gelu", 3), unet(True, [2, 4, 4]), vae()
    for i, m in enumerate([te2, un2, va2]):
        randomize(m, 500 + i)
    ea = EulerAncestralDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        steps_offset=1, timestep_spacing="trailing", prediction_type="epsilon",
    )
    pipe2 = StableDiffusionPipeline(
        vae=va2, text_encoder=te2, tokenizer=tok2, unet=un2, scheduler=ea, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    finish(pipe2, "tiny-turbo", tok2)
    for steps in [1, 4]:
        g = torch.Generator().manual_seed(8)
        img = pipe2(PROMPTS[0], num_inference_steps=steps, guidance_scale=0.0, width=64, height=64,
                    generator=g, output_type="np").images
        cases.append(dict(model="tiny-turbo", kind="txt2img", scheduler="euler_a", seed=8, steps=steps,
                          guidance=0.0, width=64, height=64, prompt=PROMPTS[0], negative_prompt="",
                          png=png(img, f"tiny-turbo-{steps}steps.png")))
    (OUT / "cases-distilled.json").write_text(json.dumps(cases, indent=1) + "\n")
    print(len(cases), "distilled cases")


if __name__ == "__main__":
    main()
