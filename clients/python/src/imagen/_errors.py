"""Errors: the API's `{"error": {"code", "message", "details"}}` as exceptions, one class per status."""

from __future__ import annotations

from typing import Any, Dict, Optional


class ImagenError(Exception):
    """Any error answer of the server (or a broken connection: status 0)."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        code: str = "",
        details: Optional[Dict[str, Any]] = None,
        retry_after: Optional[float] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.details = details or {}
        #: seconds, from `Retry-After` (429, 503)
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status}, code={self.code!r}, message={self.message!r})"


class BadRequestError(ImagenError):
    """400: a parameter is wrong; `details["field"]` names it."""


class AuthenticationError(ImagenError):
    """401: no key, or an unknown or revoked one."""


class PermissionDeniedError(ImagenError):
    """403: the key's scopes do not allow this."""


class NotFoundError(ImagenError):
    """404: no such generation, model or image."""


class ConflictError(ImagenError):
    """409: an Idempotency-Key reused with another body, or still in flight."""


class RateLimitError(ImagenError):
    """429: the plan's per-minute or per-day limit; `retry_after` says when to come back."""


class ServiceUnavailableError(ImagenError):
    """503: the queue is full or no model is loaded yet; retry after `retry_after`."""


class InternalServerError(ImagenError):
    """500 and other 5xx."""


_BY_STATUS = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}


def error_from_response(status: int, body: Any, headers: Any) -> ImagenError:
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        err = {"code": "", "message": f"HTTP {status}"}
    retry = headers.get("retry-after") if headers is not None else None
    try:
        retry_after = float(retry) if retry is not None else None
    except ValueError:
        retry_after = None
    cls = _BY_STATUS.get(status, InternalServerError if status >= 500 else ImagenError)
    return cls(
        str(err.get("message", "")),
        status=status,
        code=str(err.get("code", "")),
        details=err.get("details") if isinstance(err.get("details"), dict) else None,
        retry_after=retry_after,
    )
