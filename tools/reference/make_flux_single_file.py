#!/usr/bin/env python3
"""The tiny FLUX.1-dev transformer as users download FLUX transformers: Black Forest Labs'
single-file layout (`double_blocks.N.img_attn.qkv.weight`, fused q/k/v and q/k/v/mlp, shift and
scale of the final norm in BFL's order), as safetensors and as a GGUF file (city96's
ComfyUI-GGUF convention: the same names, 2-D weights Q8_0 where rows split into 32-blocks, the
rest f32), written with the `gguf` package. Run by hand after make_flux_fixtures.py.

The layout is the inverse of diffusers' `convert_flux_transformer_checkpoint_to_diffusers`;
this script checks that by converting back with diffusers' own function (its hard-coded 3072
width patched to the tiny one) and comparing every tensor.

Writes tests/fixtures/single-file/tiny-flux-dev-bfl.safetensors, tiny-flux-dev-q8_0.gguf, and
golden/generate/tiny-flux-dev-q8_0.png: diffusers' FluxPipeline with the GGUF's dequantised
weights (the txt2img-cfg case of cases-flux.json).
"""

import inspect
import json
import sys
from pathlib import Path

import gguf
import numpy as np
import torch
from diffusers import FluxPipeline
from diffusers.loaders import single_file_utils
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize
from PIL import Image
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
from make_fixtures import FIX, GOLD  # noqa: E402


def to_bfl(sd: dict, layers: int, single_layers: int) -> dict:
    out = {}

    def mv(src, dst):
        out[dst] = sd[src]

    for a, b in [("time_in", "timestep_embedder"), ("vector_in", "text_embedder"), ("guidance_in", "guidance_embedder")]:
        for i, layer in [("in_layer", "linear_1"), ("out_layer", "linear_2")]:
            for p in ["weight", "bias"]:
                key = f"time_text_embed.{b}.{layer}.{p}"
                if key in sd:
                    out[f"{a}.{i}.{p}"] = sd[key]
    for p in ["weight", "bias"]:
        mv(f"context_embedder.{p}", f"txt_in.{p}")
        mv(f"x_embedder.{p}", f"img_in.{p}")
        mv(f"proj_out.{p}", f"final_layer.linear.{p}")
        scale, shift = sd[f"norm_out.linear.{p}"].chunk(2, dim=0)
        out[f"final_layer.adaLN_modulation.1.{p}"] = torch.cat([shift, scale], dim=0)
    for i in range(layers):
        d, t = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        for p in ["weight", "bias"]:
            mv(f"{t}norm1.linear.{p}", f"{d}img_mod.lin.{p}")
            mv(f"{t}norm1_context.linear.{p}", f"{d}txt_mod.lin.{p}")
            out[f"{d}img_attn.qkv.{p}"] = torch.cat([sd[f"{t}attn.to_{x}.{p}"] for x in "qkv"])
            out[f"{d}txt_attn.qkv.{p}"] = torch.cat([sd[f"{t}attn.add_{x}_proj.{p}"] for x in "qkv"])
            mv(f"{t}ff.net.0.proj.{p}", f"{d}img_mlp.0.{p}")
            mv(f"{t}ff.net.2.{p}", f"{d}img_mlp.2.{p}")
            mv(f"{t}ff_context.net.0.proj.{p}", f"{d}txt_mlp.0.{p}")
            mv(f"{t}ff_context.net.2.{p}", f"{d}txt_mlp.2.{p}")
            mv(f"{t}attn.to_out.0.{p}", f"{d}img_attn.proj.{p}")
            mv(f"{t}attn.to_add_out.{p}", f"{d}txt_attn.proj.{p}")
        mv(f"{t}attn.norm_q.weight", f"{d}img_attn.norm.query_norm.scale")
        mv(f"{t}attn.norm_k.weight", f"{d}img_attn.norm.key_norm.scale")
        mv(f"{t}attn.norm_added_q.weight", f"{d}txt_attn.norm.query_norm.scale")
        mv(f"{t}attn.norm_added_k.weight", f"{d}txt_attn.norm.key_norm.scale")
    for i in range(single_layers):
        s, t = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        for p in ["weight", "bias"]:
            mv(f"{t}norm.linear.{p}", f"{s}modulation.lin.{p}")
            out[f"{s}linear1.{p}"] = torch.cat([sd[f"{t}attn.to_{x}.{p}"] for x in "qkv"] + [sd[f"{t}proj_mlp.{p}"]])
            mv(f"{t}proj_out.{p}", f"{s}linear2.{p}")
        mv(f"{t}attn.norm_q.weight", f"{s}norm.query_norm.scale")
        mv(f"{t}attn.norm_k.weight", f"{s}norm.key_norm.scale")
    return out


