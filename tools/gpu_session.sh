#!/usr/bin/env bash
# What a GPU lease should run first, in one device call (the device tool allows 10 minutes per
# call): correctness against diffusers' PNG, then imagen against PyTorch fp16 back to back with
# the fused kernels on and off, then the UNet again with CubeCL submitting every 128 launches
# instead of 32. Results under OUT: check.log, routes/routes.jsonl, routes-tasks128/routes.jsonl.
#
#   IMAGEN=/tmp/imagen-vk OUT=$OUT/session RUNS=20 tools/gpu_session.sh
#
# IMAGEN: a `cargo build --release --features vulkan` binary (SPIR-V: tensor cores);
# BENCHMARKS.md has the lease recipe (Vulkan ICD, PyTorch wheels) this assumes is done.
set -uo pipefail
IMAGEN=${IMAGEN:?imagen binary}
OUT=${OUT:?output directory}
RUNS=${RUNS:-20}
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$OUT"
echo "== $(date +%T) correctness" >&2
"$ROOT/tools/gpu_check.sh" "$IMAGEN" "$OUT/check" 2>&1 | tee "$OUT/check.log" >&2
echo "== $(date +%T) routes" >&2
IMAGEN=$IMAGEN OUT=$OUT/routes RUNS=$RUNS "$ROOT/tools/gpu_routes.sh" \
    unet/2@im2col,matmul unet/2@im2col,matmul,nofused torch:unet/2 \
    unet/1@im2col,matmul torch:unet/1 \
    vae-decode@im2col,matmul vae-decode@im2col,matmul,nofused torch:vae-decode \
    text-encoder/2@im2col,matmul text-encoder/2@im2col,matmul,nofused torch:text-encoder/2
echo "== $(date +%T) CUBECL_WGPU_MAX_TASKS=128" >&2
CUBECL_WGPU_MAX_TASKS=128 IMAGEN=$IMAGEN OUT=$OUT/routes-tasks128 RUNS=$RUNS "$ROOT/tools/gpu_routes.sh" \
    unet/2@im2col,matmul torch:unet/2 vae-decode@im2col,matmul torch:vae-decode
