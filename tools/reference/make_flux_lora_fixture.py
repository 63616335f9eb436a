#!/usr/bin/env python3
"""A tiny LoRA for tests/fixtures/tiny-flux-dev's transformer in the two formats FLUX LoRAs ship
in, and diffusers' image with it fused (run by hand after make_flux_fixtures.py; needs `peft`).

- tests/fixtures/loras/tiny-flux-peft.safetensors: diffusers/PEFT names
  (`transformer.transformer_blocks.0.attn.to_q.lora_A.weight`), as `save_lora_weights` writes them.
- tests/fixtures/loras/tiny-flux-kohya.safetensors: the same update under kohya/BFL names
  (`lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight`): fused q/k/v (and a single block's
  q/k/v/MLP) stacked as one LoRA of rank 3r (or 4r) with a block-diagonal up, alpha = 2·rank with
  the ups halved, so it is the same update through different names and shapes.

Golden: generate/tiny-flux-dev-lora.png (`load_lora_weights` + `fuse_lora(lora_scale=0.8)`, the
txt2img-cfg case's settings).
"""

import json
import sys
from pathlib import Path

import torch
from diffusers import FluxPipeline
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from PIL import Image
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).parent))
from make_fixtures import FIX, GOLD  # noqa: E402

RANK, SCALE = 4, 0.8
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
           "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "proj_mlp",
           "single_transformer_blocks.0.proj_out", "single_transformer_blocks.1.proj_out"]


def kohya_names(peft: dict, dim: int) -> dict:
    """diffusers names → kohya/BFL names; fused projections stacked block-diagonally."""
    mods = {}
    for k, v in peft.items():
        module, which = k[len("transformer."):].rsplit(".lora_", 1)
        mods.setdefault(module, {})[which[0]] = v
    out, alpha = {}, 2.0 * RANK

    def put(name, downs, ups):
        down = torch.cat(downs, 0)
        r = down.shape[0]
        up = torch.zeros(sum(u.shape[0] for u in ups), r)
        row = col = 0
        for u in ups:
            up[row:row + u.shape[0], col:col + u.shape[1]] = u
            row += u.shape[0]
            col += u.shape[1]
        # alpha/r scaling: kohya's factor alpha/r (r = stacked rank) against PEFT's 1
        out[f"lora_unet_{name}.lora_down.weight"] = down
        out[f"lora_unet_{name}.lora_up.weight"] = up * (r / alpha)
        out[f"lora_unet_{name}.alpha"] = torch.tensor(alpha)

    simple = {"attn.to_out.0": "img_attn_proj", "attn.to_add_out": "txt_attn_proj", "ff.net.0.proj": "img_mlp_0",
              "ff.net.2": "img_mlp_2", "ff_context.net.0.proj": "txt_mlp_0", "ff_context.net.2": "txt_mlp_2"}
    blocks = sorted({m.split(".")[1] for m in mods if m.startswith("transformer_blocks.")})
    for i in blocks:
        p = f"transformer_blocks.{i}."
        g = lambda m: mods[p + m]  # noqa: E731
        put(f"double_blocks_{i}_img_attn_qkv", [g(f"attn.to_{x}")["A"] for x in "qkv"],
            [g(f"attn.to_{x}")["B"] for x in "qkv"])
        put(f"double_blocks_{i}_txt_attn_qkv", [g(f"attn.add_{x}_proj")["A"] for x in "qkv"],
            [g(f"attn.add_{x}_proj")["B"] for x in "qkv"])
        for ours, theirs in simple.items():
            put(f"double_blocks_{i}_{theirs}", [g(ours)["A"]], [g(ours)["B"]])
    singles = sorted({m.split(".")[1] for m in mods if m.startswith("single_transformer_blocks.")})
    for i in singles:
        p = f"single_transformer_blocks.{i}."
        parts = [mods[p + f"attn.to_{x}"] for x in "qkv"] + [mods[p + "proj_mlp"]]
        put(f"single_blocks_{i}_linear1", [m["A"] for m in parts], [m["B"] for m in parts])
        put(f"single_blocks_{i}_linear2", [mods[p + "proj_out"]["A"]], [mods[p + "proj_out"]["B"]])
    return out


def main():
    torch.manual_seed(0)
    pipe = FluxPipeline.from_pretrained(FIX / "tiny-flux-dev")
    pipe.transformer.add_adapter(LoraConfig(r=RANK, lora_alpha=RANK, target_modules=TARGETS, init_lora_weights=False))
    g = torch.Generator().manual_seed(13)
    with torch.no_grad():
        for n, p in pipe.transformer.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    sd = get_peft_model_state_dict(pipe.transformer)
    tmp = Path("/tmp/imagen-flux-lora")
    FluxPipeline.save_lora_weights(tmp, transformer_lora_layers=sd, weight_name="lora.safetensors")
    peft = load_file(tmp / "lora.safetensors")
    loras = FIX / "loras"
    save_file(peft, loras / "tiny-flux-peft.safetensors", metadata={"format": "pt"})
    cfg = pipe.transformer.config
    save_file(kohya_names(peft, cfg.num_attention_heads * cfg.attention_head_dim), loras / "tiny-flux-kohya.safetensors")

    p = FluxPipeline.from_pretrained(FIX / "tiny-flux-dev")
    p.load_lora_weights(tmp, weight_name="lora.safetensors")
    p.fuse_lora(lora_scale=SCALE)
    case = next(c for c in json.loads((GOLD / "generate" / "cases-flux.json").read_text())
                if c["png"] == "tiny-flux-dev-txt2img-cfg.png")
    img = p(case["prompt"], negative_prompt=case["negative_prompt"], true_cfg_scale=case["true_cfg_scale"],
            width=case["width"], height=case["height"], num_inference_steps=case["steps"],
            guidance_scale=case["guidance"], max_sequence_length=case["max_sequence_length"],
            generator=torch.Generator().manual_seed(case["seed"]), output_type="np").images
    Image.fromarray((img[0] * 255).round().astype("uint8")).save(GOLD / "generate" / "tiny-flux-dev-lora.png")
    print(len(peft), "PEFT tensors;", sorted(peft)[:2])


if __name__ == "__main__":
    main()
