//! A1111's request fields: its sampler and scheduler names, typed reads of a JSON body that
//! answer FastAPI's 422 for a wrong type, `<lora:…>` prompt tags, its error shape.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::error::ApiError;

/// A1111's sampler names (and aliases) → ours; `DPM++ 2M` takes its Karras schedule from the
/// `scheduler` field (or the old combined name `DPM++ 2M Karras`).
pub(super) const SAMPLERS: &[(&str, &str, &[&str])] = &[
    ("Euler a", "euler_a", &["k_euler_a", "k_euler_ancestral"]),
    ("Euler", "euler", &["k_euler"]),
    ("DPM++ 2M", "dpmpp_2m", &["k_dpmpp_2m"]),
    ("DDIM", "ddim", &[]),
    ("PLMS", "pndm", &["PNDM"]),
    ("LCM", "lcm", &[]),
    ("Heun", "heun", &["k_heun"]),
];

/// A1111's schedulers this server has: `automatic` (the sampler's own) and `karras` (DPM++ 2M).
pub(super) const SCHEDULERS: &[(&str, &str)] = &[("automatic", "Automatic"), ("karras", "Karras")];

/// A422 as FastAPI words it: `{"detail": [{"loc", "msg", "type"}]}`.
pub(super) fn unprocessable(field: &str, msg: &str, kind: &str) -> Rejected {
    let body = json!({"detail": [{"loc": ["body", field], "msg": msg, "type": kind}]});
    Box::new((StatusCode::UNPROCESSABLE_ENTITY, axum::Json(body)).into_response())
}

/// A request refused before it runs (boxed: a response is large).
pub(super) type Rejected = Box<Response>;

/// Our errors in A1111's shape (`{"error", "detail", "body", "errors"}`), same status.
pub(super) fn error(e: ApiError) -> Response {
    let status = e.status();
    let body =
        json!({"error": e.code.as_str(), "detail": e.message, "body": "", "errors": e.details.unwrap_or(Value::Null)});
    (status, axum::Json(body)).into_response()
}

/// The fields of a txt2img / img2img body, each checked for its JSON type.
pub(super) struct Body(pub(super) Map<String, Value>);

impl Body {
    pub(super) fn parse(bytes: &[u8]) -> Result<Body, Rejected> {
        match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(m)) => Ok(Body(m)),
            Ok(_) => Err(unprocessable(
                "__root__",
                "value is not a valid dict",
                "type_error.dict",
            )),
            Err(e) => Err(unprocessable(
                "__root__",
                &format!("invalid JSON: {e}"),
                "value_error.jsondecode",
            )),
        }
    }

    pub(super) fn get(&self, k: &str) -> Option<&Value> {
        self.0.get(k).filter(|v| !v.is_null())
    }

    pub(super) fn str(&self, k: &str) -> Result<Option<String>, Rejected> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(unprocessable(k, "str type expected", "type_error.str")),
        }
    }

    pub(super) fn int(&self, k: &str) -> Result<Option<i64>, Rejected> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .or_else(|| v.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
                .map(Some)
                .ok_or_else(|| unprocessable(k, "value is not a valid integer", "type_error.integer")),
        }
    }

    pub(super) fn float(&self, k: &str) -> Result<Option<f64>, Rejected> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| unprocessable(k, "value is not a valid float", "type_error.float")),
        }
    }

    /// A count or size: a non-negative integer.
    pub(super) fn size(&self, k: &str) -> Result<Option<usize>, Rejected> {
        match self.int(k)? {
            Some(v) if v < 0 => Err(unprocessable(
                k,
                "ensure this value is greater than or equal to 0",
                "value_error.number.not_ge",
            )),
            v => Ok(v.map(|v| v as usize)),
        }
    }
}

/// `<lora:name:0.8>` tags out of a prompt: the prompt without them, and (name, scale).
pub fn lora_tags(prompt: &str) -> (String, Vec<(String, f32)>) {
    let mut out = String::with_capacity(prompt.len());
    let mut loras = Vec::new();
    let mut rest = prompt;
    while let Some(start) = rest.find("<lora:") {
        let Some(len) = rest[start..].find('>') else { break };
        out.push_str(&rest[..start]);
        let inner = &rest[start + 6..start + len];
        let (name, scale) = match inner.split_once(':') {
            Some((n, s)) => (
                n,
                s.split(':').next().and_then(|s| s.trim().parse().ok()).unwrap_or(1.0),
            ),
            None => (inner, 1.0),
        };
        loras.push((name.trim().to_owned(), scale));
        rest = &rest[start + len + 1..];
    }
    out.push_str(rest);
    (out.split_whitespace().collect::<Vec<_>>().join(" "), loras)
}

/// A1111's sampler (and scheduler) → our scheduler name.
pub(super) fn sampler(name: &str, scheduler: Option<&str>) -> Result<String, ApiError> {
    let (base, karras_in_name) = match name.strip_suffix(" Karras") {
        Some(b) => (b, true),
        None => (name, false),
    };
    let ours = SAMPLERS
        .iter()
        .find(|(n, _, aliases)| n.eq_ignore_ascii_case(base) || aliases.iter().any(|a| a.eq_ignore_ascii_case(base)))
        .map(|(_, ours, _)| *ours)
        .ok_or_else(|| {
            let known: Vec<&str> = SAMPLERS.iter().map(|s| s.0).collect();
            ApiError::bad_request(format!(
                "sampler {name:?} is not available (available: {})",
                known.join(", ")
            ))
        })?;
    let karras = karras_in_name || scheduler.is_some_and(|s| s.eq_ignore_ascii_case("karras"));
    match (ours, karras) {
        ("dpmpp_2m", true) => Ok("dpmpp_2m_karras".into()),
        (_, true) => Err(ApiError::bad_request(format!(
            "the karras scheduler is available with DPM++ 2M, not {name}"
        ))),
        (o, false) => Ok(o.into()),
    }
}
