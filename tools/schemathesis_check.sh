#!/usr/bin/env bash
# schemathesis (all default checks) against a real `imagen serve` with the tiny test models and
# small limits (so fuzzed sizes and step counts stay quick): the served document must describe
# exactly what the server accepts. Needs `st` (pip install schemathesis) and a built binary.
#   tools/schemathesis_check.sh [path/to/imagen] [extra st args, e.g. --max-examples 50]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${1:-${CARGO_TARGET_DIR:-target}/debug/imagen}"
shift || true
DIR="$(mktemp -d)"
trap 'kill $SERVER 2>/dev/null || true; rm -rf "$DIR"' EXIT
mkdir -p "$DIR/models"
cp -r tests/fixtures/tiny-sd15 "$DIR/models/"
cat > "$DIR/imagen.toml" <<TOML
[limits]
max_side = 128
max_pixels = 16384
max_steps = 4
max_images = 2
TOML
KEY=$("$BIN" keys create --data-dir "$DIR/data" --plan enterprise | tail -1)
"$BIN" serve --bind 127.0.0.1:0 --models-dir "$DIR/models" --data-dir "$DIR/data" \
  --config "$DIR/imagen.toml" > "$DIR/out" &
SERVER=$!
for _ in $(seq 100); do grep -q "listening on" "$DIR/out" 2>/dev/null && break; sleep 0.1; done
BASE=$(sed -n 's/^imagen listening on //p' "$DIR/out" | head -1)
until curl -sf "$BASE/readyz" > /dev/null; do sleep 0.1; done
SCHEMATHESIS_HOOKS=tools.schemathesis_hooks PYTHONPATH=. st run "$BASE/openapi.json" \
  -H "Authorization: Bearer $KEY" --seed 1 "$@"
