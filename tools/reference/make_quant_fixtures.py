"""Block-quantized ggml tensors and their dequantisation by the `gguf` package (`gguf.quants`),
the reference imagen's `load::quants` must match bit for bit. Run by hand:

    .venv/bin/pip install gguf && .venv/bin/python tools/reference/make_quant_fixtures.py

Writes tests/fixtures/golden/quants/NAME.blocks (the raw blocks) and NAME.f32 (little-endian f32
values) per type: random bytes with every f16 scale field set to a finite random value (random
bytes there could be NaN or infinity), 3 blocks each. And `quantize_fixtures` below.
"""

from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T
from gguf.quants import dequantize

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "golden" / "quants"
# type -> byte offsets of the f16 scales inside one block (ggml's block layouts)
SCALES = {
    T.Q8_0: [0], T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2],
    T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
}


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(16)
    for t, offsets in SCALES.items():
        block, size = GGML_QUANT_SIZES[t]
        raw = rng.integers(0, 256, size=(3, size), dtype=np.uint8)
        for o in offsets:
            scale = rng.uniform(-0.05, 0.05, size=3).astype(np.float16)
            raw[:, o:o + 2] = scale.view(np.uint8).reshape(3, 2)
        values = dequantize(raw.reshape(-1), t).astype(np.float32).reshape(-1)
        assert values.size == 3 * block and np.isfinite(values).all()
        (OUT / f"{t.name.lower()}.blocks").write_bytes(raw.tobytes())
        (OUT / f"{t.name.lower()}.f32").write_bytes(values.astype("<f4").tobytes())
        print(t.name, values.size, float(np.abs(values).max()))



def quantize_fixtures():
    """`gguf.quants.quantize` of one f32 input (8 blocks: random scales, a zero block, a block with
    one outlier, ties at .5) per type imagen's `imagen quantize` writes: quantize_input.f32 and
    NAME.quantized."""
    from gguf.quants import quantize

    rng = np.random.default_rng(19)
    x = rng.normal(0, 1, size=(8, 32)).astype(np.float32) * rng.uniform(0.001, 3, size=(8, 1)).astype(np.float32)
    x[2] = 0
    x[3, 7] = 40.0
    x[4] = np.arange(32, dtype=np.float32) / 2 - 8
    (OUT / "quantize_input.f32").write_bytes(x.astype("<f4").tobytes())
    for t in [T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1]:
        (OUT / f"{t.name.lower()}.quantized").write_bytes(quantize(x, t).tobytes())


if __name__ == "__main__":
    main()
    quantize_fixtures()
