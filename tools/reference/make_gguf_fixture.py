"""A tiny GGUF file as users download them (a ggml container holding f32, f16, bf16, Q8_0 and
Q4_K tensors under checkpoint-style names) written by the `gguf` package's GGUFWriter, and each
tensor's values by `gguf.quants.dequantize`: what imagen's `load::gguf` must read. Run by hand:

    .venv/bin/python tools/reference/make_gguf_fixture.py

Writes tests/fixtures/golden/quants/tiny.gguf and tiny.gguf.json ({name: {shape, type, values}}).
"""

import json
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "golden" / "quants"


def main():
    rng = np.random.default_rng(17)
    w = gguf.GGUFWriter(str(OUT / "tiny.gguf"), "imagen-test")
    w.add_string("general.name", "tiny")
    w.add_uint32("test.answer", 42)
    expected = {}

    def add(name, data, t, shape):
        # raw_shape is the stored array's (bytes per row for block types); `shape` the values'
        w.add_tensor(name, data, raw_shape=data.shape, raw_dtype=t)
        values = dequantize(data.reshape(-1), t).astype(np.float32).reshape(-1)
        expected[name] = {"shape": list(shape), "type": t.name, "values": [float(v) for v in values]}

    x = rng.standard_normal((3, 5)).astype(np.float32)
    add("model.diffusion_model.input_blocks.0.0.bias", x, T.F32, (3, 5))
    h = rng.standard_normal((2, 4)).astype(np.float16)
    add("model.diffusion_model.out.0.weight", h, T.F16, (2, 4))
    b = quantize(rng.standard_normal((2, 8)).astype(np.float32), T.BF16)
    add("first_stage_model.decoder.conv_in.bias", b, T.BF16, (2, 8))
    q = quantize(rng.standard_normal((2, 64)).astype(np.float32), T.Q8_0)
    add("model.diffusion_model.time_embed.0.weight", q, T.Q8_0, (2, 64))
    k = rng.integers(0, 256, size=(1, 144), dtype=np.uint8)
    k[:, 0:4] = np.array([0.01, 0.002], dtype=np.float16).view(np.uint8)
    add("model.diffusion_model.time_embed.2.weight", k, T.Q4_K, (1, 256))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    (OUT / "tiny.gguf.json").write_text(json.dumps(expected))
    print({n: e["type"] for n, e in expected.items()})


if __name__ == "__main__":
    main()
