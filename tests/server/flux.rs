//! The diffusion transformers through the server (FLUX.1, SD3.5): listed with their family and
//! defaults, generating diffusers' images (text-to-image with the model's default
//! steps/guidance, true CFG, image-to-image), and parameters a family does not take refused with
//! a 400.

use serde_json::json;

use crate::harness::{Env, assert_golden, b64, copy_dir, first_b64_image, fixture};

const PROMPT: &str = "a photograph of an astronaut riding a horse";

#[test]
fn flux_models_are_listed_and_generate_diffusers_images() {
    let env = Env::new();
    for m in ["tiny-flux-schnell", "tiny-flux-dev", "tiny-sd35"] {
        copy_dir(&fixture(m), &env.models.join(m));
    }
    std::fs::copy(
        fixture("loras/tiny-flux-peft.safetensors"),
        env.models.join("loras/flux-peft.safetensors"),
    )
    .expect("lora");
    let key = env.key("pro", &[]);
    let s = env.serve();

    let list = s.get("/v1/models", Some(&key)).json();
    let model = |id: &str| {
        list["data"]
            .as_array()
            .and_then(|a| a.iter().find(|m| m["id"] == id))
            .cloned()
            .unwrap_or_else(|| panic!("{id} not listed: {list}"))
    };
    let (schnell, dev) = (model("tiny-flux-schnell"), model("tiny-flux-dev"));
    assert_eq!(schnell["family"], "flux");
    assert_eq!(schnell["prediction_type"], "flow");
    assert_eq!(
        (
            schnell["default_steps"].as_u64(),
            schnell["default_guidance_scale"].as_f64()
        ),
        (Some(4), Some(0.0))
    );
    assert_eq!(
        (dev["default_steps"].as_u64(), dev["default_guidance_scale"].as_f64()),
        (Some(28), Some(3.5))
    );
    assert_eq!(dev["weight_formats"]["transformer"], json!(["f32"]));
    let sd35 = model("tiny-sd35");
    assert_eq!(
        (sd35["family"].as_str(), sd35["default_steps"].as_u64()),
        (Some("sd3"), Some(40))
    );

    // SD3.5 with CFG and a negative prompt
    let r = s.post(
        "/v1/text-to-image",
        &key,
        &json!({"prompt": PROMPT, "model": "tiny-sd35", "negative_prompt": "blurry, low quality", "width": 64,
                "height": 64, "steps": 5, "guidance_scale": 4.5, "seed": 42, "max_sequence_length": 64,
                "response_format": "b64_json"}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_golden(&first_b64_image(&r.json()), "tiny-sd35-txt2img.png");

    // SD3.5 with skip-layer guidance (diffusers' field names) and with the Heun sampler
    let r = s.post(
        "/v1/text-to-image",
        &key,
        &json!({"prompt": PROMPT, "model": "tiny-sd35", "negative_prompt": "blurry, low quality", "width": 64,
                "height": 64, "steps": 8, "guidance_scale": 4.5, "seed": 42, "max_sequence_length": 64,
                "skip_guidance_layers": [1], "skip_layer_guidance_stop": 0.5, "response_format": "b64_json"}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_golden(&first_b64_image(&r.json()), "tiny-sd35-slg.png");
    let r = s.post(
        "/v1/text-to-image",
        &key,
        &json!({"prompt": PROMPT, "model": "tiny-sd35", "negative_prompt": "blurry, low quality", "width": 64,
                "height": 64, "steps": 4, "guidance_scale": 4.5, "seed": 42, "max_sequence_length": 64,
                "scheduler": "heun", "response_format": "b64_json"}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_golden(&first_b64_image(&r.json()), "tiny-sd35-heun.png");

    // schnell's defaults: 4 steps, no guidance (the golden was made with them)
    let r = s.post(
        "/v1/text-to-image",
        &key,
        &json!({"prompt": PROMPT, "model": "tiny-flux-schnell", "width": 64, "height": 64, "seed": 42,
                "max_sequence_length": 256, "response_format": "b64_json"}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_golden(&first_b64_image(&r.json()), "tiny-flux-schnell-txt2img.png");

    // dev with true CFG
    let r = s.post(
        "/v1/text-to-image",
        &key,
        &json!({"prompt": PROMPT, "model": "tiny-flux-dev", "width": 48, "height": 64, "seed": 42, "steps": 4,
                "negative_prompt": "blurry, low quality", "true_cfg_scale": 2.0, "max_sequence_length": 64,
                "response_format": "b64_json"}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_golden(&first_b64_image(&r.json()), "tiny-flux-dev-txt2img-cfg.png");

    // the same with a FLUX LoRA for this request only (diffusers' fuse_lora at 0.8)
    let flux_lora = model("flux-peft");
    assert_eq!(flux_lora["base_family"], "flux");
    let r = s.post(
        "/v1/text-to-image",
        &key,
        &json!({"prompt": PROMPT, "model": "tiny-flux-dev", "width": 48, "height": 64, "seed": 42, "steps": 4,
                "negative_prompt": "blurry, low quality", "true_cfg_scale": 2.0, "max_sequence_length": 64,
                "loras": [{"name": "flux-peft", "scale": 0.8}], "response_format": "b64_json"}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_golden(&first_b64_image(&r.json()), "tiny-flux-dev-lora.png");
    let r = s.post(
        "/v1/text-to-image",
        &key,
        &json!({"prompt": PROMPT, "model": "tiny-flux-dev", "width": 32, "height": 32, "loras": [{"name": "kohya"}]}),
    );
    r.assert_error(400, "bad_request");

    // image-to-image (FluxImg2ImgPipeline's strength rounding)
    let init = std::fs::read(fixture("golden/generate/tiny-sd15-init.png")).expect("init");
    let r = s.post(
        "/v1/image-to-image",
        &key,
        &json!({"prompt": PROMPT, "model": "tiny-flux-dev", "image": b64(&init), "strength": 0.7, "steps": 6,
                "seed": 99, "max_sequence_length": 64, "response_format": "b64_json"}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_golden(&first_b64_image(&r.json()), "tiny-flux-dev-img2img.png");

    // what FLUX does not take: a clear 400 in the contract's shape
    for (body, needle) in [
        (
            json!({"prompt": PROMPT, "model": "tiny-flux-schnell", "negative_prompt": "blurry", "width": 32,
                "height": 32}),
            "negative prompt",
        ),
        (
            json!({"prompt": PROMPT, "model": "tiny-flux-dev", "scheduler": "euler_a", "width": 32, "height": 32}),
            "euler_a",
        ),
        (
            json!({"prompt": PROMPT, "model": "tiny-sd15", "max_sequence_length": 64}),
            "max_sequence_length",
        ),
        (
            json!({"prompt": PROMPT, "model": "tiny-sd15", "skip_guidance_layers": [1]}),
            "SD3",
        ),
        (
            json!({"prompt": PROMPT, "model": "tiny-sd35", "skip_layer_guidance_scale": 3.0, "width": 32,
                "height": 32}),
            "needs skip_guidance_layers",
        ),
        (
            json!({"prompt": PROMPT, "model": "tiny-sd35", "skip_guidance_layers": [9], "width": 32,
                "height": 32}),
            "skip_guidance_layers",
        ),
    ] {
        let r = s.post("/v1/text-to-image", &key, &body);
        r.assert_error(400, "bad_request");
        let msg = r.json()["error"]["message"].as_str().unwrap_or_default().to_owned();
        assert!(msg.contains(needle), "{needle}: {msg}");
    }
}
