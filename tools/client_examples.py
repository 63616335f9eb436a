#!/usr/bin/env python3
"""Writes clients/EXAMPLES.md: curl, Go and PHP for each JSON route of the contract, generated
from the OpenAPI document (each request body is its schema's `example`). `--check` fails when
the committed file differs from what the document gives (`cargo test --test clients` runs it).

    python3 tools/client_examples.py          # regenerate
    python3 tools/client_examples.py --check  # compare
"""

from __future__ import annotations

import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
SPEC = ROOT / "crates/imagen-server/openapi.json"
OUT = ROOT / "clients/EXAMPLES.md"
BASE = "http://localhost:8080"
# the contract's routes (the OpenAI-compatible ones are for OpenAI's own SDKs)
ROUTES = [
    ("post", "/v1/text-to-image"),
    ("post", "/v1/image-to-image"),
    ("post", "/v1/variations"),
    ("get", "/v1/generations/{id}"),
    ("post", "/v1/generations/{id}/cancel"),
    ("get", "/v1/models"),
]
PATH_VALUES = {"id": "gen_0123456789abcdef01234567"}


def resolve(spec: dict, ref: str) -> dict:
    node = spec
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def body_of(spec: dict, op: dict):
    content = op.get("requestBody", {}).get("content", {}).get("application/json")
    if not content:
        return None
    schema = content["schema"]
    if "$ref" in schema:
        schema = resolve(spec, schema["$ref"])
    return schema.get("example") or {k: "..." for k in schema.get("required", [])}


def curl(method: str, url: str, body) -> str:
    lines = [f"curl -sS -X {method.upper()} {url} \\", '  -H "Authorization: Bearer $IMAGEN_API_KEY"']
    if body is not None:
        lines[-1] += " \\"
        lines += ['  -H "Content-Type: application/json" \\', f"  -d '{json.dumps(body)}'"]
    return "\n".join(lines)


def go(method: str, url: str, body) -> str:
    payload = "nil" if body is None else "bytes.NewBufferString(`" + json.dumps(body) + "`)"
    ctype = '' if body is None else '\n\treq.Header.Set("Content-Type", "application/json")'
    imports = '\t"bytes"\n' if body is not None else ""
    return f"""package main

import (
{imports}\t"fmt"
\t"io"
\t"net/http"
\t"os"
)

func main() {{
\treq, err := http.NewRequest("{method.upper()}", "{url}", {payload})
\tif err != nil {{
\t\tpanic(err)
\t}}
\treq.Header.Set("Authorization", "Bearer "+os.Getenv("IMAGEN_API_KEY")){ctype}
\tresp, err := http.DefaultClient.Do(req)
\tif err != nil {{
\t\tpanic(err)
\t}}
\tdefer resp.Body.Close()
\tout, _ := io.ReadAll(resp.Body)
\tfmt.Println(resp.Status, string(out)) // errors: {{"error": {{"code", "message", "details"}}}}
}}"""


def php(method: str, url: str, body) -> str:
    lines = [
        "<?php",
        f"$ch = curl_init('{url}');",
        "curl_setopt_array($ch, [",
        f"    CURLOPT_CUSTOMREQUEST => '{method.upper()}',",
        "    CURLOPT_RETURNTRANSFER => true,",
        "    CURLOPT_HTTPHEADER => [",
        "        'Authorization: Bearer ' . getenv('IMAGEN_API_KEY'),",
    ]
    if body is not None:
        lines += ["        'Content-Type: application/json',", "    ],"]
        php_array = json.dumps(body).replace("'", "\\'")
        lines += [f"    CURLOPT_POSTFIELDS => '{php_array}',"]
    else:
        lines += ["    ],"]
    lines += [
        "]);",
        "$answer = json_decode(curl_exec($ch), true);",
        "$status = curl_getinfo($ch, CURLINFO_RESPONSE_CODE); // 4xx/5xx: $answer['error']['code']",
        "curl_close($ch);",
        "var_dump($status, $answer);",
    ]
    return "\n".join(lines)


def render(spec: dict) -> str:
    out = [
        "# Calling imagen from any language",
        "",
        "Generated from the OpenAPI document (`crates/imagen-server/openapi.json`, version",
        f"{spec['info']['version']}) by `tools/client_examples.py`; do not edit by hand. Python and",
        "Node.js have SDKs (`clients/python`, `clients/node`); for Go and PHP these are the",
        "requests as the server takes them. Every request carries `Authorization: Bearer KEY`; errors are",
        '`{"error": {"code", "message", "details"}}` with the status of the code.',
        "",
    ]
    for method, path in ROUTES:
        op = spec["paths"][path][method]
        url = BASE + path
        for k, v in PATH_VALUES.items():
            url = url.replace("{" + k + "}", v)
        body = body_of(spec, op)
        out += [f"## {method.upper()} {path}", "", op.get("summary", "").strip(), ""]
        for lang, code in (("sh", curl(method, url, body)), ("go", go(method, url, body)), ("php", php(method, url, body))):
            out += [f"```{lang}", code, "```", ""]
    return "\n".join(out).rstrip() + "\n"


def main() -> int:
    spec = json.loads(SPEC.read_text())
    text = render(spec)
    if "--check" in sys.argv:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT.relative_to(ROOT)} is stale: run python3 tools/client_examples.py", file=sys.stderr)
            return 1
        print(f"{OUT.relative_to(ROOT)} matches the OpenAPI document")
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
