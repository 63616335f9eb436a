//! AUTOMATIC1111's `/sdapi/v1` on the wire: its field names, sampler names, defaults (Philox
//! noise) and auth (HTTP Basic with the key as password) give the same image as our own routes
//! for the same settings; unknown fields are ignored, wrong types a FastAPI-shaped 422.

use serde_json::{Value, json};

use crate::harness::{Env, Server, b64, first_b64_image, fixture, png_diff};

fn pixels(v: &Value) -> image::RgbImage {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v.as_str().expect("base64 image"))
        .expect("base64");
    image::load_from_memory(&bytes).expect("png").to_rgb8()
}

/// A1111 clients with `--api-auth user:KEY` send Basic auth.
fn basic(key: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("webui:{key}"))
    )
}

fn sdapi(s: &Server, key: &str, path: &str, body: &Value) -> crate::harness::Resp {
    let auth = basic(key);
    s.request_with(
        "POST",
        &format!("/sdapi/v1/{path}"),
        None,
        Some(("application/json", body.to_string().into_bytes())),
        &[("Authorization", auth.as_str())],
    )
}

fn same(a: &image::RgbImage, b: &image::RgbImage, what: &str) {
    let (max, _) = png_diff(a, b);
    assert_eq!(max, 0, "{what}: max {max}/255");
}

