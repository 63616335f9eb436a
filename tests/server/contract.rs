//! The contract's endpoints end to end: the images are diffusers' own (same goldens as the
//! engine tests), links download without the key, another key sees nothing.

use serde_json::{Value, json};

use crate::harness::{Env, assert_golden, b64, first_b64_image, fixture};

pub const PROMPT: &str = "a photograph of an astronaut riding a horse";

fn check_generation(v: &Value, model: &str) {
    assert_eq!(v["status"], "completed", "{v}");
    assert!(v["id"].as_str().is_some_and(|id| id.starts_with("gen_")), "{v}");
    assert_eq!(v["model"], model);
    let created = v["created_at"].as_str().expect("created_at");
    assert!(
        created.len() == 20 && created.ends_with('Z') && &created[10..11] == "T",
        "{created}"
    );
}

#[test]
fn text_to_image_matches_diffusers_and_links_work() {
    let env = Env::new();
    let key = env.key("pro", &[]);
    let other = env.key("pro", &[]);
    let s = env.serve();
    let r = s.post(
        "/v1/text-to-image",
        &key,
        &json!({"prompt": PROMPT, "negative_prompt": "blurry, low quality", "model": "tiny-sd15",
                "steps": 5, "seed": 1234, "scheduler": "dpmpp_2m_karras", "guidance_scale": 7.5}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("x-ratelimit-limit"), Some("100"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("99"));
    assert!(
        r.header("x-ratelimit-reset")
            .and_then(|v| v.parse::<u64>().ok())
            .is_some()
    );
    let v = r.json();
    check_generation(&v, "tiny-sd15");
    let im = &v["images"][0];
    assert_eq!(
        (im["width"].as_u64(), im["height"].as_u64(), im["seed"].as_u64()),
        (Some(64), Some(64), Some(1234))
    );

    // The link works without the key, and is diffusers' image.
    let url = im["url"].as_str().expect("url");
    let png = s.get(url, None);
    assert_eq!(png.status, 200);
    assert_eq!(png.header("content-type"), Some("image/png"));
    let got = image::load_from_memory(&png.body).expect("png").to_rgb8();
    assert_golden(&got, "tiny-sd15-dpmpp_2m_karras-txt2img.png");
    // A tampered signature is refused.
    s.get(&url.replace("sig=", "sig=0"), None)
        .assert_error(403, "forbidden");
    // Without a signature: the owner's key works, another key sees nothing.
    let plain = url.split('?').next().expect("path");
    assert_eq!(s.get(plain, Some(&key)).status, 200);
    s.get(plain, Some(&other)).assert_error(404, "not_found");
    s.get(plain, None).assert_error(401, "unauthorized");

    // The generation reads back for its owner only.
    let id = v["id"].as_str().expect("id");
    let again = s.get(&format!("/v1/generations/{id}"), Some(&key));
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["images"][0]["seed"], 1234);
    s.get(&format!("/v1/generations/{id}"), Some(&other))
        .assert_error(404, "not_found");
    s.get("/v1/generations/gen_000", Some(&key))
        .assert_error(404, "not_found");
}

#[test]
fn image_to_image_variations_and_formats() {
    let env = Env::new();
    let key = env.key("pro", &[]);
    let s = env.serve();
    let init = std::fs::read(fixture("golden/generate/tiny-sd2-init.png")).expect("init");
    let r = s.post(
        "/v1/image-to-image",
        &key,
        &json!({"prompt": PROMPT, "model": "tiny-sd2", "image": format!("data:image/png;base64,{}", b64(&init)),
                "strength": 0.6, "steps": 5, "seed": 99, "scheduler": "euler_a", "response_format": "b64_json"}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    check_generation(&v, "tiny-sd2");
    // The size defaults to the input image's (80x48).
    assert_golden(&first_b64_image(&v), "tiny-sd2-euler_a-img2img.png");

    // Variations: one seed per image, consecutive; JPEG output.
    let r = s.post(
        "/v1/variations",
        &key,
        &json!({"image": b64(&init), "model": "tiny-sd2", "num_images": 2, "seed": 7, "steps": 4,
                "output_format": "jpeg"}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    let seeds: Vec<u64> = v["images"]
        .as_array()
        .expect("images")
        .iter()
        .filter_map(|i| i["seed"].as_u64())
        .collect();
    assert_eq!(seeds, [7, 8]);
    let jpeg = s.get(v["images"][1]["url"].as_str().expect("url"), None);
    assert_eq!(jpeg.header("content-type"), Some("image/jpeg"));
    assert_eq!(&jpeg.body[..2], &[0xff, 0xd8]);

    // Models.
    let m = s.get("/v1/models", Some(&key));
    assert_eq!(m.status, 200);
    let list = m.json();
    let ids: Vec<&str> = list["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(
        ids,
        [
            "single",
            "single-v",
            "single-xl",
            "tiny-sd15",
            "tiny-sd15-q8",
            "tiny-sd2",
            "tiny-sdxl",
            "kohya",
            "peft"
        ]
    );
    assert_eq!(list["data"][7]["object"], "lora");
    // Each model's weight formats, from its files' headers; a GGUF file generates.
    assert_eq!(list["data"][3]["weight_formats"]["unet"], json!(["f32"]));
    let q8 = &list["data"][4];
    assert_eq!(q8["format"], "gguf");
    assert_eq!(q8["weight_formats"]["unet"], json!(["f16", "f32", "q8_0"]));
    let r = s.post(
        "/v1/text-to-image",
        &key,
        &json!({"prompt": PROMPT, "model": "tiny-sd15-q8", "steps": 2, "seed": 5}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        (list["data"][2]["family"].as_str(), list["data"][2]["format"].as_str()),
        (Some("sdxl"), Some("single-file"))
    );
    assert_eq!(list["data"][1]["prediction_type"], "v_prediction");
    // The sidecar's v-prediction: diffusers' image with the scheduler's prediction_type replaced.
    let r = s.post(
        "/v1/text-to-image",
        &key,
        &json!({"prompt": PROMPT, "model": "single-v", "steps": 4, "seed": 4, "scheduler": "euler"}),
    );
    let png = s.get(r.json()["images"][0]["url"].as_str().expect("url"), None).body;
    assert_golden(
        &image::load_from_memory(&png).expect("png").to_rgb8(),
        "tiny-sd15-vpred-override.png",
    );
    assert_eq!(
        (list["data"][0]["format"].as_str(), list["data"][0]["family"].as_str()),
        (Some("single-file"), Some("sd15"))
    );
    assert_eq!(list["data"][3]["format"], "diffusers");
    // The single file serves the same image as the folder it was converted from.
    let one = |model: &str| {
        let r = s.post(
            "/v1/text-to-image",
            &key,
            &json!({"prompt": PROMPT, "model": model, "steps": 3, "seed": 5}),
        );
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        s.get(r.json()["images"][0]["url"].as_str().expect("url"), None).body
    };
    assert_eq!(one("single"), one("tiny-sd15"));
    let xl = s.get("/v1/models/tiny-sdxl", Some(&key)).json();
    assert_eq!(
        (xl["family"].as_str(), xl["default_guidance_scale"].as_f64()),
        (Some("sdxl"), Some(5.0))
    );
    // SDXL through the API, from the folder and from the single file: diffusers'
    // StableDiffusionXLPipeline image.
    for model in ["tiny-sdxl", "single-xl"] {
        let r = s.post(
            "/v1/text-to-image",
            &key,
            &json!({"prompt": PROMPT, "model": model, "steps": 5, "seed": 42, "width": 80, "height": 48,
                    "negative_prompt": "blurry, low quality", "response_format": "b64_json"}),
        );
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_golden(&first_b64_image(&r.json()), "tiny-sdxl-txt2img-neg.png");
    }
    let sd2 = s.get("/v1/models/tiny-sd2", Some(&key)).json();
    assert_eq!(sd2["family"], "sd21");
    assert_eq!(sd2["default_scheduler"], "ddim");
    assert_eq!(list["data"][0]["family"], "sd15");
    assert_eq!(list["data"][0]["native_size"], 64);
    s.get("/v1/models/nope", Some(&key)).assert_error(404, "not_found");
}

#[test]
fn health_readiness_and_openapi_cover_every_route() {
    let env = Env::new();
    let s = env.serve();
    assert_eq!(s.get("/healthz", None).status, 200);
    let ready = s.get("/readyz", None).json();
    assert_eq!(
        (ready["status"].as_str(), ready["role"].as_str()),
        (Some("ready"), Some("api+worker"))
    );
    // the embedded worker is on the register, for admin keys only
    let admin = env.key("free", &["admin"]);
    let workers = s.get("/v1/workers", Some(&admin)).json();
    assert_eq!(workers["data"].as_array().map(Vec::len), Some(1), "{workers}");
    assert!(
        workers["data"][0]["models"].as_array().is_some_and(|m| m.len() > 1),
        "{workers}"
    );
    assert_eq!(s.get("/v1/workers", Some(&env.key("free", &[]))).status, 403);
    let doc = s.get("/openapi.json", None).json();
    assert_eq!(doc["openapi"], "3.1.0");
    let committed: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("../../crates/imagen-server/openapi.json")).expect("doc"),
    )
    .expect("json");
    // the committed document, less what no installed model here takes (Stable Diffusion
    // models only: no T5, FLUX or SD3 parameters, no flow-only sampler)
    let mut expected = committed.clone();
    for name in ["TextToImageRequest", "ImageToImageRequest", "VariationsRequest"] {
        let props = &mut expected["components"]["schemas"][name]["properties"];
        if let Some(p) = props.as_object_mut() {
            for k in [
                "max_sequence_length",
                "true_cfg_scale",
                "skip_guidance_layers",
                "skip_layer_guidance_scale",
                "skip_layer_guidance_start",
                "skip_layer_guidance_stop",
            ] {
                assert!(p.remove(k).is_some(), "{name}.{k}");
            }
        }
        if let Some(e) = props["scheduler"]["enum"].as_array_mut() {
            e.retain(|s| s != "heun");
        }
    }
    assert_eq!(doc, expected);
    for path in [
        "/v1/text-to-image",
        "/v1/image-to-image",
        "/v1/variations",
        "/v1/models",
        "/v1/models/{id}",
        "/v1/workers",
        "/v1/generations",
        "/v1/generations/{id}",
        "/v1/generations/{id}/cancel",
        "/v1/generations/{id}/events",
        "/v1/images/{id}/{file}",
        "/v1/images/generations",
        "/v1/images/edits",
        "/v1/images/variations",
        "/healthz",
        "/readyz",
        "/openapi.json",
        "/metrics",
        "/",
        "/playground/{file}",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing from openapi.json");
    }
}

#[test]
fn image_urls_are_fetched_only_when_allowed() {
    // Fetching on, private targets refused (the default once fetching is enabled).
    let env = Env::with_config("[fetch]\nenabled = true\n");
    let key = env.key("pro", &[]);
    let s = env.serve();
    let made = s
        .post("/v1/text-to-image", &key, &json!({"prompt": PROMPT, "steps": 2}))
        .json();
    let url = made["images"][0]["url"].as_str().expect("url").to_owned();
    let r = s.post(
        "/v1/image-to-image",
        &key,
        &json!({"prompt": PROMPT, "image": url, "steps": 2}),
    );
    r.assert_error(400, "bad_request");
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not a public address"))
    );
    drop(s);

    // An operator who allows private targets: the server's own link feeds image-to-image.
    let env = Env::with_config("[fetch]\nenabled = true\nallow_private = true\n");
    let key = env.key("pro", &[]);
    let s = env.serve();
    let made = s
        .post("/v1/text-to-image", &key, &json!({"prompt": PROMPT, "steps": 2}))
        .json();
    let url = made["images"][0]["url"].as_str().expect("url").to_owned();
    let r = s.post(
        "/v1/image-to-image",
        &key,
        &json!({"prompt": PROMPT, "image": url, "steps": 2}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let missing = url.replace("/0.png", "/7.png");
    s.post(
        "/v1/image-to-image",
        &key,
        &json!({"prompt": PROMPT, "image": missing, "steps": 2}),
    )
    .assert_error(400, "bad_request");
}

#[test]
fn loras_per_request_leave_the_base_model_untouched() {
    let env = Env::new();
    let key = env.key("pro", &[]);
    let s = env.serve();
    let base = json!({"prompt": PROMPT, "model": "tiny-sd15", "steps": 5, "seed": 21, "scheduler": "euler",
                      "response_format": "b64_json"});
    let image = |body: &Value| {
        let r = s.post("/v1/text-to-image", &key, body);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        first_b64_image(&r.json())
    };
    let before = image(&base);
    for (name, scale, golden_png) in [
        ("kohya", 0.5, "tiny-sd15-lora-0.5.png"),
        ("peft", 1.0, "tiny-sd15-lora-1.0.png"),
    ] {
        let mut body = base.clone();
        body["loras"] = json!([{"name": name, "scale": scale}]);
        assert_golden(&image(&body), golden_png);
    }
    assert_eq!(image(&base), before, "the base output is unchanged after LoRA requests");
    let mut bad = base.clone();
    bad["loras"] = json!([{"name": "nope"}]);
    s.post("/v1/text-to-image", &key, &bad).assert_error(404, "not_found");
    bad["loras"] = json!([{"name": "kohya"}]);
    bad["model"] = json!("tiny-sdxl");
    s.post("/v1/text-to-image", &key, &bad).assert_error(400, "bad_request");
}
