#!/usr/bin/env python3
"""Golden noise for the seeded generators (run by hand; writes tests/fixtures/golden/rng.safetensors).

- torch CPU: torch.manual_seed(seed) then two successive torch.randn(shape) calls, float32.
  On x86-64, PyTorch's `normal_fill` (16 values and more) evaluates log/sin/cos with the Cephes
  polynomials of `avx_mathfun.h`, compiled with FMAs; imagen ports exactly that. ARM builds use
  libm there and differ in the last bits, so make these fixtures on an x86-64 machine.
- Philox: an independent NumPy implementation of A1111's modules/rng_philox.py algorithm.
"""

from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "golden" / "rng.safetensors"

SEEDS = [0, 1, 42, 1234567890, 2**32 + 7, 18446744073709551557]
SHAPES = [(1, 4, 8, 8), (2, 4, 9, 7), (5,), (3, 5), (16,), (17,)]
BIG = (42, (1, 4, 64, 64))  # a real 512x512 latent, one seed only to keep the file small

# ---- Philox4x32-10 as in A1111's rng_philox.py ----
philox_m = [0xD2511F53, 0xCD9E8D57]
philox_w = [0x9E3779B9, 0xBB67AE85]
two_pow32_inv = np.array([2.3283064e-10], dtype=np.float32)
two_pow32_inv_2pi = np.array([2.3283064e-10 * 6.2831855], dtype=np.float32)


def uint32(x):
    return x.view(np.uint32).reshape(-1, 2).transpose(1, 0)


def philox4_round(counter, key):
    v1 = uint32(counter[0].astype(np.uint64) * philox_m[0])
    v2 = uint32(counter[2].astype(np.uint64) * philox_m[1])
    counter[0] = v2[1] ^ counter[1] ^ key[0]
    counter[1] = v2[0]
    counter[2] = v1[1] ^ counter[3] ^ key[1]
    counter[3] = v1[0]


def philox4_32(counter, key, rounds=10):
    for _ in range(rounds - 1):
        philox4_round(counter, key)
        key[0] = key[0] + philox_w[0]
        key[1] = key[1] + philox_w[1]
    philox4_round(counter, key)
    return counter


def box_muller(x, y):
    u = x * two_pow32_inv + two_pow32_inv / 2
    v = y * two_pow32_inv_2pi + two_pow32_inv_2pi / 2
    s = np.sqrt(-2.0 * np.log(u))
    return (s * np.sin(v)).astype(np.float32)


class Philox:
    def __init__(self, seed):
        self.seed, self.offset = seed, 0

    def randn(self, shape):
        n = int(np.prod(shape))
        counter = np.zeros((4, n), dtype=np.uint32)
        counter[0] = self.offset
        counter[2] = np.arange(n, dtype=np.uint32)
        self.offset += 1
        key = uint32(np.array([[self.seed] * n], dtype=np.uint64))
        g = philox4_32(counter, key)
        return box_muller(g[0], g[1]).reshape(shape)


def main():
    out = {}
    with np.errstate(over="ignore"):
        for seed, shape in [(s, sh) for s in SEEDS for sh in SHAPES] + [BIG]:
            name = f"{seed}_{'x'.join(map(str, shape))}"
            g = torch.Generator().manual_seed(seed)
            out[f"torch_{name}_a"] = torch.randn(shape, generator=g).numpy()
            out[f"torch_{name}_b"] = torch.randn(shape, generator=g).numpy()
            p = Philox(seed)
            out[f"philox_{name}_a"] = p.randn(shape)
            out[f"philox_{name}_b"] = p.randn(shape)
    save_file({k: np.ascontiguousarray(v) for k, v in out.items()}, OUT)
    print("wrote", OUT, len(out), "tensors")


if __name__ == "__main__":
    main()
