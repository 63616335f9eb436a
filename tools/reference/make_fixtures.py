#!/usr/bin/env python3
"""Build tiny random-weight Stable Diffusion pipelines in the real diffusers layout and dump
golden tensors computed by diffusers/transformers themselves.

Run by hand, never by CI (the outputs are committed under tests/fixtures/):

    python -m venv .venv && .venv/bin/pip install -r tools/reference/requirements.txt
    .venv/bin/python tools/reference/make_fixtures.py

What it writes (all small):
    tests/fixtures/tiny-sd15/        SD 1.5-style pipeline folder (quick_gelu CLIP, conv proj, PNDM, epsilon)
    tests/fixtures/tiny-sd15-fp16/   the same weights saved as the `fp16` variant (*.fp16.safetensors)
    tests/fixtures/tiny-sd2/         SD 2-style folder (gelu CLIP, linear proj, per-block heads, DDIM v-pred)
    tests/fixtures/golden/tokens.json               token ids for a set of prompts, per tokenizer
    tests/fixtures/golden/<name>.safetensors        inputs and outputs of each component
The CLIP vocabulary is the real one, built from open_clip's bpe_simple_vocab_16e6.txt.gz.
"""

import gzip
import json
import os
import shutil
import tempfile
from pathlib import Path

import open_clip
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures"
GOLD = FIX / "golden"

PROMPTS = [
    "a photograph of an astronaut riding a horse",
    "",
    "A Cat, sitting; on the MAT!!  (4k)   photo's   'quoted' don't",
    "café déjà vu — naïve ☃ 東京 emoji 🐱",
    "tom & jerry <html> 1234567 x2.5",
    " ".join(["a very long prompt that keeps going"] * 20),
]


def bytes_to_unicode():
    """The GPT-2/CLIP byte <-> unicode table (same as open_clip and transformers)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def write_clip_vocab(dst: Path):
    """vocab.json + merges.txt exactly as openai/clip-vit-large-patch14 ships them."""
    bpe_path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    merges = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = merges[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408, len(vocab)
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    with open(dst / "merges.txt", "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for m in merges:
            f.write(" ".join(m) + "\n")


def make_tokenizer(pad_token: str) -> CLIPTokenizer:
    tmp = Path(tempfile.mkdtemp())
    write_clip_vocab(tmp)
    tok = CLIPTokenizer(str(tmp / "vocab.json"), str(tmp / "merges.txt"), pad_token=pad_token, model_max_length=77)
    ids = tok("a photograph of an astronaut riding a horse").input_ids
    assert ids == [49406, 320, 8853, 539, 550, 18376, 6765, 320, 4558, 49407], ids
    tok.vocab_dir = tmp
    return tok


def text_encoder(hidden_act: str, layers: int) -> CLIPTextModel:
    cfg = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=8,  # the 49408-row embedding dominates the fixture size
        intermediate_size=24,
        num_hidden_layers=layers,
        num_attention_heads=2,
        max_position_embeddings=77,
        hidden_act=hidden_act,
        layer_norm_eps=1e-5,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=1,
        projection_dim=8,
    )
    return CLIPTextModel(cfg).eval()


def unet(linear_proj: bool, heads) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16, 16),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8,
        attention_head_dim=heads,
        norm_num_groups=4,
        use_linear_projection=linear_proj,
        upcast_attention=linear_proj,  # SD 2.1 sets it; a no-op in f32
    ).eval()


def vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
        scaling_factor=0.18215,
    ).eval()


def randomize(module: torch.nn.Module, seed: int):
    """diffusers zero-inits some layers (conv_out, proj_out); give every tensor real values so the
    golden tests exercise every weight."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("weight") and p.ndim == 1:  # norm scales: around 1
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p[0].numel() if p.ndim > 1 else p.numel()
                p.copy_(torch.randn(p.shape, generator=g) / max(fan_in, 1) ** 0.5)


def add_text_model_prefix(folder: Path, component: str = "text_encoder"):
    """transformers 5.x saves CLIPTextModel without `text_model.`; real SD checkpoints have it.
    (`text_projection.*` of CLIPTextModelWithProjection stays at the top level.)"""
    for f in (folder / component).glob("*.safetensors"):
        sd = load_file(f)
        keep = lambda k: k.startswith("text_model.") or k.startswith("text_projection.")  # noqa: E731
        sd = {(k if keep(k) else "text_model." + k): v for k, v in sd.items()}
        save_file(sd, f, metadata={"format": "pt"})


