#!/usr/bin/env python3
"""PyTorch side of the SD 1.5 benchmark (`benches/sd15.rs` is the Rust side): the full-size UNet at
64x64 latents, batch 2, and the VAE decode of 64x64 latents to 512x512, random weights, fp32, CPU.
`--component X --dtype bf16 --error`: the model in bf16 (as `imagen bench --dtype bf16`), timed, and
its max relative error against the same weights and inputs in fp32.

    .venv/bin/python tools/reference/bench_torch.py [--runs 3] [--threads 2] [--only unet|vae-decode|sdxl-unet]

sdxl-unet (only when asked): the SDXL base UNet, one step at 1024² without CFG (128x128, batch 1).

Prints one JSON line per component, in the same shape as the Rust bench.
"""

import argparse
import json
import statistics
import time

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

# runwayml/stable-diffusion-v1-5 unet/config.json and vae/config.json, less the defaults.
SD15_UNET = dict(cross_attention_dim=768, sample_size=64)
SD15_VAE = dict(
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    sample_size=512,
)


# stabilityai/stable-diffusion-xl-base-1.0 unet/config.json, less the defaults.
SDXL_UNET = dict(
    sample_size=128, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)


def bench(fn, runs, sync=lambda: None):
    fn()  # warm-up
    sync()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        sync()  # CUDA work is asynchronous: wait for it before reading the clock
        times.append(time.perf_counter() - t)
    return statistics.median(times), times


SD21_UNET = dict(cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
                 sample_size=96)


def clip_configs(arch):
    from transformers import CLIPTextConfig

    vit_l = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                 projection_dim=768)
    h14 = dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=23,
               hidden_act="gelu", projection_dim=512)
    big_g = dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
                 hidden_act="gelu", projection_dim=1280)
    return [CLIPTextConfig(**c) for c in {"sd15": [vit_l], "sd21": [h14], "sdxl": [vit_l, big_g]}[arch]]


