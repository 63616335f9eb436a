"""Every fp8 bit pattern as PyTorch decodes it: a safetensors file with one float8_e4m3fn and one
float8_e5m2 tensor holding bytes 0..255, and their f32 values in JSON (NaN as null, infinities as "inf"/"-inf"). imagen's
safetensors reader must give the same values. Run by hand:

    .venv/bin/python tools/reference/make_fp8_fixture.py  # tests/fixtures/golden/quants/fp8.*
"""

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "golden" / "quants"

bits = torch.arange(256, dtype=torch.uint8).reshape(16, 16)
tensors = {"e4m3fn": bits.clone().view(torch.float8_e4m3fn), "e5m2": bits.clone().view(torch.float8_e5m2)}
save_file(tensors, str(OUT / "fp8.safetensors"))


def encode(x):
    # JSON has no NaN or infinities: null and strings instead
    if math.isnan(x):
        return None
    return str(x) if math.isinf(x) else x


values = {k: [encode(x) for x in t.float().flatten().tolist()] for k, t in tensors.items()}
(OUT / "fp8.json").write_text(json.dumps(values))
