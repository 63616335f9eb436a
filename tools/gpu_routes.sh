#!/usr/bin/env bash
# A/B of the GPU op routes (crates/imagen-models/src/ops/routes.rs) on a machine with a real GPU, run by
# hand: each SPEC is one `imagen bench` process (or one PyTorch one), f16 unless DTYPE says
# otherwise; one JSON line per SPEC in OUT/routes.jsonl, tagged with the routes and the binary.
#
#   IMAGEN=path/to/imagen OUT=/tmp/routes RUNS=10 tools/gpu_routes.sh SPEC...
#   SPEC  = component[/batch]@conv,attention[,nofused]
#                                               imagen, e.g. unet/2@gemm,flash  vae-decode@im2col,burn
#         | torch:component[/batch]             PyTorch CUDA (bench_torch.py), e.g. torch:unet/2
# conv: burn | im2col | gemm;  attention: burn | matmul | flash; nofused: IMAGEN_GPU_FUSED=0
# (the fused kernels off, as before them), e.g. unet/2@im2col,matmul,nofused.
set -uo pipefail
IMAGEN=${IMAGEN:?imagen binary}
OUT=${OUT:-/tmp/gpu-routes}
RUNS=${RUNS:-10}
DTYPE=${DTYPE:-f16}
PY=${PYTHON:-python3}
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$OUT"
log="$OUT/routes.jsonl"
tag() { "$PY" -c 'import json,sys
extra = json.loads(sys.argv[1])
for line in sys.stdin:
    line = line.strip()
    if line.startswith("{"):
        print(json.dumps({**json.loads(line), **extra}))' "$1"; }
for spec in "$@"; do
    echo "== $(date +%T) $spec" >&2
    case $spec in
    torch:*)
        comp=${spec#torch:}; batch=1; [[ $comp == */* ]] && batch=${comp#*/} comp=${comp%/*}
        tdtype=fp32; [ "$DTYPE" = f16 ] && tdtype=fp16
        timeout "${TORCH_TIMEOUT:-200}" "$PY" "$ROOT/tools/reference/bench_torch.py" --device cuda --dtype "$tdtype" \
            --arch sd15 --component "$comp" --batch "$batch" --runs "$RUNS" 2>>"$OUT/torch.stderr" | tail -1 |
            tag "{\"spec\": \"$spec\"}" >>"$log" || echo "{\"spec\": \"$spec\", \"error\": \"failed\"}" >>"$log"
        ;;
    *)
        what=${spec%@*}; routes=${spec#*@}; comp=$what; batch=1
        [[ $what == */* ]] && batch=${what#*/} comp=${what%/*}
        fused=1; [[ $routes == *,nofused ]] && fused=0 routes=${routes%,nofused}
        conv=${routes%,*}; attn=${routes#*,}
        IMAGEN_GPU_FUSED=$fused IMAGEN_GPU_CONV=$conv IMAGEN_GPU_ATTENTION=$attn timeout "${IMAGEN_TIMEOUT:-200}" "$IMAGEN" bench --backend wgpu \
            --dtype "$DTYPE" --arch sd15 --component "$comp" --batch "$batch" --runs "$RUNS" --json 2>>"$OUT/imagen.stderr" |
            tail -1 | tag "{\"spec\": \"$spec\", \"binary\": \"$(basename "$IMAGEN")\"}" >>"$log" ||
            echo "{\"spec\": \"$spec\", \"error\": \"failed\"}" >>"$log"
        ;;
    esac
    tail -1 "$log" | "$PY" -c 'import json,sys; r=json.loads(sys.stdin.read()); print(r["spec"], r.get("median_s", r.get("error")))' >&2
done
