#!/usr/bin/env python3
"""A tiny SDXL-style pipeline in the real diffusers layout, plus goldens computed by diffusers'
StableDiffusionXLPipeline (run by hand after make_fixtures.py; CI needs no Python).

Writes tests/fixtures/tiny-sdxl/ (two text encoders, the second with projection; `text_time`
added conditioning; per-block transformer depth; Euler, leading spacing as SDXL ships), and
tests/fixtures/golden/tiny-sdxl.safetensors + golden/generate/tiny-sdxl-*.png (+ cases-sdxl.json).
"""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

sys.path.insert(0, str(Path(__file__).parent))
from make_fixtures import FIX, GOLD, PROMPTS, add_text_model_prefix, make_tokenizer, randomize  # noqa: E402

OUT = GOLD / "generate"


def clip_config(hidden_act, layers, hidden=8):
    return CLIPTextConfig(
        vocab_size=49408, hidden_size=hidden, intermediate_size=3 * hidden, num_hidden_layers=layers,
        num_attention_heads=2, max_position_embeddings=77, hidden_act=hidden_act, layer_norm_eps=1e-5,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=1, projection_dim=12,
    )


def main():
    torch.manual_seed(0)
    tok1, tok2 = make_tokenizer("<|endoftext|>"), make_tokenizer("!")
    te1 = CLIPTextModel(clip_config("quick_gelu", 3)).eval()
    te2 = CLIPTextModelWithProjection(clip_config("gelu", 3)).eval()
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16, 16),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2),
        cross_attention_dim=16,  # 8 (te1) + 8 (te2)
        attention_head_dim=(2, 2, 4),
        norm_num_groups=4,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=4,
        projection_class_embeddings_input_dim=6 * 4 + 12,  # time ids + te2's projection
    ).eval()
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 16, 16, 16), layers_per_block=2,
        latent_channels=4, norm_num_groups=4, sample_size=64, scaling_factor=0.13025, force_upcast=True,
    ).eval()
    for i, m in enumerate([te1, te2, unet, vae]):
        randomize(m, 300 + i)
    sched = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        steps_offset=1, timestep_spacing="leading", prediction_type="epsilon", interpolation_type="linear",
        use_karras_sigmas=False,
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tok1, tokenizer_2=tok2, unet=unet,
        scheduler=sched, force_zeros_for_empty_prompt=True,
    )
    out = FIX / "tiny-sdxl"
    if out.exists():
        shutil.rmtree(out)
    pipe.save_pretrained(out, safe_serialization=True)
    for sub, tok in [("tokenizer", tok1), ("tokenizer_2", tok2)]:
        (out / sub / "tokenizer.json").unlink(missing_ok=True)
        for f in ["vocab.json", "merges.txt"]:
            shutil.copy(tok.vocab_dir / f, out / sub / f)
    add_text_model_prefix(out)
    add_text_model_prefix(out, "text_encoder_2")

    # ---- component goldens ----
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        embeds, neg, pooled, neg_pooled = pipe.encode_prompt(
            PROMPTS[0], device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True,
            negative_prompt="blurry",
        )
        lat = torch.randn((2, 4, 8, 12), generator=g)
        t = torch.tensor([500.0, 500.0])
        ctx = torch.cat([neg, embeds])
        text = torch.cat([neg_pooled, pooled])
        time_ids = torch.tensor([[64.0, 96.0, 0.0, 0.0, 64.0, 96.0]] * 2)
        unet_out = unet(lat, t, encoder_hidden_states=ctx,
                        added_cond_kwargs={"text_embeds": text, "time_ids": time_ids}).sample
    gold = {
        "prompt_embeds": embeds, "negative_embeds": neg, "pooled": pooled, "negative_pooled": neg_pooled,
        "unet_latents": lat, "unet_timesteps": t, "unet_context": ctx, "unet_text_embeds": text,
        "unet_time_ids": time_ids, "unet_out": unet_out,
    }
    save_file({k: v.contiguous() for k, v in gold.items()}, GOLD / "tiny-sdxl.safetensors")

    # ---- end to end ----
    cases = []
    for name, neg_prompt, w, h in [("txt2img", None, 64, 64), ("txt2img-neg", "blurry, low quality", 80, 48)]:
        gen = torch.Generator().manual_seed(42)
        img = pipe(PROMPTS[0], negative_prompt=neg_prompt, width=w, height=h, num_inference_steps=5,
                   guidance_scale=5.0, generator=gen, output_type="np").images
        png = f"tiny-sdxl-{name}.png"
        Image.fromarray((img[0] * 255).round().astype("uint8")).save(OUT / png)
        cases.append(dict(model="tiny-sdxl", kind="txt2img", scheduler="euler", seed=42, steps=5, guidance=5.0,
                          width=w, height=h, prompt=PROMPTS[0], negative_prompt=neg_prompt or "", png=png))
    i2i = StableDiffusionXLImg2ImgPipeline(**pipe.components, requires_aesthetics_score=False)
    init = Image.open(OUT / "tiny-sd15-init.png")
    gen = torch.Generator().manual_seed(99)
    img = i2i(PROMPTS[0], image=init, strength=0.6, num_inference_steps=5, guidance_scale=5.0,
              generator=gen, output_type="np").images
    Image.fromarray((img[0] * 255).round().astype("uint8")).save(OUT / "tiny-sdxl-img2img.png")
    cases.append(dict(model="tiny-sdxl", kind="img2img", scheduler="euler", seed=99, steps=5, guidance=5.0,
                      strength=0.6, width=64, height=64, prompt=PROMPTS[0], negative_prompt="",
                      init="tiny-sd15-init.png", png="tiny-sdxl-img2img.png"))
    (OUT / "cases-sdxl.json").write_text(json.dumps(cases, indent=1) + "\n")
    print("tiny-sdxl written;", len(cases), "cases")


if __name__ == "__main__":
    main()
