#!/usr/bin/env bash
# Correctness on a real GPU, run by hand where one is lent: the tiny SD 1.5 fixture's Euler
# text-to-image case generated on wgpu in f32 and in f16, each compared with diffusers' PNG.
#   tools/gpu_check.sh IMAGEN_BINARY OUT_DIR
set -uo pipefail
IMAGEN=${1:?imagen binary}
OUT=${2:-/tmp/gpu-check}
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$OUT"
for dtype in f32 f16; do
    "$IMAGEN" generate --model "$ROOT/tests/fixtures/tiny-sd15" --backend wgpu --dtype "$dtype" --quiet \
        --prompt "a photograph of an astronaut riding a horse" --negative-prompt "blurry, low quality" \
        --scheduler euler --steps 5 --guidance 7.5 --seed 1234 --width 64 --height 64 \
        --output "$OUT/tiny-sd15-euler-$dtype.png" || echo "generate $dtype failed"
done
"${PYTHON:-python3}" - "$ROOT/tests/fixtures/golden/generate/tiny-sd15-euler-txt2img.png" "$OUT" <<'PY'
import sys
import numpy as np
from PIL import Image
want = np.asarray(Image.open(sys.argv[1]).convert("RGB")).astype(int)
for dtype in ("f32", "f16"):
    try:
        got = np.asarray(Image.open(f"{sys.argv[2]}/tiny-sd15-euler-{dtype}.png").convert("RGB")).astype(int)
    except OSError as e:
        print(f"{dtype}: no image ({e})")
        continue
    d = np.abs(got - want)
    print(f"wgpu {dtype} vs diffusers: max {d.max()}/255, mean {d.mean():.4f}/255")
PY
