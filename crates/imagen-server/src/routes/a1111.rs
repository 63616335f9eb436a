//! AUTOMATIC1111's web API (`/sdapi/v1/*`), so the clients that speak it (Open WebUI,
//! SillyTavern, Krita plug-ins, `webuiapi`) work against this server with the same keys (Bearer,
//! or HTTP Basic with the key as the password: A1111's `--api-auth`). A1111's field names,
//! sampler names and defaults (512², 20 steps, CFG 7, `Euler a`, Philox noise, `seed: -1`
//! random) are mapped onto the contract's generation; the same settings give the same image as
//! `/v1/text-to-image` with `rng: philox`. Unknown fields are ignored, as A1111 does; a field of
//! the wrong type is a 422 in FastAPI's shape.

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::Caller;
use super::contract::decode_field;
use super::params::Params;
use crate::app::AppState;
use crate::error::ApiError;
use crate::jobs;

/// A1111's sampler names (and aliases) → ours; `DPM++ 2M` takes its Karras schedule from the
/// `scheduler` field (or the old combined name `DPM++ 2M Karras`).
const SAMPLERS: &[(&str, &str, &[&str])] = &[
    ("Euler a", "euler_a", &["k_euler_a", "k_euler_ancestral"]),
    ("Euler", "euler", &["k_euler"]),
    ("DPM++ 2M", "dpmpp_2m", &["k_dpmpp_2m"]),
    ("DDIM", "ddim", &[]),
    ("PLMS", "pndm", &["PNDM"]),
    ("LCM", "lcm", &[]),
    ("Heun", "heun", &["k_heun"]),
];

/// A1111's schedulers this server has: `automatic` (the sampler's own) and `karras` (DPM++ 2M).
const SCHEDULERS: &[(&str, &str)] = &[("automatic", "Automatic"), ("karras", "Karras")];

/// A422 as FastAPI words it: `{"detail": [{"loc", "msg", "type"}]}`.
fn unprocessable(field: &str, msg: &str, kind: &str) -> Rejected {
    let body = json!({"detail": [{"loc": ["body", field], "msg": msg, "type": kind}]});
    Box::new((StatusCode::UNPROCESSABLE_ENTITY, axum::Json(body)).into_response())
}

/// A request refused before it runs (boxed: a response is large).
type Rejected = Box<Response>;

/// Our errors in A1111's shape (`{"error", "detail", "body", "errors"}`), same status.
fn error(e: ApiError) -> Response {
    let status = e.status();
    let body =
        json!({"error": e.code.as_str(), "detail": e.message, "body": "", "errors": e.details.unwrap_or(Value::Null)});
    (status, axum::Json(body)).into_response()
}

/// The fields of a txt2img / img2img body, each checked for its JSON type.
struct Body(Map<String, Value>);

