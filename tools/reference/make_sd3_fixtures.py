#!/usr/bin/env python3
"""A tiny Stable Diffusion 3.5-style pipeline in the real diffusers layout, plus goldens computed
by diffusers' StableDiffusion3Pipeline / StableDiffusion3Img2ImgPipeline (run by hand after
make_fixtures.py and make_flux_fixtures.py; CI needs no Python).

Writes tests/fixtures/tiny-sd35/: CLIP-L- and CLIP-G-style encoders with projection, a T5
encoder (make_flux_fixtures' tokenizer), SD3Transformer2DModel with SD3.5's RMS q/k norms and a
dual-attention first layer (SD3.5 Medium's), the last block `context_pre_only`, a 16-channel VAE
with `shift_factor`, FlowMatchEulerDiscreteScheduler with shift 3; golden/tiny-sd35.safetensors
(component goldens) and golden/generate/tiny-sd35-*.png + cases-sd3.json.
"""

import json
import shutil
import sys
from pathlib import Path

import torch
from diffusers import (
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Img2ImgPipeline,
    StableDiffusion3Pipeline,
)
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModelWithProjection

sys.path.insert(0, str(Path(__file__).parent))
from make_fixtures import FIX, GOLD, PROMPTS, add_text_model_prefix, make_tokenizer, randomize  # noqa: E402
from make_flux_fixtures import t5_encoder, t5_tokenizer, vae  # noqa: E402

OUT = GOLD / "generate"


def clip(hidden, act, layers=2):
    return CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=49408, hidden_size=hidden, intermediate_size=3 * hidden, num_hidden_layers=layers,
        num_attention_heads=2, max_position_embeddings=77, hidden_act=act, layer_norm_eps=1e-5,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=1, projection_dim=hidden,
    )).eval()


def main():
    torch.manual_seed(0)
    te, te2, te3 = clip(8, "quick_gelu"), clip(8, "gelu"), t5_encoder()
    tr = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=16, num_layers=3, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=16, out_channels=16,
        pos_embed_max_size=12, dual_attention_layers=(0,), qk_norm="rms_norm",
    ).eval()
    va = vae()
    for i, m in enumerate([te, te2, te3, tr, va]):
        randomize(m, 600 + i)
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    pipe = StableDiffusion3Pipeline(
        transformer=tr, scheduler=sched, vae=va, text_encoder=te, tokenizer=make_tokenizer("<|endoftext|>"),
        text_encoder_2=te2, tokenizer_2=make_tokenizer("!"), text_encoder_3=te3, tokenizer_3=t5_tokenizer(),
    )
    out = FIX / "tiny-sd35"
    if out.exists():
        shutil.rmtree(out)
    pipe.save_pretrained(out, safe_serialization=True)
    for sub, tok in [("tokenizer", pipe.tokenizer), ("tokenizer_2", pipe.tokenizer_2)]:
        (out / sub / "tokenizer.json").unlink(missing_ok=True)
        for f in ["vocab.json", "merges.txt"]:
            shutil.copy(tok.vocab_dir / f, out / sub / f)
    add_text_model_prefix(out)
    add_text_model_prefix(out, "text_encoder_2")

    # ---- component goldens ----
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        embeds, neg, pooled, neg_pooled = pipe.encode_prompt(
            PROMPTS[0], None, None, do_classifier_free_guidance=True, negative_prompt="blurry",
            max_sequence_length=64,
        )
        lat = torch.randn((2, 16, 8, 6), generator=g)
        ctx = torch.randn((2, 77 + 64, 16), generator=g)
        pooled_in = torch.randn((2, 16), generator=g)
        t = torch.tensor([750.0, 300.0])
        out_t = tr(hidden_states=lat, encoder_hidden_states=ctx, pooled_projections=pooled_in, timestep=t).sample
    gold = {
        "prompt_embeds": embeds, "negative_embeds": neg, "pooled": pooled, "negative_pooled": neg_pooled,
        "latents": lat, "context": ctx, "pooled_in": pooled_in, "timesteps": t, "transformer_out": out_t,
    }
    save_file({k: v.contiguous() for k, v in gold.items()}, GOLD / "tiny-sd35.safetensors")

    # ---- end to end ----
    cases = []
    for name, w, h, guidance, neg_prompt in [("txt2img", 64, 64, 4.5, "blurry, low quality"),
                                             ("txt2img-nocfg", 48, 64, 1.0, "")]:
        img = pipe(PROMPTS[0], negative_prompt=neg_prompt or None, width=w, height=h, num_inference_steps=5,
                   guidance_scale=guidance, max_sequence_length=64, generator=torch.Generator().manual_seed(42),
                   output_type="np").images
        png = f"tiny-sd35-{name}.png"
        Image.fromarray((img[0] * 255).round().astype("uint8")).save(OUT / png)
        cases.append(dict(model="tiny-sd35", kind="txt2img", seed=42, steps=5, guidance=guidance, width=w, height=h,
                          prompt=PROMPTS[0], negative_prompt=neg_prompt, max_sequence_length=64, png=png))
    i2i = StableDiffusion3Img2ImgPipeline(**pipe.components)
    init = Image.open(OUT / "tiny-sd15-init.png")
    img = i2i(PROMPTS[0], image=init, strength=0.7, num_inference_steps=6, guidance_scale=4.5,
              max_sequence_length=64, generator=torch.Generator().manual_seed(99), output_type="np").images
    Image.fromarray((img[0] * 255).round().astype("uint8")).save(OUT / "tiny-sd35-img2img.png")
    cases.append(dict(model="tiny-sd35", kind="img2img", seed=99, steps=6, guidance=4.5, strength=0.7, width=64,
                      height=64, prompt=PROMPTS[0], negative_prompt="", max_sequence_length=64,
                      init="tiny-sd15-init.png", png="tiny-sd35-img2img.png"))
    (OUT / "cases-sd3.json").write_text(json.dumps(cases, indent=1) + "\n")
    print("tiny-sd35 written;", len(cases), "cases")


if __name__ == "__main__":
    main()