def component_bench(a):
    """Same flags and JSON keys as `imagen bench`."""
    import resource

    from torch.utils.flop_counter import FlopCounterMode
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    b, l = a.batch, a.latent
    unet_cfg = {"sd15": SD15_UNET, "sd21": SD21_UNET, "sdxl": SDXL_UNET}[a.arch]
    texts = clip_configs(a.arch)
    ctx_dim = sum(c.hidden_size for c in texts)
    xl = a.arch == "sdxl"

    c = a.channels or 320  # default: the UNet's first level (all three archs)

    dtype = {"fp32": torch.float32, "f32": torch.float32, "fp16": torch.float16, "f16": torch.float16,
             "bf16": torch.bfloat16}[a.dtype]

    def build(device):
        with torch.device(device):
            m = {}
            if a.component == "conv":
                m["conv"] = torch.nn.Conv2d(c, c, 3, padding=1)
            if a.component == "linear":
                m["linear"] = torch.nn.Linear(c, 8 * c)
            if a.component == "group-norm":
                m["norm"] = torch.nn.GroupNorm(32, c, eps=1e-5)
            if a.component in ("unet", "pipeline"):
                m["unet"] = UNet2DConditionModel(**unet_cfg).eval()
            if a.component in ("vae-decode", "pipeline"):
                m["vae"] = AutoencoderKL(**SD15_VAE).eval()
            if a.component in ("text-encoder", "pipeline"):
                m["text"] = [(CLIPTextModelWithProjection if i == 1 else CLIPTextModel)(c).eval()
                             for i, c in enumerate(texts)]
            for k, v in m.items():
                m[k] = [t.to(dtype) for t in v] if isinstance(v, list) else v.to(dtype)
            return m

    def work(m, device, dtype=dtype):
        # drawn in f32 and cast: the same values (up to rounding) whatever the dtype
        def randn(*shape):
            return torch.randn(*shape, device=device).to(dtype)

        lat = randn(b, 4, l, l)
        ctx = randn(b, 77, ctx_dim)
        ids = torch.randint(0, 49407, (b, 77), device=device)
        t = torch.tensor([981.0] * b, device=device)
        added = {"text_embeds": randn(b, 1280),
                 "time_ids": torch.tensor([[l * 8.0, l * 8.0, 0, 0, l * 8.0, l * 8.0]] * b, device=device,
                                          dtype=dtype)}
        kw = {"added_cond_kwargs": added} if xl else {}

        img = randn(b, c, l, l)
        seq = randn(b, l * l, c)  # a projection's output: contiguous

        def run():
            if a.component == "conv":
                return m["conv"](img)
            if a.component == "linear":
                return m["linear"](seq)
            if a.component == "group-norm":
                return torch.nn.functional.silu(m["norm"](img))
            if a.component == "attention":
                # [b, l², 8·d] -> [b, 8, l², d], as diffusers' AttnProcessor2_0
                h = seq.reshape(b, l * l, 8, c // 8).transpose(1, 2)
                return torch.nn.functional.scaled_dot_product_attention(h, h, h).transpose(1, 2).reshape(b, l * l, c)
            if a.component == "unet":
                return m["unet"](lat, t, encoder_hidden_states=ctx, **kw).sample
            if a.component == "vae-decode":
                return m["vae"].decode(lat).sample
            if a.component == "text-encoder":
                return [te(ids)[0] for te in m["text"]]
            for te in m["text"]:
                te(ids)
            x = lat
            for _ in range(a.steps):
                x = m["unet"](x, t, encoder_hidden_states=ctx, **kw).sample
            return m["vae"].decode(x).sample
        return run

    with torch.inference_mode():
        counter = FlopCounterMode(display=False)
        with counter:
            work(build("meta"), "meta")()
        gflop = counter.get_total_flops() / 1e9
        cuda = a.device == "cuda"
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        models = build(a.device)
        run = work(models, a.device)
        med, runs = bench(run, a.runs, sync)
        error = None
        if a.error:
            torch.manual_seed(1)
            out = work(models, a.device)()
            for k, v in models.items():
                models[k] = [t.float() for t in v] if isinstance(v, list) else v.float()
            torch.manual_seed(1)
            ref = work(models, a.device, torch.float32)()
            out, ref = (x[0] if isinstance(x, list) else x for x in (out, ref))
            error = ((out.float() - ref).abs().max() / ref.abs().max()).item()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    where = torch.cuda.get_device_name() if cuda else f"cpu-{a.threads}t"
    extra = {"peak_device_bytes": torch.cuda.max_memory_allocated()} if cuda else {}
    print(json.dumps({"tool": f"torch-{torch.__version__}-{where}", "arch": a.arch, "component": a.component,
                      "dtype": a.dtype, "median_s": med, "runs_s": runs, "gflop": gflop, "gflop_per_s": gflop / med,
                      "peak_rss_bytes": rss, **extra, **({"rel_error_vs_fp32": error} if a.error else {})}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", help="legacy fixed benchmarks: unet | vae-decode | sdxl-unet")
    ap.add_argument("--arch", default="sd15")
    ap.add_argument("--component")
    ap.add_argument("--latent", type=int, default=64)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--channels", type=int, help="channels of the single-op components (default 320)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--dtype", default="fp32", help="fp32, fp16 or bf16 (the model and its inputs cast)")
    ap.add_argument("--error", action="store_true",
                    help="also run the same weights and inputs in fp32 once and report max|out − out_fp32| / max|out_fp32|")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.component:
        torch.manual_seed(0)
        return component_bench(a)
    torch.manual_seed(0)
    meta = {"backend": f"torch-{torch.__version__}-cpu-{a.threads}t"}
    with torch.inference_mode():
        if a.only in (None, "unet"):
            unet = UNet2DConditionModel(**SD15_UNET).eval()
            lat, ctx = torch.randn(2, 4, 64, 64), torch.randn(2, 77, 768)
            t = torch.tensor([981.0, 981.0])
            med, runs = bench(lambda: unet(lat, t, encoder_hidden_states=ctx).sample, a.runs)
            print(json.dumps({"component": "unet", **meta, "shape": "2x4x64x64", "median_s": round(med, 3), "runs_s": runs}))
            del unet
        if a.only == "sdxl-unet":
            unet = UNet2DConditionModel(**SDXL_UNET).eval()
            lat, ctx = torch.randn(1, 4, 128, 128), torch.randn(1, 77, 2048)
            added = {"text_embeds": torch.randn(1, 1280), "time_ids": torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024]])}
            t = torch.tensor([981.0])
            med, runs = bench(lambda: unet(lat, t, encoder_hidden_states=ctx, added_cond_kwargs=added).sample, a.runs)
            print(json.dumps({"component": "sdxl-unet", **meta, "shape": "1x4x128x128", "median_s": round(med, 3), "runs_s": runs}))
            del unet
        if a.only in (None, "vae-decode"):
            vae = AutoencoderKL(**SD15_VAE).eval()
            z = torch.randn(1, 4, 64, 64)
            med, runs = bench(lambda: vae.decode(z).sample, a.runs)
            print(json.dumps({"component": "vae-decode", **meta, "shape": "1x4x64x64->512x512", "median_s": round(med, 3), "runs_s": runs}))


if __name__ == "__main__":
    main()