def save_pipeline(name, te, tok, un, va, sched, variant=None, dtype=None):
    pipe = StableDiffusionPipeline(
        vae=va, text_encoder=te, tokenizer=tok, unet=un, scheduler=sched,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    out = FIX / name
    if out.exists():
        shutil.rmtree(out)
    if dtype is not None:
        pipe = pipe.to(dtype)
    pipe.save_pretrained(out, safe_serialization=True, variant=variant)
    add_text_model_prefix(out)
    # transformers 5 writes tokenizer.json only; real SD folders ship vocab.json + merges.txt.
    (out / "tokenizer" / "tokenizer.json").unlink(missing_ok=True)
    for f in ["vocab.json", "merges.txt"]:
        shutil.copy(tok.vocab_dir / f, out / "tokenizer" / f)
    return out


def clip_embeds(te, ids, clip_skip=None):
    """Exactly StableDiffusionPipeline.encode_prompt."""
    with torch.no_grad():
        if clip_skip is None:
            return te(ids)[0]
        out = te(ids, output_hidden_states=True)
        h = out.hidden_states[-(clip_skip + 1)]
        # transformers 5 has no `.text_model` on CLIPTextModel (diffusers 0.42 still calls it).
        return getattr(te, "text_model", te).final_layer_norm(h)


def goldens(name, te, tok, un, va, seed):
    g = torch.Generator().manual_seed(seed)
    ids = tok(
        [PROMPTS[0], ""], padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    out = {"text_ids": ids.to(torch.int64)}
    out["text_hidden"] = clip_embeds(te, ids)
    out["text_hidden_skip1"] = clip_embeds(te, ids, clip_skip=1)
    out["text_pooled"] = te(ids)[1].detach()

    with torch.no_grad():
        # UNet: CFG-style batch of 2 with the real text embeddings, non-square latents.
        lat = torch.randn((2, 4, 8, 12), generator=g)
        t = torch.tensor([981.0, 981.0])
        ctx = out["text_hidden"]
        out["unet_latents"], out["unet_timesteps"], out["unet_context"] = lat, t, ctx.clone()
        out["unet_out"] = un(lat, t, encoder_hidden_states=ctx).sample
        # Odd latent sizes exercise the upsample-to-skip-size path.
        lat2 = torch.randn((1, 4, 9, 7), generator=g)
        t2 = torch.tensor([1.0])
        ctx2 = torch.randn((1, 77, 8), generator=g)
        out["unet_odd_latents"], out["unet_odd_timesteps"], out["unet_odd_context"] = lat2, t2, ctx2
        out["unet_odd_out"] = un(lat2, t2, encoder_hidden_states=ctx2).sample

        img = torch.rand((1, 3, 64, 48), generator=g) * 2 - 1
        dist = va.encode(img).latent_dist
        out["vae_image"], out["vae_enc_mean"], out["vae_enc_std"] = img, dist.mean, dist.std
        z = torch.randn((1, 4, 8, 6), generator=g)
        out["vae_dec_latents"] = z
        out["vae_dec_image"] = va.decode(z).sample

    GOLD.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()}, GOLD / f"{name}.safetensors")


def main():
    torch.manual_seed(0)
    FIX.mkdir(parents=True, exist_ok=True)

    # ---- SD 1.5 style ----
    tok15 = make_tokenizer("<|endoftext|>")
    te15, un15, va15 = text_encoder("quick_gelu", 4), unet(False, 2), vae()
    for i, m in enumerate([te15, un15, va15]):
        randomize(m, 100 + i)
    pndm = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, prediction_type="epsilon",
    )
    save_pipeline("tiny-sd15", te15, tok15, un15, va15, pndm)
    goldens("tiny-sd15", te15, tok15, un15, va15, seed=1)

    # ---- the same pipeline as fp16 variant files; goldens from the fp16 weights upcast to f32 ----
    save_pipeline("tiny-sd15-fp16", te15, tok15, un15, va15, pndm, variant="fp16", dtype=torch.float16)
    rt = lambda m: m.to(torch.float16).to(torch.float32)  # noqa: E731
    goldens("tiny-sd15-fp16", rt(te15), tok15, rt(un15), rt(va15), seed=1)

    # ---- SD 2 style ----
    tok2 = make_tokenizer("!")
    te2, un2, va2 = text_encoder("gelu", 3), unet(True, [2, 4, 4]), vae()
    for i, m in enumerate([te2, un2, va2]):
        randomize(m, 200 + i)
    ddim = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction",
    )
    save_pipeline("tiny-sd2", te2, tok2, un2, va2, ddim)
    goldens("tiny-sd2", te2, tok2, un2, va2, seed=2)

    # ---- token ids: both pad conventions, diffusers' call (max_length padding, truncation) ----
    tokens = {}
    for key, tok in [("sd15", tok15), ("sd2", tok2)]:
        tokens[key] = [
            {"prompt": p, "ids": tok(p, padding="max_length", max_length=77, truncation=True).input_ids}
            for p in PROMPTS
        ]
    (GOLD / "tokens.json").write_text(json.dumps(tokens, ensure_ascii=False, indent=1))

    versions = {m.__name__: m.__version__ for m in [torch, __import__("diffusers"), __import__("transformers")]}
    (GOLD / "VERSIONS.json").write_text(json.dumps(versions, indent=1) + "\n")
    print("fixtures written under", FIX, versions)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
