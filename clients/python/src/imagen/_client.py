"""`Imagen` (blocking) and `AsyncImagen` (asyncio): the same methods, over httpx. Requests are
built and answers read by shared functions; only the transport differs."""

from __future__ import annotations

import base64
import json
import os
import pathlib
from typing import Any, AsyncIterator, Dict, Iterator, List, Literal, Optional, Sequence, Tuple, Union
from urllib.parse import urljoin

import httpx
from typing_extensions import TypedDict, Unpack

from ._errors import ImagenError, error_from_response
from ._models import Event, Generation, Model, RateLimit

#: an input image: raw bytes, a file path, or a string the server takes as is (base64, a
#: `data:` URI, or an http(s) URL when the operator allows fetching)
ImageInput = Union[bytes, bytearray, pathlib.Path, str]
#: (LoRA id, scale) pairs, or {"name", "scale"} objects
Loras = Sequence[Union[Tuple[str, float], Dict[str, Any]]]

DEFAULT_BASE_URL = "http://localhost:8080/v1"


def _encode_image(image: ImageInput) -> str:
    if isinstance(image, (bytes, bytearray)):
        return base64.b64encode(bytes(image)).decode()
    if isinstance(image, pathlib.Path):
        return base64.b64encode(image.read_bytes()).decode()
    if image.startswith(("data:", "http://", "https://")):
        return image
    if len(image) < 4096 and os.path.isfile(image):
        return base64.b64encode(pathlib.Path(image).read_bytes()).decode()
    return image


def _body(params: Dict[str, Any]) -> Dict[str, Any]:
    """The JSON body: unset parameters left out, images encoded, `background` → `async`."""
    out: Dict[str, Any] = {}
    for k, v in params.items():
        if v is None:
            continue
        if k in ("image", "mask"):
            v = _encode_image(v)
        elif k == "loras":
            v = [x if isinstance(x, dict) else {"name": x[0], "scale": x[1]} for x in v]
        elif k == "background":
            k = "async"
        out[k] = v
    return out


class GenerationParams(TypedDict, total=False):
    """The optional fields of POST /text-to-image (see the OpenAPI document for each)."""

    model: str
    negative_prompt: str
    width: int
    height: int
    num_images: int
    steps: int
    guidance_scale: float
    scheduler: str
    seed: int
    rng: Literal["torch", "philox"]
    response_format: Literal["url", "b64_json"]
    output_format: Literal["png", "jpeg", "webp"]
    loras: Loras
    webhook_url: str
    webhook_secret: str
    #: answer at once with status "processing" (the API's `async`)
    background: bool
    long_prompt: bool
    max_sequence_length: int
    true_cfg_scale: float
    skip_guidance_layers: List[int]
    skip_layer_guidance_scale: float
    skip_layer_guidance_start: float
    skip_layer_guidance_stop: float
    #: any other field of the API, sent as is
    extra: Dict[str, Any]


class ImageToImageParams(GenerationParams, total=False):
    strength: float
    #: white (or transparent) = repaint
    mask: ImageInput
    masked_content: Literal["original", "fill", "latent_noise", "latent_nothing"]


class VariationsParams(TypedDict, total=False):
    prompt: str
    variation_strength: float
    num_images: int
    seed: int
    model: str
    response_format: Literal["url", "b64_json"]
    output_format: Literal["png", "jpeg", "webp"]
    webhook_url: str
    webhook_secret: str
    background: bool
    extra: Dict[str, Any]


def _with_extra(fields: Dict[str, Any], params: Any) -> Dict[str, Any]:
    p = dict(params)
    extra = p.pop("extra", None) or {}
    return {**fields, **p, **extra}


def _read(response: httpx.Response) -> Any:
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code >= 400:
        raise error_from_response(response.status_code, body, response.headers)
    return body


