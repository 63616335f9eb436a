#!/usr/bin/env python3
"""fp8 and GGUF variants of the tiny diffusion transformers, as users download them (run by hand
after make_flux_single_file.py and make_sd3_single_file.py):

- tiny-flux-dev-fp8.safetensors: Black Forest Labs' layout with every 2-D weight in
  float8_e4m3fn and the rest in bf16 (the `flux1-dev-fp8` files);
- tiny-sd35-fp8-scaled.safetensors: the SD3.5 MMDiT under `model.diffusion_model.` in ComfyUI's
  "scaled fp8" form (`sd3.5_large_fp8_scaled`): each 2-D weight stored as float8_e4m3fn of
  weight / scale with a per-tensor `scale_weight` (f32) beside it, and the `scaled_fp8` marker;
- tiny-sd35-q8_0.gguf: the MMDiT in its original names as city96's SD3.5 GGUFs (Q8_0 where
  rows split into 32-blocks, f32 otherwise).

Each golden is diffusers' pipeline with the transformer's weights replaced by what the file
dequantises to (fp8 → f32 by PyTorch's cast, times the scale; Q8_0 by `gguf.quants`):
golden/generate/tiny-flux-dev-fp8.png, tiny-sd35-fp8-scaled.png, tiny-sd35-q8_0.png.
"""

import inspect
import json
import sys
from pathlib import Path

import torch
from diffusers import FluxPipeline, StableDiffusion3Pipeline
from diffusers.loaders import single_file_utils
from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers
from PIL import Image
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
from make_fixtures import FIX, GOLD  # noqa: E402
from make_flux_single_file import to_bfl, write_gguf  # noqa: E402
from make_sd3_single_file import to_sd3  # noqa: E402

OUT = FIX / "single-file"
FP8 = torch.float8_e4m3fn


def case(file, png):
    return next(c for c in json.loads((GOLD / "generate" / file).read_text()) if c["png"] == png)


def run(pipe, c, png, **extra):
    img = pipe(c["prompt"], negative_prompt=c["negative_prompt"] or None, width=c["width"], height=c["height"],
               num_inference_steps=c["steps"], guidance_scale=c["guidance"],
               max_sequence_length=c["max_sequence_length"], generator=torch.Generator().manual_seed(c["seed"]),
               output_type="np", **extra).images
    Image.fromarray((img[0] * 255).round().astype("uint8")).save(GOLD / "generate" / png)


def flux():
    pipe = FluxPipeline.from_pretrained(FIX / "tiny-flux-dev")
    tr = pipe.transformer
    cfg = tr.config
    bfl = to_bfl({k: v.detach().clone() for k, v in tr.state_dict().items()}, cfg.num_layers,
                 cfg.num_single_layers)
    stored = {k: (v.to(FP8) if v.ndim == 2 else v.to(torch.bfloat16)).contiguous() for k, v in bfl.items()}
    save_file(stored, OUT / "tiny-flux-dev-fp8.safetensors")
    src = inspect.getsource(single_file_utils.convert_flux_transformer_checkpoint_to_diffusers)
    scope = dict(vars(single_file_utils))
    exec(src.replace("inner_dim = 3072", f"inner_dim = {cfg.num_attention_heads * cfg.attention_head_dim}"), scope)
    deq = {k: v.float() for k, v in stored.items()}
    tr.load_state_dict(scope["convert_flux_transformer_checkpoint_to_diffusers"](deq))
    c = case("cases-flux.json", "tiny-flux-dev-txt2img-cfg.png")
    run(pipe, c, "tiny-flux-dev-fp8.png", true_cfg_scale=c["true_cfg_scale"])


def sd3():
    pipe = StableDiffusion3Pipeline.from_pretrained(FIX / "tiny-sd35")
    tr = pipe.transformer
    cfg = tr.config
    original = tr.state_dict()
    mmdit = to_sd3({k: v.detach().clone() for k, v in original.items()}, cfg.num_layers,
                   list(cfg.dual_attention_layers))
    c = case("cases-sd3.json", "tiny-sd35-txt2img.png")

    stored, deq = {"model.diffusion_model.scaled_fp8": torch.empty(0, dtype=FP8)}, {}
    for k, v in mmdit.items():
        if v.ndim == 2 and k.endswith(".weight"):
            scale = (v.abs().max() / 448.0).float()
            q = (v / scale).to(FP8)
            stored["model.diffusion_model." + k] = q
            stored["model.diffusion_model." + k[: -len("weight")] + "scale_weight"] = scale.reshape(())
            deq[k] = q.float() * scale
        else:
            stored["model.diffusion_model." + k] = v.to(torch.bfloat16)
            deq[k] = v.to(torch.bfloat16).float()
    save_file({k: v.contiguous() for k, v in stored.items()}, OUT / "tiny-sd35-fp8-scaled.safetensors")
    tr.load_state_dict(convert_sd3_transformer_checkpoint_to_diffusers(deq))
    run(pipe, c, "tiny-sd35-fp8-scaled.png")

    deq = write_gguf(mmdit, OUT / "tiny-sd35-q8_0.gguf", arch="sd3")
    tr.load_state_dict(convert_sd3_transformer_checkpoint_to_diffusers(dict(deq)))
    run(pipe, c, "tiny-sd35-q8_0.png")


if __name__ == "__main__":
    flux()
    sd3()
    print("written")
