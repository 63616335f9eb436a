"""A full-size SDXL base checkpoint with random weights as one Q8_0 GGUF file, in the original SGM
single-file layout (the key names of sd_xl_base_1.0.safetensors), plus a diffusers config folder
without weights to pass as `--config`: for measuring the memory of a whole SDXL generation from a
GGUF single file where no real checkpoint can be downloaded. Run by hand; the output is ~3.7 GB.

    .venv/bin/python tools/reference/make_full_random_sdxl_gguf.py OUT_DIR
        → OUT_DIR/sdxl-q8_0.gguf, OUT_DIR/config/ (model_index.json, unet/, vae/, text_encoder/,
          text_encoder_2/, tokenizer/, tokenizer_2/, scheduler/: configs only)
    imagen generate --model OUT_DIR/sdxl-q8_0.gguf --config OUT_DIR/config --prompt … --output …

    .venv/bin/python tools/reference/make_full_random_sdxl_gguf.py --tiny [OUT_DIR]

`--tiny` builds the same name/shape table from tests/fixtures/tiny-sdxl's configs and checks it
equals tests/fixtures/single-file/tiny-sdxl.safetensors key for key and shape for shape (the
check that the layout is right); with OUT_DIR it also writes OUT_DIR/tiny-sdxl-q8_0.gguf.

Names and shapes come from the diffusers/transformers modules built on the meta device (nothing
allocated) and renamed by make_single_file_fixture.py's tables (UNet, VAE with 1x1-conv attention,
CLIP-L as `conditioner.embedders.0.transformer.text_model.*`, bigG in OpenCLIP layout with fused
`in_proj_*` under `conditioner.embedders.1.model.*`). Types follow `imagen quantize --type q8_0`
(stable-diffusion.cpp's rule): 2+ dims with the last (PyTorch order) a multiple of 32 → Q8_0,
other 2+-dim tensors → F16, 1-dim → F32. The tensors are drawn and written one at a time (peak
memory is the largest tensor, a few hundred MB); the file is read back and checked at the end.
"""
import argparse
import json
import shutil
import sys
from pathlib import Path

import gguf
import numpy as np
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from gguf import GGMLQuantizationType as T
from gguf.quants import quant_shape_to_byte_shape, quantize
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

sys.path.insert(0, str(Path(__file__).parent))
from bench_torch import SD15_VAE, SDXL_UNET, clip_configs  # noqa: E402
from make_single_file_fixture import convert_unet, convert_vae, hf_clip, open_clip  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests/fixtures/tiny-sdxl"
TINY_SINGLE = ROOT / "tests/fixtures/single-file/tiny-sdxl.safetensors"

# stabilityai/stable-diffusion-xl-base-1.0 vae/config.json: SD 1.5's architecture, its own scale.
SDXL_VAE = dict(SD15_VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True)


def modules(tiny):
    """The four networks on the meta device: full-size SDXL base, or tiny-sdxl's configs."""
    with torch.device("meta"):
        if tiny:
            unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(TINY / "unet"))
            vae = AutoencoderKL.from_config(AutoencoderKL.load_config(TINY / "vae"))
            c1 = CLIPTextConfig.from_pretrained(TINY / "text_encoder")
            c2 = CLIPTextConfig.from_pretrained(TINY / "text_encoder_2")
        else:
            unet = UNet2DConditionModel(**SDXL_UNET)
            vae = AutoencoderKL(**SDXL_VAE)
            c1, c2 = clip_configs("sdxl")
        te1, te2 = CLIPTextModel(c1), CLIPTextModelWithProjection(c2)
    return unet, vae, te1, te2


def table(unet, vae, te1, te2):
    """{original name: shape}, in sorted name order (as `imagen quantize` writes)."""
    full = {}
    full.update(convert_unet(unet.state_dict(), unet.config))
    full.update(convert_vae(vae.state_dict(), vae.config))
    full.update(hf_clip(te1.state_dict(), "conditioner.embedders.0.transformer."))
    full.update(open_clip(te2.state_dict(), "conditioner.embedders.1.model."))
    return {k: tuple(int(d) for d in full[k].shape) for k in sorted(full)}


def ggml_type(shape):
    if len(shape) >= 2 and shape[-1] % 32 == 0:
        return T.Q8_0
    return T.F16 if len(shape) >= 2 else T.F32


def values(rng, name, shape):
    """Random f32 values: N(0, 0.02) weights, N(0, 0.01) 1-dim biases, 1 + N(0, 0.02) 1-dim
    weights (every 1-dim weight here is a norm's scale)."""
    a = rng.standard_normal(shape, dtype=np.float32)
    if len(shape) == 1 and name.endswith("weight"):
        a *= 0.02
        a += 1.0
    else:
        a *= 0.01 if len(shape) == 1 else 0.02
    return a


