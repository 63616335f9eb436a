#!/usr/bin/env python3
"""tests/fixtures/single-file/tiny-sd35.safetensors: the tiny SD3.5 pipeline as Stability AI
ships SD3/3.5 single files (`sd3.5_medium.safetensors`, `sd3_medium_incl_clips_t5xxlfp8.safetensors`):
the MMDiT under `model.diffusion_model.` in its original names (`joint_blocks.N.x_block.attn.qkv`,
fused q/k/v, `ln_q`/`ln_k`, `adaLN_modulation.1`, the last context block's and the final layer's
(shift, scale) order), the VAE under `first_stage_model.` (LDM names), the text encoders under
`text_encoders.{clip_l,clip_g,t5xxl}.transformer.` (Hugging Face names). Run by hand after
make_sd3_fixtures.py.

The transformer's names are checked by converting back with diffusers' own
`convert_sd3_transformer_checkpoint_to_diffusers` and comparing every tensor.
"""

import sys
from pathlib import Path

import torch
from diffusers import StableDiffusion3Pipeline
from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
from make_fixtures import FIX  # noqa: E402
from make_single_file_fixture import convert_vae, hf_clip  # noqa: E402


def to_sd3(sd: dict, layers: int, dual: list) -> dict:
    out = {}

    def swap(t):
        a, b = t.chunk(2, dim=0)
        return torch.cat([b, a], dim=0)

    for p in ["weight", "bias"]:
        out[f"x_embedder.proj.{p}"] = sd[f"pos_embed.proj.{p}"]
        out[f"t_embedder.mlp.0.{p}"] = sd[f"time_text_embed.timestep_embedder.linear_1.{p}"]
        out[f"t_embedder.mlp.2.{p}"] = sd[f"time_text_embed.timestep_embedder.linear_2.{p}"]
        out[f"y_embedder.mlp.0.{p}"] = sd[f"time_text_embed.text_embedder.linear_1.{p}"]
        out[f"y_embedder.mlp.2.{p}"] = sd[f"time_text_embed.text_embedder.linear_2.{p}"]
        out[f"context_embedder.{p}"] = sd[f"context_embedder.{p}"]
        out[f"final_layer.linear.{p}"] = sd[f"proj_out.{p}"]
        out[f"final_layer.adaLN_modulation.1.{p}"] = swap(sd[f"norm_out.linear.{p}"])
    out["pos_embed"] = sd["pos_embed.pos_embed"]
    for i in range(layers):
        t, x, c = f"transformer_blocks.{i}.", f"joint_blocks.{i}.x_block.", f"joint_blocks.{i}.context_block."
        last = i == layers - 1
        for p in ["weight", "bias"]:
            out[f"{x}attn.qkv.{p}"] = torch.cat([sd[f"{t}attn.to_{q}.{p}"] for q in "qkv"])
            out[f"{c}attn.qkv.{p}"] = torch.cat([sd[f"{t}attn.add_{q}_proj.{p}"] for q in "qkv"])
            out[f"{x}attn.proj.{p}"] = sd[f"{t}attn.to_out.0.{p}"]
            out[f"{x}adaLN_modulation.1.{p}"] = sd[f"{t}norm1.linear.{p}"]
            ctx_mod = sd[f"{t}norm1_context.linear.{p}"]
            out[f"{c}adaLN_modulation.1.{p}"] = swap(ctx_mod) if last else ctx_mod
            out[f"{x}mlp.fc1.{p}"] = sd[f"{t}ff.net.0.proj.{p}"]
            out[f"{x}mlp.fc2.{p}"] = sd[f"{t}ff.net.2.{p}"]
            if not last:
                out[f"{c}attn.proj.{p}"] = sd[f"{t}attn.to_add_out.{p}"]
                out[f"{c}mlp.fc1.{p}"] = sd[f"{t}ff_context.net.0.proj.{p}"]
                out[f"{c}mlp.fc2.{p}"] = sd[f"{t}ff_context.net.2.{p}"]
            if i in dual:
                out[f"{x}attn2.qkv.{p}"] = torch.cat([sd[f"{t}attn2.to_{q}.{p}"] for q in "qkv"])
                out[f"{x}attn2.proj.{p}"] = sd[f"{t}attn2.to_out.0.{p}"]
        for ours, theirs in [("attn.norm_q", f"{x}attn.ln_q"), ("attn.norm_k", f"{x}attn.ln_k"),
                             ("attn.norm_added_q", f"{c}attn.ln_q"), ("attn.norm_added_k", f"{c}attn.ln_k")]:
            out[f"{theirs}.weight"] = sd[f"{t}{ours}.weight"]
        if i in dual:
            out[f"{x}attn2.ln_q.weight"] = sd[f"{t}attn2.norm_q.weight"]
            out[f"{x}attn2.ln_k.weight"] = sd[f"{t}attn2.norm_k.weight"]
    return out


def main():
    pipe = StableDiffusion3Pipeline.from_pretrained(FIX / "tiny-sd35")
    cfg = pipe.transformer.config
    sd = {k: v.detach().clone() for k, v in pipe.transformer.state_dict().items()}
    mmdit = to_sd3(sd, cfg.num_layers, list(cfg.dual_attention_layers))
    back = convert_sd3_transformer_checkpoint_to_diffusers(dict(mmdit))
    assert set(back) == set(sd), set(back) ^ set(sd)
    for k, v in sd.items():
        assert torch.equal(back[k], v), k
    full = {"model.diffusion_model." + k: v for k, v in mmdit.items()}
    full.update(convert_vae(pipe.vae.state_dict(), pipe.vae.config))
    full.update(hf_clip(pipe.text_encoder.state_dict(), "text_encoders.clip_l.transformer."))
    full.update(hf_clip(pipe.text_encoder_2.state_dict(), "text_encoders.clip_g.transformer."))
    # text_projection sits beside text_model in Hugging Face's CLIPTextModelWithProjection
    for enc in ["clip_l", "clip_g"]:
        k = f"text_encoders.{enc}.transformer.text_model.text_projection.weight"
        full[f"text_encoders.{enc}.transformer.text_projection.weight"] = full.pop(k)
    full.update({"text_encoders.t5xxl.transformer." + k: v for k, v in pipe.text_encoder_3.state_dict().items()})
    save_file({k: v.contiguous().clone() for k, v in full.items()}, FIX / "single-file" / "tiny-sd35.safetensors")
    print(len(full), "tensors")


if __name__ == "__main__":
    main()