def check_against_diffusers(bfl: dict, sd: dict, inner: int):
    """diffusers' converter (its width patched) maps our file back to the diffusers weights."""
    src = inspect.getsource(single_file_utils.convert_flux_transformer_checkpoint_to_diffusers)
    src = src.replace("inner_dim = 3072", f"inner_dim = {inner}")
    scope = dict(vars(single_file_utils))
    exec(src, scope)
    back = scope["convert_flux_transformer_checkpoint_to_diffusers"](dict(bfl))
    assert set(back) == set(sd), set(back) ^ set(sd)
    for k, v in sd.items():
        assert torch.equal(back[k], v), k


def write_gguf(bfl: dict, path: Path, arch: str = "flux") -> dict:
    """Q8_0 for 2-D weights whose rows split into 32-blocks, f32 otherwise; returns the
    dequantised values of everything (what a reader must see)."""
    w = gguf.GGUFWriter(str(path), arch)
    values = {}
    for name, t in bfl.items():
        a = t.float().numpy()
        if a.ndim == 2 and a.shape[1] % 32 == 0:
            q = quantize(a, T.Q8_0)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=T.Q8_0)
            values[name] = torch.from_numpy(dequantize(q, T.Q8_0).reshape(a.shape).astype(np.float32))
        else:
            w.add_tensor(name, a)
            values[name] = t.float()
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return values


def main():
    pipe = FluxPipeline.from_pretrained(FIX / "tiny-flux-dev")
    tr = pipe.transformer
    sd = {k: v.detach().clone() for k, v in tr.state_dict().items()}
    cfg = tr.config
    bfl = to_bfl(sd, cfg.num_layers, cfg.num_single_layers)
    check_against_diffusers(bfl, sd, cfg.num_attention_heads * cfg.attention_head_dim)
    out = FIX / "single-file"
    save_file({k: v.contiguous() for k, v in bfl.items()}, out / "tiny-flux-dev-bfl.safetensors")
    deq = write_gguf(bfl, out / "tiny-flux-dev-q8_0.gguf")

    # diffusers on the GGUF's dequantised weights, the txt2img-cfg case
    src = inspect.getsource(single_file_utils.convert_flux_transformer_checkpoint_to_diffusers)
    scope = dict(vars(single_file_utils))
    exec(src.replace("inner_dim = 3072", f"inner_dim = {cfg.num_attention_heads * cfg.attention_head_dim}"), scope)
    tr.load_state_dict(scope["convert_flux_transformer_checkpoint_to_diffusers"](dict(deq)))
    case = next(c for c in json.loads((GOLD / "generate" / "cases-flux.json").read_text())
                if c["png"] == "tiny-flux-dev-txt2img-cfg.png")
    img = pipe(case["prompt"], negative_prompt=case["negative_prompt"], true_cfg_scale=case["true_cfg_scale"],
               width=case["width"], height=case["height"], num_inference_steps=case["steps"],
               guidance_scale=case["guidance"], max_sequence_length=case["max_sequence_length"],
               generator=torch.Generator().manual_seed(case["seed"]), output_type="np").images
    Image.fromarray((img[0] * 255).round().astype("uint8")).save(GOLD / "generate" / "tiny-flux-dev-q8_0.png")
    quantized = sum(1 for k in bfl if bfl[k].ndim == 2 and bfl[k].shape[1] % 32 == 0)
    print(f"{len(bfl)} tensors, {quantized} Q8_0")


if __name__ == "__main__":
    main()
