"""The asyncio client, and webhook deliveries verified with `verify_webhook`."""

from __future__ import annotations

import asyncio
import http.server
import queue
import threading

import pytest

import imagen
from imagen import AsyncImagen, Imagen, verify_webhook

SMALL = dict(model="tiny-sd15", width=64, height=64, steps=2)


def test_async_client_generates_concurrently_and_streams(server, key):
    async def main():
        async with AsyncImagen(api_key=key, base_url=server.base_url) as c:
            a, b = await asyncio.gather(
                c.text_to_image("a fox", seed=11, response_format="b64_json", **SMALL),
                c.text_to_image("a fox", seed=11, response_format="b64_json", **SMALL),
            )
            assert a.id != b.id and a.images[0].b64_json == b.images[0].b64_json
            g = await c.text_to_image("a fox", seed=12, background=True, **SMALL)
            kinds = [e.event async for e in c.events(g.id)]
            assert "progress" in kinds and kinds[-1] == "completed"
            done = await c.wait(g.id)
            assert done.status == "completed" and len(await c.download(done.images[0])) > 100
            assert "tiny-sd15" in [m.id for m in await c.models()]
            with pytest.raises(imagen.BadRequestError):
                await c.text_to_image("x", model="tiny-sd15", height=5)

    asyncio.run(main())


class _Hooks(http.server.BaseHTTPRequestHandler):
    received: "queue.Queue" = queue.Queue()

    def do_POST(self):  # noqa: N802 (the stdlib's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.put((dict(self.headers.items()), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_webhook_deliveries_verify(server, key):
    hooks = http.server.HTTPServer(("127.0.0.1", 0), _Hooks)
    threading.Thread(target=hooks.serve_forever, daemon=True).start()
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    try:
        client = Imagen(api_key=key, base_url=server.base_url)
        g = client.text_to_image(
            "a boat", seed=9, webhook_url=f"http://127.0.0.1:{hooks.server_port}/hook", webhook_secret=secret, **SMALL
        )
        headers, body = _Hooks.received.get(timeout=120)
    finally:
        hooks.shutdown()
    delivered = verify_webhook(body, headers, secret)
    assert delivered["id"] == g.id and delivered["status"] == "completed"
    # imagen's own signature alone passes too
    own = {k: v for k, v in headers.items() if not k.lower().startswith("webhook-")}
    assert verify_webhook(body, own, secret)["id"] == g.id
    with pytest.raises(imagen.WebhookVerificationError):
        verify_webhook(body.replace(b"completed", b"failed"), headers, secret)
    with pytest.raises(imagen.WebhookVerificationError):
        verify_webhook(body, headers, "whsec_" + "A" * 32)
    with pytest.raises(imagen.WebhookVerificationError, match="tolerance"):
        verify_webhook(body, headers, secret, now=int(headers["webhook-timestamp"]) + 3600)
