#!/usr/bin/env python3
"""tests/fixtures/single-file/tiny-{sd15,sd2,sdxl}.safetensors: the tiny fixtures' weights in the
original single-file layouts, as A1111/CivitAI checkpoints are shipped: `model.diffusion_model.*`,
`first_stage_model.*`, and the text encoders as `cond_stage_model.transformer.text_model.*`
(SD 1.x, Hugging Face CLIP), `cond_stage_model.model.*` (SD 2.x, OpenCLIP: fused q/k/v,
`text_projection` as x @ P), `conditioner.embedders.{0,1}.*` (SDXL: CLIP-L + OpenCLIP-bigG).

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
        "add_embedding.linear_1.": "label_emb.0.0.", "add_embedding.linear_2.": "label_emb.0.2.",
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


def hf_clip(sd, prefix):
    return {prefix + (k if k.startswith("text_model.") else "text_model." + k): v for k, v in sd.items()}


def open_clip(sd, prefix):
    """Hugging Face CLIP(WithProjection) -> OpenCLIP text tower names."""
    sd = {k.removeprefix("text_model."): v for k, v in sd.items()}
    out = {}
    layers = {int(k.split(".")[2]) for k in sd if k.startswith("encoder.layers.")}
    for i in sorted(layers):
        hf, oc = f"encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        for kind in ["weight", "bias"]:
            out[f"{oc}attn.in_proj_{kind}"] = torch.cat(
                [sd[f"{hf}self_attn.{p}_proj.{kind}"] for p in "qkv"], 0
            )
            for a, b in [("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"),
                         ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")]:
                out[f"{oc}{b}.{kind}"] = sd[f"{hf}{a}.{kind}"]
    out[prefix + "token_embedding.weight"] = sd["embeddings.token_embedding.weight"]
    out[prefix + "positional_embedding"] = sd["embeddings.position_embedding.weight"]
    out[prefix + "ln_final.weight"] = sd["final_layer_norm.weight"]
    out[prefix + "ln_final.bias"] = sd["final_layer_norm.bias"]
    if "text_projection.weight" in sd:
        out[prefix + "text_projection"] = sd["text_projection.weight"].T
    return out


def convert(name, pipe_cls):
    pipe = pipe_cls.from_pretrained(FIX / name, **({} if name == "tiny-sdxl" else
                                                   dict(safety_checker=None, requires_safety_checker=False)))
    full = {}
    full.update(convert_unet(pipe.unet.state_dict(), pipe.unet.config))
    full.update(convert_vae(pipe.vae.state_dict(), pipe.vae.config))
    te = pipe.text_encoder.state_dict()
    if name == "tiny-sd15":
        full.update(hf_clip(te, "cond_stage_model.transformer."))
    elif name == "tiny-sd2":
        full.update(open_clip(te, "cond_stage_model.model."))
    else:
        full.update(hf_clip(te, "conditioner.embedders.0.transformer."))
        full.update(open_clip(pipe.text_encoder_2.state_dict(), "conditioner.embedders.1.model."))
    out = FIX / "single-file" / f"{name}.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in full.items()}, out)
    return pipe, out


def main():
    from diffusers import StableDiffusionXLPipeline

    for name, cls in [("tiny-sd15", StableDiffusionPipeline), ("tiny-sd2", StableDiffusionPipeline),
                      ("tiny-sdxl", StableDiffusionXLPipeline)]:
        pipe, out = convert(name, cls)
        # diffusers' own single-file loader must read it back to the same weights.
        extra = {} if name == "tiny-sdxl" else dict(safety_checker=None, requires_safety_checker=False)
        back = cls.from_single_file(str(out), config=str(FIX / name), local_files_only=True, **extra)
        comps = ["unet", "vae", "text_encoder"] + (["text_encoder_2"] if name == "tiny-sdxl" else [])
        for comp in comps:
            a, b = getattr(pipe, comp).state_dict(), getattr(back, comp).state_dict()
            if any(t.is_meta for t in b.values()):
                # diffusers 0.42 + transformers 5 leave SDXL's CLIPTextModelWithProjection unloaded
                # (meta tensors); the same OpenCLIP conversion is verified on tiny-sd2 above.
                print(f"  {name} {comp}: not loaded by diffusers here, skipped")
                continue
            for k in a:
                kb = k if k in b else k.removeprefix("text_model.")
                assert kb in b, (name, comp, k)
                assert torch.equal(a[k].reshape(b[kb].shape), b[kb]), (name, comp, k)
        print(name, "single file written and verified with diffusers.from_single_file")

    # A checkpoint whose sidecar says v-prediction: diffusers with the scheduler's prediction_type
    # overridden (what `"prediction_type": "v_prediction"` / `--prediction-type` must reproduce).
    import json

    import numpy as np
    from diffusers import EulerDiscreteScheduler
    from PIL import Image

    pipe = StableDiffusionPipeline.from_pretrained(FIX / "tiny-sd15", safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, prediction_type="v_prediction")
    g = torch.Generator().manual_seed(4)
    img = pipe("a photograph of an astronaut riding a horse", num_inference_steps=4, width=64, height=64,
               generator=g, output_type="np").images
    out = FIX / "golden" / "generate"
    Image.fromarray((img[0] * 255).round().astype(np.uint8)).save(out / "tiny-sd15-vpred-override.png")
    case = dict(model="tiny-sd15", kind="txt2img", scheduler="euler", seed=4, steps=4, guidance=7.5, width=64,
                height=64, prompt="a photograph of an astronaut riding a horse", negative_prompt="",
                prediction_type="v_prediction", png="tiny-sd15-vpred-override.png")
    (out / "cases-override.json").write_text(json.dumps([case], indent=1) + "\n")


if __name__ == "__main__":
    main()
