#!/usr/bin/env python3
"""Tiny FLUX.1-style pipelines in the real diffusers layout, plus goldens computed by diffusers'
FluxPipeline / FluxImg2ImgPipeline (run by hand after make_fixtures.py; CI needs no Python).

Writes tests/fixtures/tiny-flux-schnell/ (no guidance embedding, static shift) and
tests/fixtures/tiny-flux-dev/ (guidance embedding, dynamic shifting), each with CLIP-L-style and
T5-style text encoders (the T5 tokenizer is a small SentencePiece-Unigram trained here with
`tokenizers`, saved through transformers' T5TokenizerFast), a 16-channel VAE with `shift_factor`
and no quant convs; tests/fixtures/golden/tiny-flux.safetensors (component goldens) and
golden/generate/tiny-flux-*.png + cases-flux.json (end to end).
"""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxImg2ImgPipeline,
    FluxPipeline,
    FluxTransformer2DModel,
)
from PIL import Image
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import T5Config, T5EncoderModel, T5TokenizerFast

sys.path.insert(0, str(Path(__file__).parent))
from make_fixtures import FIX, GOLD, PROMPTS, add_text_model_prefix, make_tokenizer, randomize, text_encoder  # noqa: E402

OUT = GOLD / "generate"

CORPUS = [
    "a photograph of an astronaut riding a horse on the moon",
    "a cat sitting on the mat, photo, 4k, highly detailed",
    "blurry, low quality, watermark, text",
    "a painting of a lighthouse at sunset by the sea",
    "portrait of an old man with a beard, studio lighting",
    "a red car parked in front of a small house in the snow",
    "tom and jerry cartoon, colorful, sharp focus",
] * 4


def t5_tokenizer() -> T5TokenizerFast:
    """A small Unigram vocabulary (pad, eos, unk first, as T5's), saved as T5TokenizerFast."""
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=160, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", shrinking_factor=0.9
    )
    tok.train_from_iterator(CORPUS, trainer)
    vocab = json.loads(tok.to_str())["model"]["vocab"]
    assert [v[0] for v in vocab[:3]] == ["<pad>", "</s>", "<unk>"], vocab[:3]
    t = T5TokenizerFast(vocab=[tuple(v) for v in vocab], extra_ids=0, model_max_length=512)
    ids = t("a photograph of an astronaut").input_ids
    assert ids[-1] == 1 and 2 not in ids, ids
    return t


def t5_encoder() -> T5EncoderModel:
    cfg = T5Config(
        vocab_size=160, d_model=16, d_kv=4, d_ff=24, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=20,
        feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, is_encoder_decoder=False,
        dropout_rate=0.0, tie_word_embeddings=False,
    )
    return T5EncoderModel(cfg).eval()


def transformer(guidance: bool) -> FluxTransformer2DModel:
    return FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=8, guidance_embeds=guidance,
        axes_dims_rope=(4, 6, 6),
    ).eval()


def vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 16, 16, 16), layers_per_block=1,
        latent_channels=16, norm_num_groups=4, sample_size=64, scaling_factor=0.3611, shift_factor=0.1159,
        use_quant_conv=False, use_post_quant_conv=False, force_upcast=True,
    ).eval()


def make(name: str, guidance: bool, seed: int):
    torch.manual_seed(0)
    te, te2, tr, va = text_encoder("quick_gelu", 2), t5_encoder(), transformer(guidance), vae()
    for i, m in enumerate([te, te2, tr, va]):
        randomize(m, seed + i)
    if guidance:  # FLUX.1-dev's scheduler config
        sched = FlowMatchEulerDiscreteScheduler(
            shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
            max_image_seq_len=4096,
        )
    else:  # FLUX.1-schnell's
        sched = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    pipe = FluxPipeline(
        scheduler=sched, vae=va, text_encoder=te, tokenizer=make_tokenizer("<|endoftext|>"),
        text_encoder_2=te2, tokenizer_2=t5_tokenizer(), transformer=tr,
    )
    out = FIX / name
    if out.exists():
        shutil.rmtree(out)
    pipe.save_pretrained(out, safe_serialization=True)
    (out / "tokenizer" / "tokenizer.json").unlink(missing_ok=True)
    for f in ["vocab.json", "merges.txt"]:
        shutil.copy(pipe.tokenizer.vocab_dir / f, out / "tokenizer" / f)
    add_text_model_prefix(out)
    return pipe


