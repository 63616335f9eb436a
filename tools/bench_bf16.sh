#!/usr/bin/env bash
# bf16 on the CPU, every side in one run on one machine (issue 17): imagen f32 and bf16 (AMX),
# PyTorch fp32 and bf16 (model `.to(bfloat16)`), OpenVINO bf16 (INFERENCE_PRECISION_HINT), SD 1.5
# UNet batch 2 at 64² and VAE decode 64² → 512², 2 threads; bf16 errors against each side's own
# f32 on the same weights and inputs (--error); then a whole SD 1.5 pipeline's peak RSS in bf16.
#
#   bash tools/bench_bf16.sh [imagen binary] [python] | tee benches/results/cpu-DATE-bf16.txt
set -u
IMAGEN=${1:-target/release/imagen}
PY=${2:-.venv/bin/python}
RUNS=${RUNS:-3}
grep -m1 'model name' /proc/cpuinfo
grep -o 'amx_bf16\|avx512_bf16\|avx512f ' /proc/cpuinfo | sort -u | tr '\n' ' '; echo
for c in unet vae-decode; do
  b=2; [ $c = vae-decode ] && b=1
  "$IMAGEN" bench --component $c --batch $b --runs "$RUNS" --json
  "$IMAGEN" bench --component $c --batch $b --runs "$RUNS" --dtype bf16 --error --json
  "$PY" tools/reference/bench_torch.py --component $c --batch $b --runs "$RUNS" --dtype fp32
  "$PY" tools/reference/bench_torch.py --component $c --batch $b --runs "$RUNS" --dtype bf16 --error
  (cd tools/reference && "$PY" bench_openvino.py --component $c --precision bf16 --runs $((RUNS + 2)))
done
"$IMAGEN" bench --component pipeline --batch 2 --steps 1 --runs 1 --dtype bf16 --json
"$IMAGEN" bench --component pipeline --batch 2 --steps 1 --runs 1 --json
