#!/usr/bin/env python3
"""tests/fixtures/single-file/tiny-sd15.safetensors: the tiny-sd15 weights in the original LDM
single-file layout (`model.diffusion_model.*`, `first_stage_model.*`,
`cond_stage_model.transformer.text_model.*`), as A1111/CivitAI checkpoints are shipped.

The key table is diffusers' own conversion script (convert_diffusers_to_original_stable_diffusion)
generalised to any block count; the result is checked by loading it back with diffusers'
`from_single_file(config=tiny-sd15)` and comparing every tensor with the folder's.
"""

import sys
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
from make_fixtures import FIX  # noqa: E402


def unet_map(cfg):
    n = len(cfg.block_out_channels)
    L = cfg.layers_per_block
    m = {
        "time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
        "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2.",
    }
    for i in range(n):
        for j in range(L):
            m[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{(L + 1) * i + j + 1}.0."
            m[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{(L + 1) * i + j + 1}.1."
        if i < n - 1:
            m[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{(L + 1) * (i + 1)}.0.op."
        has_attn = cfg.up_block_types[i].startswith("CrossAttn")
        for j in range(L + 1):
            m[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{(L + 1) * i + j}.0."
            m[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{(L + 1) * i + j}.1."
        if i < n - 1:
            m[f"up_blocks.{i}.upsamplers.0."] = f"output_blocks.{(L + 1) * i + L}.{2 if has_attn else 1}."
    m["mid_block.attentions.0."] = "middle_block.1."
    for j in range(2):
        m[f"mid_block.resnets.{j}."] = f"middle_block.{2 * j}."
    return m


RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"), ("conv2", "out_layers.3"),
          ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")]


def convert_unet(sd, cfg):
    m = unet_map(cfg)
    out = {}
    for k, v in sd.items():
        new = k
        for hf, ldm in sorted(m.items(), key=lambda x: -len(x[0])):
            if k.startswith(hf):
                rest = k[len(hf):]
                if ".resnets." in hf:
                    for a, b in RESNET:
                        if rest.startswith(a + "."):
                            rest = b + rest[len(a):]
                new = ldm + rest
                break
        out["model.diffusion_model." + new] = v
    return out


def convert_vae(sd, cfg):
    n = len(cfg.block_out_channels)
    out = {}
    for k, v in sd.items():
        new = k
        for i in range(n):
            for j in range(cfg.layers_per_block + 1):
                new = new.replace(f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}.")
                new = new.replace(f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{n - 1 - i}.block.{j}.")
            new = new.replace(f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample.")
            new = new.replace(f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{n - 1 - i}.upsample.")
        for i in range(2):
            new = new.replace(f"mid_block.resnets.{i}.", f"mid.block_{i + 1}.")
        new = new.replace("mid_block.attentions.0.", "mid.attn_1.")
        new = new.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
        if ".mid.attn_1." in new:
            for a, b in [("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."),
                         ("to_out.0.", "proj_out.")]:
                new = new.replace(a, b)
            if new.endswith("weight") and v.ndim == 2:
                v = v[:, :, None, None]  # LDM's attention projections are 1x1 convs
        out["first_stage_model." + new] = v
    return out


def main():
    pipe = StableDiffusionPipeline.from_pretrained(FIX / "tiny-sd15", safety_checker=None, requires_safety_checker=False)
    full = {}
    full.update(convert_unet(pipe.unet.state_dict(), pipe.unet.config))
    full.update(convert_vae(pipe.vae.state_dict(), pipe.vae.config))
    for k, v in pipe.text_encoder.state_dict().items():
        full["cond_stage_model.transformer." + (k if k.startswith("text_model.") else "text_model." + k)] = v
    out = FIX / "single-file" / "tiny-sd15.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in full.items()}, out)

    # diffusers' own single-file loader must read it back to the same weights.
    back = StableDiffusionPipeline.from_single_file(
        str(out), config=str(FIX / "tiny-sd15"), safety_checker=None, requires_safety_checker=False,
        local_files_only=True,
    )
    for name in ["unet", "vae", "text_encoder"]:
        a, b = getattr(pipe, name).state_dict(), getattr(back, name).state_dict()
        assert a.keys() == b.keys(), name
        for k in a:
            assert torch.equal(a[k].reshape(b[k].shape), b[k]), (name, k)
    print("single-file fixture written and verified with diffusers.from_single_file:", len(full), "tensors")


if __name__ == "__main__":
    main()