#[test]
fn txt2img_and_img2img_match_our_routes() {
    let env = Env::new();
    let key = env.key("pro", &[]);
    let s = env.serve();
    let a1111 = json!({"prompt": "a red fox <lora:kohya:0.8>", "negative_prompt": "blurry", "seed": 42,
                       "steps": 4, "cfg_scale": 6.5, "width": 64, "height": 64, "sampler_name": "DPM++ 2M",
                       "scheduler": "karras", "override_settings": {"sd_model_checkpoint": "tiny-sd15"},
                       "restore_faces": false, "send_images": true, "some_future_field": {"x": 1}});
    let r = sdapi(&s, &key, "txt2img", &a1111);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    let info: Value = serde_json::from_str(v["info"].as_str().expect("info is a JSON string")).expect("info");
    assert_eq!(info["seed"], 42);
    assert_eq!(v["parameters"]["prompt"], a1111["prompt"]);
    let ours = s.post(
        "/v1/text-to-image",
        &key,
        &json!({"prompt": "a red fox", "negative_prompt": "blurry", "seed": 42, "steps": 4,
                "guidance_scale": 6.5, "width": 64, "height": 64, "scheduler": "dpmpp_2m_karras",
                "rng": "philox", "model": "tiny-sd15", "loras": [{"name": "kohya", "scale": 0.8}],
                "response_format": "b64_json"}),
    );
    assert_eq!(ours.status, 200, "{}", String::from_utf8_lossy(&ours.body));
    same(&pixels(&v["images"][0]), &first_b64_image(&ours.json()), "txt2img");

    // img2img: init_images + denoising_strength, A1111's defaults otherwise (Euler a, CFG 7)
    let init = std::fs::read(fixture("golden/generate/tiny-sd2-init.png")).expect("init");
    let r = sdapi(
        &s,
        &key,
        "img2img",
        &json!({"prompt": "a house", "init_images": [b64(&init)], "denoising_strength": 0.6, "seed": 7,
                "steps": 5, "width": 80, "height": 48, "override_settings": {"sd_model_checkpoint": "tiny-sd2"}}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let ours = s.post(
        "/v1/image-to-image",
        &key,
        &json!({"prompt": "a house", "image": b64(&init), "strength": 0.6, "seed": 7, "steps": 5,
                "guidance_scale": 7.0, "scheduler": "euler_a", "rng": "philox", "model": "tiny-sd2",
                "response_format": "b64_json"}),
    );
    assert_eq!(ours.status, 200, "{}", String::from_utf8_lossy(&ours.body));
    same(
        &pixels(&r.json()["images"][0]),
        &first_b64_image(&ours.json()),
        "img2img",
    );
}

#[test]
fn options_lists_errors_and_auth_speak_a1111() {
    let env = Env::new();
    let key = env.key("pro", &[]);
    let s = env.serve();
    let auth = basic(&key);
    let get = |path: &str| {
        let r = s.request_with(
            "GET",
            &format!("/sdapi/v1/{path}"),
            None,
            None,
            &[("Authorization", auth.as_str())],
        );
        assert_eq!(r.status, 200, "{path}: {}", String::from_utf8_lossy(&r.body));
        r.json()
    };
    let models = get("sd-models");
    assert!(
        models
            .as_array()
            .expect("list")
            .iter()
            .any(|m| m["title"] == "tiny-sd2"),
        "{models}"
    );
    let samplers = get("samplers");
    let names: Vec<&str> = samplers
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert!(names.contains(&"Euler a"), "{names:?}");
    // Heun is for flow-matching models, and none is installed here
    assert!(!names.contains(&"Heun"), "{names:?}");
    assert!(
        get("schedulers")
            .as_array()
            .expect("list")
            .iter()
            .any(|m| m["name"] == "karras")
    );
    assert!(
        get("loras")
            .as_array()
            .expect("list")
            .iter()
            .any(|m| m["name"] == "kohya")
    );
    assert_eq!(get("upscalers")[0]["name"], "None");

    // switching the key's default model
    let r = sdapi(
        &s,
        &key,
        "options",
        &json!({"sd_model_checkpoint": "tiny-sd2 [0000]", "CLIP_stop_at_last_layers": 1}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(get("options")["sd_model_checkpoint"], "tiny-sd2");
    let r = sdapi(
        &s,
        &key,
        "txt2img",
        &json!({"prompt": "x", "seed": -1, "steps": 2, "width": 64, "height": 64}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let info: Value = serde_json::from_str(r.json()["info"].as_str().expect("info")).expect("info");
    assert_eq!(info["sd_model_name"], "tiny-sd2");
    assert!(info["seed"].as_u64().is_some(), "seed -1 is drawn: {info}");
    let p = get("progress");
    assert_eq!(p["progress"], 0.0);
    assert_eq!(sdapi(&s, &key, "interrupt", &json!({})).status, 200);

    // wrong types: FastAPI's 422; our own checks: A1111's error shape
    let r = sdapi(&s, &key, "txt2img", &json!({"prompt": "x", "steps": "many"}));
    assert_eq!(r.status, 422);
    assert_eq!(r.json()["detail"][0]["loc"], json!(["body", "steps"]));
    let r = sdapi(&s, &key, "txt2img", &json!({"prompt": "x", "sampler_name": "UniPC"}));
    assert_eq!(r.status, 400);
    assert!(r.json()["detail"].as_str().expect("detail").contains("UniPC"));
    let r = sdapi(&s, &key, "txt2img", &json!({"prompt": "x", "width": 65, "steps": 2}));
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    let r = sdapi(
        &s,
        &key,
        "img2img",
        &json!({"prompt": "x", "init_images": "not a list"}),
    );
    assert_eq!(r.status, 422);
    assert_eq!(r.json()["detail"][0]["loc"], json!(["body", "init_images"]));
    let r = sdapi(&s, &key, "img2img", &json!({"prompt": "x", "init_images": []}));
    assert_eq!(r.status, 400);
    assert!(r.json()["detail"].as_str().expect("detail").contains("init_images"));
    // Basic auth with a wrong key, or none
    assert_eq!(sdapi(&s, "imk_wrong", "txt2img", &json!({"prompt": "x"})).status, 401);
    assert_eq!(s.get("/sdapi/v1/sd-models", None).status, 401);
}

fn png(img: &image::DynamicImage) -> Vec<u8> {
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .expect("png");
    out
}

#[test]
fn png_info_reads_the_settings_back_and_inpainting_fill_picks_the_start() {
    let env = Env::new();
    let key = env.key("pro", &[]);
    let s = env.serve();
    let r = sdapi(
        &s,
        &key,
        "txt2img",
        &json!({"prompt": "a red fox <lora:kohya:0.5>", "negative_prompt": "blurry", "seed": 42, "steps": 3,
                "cfg_scale": 6.5, "width": 64, "height": 64, "sampler_name": "DPM++ 2M", "scheduler": "karras",
                "override_settings": {"sd_model_checkpoint": "tiny-sd15"}}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let image = r.json()["images"][0].as_str().expect("image").to_owned();
    let info = sdapi(
        &s,
        &key,
        "png-info",
        &json!({"image": format!("data:image/png;base64,{image}")}),
    );
    assert_eq!(info.status, 200, "{}", String::from_utf8_lossy(&info.body));
    let info = info.json();
    let text = info["info"].as_str().expect("info");
    assert!(
        text.starts_with("a red fox <lora:kohya:0.5>\nNegative prompt: blurry\nSteps: 3, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 42, Size: 64x64, Model: tiny-sd15"),
        "{text}"
    );
    let p = &info["parameters"];
    assert_eq!(
        (&p["Prompt"], &p["Seed"], &p["Size-1"]),
        (&json!("a red fox <lora:kohya:0.5>"), &json!("42"), &json!("64"))
    );
    // a PNG without settings: empty info; no image: FastAPI's 422
    let plain = png(&image::DynamicImage::new_rgb8(8, 8));
    let none = sdapi(&s, &key, "png-info", &json!({"image": b64(&plain)})).json();
    assert_eq!(none["info"], "");
    assert_eq!(sdapi(&s, &key, "png-info", &json!({})).status, 422);

    // inpainting_fill over a masked square: each start gives its own image; 1 (original) is
    // A1111's default and our route's; 2 is our masked_content latent_noise
    let init = std::fs::read(fixture("golden/generate/tiny-sd2-init.png")).expect("init");
    let init = image::load_from_memory(&init)
        .expect("init")
        .resize_exact(64, 64, image::imageops::FilterType::Nearest);
    let mask = image::GrayImage::from_fn(64, 64, |x, y| {
        image::Luma([if (16..48).contains(&x) && (16..48).contains(&y) {
            255
        } else {
            0
        }])
    });
    let (init, mask) = (b64(&png(&init)), b64(&png(&mask.into())));
    let a1111 = |fill: Option<i64>| {
        let mut body = json!({"prompt": "a house", "init_images": [init], "mask": mask, "denoising_strength": 0.7,
                              "seed": 5, "steps": 4, "width": 64, "height": 64,
                              "override_settings": {"sd_model_checkpoint": "tiny-sd15"}});
        if let Some(f) = fill {
            body["inpainting_fill"] = f.into();
        }
        let r = sdapi(&s, &key, "img2img", &body);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        pixels(&r.json()["images"][0])
    };
    let ours = |content: Option<&str>| {
        let mut body = json!({"prompt": "a house", "image": init, "mask": mask, "strength": 0.7, "seed": 5,
                              "steps": 4, "guidance_scale": 7.0, "scheduler": "euler_a", "rng": "philox",
                              "model": "tiny-sd15", "response_format": "b64_json"});
        if let Some(c) = content {
            body["masked_content"] = c.into();
        }
        let r = s.post("/v1/image-to-image", &key, &body);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        first_b64_image(&r.json())
    };
    let starts: Vec<image::RgbImage> = (0..4).map(|f| a1111(Some(f))).collect();
    for i in 0..4 {
        for j in i + 1..4 {
            assert!(
                png_diff(&starts[i], &starts[j]).0 > 8,
                "inpainting_fill {i} and {j} gave the same image"
            );
        }
    }
    same(&starts[1], &a1111(None), "inpainting_fill default");
    same(&starts[1], &ours(None), "original vs our route");
    same(&starts[2], &ours(Some("latent_noise")), "latent noise vs our route");
    same(&starts[0], &ours(Some("fill")), "fill vs our route");
    let bad = sdapi(
        &s,
        &key,
        "img2img",
        &json!({"init_images": [init], "mask": mask, "inpainting_fill": 7}),
    );
    assert_eq!(bad.status, 400);
    assert!(
        bad.json()["detail"]
            .as_str()
            .is_some_and(|d| d.contains("inpainting_fill"))
    );
    let bad = s.post(
        "/v1/image-to-image",
        &key,
        &json!({"prompt": "x", "image": init, "masked_content": "fill"}),
    );
    assert_eq!(
        (bad.status, &bad.json()["error"]["details"]["field"]),
        (400, &json!("masked_content"))
    );
    let bad = s.post(
        "/v1/image-to-image",
        &key,
        &json!({"prompt": "x", "image": init, "mask": mask, "masked_content": "blur"}),
    );
    assert_eq!(bad.status, 400);
}

#[test]
fn refresh_checkpoints_picks_up_new_and_removed_models() {
    let env = Env::new();
    let key = env.key("pro", &[]);
    let s = env.serve();
    let listed = |path: &str, field: &str| -> Vec<String> {
        let r = s.request_with(
            "GET",
            &format!("/sdapi/v1/{path}"),
            None,
            None,
            &[("Authorization", &basic(&key))],
        );
        r.json()
            .as_array()
            .expect("list")
            .iter()
            .map(|m| m[field].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let fresh = json!({"prompt": "x", "steps": 2, "width": 64, "height": 64,
                       "override_settings": {"sd_model_checkpoint": "fresh"}});
    crate::harness::copy_dir(&fixture("tiny-sd15"), &env.models.join("fresh"));
    std::fs::copy(
        fixture("loras/tiny-kohya.safetensors"),
        env.models.join("loras/fresh-lora.safetensors"),
    )
    .expect("lora");
    assert!(!listed("sd-models", "model_name").contains(&"fresh".to_owned()));
    assert_eq!(sdapi(&s, &key, "txt2img", &fresh).status, 404);
    assert_eq!(sdapi(&s, &key, "refresh-checkpoints", &json!({})).status, 200);
    assert!(listed("sd-models", "model_name").contains(&"fresh".to_owned()));
    assert!(listed("loras", "name").contains(&"fresh-lora".to_owned()));
    let r = sdapi(&s, &key, "txt2img", &fresh);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let ours = s.get("/v1/models/fresh", Some(&key));
    assert_eq!(ours.status, 200);
    // a removed model goes with the next refresh
    std::fs::remove_dir_all(env.models.join("fresh")).expect("rm");
    assert_eq!(sdapi(&s, &key, "refresh-loras", &json!({})).status, 200);
    assert!(!listed("sd-models", "model_name").contains(&"fresh".to_owned()));
    s.get("/v1/models/fresh", Some(&key)).assert_error(404, "not_found");
}
