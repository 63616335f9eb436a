"""schemathesis hooks for imagen's OpenAPI document: strings of `format: image` (an input image
as base64 or a data URI) and the multipart forms' `format: binary` files are drawn as real small
PNGs, as a client sends them (an image that does not decode is a 400, which no schema can say). Used by
`tools/schemathesis_check.sh`:

    SCHEMATHESIS_HOOKS=tools.schemathesis_hooks st run http://127.0.0.1:8080/openapi.json ...
"""

import base64
import struct
import zlib

import schemathesis
from hypothesis import strategies as st


def png(width: int, height: int, gray: int) -> bytes:
    rows = b"".join(b"\x00" + bytes([gray]) * width for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


@st.composite
def images(draw):
    w, h = draw(st.integers(1, 96)), draw(st.integers(1, 96))
    data = base64.b64encode(png(w, h, draw(st.integers(0, 255)))).decode()
    return draw(st.sampled_from([data, "data:image/png;base64," + data]))


@st.composite
def files(draw):
    w, h = draw(st.integers(1, 96)), draw(st.integers(1, 96))
    return png(w, h, draw(st.integers(0, 255)))


schemathesis.openapi.format("image", images())
schemathesis.openapi.format("binary", files())
