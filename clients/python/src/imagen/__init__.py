"""imagen: Python client for the self-hosted Image Generation API server.

    from imagen import Imagen
    client = Imagen(api_key="...", base_url="http://localhost:8080/v1")
    gen = client.text_to_image("a lighthouse at dusk", width=512, height=512)
    open("out.png", "wb").write(client.download(gen.images[0]))
"""

from ._client import (
    DEFAULT_BASE_URL,
    AsyncImagen,
    GenerationParams,
    ImageInput,
    ImageToImageParams,
    Imagen,
    VariationsParams,
)
from ._errors import (
    AuthenticationError,
    BadRequestError,
    ConflictError,
    ImagenError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
)
from ._models import ErrorInfo, Event, Generation, Image, Model, Progress, RateLimit
from .webhooks import WebhookVerificationError, verify_webhook

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_BASE_URL",
    "AsyncImagen",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "ErrorInfo",
    "Event",
    "Generation",
    "GenerationParams",
    "Image",
    "ImageInput",
    "ImageToImageParams",
    "Imagen",
    "ImagenError",
    "InternalServerError",
    "Model",
    "NotFoundError",
    "PermissionDeniedError",
    "Progress",
    "RateLimit",
    "RateLimitError",
    "ServiceUnavailableError",
    "VariationsParams",
    "WebhookVerificationError",
    "verify_webhook",
    "__version__",
]