def write_gguf(path, shapes, arch="sdxl"):
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(path.stem)
    w.add_quantization_version(2)
    for name, shape in shapes.items():
        t = ggml_type(shape)
        if t == T.Q8_0:
            bshape = quant_shape_to_byte_shape(shape, t)
            w.add_tensor_info(name, bshape, np.dtype(np.uint8), int(np.prod(bshape)), raw_dtype=t)
        else:
            dt = np.dtype(np.float16 if t == T.F16 else np.float32)
            w.add_tensor_info(name, shape, dt, int(np.prod(shape)) * dt.itemsize)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    rng = np.random.default_rng(0)
    for i, (name, shape) in enumerate(shapes.items()):
        a = values(rng, name, shape)
        t = ggml_type(shape)
        data = quantize(a, t) if t == T.Q8_0 else a.astype(np.float16) if t == T.F16 else a
        del a
        w.write_tensor_data(data)
        del data
        if (i + 1) % 250 == 0:
            print(f"  {i + 1}/{len(shapes)} tensors", flush=True)
    w.close()


def check_gguf(path, shapes):
    r = gguf.GGUFReader(str(path))
    got = {t.name: (tuple(int(d) for d in reversed(t.shape)), T(t.tensor_type)) for t in r.tensors}
    assert set(got) == set(shapes), (sorted(set(got) ^ set(shapes))[:10])
    for k, shape in shapes.items():
        assert got[k] == (shape, ggml_type(shape)), (k, got[k], shape)
    counts = {}
    for _, t in got.values():
        counts[t.name] = counts.get(t.name, 0) + 1
    arch = r.fields["general.architecture"]
    print(f"{path}: {path.stat().st_size / 1e9:.3f} GB, {len(got)} tensors {counts}, "
          f"general.architecture={bytes(arch.parts[arch.data[0]]).decode()}; names, shapes, types as expected")
    for prefix in ["model.diffusion_model.", "first_stage_model.", "conditioner.embedders.0.",
                   "conditioner.embedders.1."]:
        ks = [k for k in shapes if k.startswith(prefix)]
        print(f"  {prefix:28} {len(ks):5} tensors, {sum(int(np.prod(shapes[k])) for k in ks) / 1e6:8.1f} M params")


def configs(out, unet, vae, te1, te2):
    out.mkdir(parents=True, exist_ok=True)
    for sub in ("tokenizer", "tokenizer_2", "scheduler"):
        shutil.copytree(TINY / sub, out / sub, dirs_exist_ok=True)
    shutil.copy(TINY / "model_index.json", out / "model_index.json")
    unet.save_config(out / "unet")
    vae.save_config(out / "vae")
    for sub, te in [("text_encoder", te1), ("text_encoder_2", te2)]:
        te.config.architectures = [type(te).__name__]
        te.config.save_pretrained(out / sub)
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "StableDiffusionXLPipeline"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out", nargs="?", help="output folder (required without --tiny)")
    ap.add_argument("--tiny", action="store_true",
                    help="tiny-sdxl's configs; check the table against the tiny single-file fixture")
    a = ap.parse_args()
    if not a.tiny and not a.out:
        ap.error("OUT_DIR is required without --tiny")
    mods = modules(a.tiny)
    shapes = table(*mods)
    if a.tiny:
        from safetensors import safe_open

        with safe_open(str(TINY_SINGLE), "np") as f:
            ref = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        only_ours, only_ref = sorted(set(shapes) - set(ref)), sorted(set(ref) - set(shapes))
        bad = sorted(k for k in set(shapes) & set(ref) if shapes[k] != ref[k])
        print(f"tiny: {len(shapes)} names here, {len(ref)} in {TINY_SINGLE.name}; only here {only_ours}, "
              f"only in fixture {only_ref}, shape differs {[(k, shapes[k], ref[k]) for k in bad]}")
        assert not (only_ours or only_ref or bad), "layout differs from the tiny single-file fixture"
        print("tiny: names and shapes equal the fixture's exactly")
        if not a.out:
            return
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        path = out / "tiny-sdxl-q8_0.gguf"
    else:
        out = Path(a.out)
        configs(out / "config", *mods)
        path = out / "sdxl-q8_0.gguf"
    print(f"writing {path}: {len(shapes)} tensors, {sum(int(np.prod(s)) for s in shapes.values()) / 1e9:.3f} B params")
    write_gguf(path, shapes)
    check_gguf(path, shapes)


if __name__ == "__main__":
    main()
