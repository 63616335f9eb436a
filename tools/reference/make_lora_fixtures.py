#!/usr/bin/env python3
"""A tiny LoRA for tests/fixtures/tiny-sd15, in the two common formats, and diffusers' images with it
fused (run by hand after make_fixtures.py; needs `peft`).

- tests/fixtures/loras/tiny-peft.safetensors: diffusers/PEFT names (`unet.….lora_A.weight`,
  `text_encoder.text_model.….lora_B.weight`), as `save_lora_weights` writes them (rank 4, alpha =
  rank, so no alpha in the file). transformers 5 drops `text_model.`; real files have it.
- tests/fixtures/loras/tiny-kohya.safetensors: the same LoRA under kohya sd-scripts names
  (`lora_unet_…_to_q.lora_down.weight`, `.lora_up.weight`, `.alpha`) with alpha 8 and the up
  weights halved, so it is the same update and exercises alpha/rank scaling.
Goldens: generate/tiny-sd15-lora-*.png with `load_lora_weights` + `fuse_lora(lora_scale=…)`,
cases in generate/cases-lora.json.
"""

import json
import sys
from pathlib import Path

import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from PIL import Image
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).parent))
from make_fixtures import FIX, GOLD, PROMPTS  # noqa: E402

OUT = GOLD / "generate"
LORAS = FIX / "loras"
RANK, KOHYA_ALPHA = 4, 8


def main():
    torch.manual_seed(0)
    pipe = StableDiffusionPipeline.from_pretrained(FIX / "tiny-sd15", safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    unet_targets = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]
    pipe.unet.add_adapter(LoraConfig(r=RANK, lora_alpha=RANK, target_modules=unet_targets, init_lora_weights=False))
    pipe.text_encoder.add_adapter(
        LoraConfig(r=RANK, lora_alpha=RANK, target_modules=["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
                   init_lora_weights=False)
    )
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for m in [pipe.unet, pipe.text_encoder]:
            for n, p in m.named_parameters():
                if "lora_" in n:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    unet_sd = get_peft_model_state_dict(pipe.unet)
    te_sd = get_peft_model_state_dict(pipe.text_encoder)
    LORAS.mkdir(parents=True, exist_ok=True)
    tmp = Path("/tmp/imagen-lora")
    StableDiffusionPipeline.save_lora_weights(
        tmp, unet_lora_layers=unet_sd, text_encoder_lora_layers=te_sd, weight_name="lora.safetensors"
    )
    raw = load_file(tmp / "lora.safetensors")
    # Real-world names: text_encoder.text_model.…
    peft = {(k.replace("text_encoder.", "text_encoder.text_model.", 1) if k.startswith("text_encoder.")
             and not k.startswith("text_encoder.text_model.") else k): v for k, v in raw.items()}
    save_file(peft, LORAS / "tiny-peft.safetensors", metadata={"format": "pt"})
    # kohya names: module path with '.' -> '_', lora_A -> lora_down, lora_B -> lora_up, plus alpha.
    kohya = {}
    for k, v in peft.items():
        prefix, rest = k.split(".", 1)
        module, which = rest.rsplit(".lora_", 1)
        name = ("lora_unet_" if prefix == "unet" else "lora_te_") + module.replace(".", "_")
        up = which.startswith("B")
        kohya[f"{name}.lora_{'up' if up else 'down'}.weight"] = v * (RANK / KOHYA_ALPHA) if up else v
        kohya[f"{name}.alpha"] = torch.tensor(float(KOHYA_ALPHA))
    save_file(kohya, LORAS / "tiny-kohya.safetensors")

    # Goldens: a fresh pipeline, the LoRA loaded the documented way and fused at a scale.
    cases = []
    for scale in [1.0, 0.5]:
        p = StableDiffusionPipeline.from_pretrained(FIX / "tiny-sd15", safety_checker=None, requires_safety_checker=False)
        p.scheduler = EulerDiscreteScheduler.from_config(p.scheduler.config)
        p.load_lora_weights(tmp, weight_name="lora.safetensors")
        p.fuse_lora(lora_scale=scale)
        gen = torch.Generator().manual_seed(21)
        img = p(PROMPTS[0], num_inference_steps=5, guidance_scale=7.5, width=64, height=64, generator=gen,
                output_type="np").images
        name = f"tiny-sd15-lora-{scale}.png"
        Image.fromarray((img[0] * 255).round().astype("uint8")).save(OUT / name)
        cases.append(dict(model="tiny-sd15", kind="txt2img", scheduler="euler", seed=21, steps=5, guidance=7.5,
                          width=64, height=64, prompt=PROMPTS[0], negative_prompt="", lora_scale=scale, png=name))
    (OUT / "cases-lora.json").write_text(json.dumps(cases, indent=1) + "\n")
    print("LoRA fixtures:", sorted(k for k in peft)[:2], len(peft), "tensors")


if __name__ == "__main__":
    main()
