//! Errors. [`Error`] is the crate's own; [`ApiError`] is what a client sees, and
//! [`ApiError::status`] is the one place an error becomes an HTTP status.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration: {0}")]
    Config(String),
    #[error("database: {0}")]
    Store(#[from] rusqlite::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Engine(#[from] imagen_engine::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The contract's error codes, plus the HTTP-level ones it leaves to us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    PayloadTooLarge,
    UnsupportedMediaType,
    RateLimitExceeded,
    ServiceUnavailable,
    Internal,
    /// A generation stopped by `POST /v1/generations/{id}/cancel` (its record's error code).
    Cancelled,
    /// An `Idempotency-Key` reused with a different request: 409, a conflict with what the key
    /// recorded (the IETF draft suggests 422; 409 is what clients and fuzzers treat as state).
    IdempotencyKeyReused,
    /// An `Idempotency-Key` whose first request is still being answered (409).
    IdempotencyKeyInUse,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BadRequest => "bad_request",
            Code::Unauthorized => "unauthorized",
            Code::Forbidden => "forbidden",
            Code::NotFound => "not_found",
            Code::MethodNotAllowed => "method_not_allowed",
            Code::PayloadTooLarge => "payload_too_large",
            Code::UnsupportedMediaType => "unsupported_media_type",
            Code::RateLimitExceeded => "rate_limit_exceeded",
            Code::ServiceUnavailable => "service_unavailable",
            Code::Internal => "internal_error",
            Code::Cancelled => "cancelled",
            Code::IdempotencyKeyReused => "idempotency_key_reused",
            Code::IdempotencyKeyInUse => "idempotency_key_in_use",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Code::BadRequest => StatusCode::BAD_REQUEST,
            Code::Unauthorized => StatusCode::UNAUTHORIZED,
            Code::Forbidden => StatusCode::FORBIDDEN,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Code::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Code::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Code::RateLimitExceeded => StatusCode::TOO_MANY_REQUESTS,
            Code::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            // a waiting request whose job was cancelled meanwhile
            Code::Cancelled => StatusCode::CONFLICT,
            Code::IdempotencyKeyReused => StatusCode::CONFLICT,
            Code::IdempotencyKeyInUse => StatusCode::CONFLICT,
        }
    }
}

/// Which error body a route answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Flavor {
    /// `{"error":{"code","message","details"}}`
    #[default]
    Contract,
    /// OpenAI's `{"error":{"message","type","param","code"}}`, for the `/v1/images/*` routes.
    OpenAi,
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: Code,
    pub message: String,
    pub details: Option<Value>,
    pub retry_after: Option<u64>,
    pub flavor: Flavor,
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            details: None,
            retry_after: None,
            flavor: Flavor::Contract,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(Code::BadRequest, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, message)
    }

    /// Internal failures are logged in full and shown to the client without internals.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!("internal error: {e}");
        Self::new(Code::Internal, "internal error; the server log has the details")
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn with_flavor(mut self, flavor: Flavor) -> Self {
        self.flavor = flavor;
        self
    }

    pub fn status(&self) -> StatusCode {
        self.code.status()
    }

    pub fn body(&self) -> Value {
        match self.flavor {
            Flavor::Contract => {
                let mut e = json!({"code": self.code.as_str(), "message": self.message});
                if let Some(d) = &self.details {
                    e["details"] = d.clone();
                }
                json!({ "error": e })
            }
            Flavor::OpenAi => {
                let kind = match self.code {
                    Code::Unauthorized | Code::Forbidden => "authentication_error",
                    Code::RateLimitExceeded => "rate_limit_error",
                    Code::Internal | Code::ServiceUnavailable => "server_error",
                    _ => "invalid_request_error",
                };
                let param = self.details.as_ref().and_then(|d| d.get("field")).cloned();
                json!({"error": {
                    "message": self.message,
                    "type": kind,
                    "param": param,
                    "code": self.code.as_str(),
                }})
            }
        }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match e {
            Error::Engine(imagen_engine::Error::BadInput(m)) => ApiError::bad_request(m),
            Error::Engine(imagen_engine::Error::Cancelled) => ApiError::new(Code::Cancelled, "cancelled by the client"),
            other => ApiError::internal(other),
        }
    }
}

impl From<imagen_engine::Error> for ApiError {
    fn from(e: imagen_engine::Error) -> Self {
        Error::Engine(e).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status(), axum::Json(self.body())).into_response();
        if let Some(secs) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}