def _parse_sse(lines: List[str], state: Dict[str, Any]) -> Optional[Event]:
    """Feeds one line; an Event when a blank line ends one."""
    (line,) = lines
    if line == "":
        if not state.get("data"):
            state.clear()
            return None
        data = "\n".join(state["data"])
        ev = Event(event=state.get("event", "message"), id=state.get("id"), data=json.loads(data) if data else {})
        state.clear()
        return ev
    if line.startswith(":"):
        return None
    name, _, value = line.partition(":")
    value = value[1:] if value.startswith(" ") else value
    if name == "data":
        state.setdefault("data", []).append(value)
    elif name in ("event", "id"):
        state[name] = value
    return None


class _Base:
    def __init__(self, api_key: Optional[str], base_url: Optional[str]) -> None:
        key = api_key or os.environ.get("IMAGEN_API_KEY")
        if not key:
            raise ImagenError("no API key: pass api_key= or set IMAGEN_API_KEY")
        self.api_key = key
        self.base_url = (base_url or os.environ.get("IMAGEN_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        #: X-RateLimit-* of the latest answer
        self.rate_limit: Optional[RateLimit] = None

    def _headers(self, idempotency_key: Optional[str] = None) -> Dict[str, str]:
        h = {"Authorization": f"Bearer {self.api_key}", "User-Agent": "imagen-python/0.1.0"}
        if idempotency_key:
            h["Idempotency-Key"] = idempotency_key
        return h

    def _url(self, path: str) -> str:
        return self.base_url + path

    def _image_url(self, url: str) -> str:
        # signed links may be relative to the server's root
        return urljoin(self.base_url + "/", url)

    def _generation(self, response: httpx.Response) -> Generation:
        self.rate_limit = RateLimit.from_headers(response.headers)
        return Generation.from_dict(_read(response), self.rate_limit)


class Imagen(_Base):
    """Blocking client. `Imagen(api_key=..., base_url="http://localhost:8080/v1")`; the key and
    URL may come from `IMAGEN_API_KEY` and `IMAGEN_BASE_URL`."""

    def __init__(
        self,
        api_key: Optional[str] = None,
        *,
        base_url: Optional[str] = None,
        timeout: float = 600.0,
        http_client: Optional[httpx.Client] = None,
    ) -> None:
        super().__init__(api_key, base_url)
        self._http = http_client or httpx.Client(timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Imagen":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _post(self, path: str, body: Dict[str, Any], idempotency_key: Optional[str]) -> Generation:
        r = self._http.post(self._url(path), json=_body(body), headers=self._headers(idempotency_key))
        return self._generation(r)

    def text_to_image(
        self, prompt: str, *, idempotency_key: Optional[str] = None, **params: Unpack[GenerationParams]
    ) -> Generation:
        """POST /text-to-image. `background=True` answers at once (status "processing"); follow
        it with `events()` or `wait()`."""
        return self._post("/text-to-image", _with_extra({"prompt": prompt}, params), idempotency_key)

    def image_to_image(
        self,
        image: ImageInput,
        prompt: str,
        *,
        idempotency_key: Optional[str] = None,
        **params: Unpack[ImageToImageParams],
    ) -> Generation:
        """POST /image-to-image (with `mask`: inpainting, white = repaint)."""
        body = _with_extra({"image": image, "prompt": prompt}, params)
        return self._post("/image-to-image", body, idempotency_key)

    def variations(
        self, image: ImageInput, *, idempotency_key: Optional[str] = None, **params: Unpack[VariationsParams]
    ) -> Generation:
        """POST /variations."""
        return self._post("/variations", _with_extra({"image": image}, params), idempotency_key)

    def get_generation(self, id: str) -> Generation:
        return self._generation(self._http.get(self._url(f"/generations/{id}"), headers=self._headers()))

    def cancel(self, id: str) -> Generation:
        return self._generation(self._http.post(self._url(f"/generations/{id}/cancel"), headers=self._headers()))

    def models(self) -> List[Model]:
        body = _read(self._http.get(self._url("/models"), headers=self._headers()))
        return [Model.from_dict(m) for m in body.get("data", body.get("models", []))]

    def events(self, id: str, *, last_event_id: Optional[str] = None) -> Iterator[Event]:
        """The generation's Server-Sent Events until `completed` or `failed`."""
        headers = self._headers()
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        with self._http.stream("GET", self._url(f"/generations/{id}/events"), headers=headers) as r:
            if r.status_code >= 400:
                r.read()
                _read(r)
            state: Dict[str, Any] = {}
            for line in r.iter_lines():
                ev = _parse_sse([line], state)
                if ev is not None:
                    yield ev
                    if ev.event in ("completed", "failed"):
                        return

    def wait(self, id: str) -> Generation:
        """Blocks until the generation ends (through its event stream)."""
        for ev in self.events(id):
            if ev.generation is not None:
                return ev.generation
        return self.get_generation(id)

    def download(self, image: Any) -> bytes:
        """The bytes of an `Image` (its base64, or its signed link)."""
        if image.b64_json:
            return base64.b64decode(image.b64_json)
        r = self._http.get(self._image_url(image.url))
        if r.status_code >= 400:
            _read(r)
        return r.content


class AsyncImagen(_Base):
    """asyncio client: the methods of `Imagen`, awaited; `events()` is an async iterator."""

    def __init__(
        self,
        api_key: Optional[str] = None,
        *,
        base_url: Optional[str] = None,
        timeout: float = 600.0,
        http_client: Optional[httpx.AsyncClient] = None,
    ) -> None:
        super().__init__(api_key, base_url)
        self._http = http_client or httpx.AsyncClient(timeout=timeout)

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncImagen":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def _post(self, path: str, body: Dict[str, Any], idempotency_key: Optional[str]) -> Generation:
        r = await self._http.post(self._url(path), json=_body(body), headers=self._headers(idempotency_key))
        return self._generation(r)

    async def text_to_image(
        self, prompt: str, *, idempotency_key: Optional[str] = None, **params: Unpack[GenerationParams]
    ) -> Generation:
        """As `Imagen.text_to_image`."""
        return await self._post("/text-to-image", _with_extra({"prompt": prompt}, params), idempotency_key)

    async def image_to_image(
        self,
        image: ImageInput,
        prompt: str,
        *,
        idempotency_key: Optional[str] = None,
        **params: Unpack[ImageToImageParams],
    ) -> Generation:
        """As `Imagen.image_to_image`."""
        body = _with_extra({"image": image, "prompt": prompt}, params)
        return await self._post("/image-to-image", body, idempotency_key)

    async def variations(
        self, image: ImageInput, *, idempotency_key: Optional[str] = None, **params: Unpack[VariationsParams]
    ) -> Generation:
        """As `Imagen.variations`."""
        return await self._post("/variations", _with_extra({"image": image}, params), idempotency_key)

    async def get_generation(self, id: str) -> Generation:
        return self._generation(await self._http.get(self._url(f"/generations/{id}"), headers=self._headers()))

    async def cancel(self, id: str) -> Generation:
        r = await self._http.post(self._url(f"/generations/{id}/cancel"), headers=self._headers())
        return self._generation(r)

    async def models(self) -> List[Model]:
        body = _read(await self._http.get(self._url("/models"), headers=self._headers()))
        return [Model.from_dict(m) for m in body.get("data", body.get("models", []))]

    async def events(self, id: str, *, last_event_id: Optional[str] = None) -> AsyncIterator[Event]:
        headers = self._headers()
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        async with self._http.stream("GET", self._url(f"/generations/{id}/events"), headers=headers) as r:
            if r.status_code >= 400:
                await r.aread()
                _read(r)
            state: Dict[str, Any] = {}
            async for line in r.aiter_lines():
                ev = _parse_sse([line], state)
                if ev is not None:
                    yield ev
                    if ev.event in ("completed", "failed"):
                        return

    async def wait(self, id: str) -> Generation:
        async for ev in self.events(id):
            if ev.generation is not None:
                return ev.generation
        return await self.get_generation(id)

    async def download(self, image: Any) -> bytes:
        if image.b64_json:
            return base64.b64decode(image.b64_json)
        r = await self._http.get(self._image_url(image.url))
        if r.status_code >= 400:
            _read(r)
        return r.content
