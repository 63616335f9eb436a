"""PyTorch's own bf16 error on the tiny SD 1.5 fixture: each network in bf16 (`.to(torch.bfloat16)`,
inputs too) against the same network in f32, as max |bf16 − f32| / max |f32| (the measure of
tests/models/common.rs). tests/models/bf16.rs holds imagen's bf16 route to these numbers.

    python tools/reference/bf16_error_tiny.py  # writes tests/fixtures/golden/bf16-torch-error.json
"""
import json

import diffusers
import torch
import transformers
from safetensors.torch import load_file

ROOT = "tests/fixtures/tiny-sd15"
g = load_file("tests/fixtures/golden/tiny-sd15.safetensors")


def rel(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


out = {}
with torch.no_grad():
    te = transformers.CLIPTextModel.from_pretrained(ROOT, subfolder="text_encoder").eval()
    ids = g["text_ids"].long()
    f = te(ids).last_hidden_state
    out["text_hidden"] = rel(te.to(torch.bfloat16)(ids).last_hidden_state, f)

    unet = diffusers.UNet2DConditionModel.from_pretrained(ROOT, subfolder="unet").eval()
    for case in ["unet", "unet_odd"]:
        x, t, c = g[f"{case}_latents"], g[f"{case}_timesteps"], g[f"{case}_context"]
        f = unet.float()(x, t, c).sample
        b = unet.to(torch.bfloat16)(x.bfloat16(), t, c.bfloat16()).sample
        out[f"{case}_out"] = rel(b, f)

    vae = diffusers.AutoencoderKL.from_pretrained(ROOT, subfolder="vae").eval()
    z = g["vae_dec_latents"]
    f = vae.decode(z).sample
    out["vae_dec_image"] = rel(vae.to(torch.bfloat16).decode(z.bfloat16()).sample, f)
    img = g["vae_image"]
    f = vae.float().encode(img).latent_dist.mean
    out["vae_enc_mean"] = rel(vae.to(torch.bfloat16).encode(img.bfloat16()).latent_dist.mean, f)

out["versions"] = {"torch": torch.__version__, "diffusers": diffusers.__version__}
with open("tests/fixtures/golden/bf16-torch-error.json", "w") as fh:
    json.dump(out, fh, indent=1)
print(json.dumps(out, indent=1))