def component_goldens(pipe, prefix: str, gold: dict, max_len: int):
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        ids = pipe.tokenizer_2(
            [PROMPTS[0], PROMPTS[2]], padding="max_length", max_length=max_len, truncation=True,
            return_tensors="pt",
        ).input_ids
        t5 = pipe.text_encoder_2(ids)[0]
        embeds, pooled, _ = pipe.encode_prompt(PROMPTS[0], prompt_2=None, max_sequence_length=max_len)
        # latents of a 64x48 image: 16 x 8 x 6 → packed 4 x 3 tokens of 64
        lat = torch.randn((2, 16, 8, 6), generator=g)
        packed = FluxPipeline._pack_latents(lat, 2, 16, 8, 6)
        img_ids = FluxPipeline._prepare_latent_image_ids(2, 4, 3, "cpu", torch.float32)
        txt_ids = torch.zeros(max_len, 3)
        ctx = torch.randn((2, max_len, 16), generator=g)
        pooled_in = torch.randn((2, 8), generator=g)
        t = torch.tensor([0.75, 0.3])
        kw = dict(guidance=torch.tensor([3.5, 2.0])) if pipe.transformer.config.guidance_embeds else {}
        out = pipe.transformer(hidden_states=packed, timestep=t, pooled_projections=pooled_in,
                               encoder_hidden_states=ctx, txt_ids=txt_ids, img_ids=img_ids, **kw).sample
        z = torch.randn((1, 16, 8, 8), generator=g)
        decoded = pipe.vae.decode(z).sample
    gold.update({
        f"{prefix}t5_ids": ids, f"{prefix}t5_out": t5, f"{prefix}prompt_embeds": embeds,
        f"{prefix}pooled": pooled, f"{prefix}latents": lat, f"{prefix}context": ctx,
        f"{prefix}pooled_in": pooled_in, f"{prefix}timesteps": t, f"{prefix}transformer_out": out,
        f"{prefix}vae_z": z, f"{prefix}vae_out": decoded,
    })
    if kw:
        gold[f"{prefix}guidance"] = kw["guidance"]


def save_png(img, png):
    Image.fromarray((img[0] * 255).round().astype("uint8")).save(OUT / png)


def main():
    gold, cases = {}, []
    schnell = make("tiny-flux-schnell", guidance=False, seed=400)
    dev = make("tiny-flux-dev", guidance=True, seed=500)
    component_goldens(schnell, "schnell_", gold, 256)
    component_goldens(dev, "dev_", gold, 512)
    save_file({k: v.contiguous() for k, v in gold.items()}, GOLD / "tiny-flux.safetensors")

    runs = [
        # (pipe, model, name, kwargs)
        (schnell, "tiny-flux-schnell", "txt2img", dict(width=64, height=64, steps=4, guidance=0.0, seq=256)),
        (dev, "tiny-flux-dev", "txt2img", dict(width=64, height=48, steps=5, guidance=3.5, seq=512)),
        (dev, "tiny-flux-dev", "txt2img-cfg",
         dict(width=48, height=64, steps=4, guidance=3.5, seq=64, negative_prompt="blurry, low quality",
              true_cfg=2.0)),
    ]
    for pipe, model, name, k in runs:
        gen = torch.Generator().manual_seed(42)
        extra = {}
        if "negative_prompt" in k:
            extra = dict(negative_prompt=k["negative_prompt"], true_cfg_scale=k["true_cfg"])
        img = pipe(PROMPTS[0], width=k["width"], height=k["height"], num_inference_steps=k["steps"],
                   guidance_scale=k["guidance"], max_sequence_length=k["seq"], generator=gen,
                   output_type="np", **extra).images
        png = f"{model}-{name}.png"
        save_png(img, png)
        cases.append(dict(model=model, kind="txt2img", seed=42, steps=k["steps"], guidance=k["guidance"],
                          width=k["width"], height=k["height"], prompt=PROMPTS[0], max_sequence_length=k["seq"],
                          negative_prompt=k.get("negative_prompt", ""), true_cfg_scale=k.get("true_cfg", 1.0),
                          png=png))
    for pipe, model, strength, steps in [(schnell, "tiny-flux-schnell", 0.6, 4), (dev, "tiny-flux-dev", 0.7, 6)]:
        i2i = FluxImg2ImgPipeline(**pipe.components)
        init = Image.open(OUT / "tiny-sd15-init.png")
        gen = torch.Generator().manual_seed(99)
        guidance = 3.5 if model.endswith("dev") else 0.0
        seq = 64
        img = i2i(PROMPTS[0], image=init, strength=strength, num_inference_steps=steps, guidance_scale=guidance,
                  width=64, height=64,
                  max_sequence_length=seq, generator=gen, output_type="np").images
        png = f"{model}-img2img.png"
        save_png(img, png)
        cases.append(dict(model=model, kind="img2img", seed=99, steps=steps, guidance=guidance, strength=strength,
                          width=64, height=64, prompt=PROMPTS[0], max_sequence_length=seq, negative_prompt="",
                          true_cfg_scale=1.0, init="tiny-sd15-init.png", png=png))
    (OUT / "cases-flux.json").write_text(json.dumps(cases, indent=1) + "\n")
    print("tiny-flux written;", len(cases), "cases")


if __name__ == "__main__":
    np.random.seed(0)
    main()
