#!/usr/bin/env python3
"""Drive a running `imagen serve` with the official `openai` Python SDK (run by hand; CI has no
Python). Exits non-zero on the first failure.

    pip install openai pillow
    mkdir -p /tmp/imagen-models && cp -r tests/fixtures/tiny-sd15 /tmp/imagen-models/
    imagen serve --models-dir /tmp/imagen-models --data-dir /tmp/imagen-data &
    KEY=$(imagen keys create --data-dir /tmp/imagen-data --plan pro | tail -1)
    python tools/openai_sdk_check.py --base-url http://127.0.0.1:8080/v1 --key "$KEY" --image tests/fixtures/golden/generate/tiny-sd15-init.png
"""

import argparse
import base64
import io
import urllib.request

import openai
from PIL import Image


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--image", required=True, help="a PNG for edits/variations")
    a = ap.parse_args()
    client = openai.OpenAI(base_url=a.base_url, api_key=a.key)

    r = client.images.generate(prompt="a lighthouse at dusk", n=1, size="64x64")
    url = r.data[0].url
    img = Image.open(io.BytesIO(urllib.request.urlopen(url).read()))
    assert img.size == (64, 64), img.size
    print("images.generate (url):", img.size, "ok")

    r = client.images.generate(prompt="a lighthouse", model="dall-e-3", response_format="b64_json", size="64x64")
    img = Image.open(io.BytesIO(base64.b64decode(r.data[0].b64_json)))
    print("images.generate (b64_json):", img.size, "ok")

    with open(a.image, "rb") as f:
        r = client.images.create_variation(image=f, n=2, response_format="b64_json")
    assert len(r.data) == 2
    print("images.create_variation: 2 images ok")

    with open(a.image, "rb") as f:
        r = client.images.edit(image=f, prompt="make it blue")
    assert r.data[0].url
    print("images.edit ok")

    try:
        client.images.generate(prompt="x", size="huge")
        raise SystemExit("a bad size was accepted")
    except openai.BadRequestError as e:
        print("bad size -> BadRequestError:", e.message)

    bad = openai.OpenAI(base_url=a.base_url, api_key="imk_wrong")
    try:
        bad.images.generate(prompt="x")
        raise SystemExit("a wrong key was accepted")
    except openai.AuthenticationError as e:
        print("wrong key -> AuthenticationError:", e.message)
    print("all ok")


if __name__ == "__main__":
    main()
