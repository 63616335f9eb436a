"""The blocking client against a real server."""

from __future__ import annotations

import base64
import struct
import zlib

import httpx
import pytest

import imagen
from imagen import Imagen

SMALL = dict(model="tiny-sd15", width=64, height=64, steps=2)


def png_size(data: bytes) -> tuple:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:8]
    return struct.unpack(">II", data[16:24])


def gray_png(w: int, h: int, fill) -> bytes:
    """A grayscale PNG built by hand (no imaging library needed); `fill(x, y)` -> 0..255."""
    rows = b"".join(b"\x00" + bytes(fill(x, y) for x in range(w)) for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


@pytest.fixture()
def client(server, key):
    with Imagen(api_key=key, base_url=server.base_url) as c:
        yield c


def test_version_matches_the_openapi_document(server):
    doc = httpx.get(server.root + "/openapi.json").json()
    assert imagen.__version__ == doc["info"]["version"]


def test_models_are_typed(client):
    ids = [m.id for m in client.models()]
    assert "tiny-sd15" in ids and "tiny-sd2" in ids
    m = next(m for m in client.models() if m.id == "tiny-sd15")
    assert m.family == "sd15" and "text-to-image" in m.endpoints


def test_text_to_image_is_reproducible_and_reports_the_rate_limit(client):
    a = client.text_to_image("a red fox", seed=7, response_format="b64_json", **SMALL)
    b = client.text_to_image("a red fox", seed=7, response_format="b64_json", **SMALL)
    assert a.status == "completed" and a.done and a.model == "tiny-sd15"
    assert (a.images[0].width, a.images[0].height, a.images[0].seed) == (64, 64, 7)
    assert png_size(client.download(a.images[0])) == (64, 64)
    assert a.images[0].b64_json == b.images[0].b64_json
    assert a.rate_limit is not None and a.rate_limit.limit == 100
    assert b.rate_limit.remaining == a.rate_limit.remaining - 1
    # a signed link downloads the same PNG
    c = client.text_to_image("a red fox", seed=7, num_images=2, **SMALL)
    assert c.images[0].url and [i.seed for i in c.images] == [7, 8]
    assert client.download(c.images[0]) == base64.b64decode(a.images[0].b64_json)


def test_background_jobs_stream_progress(client):
    g = client.text_to_image("a lighthouse", seed=3, background=True, **SMALL)
    assert g.status == "processing"
    events = list(client.events(g.id))
    kinds = [e.event for e in events]
    assert kinds[-1] == "completed", kinds
    steps = [e.data["step"] for e in events if e.event == "progress"]
    assert steps and steps[-1] == steps[0] + len(steps) - 1 and events[-1].data["id"] == g.id
    final = events[-1].generation
    assert final is not None and final.images and final.status == "completed"
    assert client.wait(g.id).images[0].seed == 3
    assert client.get_generation(g.id).status == "completed"


def test_image_to_image_with_a_mask_and_variations(client, tmp_path):
    init = client.text_to_image("a house", seed=1, response_format="b64_json", **SMALL)
    image = base64.b64decode(init.images[0].b64_json)
    mask = tmp_path / "mask.png"
    mask.write_bytes(gray_png(64, 64, lambda x, y: 255 if 16 <= x < 48 else 0))
    out = client.image_to_image(
        image, "a house at night", mask=mask, masked_content="latent_noise", seed=2, response_format="b64_json", **SMALL
    )
    assert out.status == "completed" and out.images[0].b64_json != init.images[0].b64_json
    v = client.variations(image, num_images=2, seed=5, model="tiny-sd15", extra={"steps": 2})
    assert [i.seed for i in v.images] == [5, 6]


def test_idempotency_key_answers_the_same_generation(client):
    a = client.text_to_image("a cat", seed=4, idempotency_key="sdk-test-1", **SMALL)
    b = client.text_to_image("a cat", seed=4, idempotency_key="sdk-test-1", **SMALL)
    assert a.id == b.id


def test_errors_are_typed(server, client):
    with pytest.raises(imagen.BadRequestError) as e:
        client.text_to_image("x", model="tiny-sd15", width=7)
    assert e.value.status == 400 and e.value.code == "bad_request" and e.value.details.get("field") == "width"
    with pytest.raises(imagen.NotFoundError):
        client.get_generation("gen_000000000000000000000000")
    with pytest.raises(imagen.AuthenticationError):
        Imagen(api_key="sk-wrong", base_url=server.base_url).models()
    with pytest.raises(imagen.ImagenError, match="IMAGEN_API_KEY"):
        Imagen(api_key="", base_url=server.base_url)


def test_rate_limit_error_says_when_to_retry(server):
    free = Imagen(api_key=server.key("free"), base_url=server.base_url)
    with pytest.raises(imagen.RateLimitError) as e:
        for _ in range(11):
            free.text_to_image("x", seed=1, **SMALL)
    assert e.value.status == 429 and e.value.retry_after and e.value.retry_after > 0
    assert free.rate_limit is not None and free.rate_limit.remaining == 0