impl Body {
    fn parse(bytes: &[u8]) -> Result<Body, Rejected> {
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

    fn get(&self, k: &str) -> Option<&Value> {
        self.0.get(k).filter(|v| !v.is_null())
    }

    fn str(&self, k: &str) -> Result<Option<String>, Rejected> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(unprocessable(k, "str type expected", "type_error.str")),
        }
    }

    fn int(&self, k: &str) -> Result<Option<i64>, Rejected> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .or_else(|| v.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
                .map(Some)
                .ok_or_else(|| unprocessable(k, "value is not a valid integer", "type_error.integer")),
        }
    }

    fn float(&self, k: &str) -> Result<Option<f64>, Rejected> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| unprocessable(k, "value is not a valid float", "type_error.float")),
        }
    }

    /// A count or size: a non-negative integer.
    fn size(&self, k: &str) -> Result<Option<usize>, Rejected> {
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
fn sampler(name: &str, scheduler: Option<&str>) -> Result<String, ApiError> {
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

/// The caller's A1111 default model (`POST /sdapi/v1/options` `sd_model_checkpoint`).
fn default_model(state: &AppState, caller: &Caller) -> Option<String> {
    lock(&state.a1111_models).get(&caller.0.id).cloned()
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The shared fields of txt2img and img2img as our parameters.
fn params(state: &AppState, caller: &Caller, b: &Body) -> Result<Params, Rejected> {
    let prompt = b.str("prompt")?.unwrap_or_default();
    let (prompt, loras) = lora_tags(&prompt);
    let (negative, _) = lora_tags(&b.str("negative_prompt")?.unwrap_or_default());
    let seed = b.int("seed")?.filter(|s| *s >= 0).map(|s| s as u64);
    let batch = b.size("batch_size")?.unwrap_or(1).max(1);
    let n_iter = b.size("n_iter")?.unwrap_or(1).max(1);
    let sampler_name = b
        .str("sampler_name")?
        .or(b.str("sampler_index")?)
        .unwrap_or_else(|| "Euler a".into());
    let scheduler = b.str("scheduler")?;
    let checkpoint = match b.get("override_settings") {
        Some(Value::Object(o)) => o.get("sd_model_checkpoint").and_then(Value::as_str).map(str::to_owned),
        Some(_) => {
            return Err(unprocessable(
                "override_settings",
                "value is not a valid dict",
                "type_error.dict",
            ));
        }
        None => None,
    };
    let steps = b.size("steps")?.unwrap_or(20);
    let cfg = b.float("cfg_scale")?.unwrap_or(7.0);
    let (width, height) = (b.size("width")?.unwrap_or(512), b.size("height")?.unwrap_or(512));
    let model = checkpoint
        .or_else(|| default_model(state, caller))
        .map(|m| checkpoint_id(&m));
    let scheduler = sampler(&sampler_name, scheduler.as_deref()).map_err(|e| Box::new(error(e)))?;
    Ok(Params {
        prompt: Some(prompt),
        negative_prompt: Some(negative),
        model,
        width: Some(width),
        height: Some(height),
        num_images: Some(batch * n_iter),
        steps: Some(steps),
        guidance_scale: Some(cfg),
        scheduler: Some(scheduler),
        seed,
        rng: Some("philox".into()),
        response_format: Some("b64_json".into()),
        loras,
        ..Params::default()
    })
}

/// A txt2img / img2img body: its fields, and our parameters from them.
fn parsed(state: &AppState, caller: &Caller, bytes: &[u8]) -> Result<(Body, Params), Rejected> {
    let b = Body::parse(bytes)?;
    let p = params(state, caller, &b)?;
    Ok((b, p))
}

/// img2img's own fields: the init image, the strength, the mask.
fn init_fields(b: &Body) -> Result<(String, f64, Option<String>), Rejected> {
    let init = match b.get("init_images") {
        Some(Value::Array(a)) => a.first().and_then(Value::as_str).map(str::to_owned),
        Some(_) => {
            return Err(unprocessable(
                "init_images",
                "value is not a valid list",
                "type_error.list",
            ));
        }
        None => None,
    };
    let init =
        init.ok_or_else(|| Box::new(error(ApiError::bad_request("init_images must hold one image (base64)"))))?;
    Ok((init, b.float("denoising_strength")?.unwrap_or(0.75), b.str("mask")?))
}

/// A1111 titles look like `name.safetensors [hash]`: the id is the name without either.
fn checkpoint_id(title: &str) -> String {
    let t = title.split(" [").next().unwrap_or(title).trim();
    let t = t.rsplit('/').next().unwrap_or(t);
    t.strip_suffix(".safetensors")
        .or_else(|| t.strip_suffix(".gguf"))
        .unwrap_or(t)
        .to_owned()
}

/// Runs the generation and answers A1111's `{images, parameters, info}`.
async fn generate(state: &Arc<AppState>, caller: &Caller, params: Params, raw: Value, endpoint: &str) -> Response {
    let result = async {
        let sub = params.into_submission(state, &caller.0, endpoint)?;
        let (record, rx) = jobs::submit(state, sub)?;
        let id = record["id"].as_str().unwrap_or_default().to_owned();
        lock(&state.a1111_jobs).insert(caller.0.id.clone(), id.clone());
        let rx = rx.ok_or_else(|| ApiError::internal("a synchronous job without a waiter"))?;
        let outcome = jobs::wait(state, &id, rx).await?;
        jobs::respond(state, &outcome.record)
    }
    .await;
    let record = match result {
        Ok((_, r)) => r,
        Err(e) => return error(e),
    };
    let images: Vec<Value> = record["images"]
        .as_array()
        .map(|a| a.iter().map(|i| i["b64_json"].clone()).collect())
        .unwrap_or_default();
    let seeds: Vec<Value> = record["images"]
        .as_array()
        .map(|a| a.iter().map(|i| i["seed"].clone()).collect())
        .unwrap_or_default();
    let info = json!({
        "prompt": record["prompt"],
        "all_prompts": vec![record["prompt"].clone(); seeds.len()],
        "negative_prompt": raw.get("negative_prompt").cloned().unwrap_or_else(|| "".into()),
        "seed": seeds.first().cloned().unwrap_or(Value::Null),
        "all_seeds": seeds,
        "subseed": -1,
        "width": raw.get("width").cloned().unwrap_or(512.into()),
        "height": raw.get("height").cloned().unwrap_or(512.into()),
        "sampler_name": raw.get("sampler_name").cloned().unwrap_or_else(|| "Euler a".into()),
        "cfg_scale": raw.get("cfg_scale").cloned().unwrap_or(7.into()),
        "steps": raw.get("steps").cloned().unwrap_or(20.into()),
        "sd_model_name": record["model"],
        "job_timestamp": record["created_at"],
        "id": record["id"],
    });
    axum::Json(json!({"images": images, "parameters": raw, "info": info.to_string()})).into_response()
}

pub async fn txt2img(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    bytes: Bytes,
) -> Response {
    let (b, params) = match parsed(&state, &caller, &bytes) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    generate(&state, &caller, params, Value::Object(b.0), "text-to-image").await
}

pub async fn img2img(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    bytes: Bytes,
) -> Response {
    let parts = parsed(&state, &caller, &bytes).and_then(|(b, p)| Ok((init_fields(&b)?, b, p)));
    let ((init, strength, mask), b, mut params) = match parts {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let decoded = async {
        let (image, _) = decode_field(&state, init, false).await?;
        let mask = match mask {
            Some(m) => decode_field(&state, m, true).await?.1,
            None => None,
        };
        Ok::<_, ApiError>((image, mask))
    }
    .await;
    match decoded {
        Ok((image, mask)) => {
            // A1111 keeps the requested size; the input is resized to it by the parameters
            params.image = Some(image);
            params.mask = mask.map(|m| {
                // A1111: white = repaint, as ours; `inpainting_mask_invert: 1` flips it
                if b.int("inpainting_mask_invert").ok().flatten() == Some(1) {
                    image::GrayImage::from_fn(m.width(), m.height(), |x, y| image::Luma([255 - m.get_pixel(x, y)[0]]))
                } else {
                    m
                }
            });
            params.strength = Some(strength);
        }
        Err(e) => return error(e),
    }
    generate(&state, &caller, params, Value::Object(b.0), "image-to-image").await
}

pub async fn sd_models(State(state): State<Arc<AppState>>) -> Response {
    let list: Vec<Value> = state
        .models
        .iter()
        .map(|m| {
            json!({"title": m.id, "model_name": m.id, "hash": null, "sha256": null,
                   "filename": m.single_file.as_ref().unwrap_or(&m.path).display().to_string(), "config": null})
        })
        .collect();
    axum::Json(list).into_response()
}

pub async fn samplers() -> Response {
    let list: Vec<Value> = SAMPLERS
        .iter()
        .map(|(name, _, aliases)| {
            let scheduler = if *name == "DPM++ 2M" {
                json!({"scheduler": "karras"})
            } else {
                json!({})
            };
            json!({"name": name, "aliases": aliases, "options": scheduler})
        })
        .collect();
    axum::Json(list).into_response()
}

pub async fn schedulers() -> Response {
    let list: Vec<Value> = SCHEDULERS
        .iter()
        .map(|(name, label)| json!({"name": name, "label": label, "aliases": null, "default_rho": -1, "need_inner_model": false}))
        .collect();
    axum::Json(list).into_response()
}

pub async fn loras(State(state): State<Arc<AppState>>) -> Response {
    let list: Vec<Value> = state
        .loras
        .iter()
        .map(|l| json!({"name": l.id, "alias": l.id, "path": l.path.display().to_string(), "metadata": {}}))
        .collect();
    axum::Json(list).into_response()
}

pub async fn upscalers() -> Response {
    // no upscaler models here: only "None" (A1111 lists it too)
    axum::Json(json!([{"name": "None", "model_name": null, "model_path": null, "model_url": null, "scale": 1}]))
        .into_response()
}

pub async fn get_options(State(state): State<Arc<AppState>>, Extension(caller): Extension<Caller>) -> Response {
    let model = default_model(&state, &caller).or_else(|| state.model(None).map(|m| m.id.clone()));
    axum::Json(json!({"sd_model_checkpoint": model, "samples_format": "png", "sd_checkpoint_hash": null}))
        .into_response()
}

/// `sd_model_checkpoint` switches the caller's (this key's) default model; other options are
/// accepted and ignored, as they govern A1111's UI.
pub async fn set_options(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    bytes: Bytes,
) -> Response {
    let b = match Body::parse(&bytes) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let checkpoint = match b.str("sd_model_checkpoint") {
        Ok(c) => c,
        Err(r) => return *r,
    };
    if let Some(c) = checkpoint {
        let id = checkpoint_id(&c);
        if !state.models.iter().any(|m| m.id == id) {
            let known: Vec<&str> = state.models.iter().map(|m| m.id.as_str()).collect();
            return error(ApiError::bad_request(format!(
                "no model {c:?} (available: {})",
                known.join(", ")
            )));
        }
        lock(&state.a1111_models).insert(caller.0.id.clone(), id);
    }
    axum::Json(Value::Null).into_response()
}

/// The caller's latest generation: fraction done, its step preview, the queue state.
pub async fn progress(State(state): State<Arc<AppState>>, Extension(caller): Extension<Caller>) -> Response {
    let id = lock(&state.a1111_jobs).get(&caller.0.id).cloned();
    let (mut fraction, mut active, mut preview) = (0.0, false, Value::Null);
    if let Some(id) = &id {
        let (st, jid) = (state.clone(), id.clone());
        let job = tokio::task::spawn_blocking(move || st.store.job(&jid)).await;
        active = matches!(job, Ok(Ok(Some(ref j))) if j.status == "processing");
        if active {
            if let Some(&(step, total)) = lock(&state.progress).get(id)
                && total > 0
            {
                fraction = step as f64 / total as f64;
            }
            if let Some(uri) = lock(&state.previews).get(id) {
                preview = uri.rsplit(',').next().unwrap_or_default().into();
            }
        }
    }
    axum::Json(json!({
        "progress": fraction,
        "eta_relative": 0.0,
        "state": {"skipped": false, "interrupted": false, "job": id.clone().unwrap_or_default(),
                  "job_count": usize::from(active), "job_no": 0, "sampling_step": 0, "sampling_steps": 0},
        "current_image": preview,
        "textinfo": if active { Value::from("generating") } else { Value::Null },
    }))
    .into_response()
}

/// `interrupt` and `skip`: the caller's running generation stops after the current step (its
/// request answers with the cancellation).
pub async fn interrupt(State(state): State<Arc<AppState>>, Extension(caller): Extension<Caller>) -> Response {
    let Some(id) = lock(&state.a1111_jobs).get(&caller.0.id).cloned() else {
        return axum::Json(Value::Null).into_response();
    };
    let st = state.clone();
    let _ = tokio::task::spawn_blocking(move || {
        if let Ok(Some("queued" | "running")) = st.queue.request_cancel(&id).as_ref().map(|s| s.as_deref())
            && let Some((_, flag)) = lock(&st.running).get(&id)
        {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    })
    .await;
    axum::Json(Value::Null).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lora_tags_leave_the_prompt() {
        let (p, l) = lora_tags("a cat <lora:kohya:0.8> on a sofa <lora:peft>");
        assert_eq!(p, "a cat on a sofa");
        assert_eq!(l, [("kohya".to_owned(), 0.8), ("peft".to_owned(), 1.0)]);
    }

    #[test]
    fn a1111_samplers_map_to_ours() {
        assert_eq!(sampler("Euler a", None).ok().as_deref(), Some("euler_a"));
        assert_eq!(
            sampler("DPM++ 2M", Some("karras")).ok().as_deref(),
            Some("dpmpp_2m_karras")
        );
        assert_eq!(
            sampler("DPM++ 2M Karras", None).ok().as_deref(),
            Some("dpmpp_2m_karras")
        );
        assert_eq!(sampler("k_euler", Some("automatic")).ok().as_deref(), Some("euler"));
        assert!(sampler("Euler", Some("karras")).is_err());
        assert!(sampler("UniPC", None).is_err());
        assert_eq!(checkpoint_id("tiny-sd15.safetensors [abc123]"), "tiny-sd15");
    }
}
