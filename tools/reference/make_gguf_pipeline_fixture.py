"""Tiny SD 1.5 GGUF files as users download them, made from the single-file fixture with the
`gguf` package (as stable-diffusion.cpp's `convert` and ComfyUI-GGUF's `convert.py` make them):

- tiny-sd15-q8_0.gguf: the whole checkpoint under its original names (`model.diffusion_model.*`,
  `first_stage_model.*`, `cond_stage_model.*`); tensors of 2+ dims whose last dim is whole
  32-blocks in Q8_0, other 2+-dim tensors in F16, 1-dim ones in F32 (sd.cpp's rule).
- tiny-sd15-unet-q4_0.gguf: the UNet alone without its prefix (`input_blocks.0.0.weight`, ...),
  `general.architecture` = `sd1`, Q4_0 / F16 / F32 by the same rule (ComfyUI-GGUF's UNet files);
  and tiny-sd15-unet-q4_0.dequantised.safetensors, that UNet as `gguf.quants.dequantize` gives it.

    .venv/bin/python tools/reference/make_gguf_pipeline_fixture.py  # → tests/fixtures/single-file/
"""

from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize
from safetensors.numpy import load_file, save_file

DIR = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "single-file"
UNET = "model.diffusion_model."


def write(path, tensors, block_type, arch):
    w = gguf.GGUFWriter(str(path), arch)
    for name, data in tensors.items():
        data = data.astype(np.float32)
        if data.ndim >= 2 and data.shape[-1] % 32 == 0:
            q = quantize(data, block_type)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=block_type)
        elif data.ndim >= 2:
            w.add_tensor(name, data.astype(np.float16))
        else:
            w.add_tensor(name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def dequantised(path):
    """Every tensor of a GGUF file as `gguf.quants.dequantize` gives it, in f32."""
    r = gguf.GGUFReader(str(path))
    out = {}
    for t in r.tensors:
        shape = tuple(int(d) for d in reversed(t.shape))
        out[t.name] = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape)
    return out


def main():
    ckpt = load_file(str(DIR / "tiny-sd15.safetensors"))
    write(DIR / "tiny-sd15-q8_0.gguf", ckpt, T.Q8_0, "sd1")
    unet = {k[len(UNET):]: v for k, v in ckpt.items() if k.startswith(UNET)}
    write(DIR / "tiny-sd15-unet-q4_0.gguf", unet, T.Q4_0, "sd1")
    # the same UNet as the gguf package dequantises it: loading this f32 file and the GGUF file
    # must give the same image
    save_file(dequantised(DIR / "tiny-sd15-unet-q4_0.gguf"), str(DIR / "tiny-sd15-unet-q4_0.dequantised.safetensors"))


if __name__ == "__main__":
    main()
