#!/usr/bin/env bash
# The GPU rows of BENCHMARKS.md on a machine with an NVIDIA card, run by hand: imagen on wgpu
# (Vulkan) and PyTorch on CUDA, same components, same dtype, back to back.
#
#   tools/gpu_bench.sh IMAGEN_BINARY [OUT_DIR] [RUNS]
#
# Needs a Vulkan loader + the NVIDIA ICD (e.g. VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/
# nvidia_icd.json; CUBECL_WGPU_DEFAULT_DEVICE='DiscreteGpu(0)' keeps wgpu off any software
# adapter), and a Python with torch + diffusers + transformers (PYTHON, default python3).
# Build imagen with `cargo build --release --features vulkan` on NVIDIA/AMD (SPIR-V, tensor cores;
# BENCHMARKS.md). Writes one JSON line per run to OUT_DIR/gpu_bench.jsonl and prints
# a table of the ratios (PyTorch time / imagen time: above 1 means imagen is faster).
set -uo pipefail
IMAGEN=${1:?imagen binary}
OUT=${2:-/tmp/gpu-bench}
RUNS=${3:-10}
PY=${PYTHON:-python3}
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$OUT"
log="$OUT/gpu_bench.jsonl"
: >"$log"

row() { # backend-dtype component batch [extra flags...]
    local dtype=$1 comp=$2 batch=$3
    shift 3
    local tdtype=fp32
    [ "$dtype" = f16 ] && tdtype=fp16
    echo "== $(date +%T) $comp b$batch $dtype" >&2
    timeout "${IMAGEN_TIMEOUT:-280}" "$IMAGEN" bench --backend wgpu --dtype "$dtype" --arch sd15 --component "$comp" \
        --batch "$batch" --runs "$RUNS" --json "$@" 2>>"$OUT/imagen.stderr" | tail -1 >>"$log" ||
        echo "{\"tool\":\"imagen\",\"component\":\"$comp\",\"dtype\":\"$dtype\",\"error\":\"failed\"}" >>"$log"
    timeout "${TORCH_TIMEOUT:-200}" "$PY" "$ROOT/tools/reference/bench_torch.py" --device cuda --dtype "$tdtype" --arch sd15 \
        --component "$comp" --batch "$batch" --runs "$RUNS" "$@" 2>>"$OUT/torch.stderr" | tail -1 >>"$log" ||
        echo "{\"tool\":\"torch\",\"component\":\"$comp\",\"dtype\":\"$dtype\",\"error\":\"failed\"}" >>"$log"
}

for dtype in ${DTYPES:-f16 f32}; do
    row "$dtype" unet 2
    row "$dtype" vae-decode 1
    row "$dtype" text-encoder 2
done

"$PY" - "$log" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ours = [r for r in rows if r.get("tool", "").startswith("imagen")]
theirs = [r for r in rows if r.get("tool", "").startswith("torch")]
print(f"{'component':<14}{'dtype':<6}{'imagen s':>10}{'torch s':>10}{'ratio':>8}")
for o, t in zip(ours, theirs):
    if "median_s" in o and "median_s" in t:
        print(f"{o['component']:<14}{o.get('dtype', ''):<6}{o['median_s']:>10.4f}{t['median_s']:>10.4f}"
              f"{t['median_s'] / o['median_s']:>7.2f}x")
    else:
        print(f"{o.get('component')} {o.get('dtype')}: failed", o.get("error"), t.get("error"))
EOF
