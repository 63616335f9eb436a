"""Typed views of the API's JSON (the OpenAPI document's schemas). Each keeps the whole
answer in `raw`, so fields newer than this client stay reachable."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


@dataclass
class RateLimit:
    """`X-RateLimit-Limit/Remaining/Reset` of the answer (reset: seconds until the window resets)."""

    limit: Optional[int]
    remaining: Optional[int]
    reset: Optional[int]

    @classmethod
    def from_headers(cls, headers: Any) -> "RateLimit":
        def num(name: str) -> Optional[int]:
            v = headers.get(name)
            try:
                return int(v) if v is not None else None
            except ValueError:
                return None

        return cls(num("x-ratelimit-limit"), num("x-ratelimit-remaining"), num("x-ratelimit-reset"))


@dataclass
class Image:
    width: int
    height: int
    seed: Optional[int] = None
    #: signed, expiring link (response_format "url")
    url: Optional[str] = None
    #: base64 image (response_format "b64_json")
    b64_json: Optional[str] = None

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Image":
        return cls(
            width=int(d.get("width", 0)),
            height=int(d.get("height", 0)),
            seed=d.get("seed"),
            url=d.get("url"),
            b64_json=d.get("b64_json"),
        )


@dataclass
class Progress:
    step: Optional[int] = None
    total: Optional[int] = None
    queued: Optional[bool] = None
    position: Optional[int] = None


@dataclass
class ErrorInfo:
    code: str
    message: str


@dataclass
class Generation:
    id: str
    status: str  # "processing" | "completed" | "failed"
    created_at: str
    model: str
    prompt: str
    images: List[Image]
    seed: Optional[int] = None
    progress: Optional[Progress] = None
    error: Optional[ErrorInfo] = None
    batch_size: Optional[int] = None
    rate_limit: Optional[RateLimit] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def done(self) -> bool:
        return self.status != "processing"

    @classmethod
    def from_dict(cls, d: Dict[str, Any], rate_limit: Optional[RateLimit] = None) -> "Generation":
        p = d.get("progress")
        e = d.get("error")
        return cls(
            id=d["id"],
            status=d["status"],
            created_at=d.get("created_at", ""),
            model=d.get("model", ""),
            prompt=d.get("prompt", ""),
            images=[Image.from_dict(i) for i in d.get("images") or []],
            seed=d.get("seed"),
            progress=Progress(**{k: p.get(k) for k in ("step", "total", "queued", "position")})
            if isinstance(p, dict)
            else None,
            error=ErrorInfo(str(e.get("code", "")), str(e.get("message", ""))) if isinstance(e, dict) else None,
            batch_size=d.get("batch_size"),
            rate_limit=rate_limit,
            raw=d,
        )


@dataclass
class Model:
    id: str
    family: Optional[str] = None
    native_size: Optional[int] = None
    default_steps: Optional[int] = None
    default_guidance_scale: Optional[float] = None
    default_scheduler: Optional[str] = None
    endpoints: List[str] = field(default_factory=list)
    previews: bool = False
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Model":
        return cls(
            id=d["id"],
            family=d.get("family"),
            native_size=d.get("native_size"),
            default_steps=d.get("default_steps"),
            default_guidance_scale=d.get("default_guidance_scale"),
            default_scheduler=d.get("default_scheduler"),
            endpoints=list(d.get("endpoints") or []),
            previews=bool(d.get("previews", False)),
            raw=d,
        )


@dataclass
class Event:
    """One Server-Sent Event of GET /v1/generations/{id}/events: `queued` (data
    `{"position"}`), `progress` (`{"step", "total", "preview"?}`), then `completed` or `failed`
    (data: the final generation, also in `generation`)."""

    event: str
    id: Optional[str]
    data: Dict[str, Any]

    @property
    def generation(self) -> Optional[Generation]:
        if self.event in ("completed", "failed"):
            return Generation.from_dict(self.data)
        return None
