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
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

mod fields;
mod pnginfo;

pub use fields::lora_tags;
use fields::{Body, Rejected, SAMPLERS, SCHEDULERS, error, sampler, unprocessable};

use super::Caller;
use super::contract::decode_field;
use super::params::Params;
use crate::app::AppState;
use crate::error::ApiError;
use crate::jobs;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use imagen_engine::MaskedContent;

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

/// `inpainting_fill` (0 fill, 1 original: the default, 2 latent noise, 3 latent nothing) as
/// our `masked_content`.
fn masked_content(b: &Body) -> Result<String, Rejected> {
    let n = b.int("inpainting_fill")?.unwrap_or(1);
    MaskedContent::from_a1111(n)
        .map(|m| m.name().to_owned())
        .ok_or_else(|| {
            Box::new(error(ApiError::bad_request(format!(
                "inpainting_fill must be 0 (fill), 1 (original), 2 (latent noise) or 3 (latent nothing), not {n}"
            ))))
        })
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
    let seeds: Vec<Value> = record["images"]
        .as_array()
        .map(|a| a.iter().map(|i| i["seed"].clone()).collect())
        .unwrap_or_default();
    // each PNG carries its settings as A1111's `parameters` text (what png-info reads)
    let text = |k: &str, default: &str| raw.get(k).and_then(Value::as_str).unwrap_or(default).to_owned();
    let sampler_name = text("sampler_name", "Euler a");
    let karras = sampler_name.ends_with(" Karras") || text("scheduler", "").eq_ignore_ascii_case("karras");
    let num = |k: &str, default: f64| raw.get(k).and_then(Value::as_f64).unwrap_or(default);
    let images: Vec<Value> = record["images"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|i| {
                    let b64 = i["b64_json"].as_str().unwrap_or_default();
                    let Ok(png) = STANDARD.decode(b64) else {
                        return Value::from(b64);
                    };
                    let info = pnginfo::Infotext {
                        prompt: &text("prompt", ""),
                        negative: &text("negative_prompt", ""),
                        steps: num("steps", 20.0) as usize,
                        sampler: sampler_name.trim_end_matches(" Karras"),
                        scheduler: if karras { "Karras" } else { "Automatic" },
                        cfg: num("cfg_scale", 7.0),
                        seed: i["seed"].as_u64().unwrap_or_default(),
                        size: (num("width", 512.0) as usize, num("height", 512.0) as usize),
                        model: record["model"].as_str().unwrap_or_default(),
                        denoising: (endpoint == "image-to-image").then(|| num("denoising_strength", 0.75)),
                    };
                    STANDARD
                        .encode(pnginfo::with_text(&png, "parameters", &info.render()))
                        .into()
                })
                .collect()
        })
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
    let parts = parsed(&state, &caller, &bytes).and_then(|(b, p)| Ok((init_fields(&b)?, masked_content(&b)?, b, p)));
    let ((init, strength, mask), masked, b, mut params) = match parts {
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
            if params.mask.is_some() {
                params.masked_content = Some(masked);
            }
            params.strength = Some(strength);
        }
        Err(e) => return error(e),
    }
    generate(&state, &caller, params, Value::Object(b.0), "image-to-image").await
}

pub async fn sd_models(State(state): State<Arc<AppState>>) -> Response {
    let list: Vec<Value> = state
        .catalog()
        .models
        .iter()
        .map(|m| {
            json!({"title": m.id, "model_name": m.id, "hash": null, "sha256": null,
                   "filename": m.single_file.as_ref().unwrap_or(&m.path).display().to_string(), "config": null})
        })
        .collect();
    axum::Json(list).into_response()
}

/// The samplers some installed model takes: Heun only with a flow-matching model (FLUX, SD3).
pub async fn samplers(State(state): State<Arc<AppState>>) -> Response {
    let flow = state
        .catalog()
        .models
        .iter()
        .any(|m| m.family == "flux" || m.family == "sd3");
    let list: Vec<Value> = SAMPLERS
        .iter()
        .filter(|(_, ours, _)| flow || *ours != "heun")
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
        .catalog()
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
        let catalog = state.catalog();
        if !catalog.models.iter().any(|m| m.id == id) {
            let known: Vec<&str> = catalog.models.iter().map(|m| m.id.as_str()).collect();
            return error(ApiError::bad_request(format!(
                "no model {c:?} (available: {})",
                known.join(", ")
            )));
        }
        lock(&state.a1111_models).insert(caller.0.id.clone(), id);
    }
    axum::Json(Value::Null).into_response()
}

/// `refresh-checkpoints` and `refresh-loras`: the models folder scanned again, so models and
/// LoRAs added since the start are listed and usable (removed ones go). Answers `null`, as A1111.
pub async fn refresh(State(state): State<Arc<AppState>>) -> Response {
    let st = state.clone();
    match tokio::task::spawn_blocking(move || st.rescan()).await {
        Ok(Ok(_)) => axum::Json(Value::Null).into_response(),
        Ok(Err(e)) => error(ApiError::from(e)),
        Err(e) => error(ApiError::internal(e)),
    }
}

/// `{"image": base64 PNG}` → its `parameters` text (`info`), parsed (`parameters`), and the
/// other text chunks (`items`). An unreadable image answers an empty `info`, as A1111 does.
pub async fn png_info(bytes: Bytes) -> Response {
    let b = match Body::parse(&bytes) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let image = match b.str("image") {
        Ok(Some(i)) => i,
        Ok(None) => return *unprocessable("image", "field required", "value_error.missing"),
        Err(r) => return *r,
    };
    let data = image.trim();
    let data = data.split_once(";base64,").map_or(data, |(_, d)| d);
    let texts = STANDARD
        .decode(data)
        .ok()
        .and_then(|png| pnginfo::texts(&png))
        .unwrap_or_default();
    let mut items = Map::new();
    let mut info = String::new();
    for (k, v) in texts {
        if k == "parameters" {
            info = v;
        } else {
            items.insert(k, v.into());
        }
    }
    let parameters = pnginfo::parse(&info);
    axum::Json(json!({"info": info, "items": items, "parameters": parameters})).into_response()
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
