"""Verifying imagen's webhook deliveries. Each is signed the Standard Webhooks way
(`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256 of
"id.timestamp.body">`, the key being the base64 after `whsec_`, or the secret's own bytes) and
imagen's own way (`X-Imagen-Signature: sha256=<hex HMAC of "timestamp.body">`); either passes."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from typing import Any, Mapping, Optional, Union


class WebhookVerificationError(Exception):
    """The delivery is not signed with this secret, or is too old."""


def _key(secret: str) -> bytes:
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret[len("whsec_") :], validate=True)
        except (binascii.Error, ValueError):
            pass
    return secret.encode()


def _header(headers: Mapping[str, str], name: str) -> Optional[str]:
    for k, v in headers.items():
        if k.lower() == name:
            return v
    return None


def verify_webhook(
    payload: Union[bytes, str],
    headers: Mapping[str, str],
    secret: str,
    *,
    tolerance: int = 300,
    now: Optional[float] = None,
) -> Any:
    """The delivery's JSON (the generation) when its signature matches `secret` and its
    timestamp is within `tolerance` seconds; else `WebhookVerificationError`. Pass the raw
    body, before any JSON parsing."""
    body = payload.encode() if isinstance(payload, str) else bytes(payload)
    now = time.time() if now is None else now
    ts = _header(headers, "webhook-timestamp") or _header(headers, "x-imagen-timestamp")
    try:
        ts_n = int(ts or "")
    except ValueError:
        raise WebhookVerificationError("missing or bad timestamp header") from None
    if abs(now - ts_n) > tolerance:
        raise WebhookVerificationError("timestamp outside the tolerance (replayed or clock skew)")
    wid, sigs = _header(headers, "webhook-id"), _header(headers, "webhook-signature")
    if wid and sigs:
        mac = hmac.new(_key(secret), f"{wid}.{ts}.".encode() + body, hashlib.sha256).digest()
        expected = base64.b64encode(mac).decode()
        for sig in sigs.split():
            version, _, value = sig.partition(",")
            if version == "v1" and hmac.compare_digest(value, expected):
                return json.loads(body)
    own = _header(headers, "x-imagen-signature")
    if own:
        mac = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
        if hmac.compare_digest(own, f"sha256={mac}"):
            return json.loads(body)
    raise WebhookVerificationError("no valid signature for this secret")
