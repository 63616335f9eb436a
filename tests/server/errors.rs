//! Every failure is the contract's `{"error":{"code","message","details"}}`, with the right
//! status; limits are named.

use serde_json::{Value, json};

use crate::harness::{Env, b64};

#[test]
fn bad_requests_get_contract_errors() {
    let env = Env::with_config("[limits]\nmax_body_bytes = 20000\nmax_steps = 30\n");
    let key = env.key("enterprise", &[]);
    let s = env.serve();
    let t2i = "/v1/text-to-image";

    // Auth.
    s.request("POST", t2i, None, Some(("application/json", b"{}".to_vec())))
        .assert_error(401, "unauthorized");
    s.request(
        "POST",
        t2i,
        Some("imk_wrong"),
        Some(("application/json", b"{}".to_vec())),
    )
    .assert_error(401, "unauthorized");
    s.get("/v1/models", None).assert_error(401, "unauthorized");

    // Body: content type, syntax, unknown and foreign fields, size.
    s.request("POST", t2i, Some(&key), Some(("text/plain", b"{}".to_vec())))
        .assert_error(415, "unsupported_media_type");
    s.request(
        "POST",
        t2i,
        Some(&key),
        Some(("application/json", b"{not json".to_vec())),
    )
    .assert_error(400, "bad_request");
    let r = s.post(t2i, &key, &json!({"prompt": "x", "colour": "red"}));
    r.assert_error(400, "bad_request");
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("colour"))
    );
    s.post(t2i, &key, &json!({"prompt": "x", "strength": 0.5}))
        .assert_error(400, "bad_request");
    s.post(t2i, &key, &json!({"prompt": "x", "width": "wide"}))
        .assert_error(400, "bad_request");
    // Just over the limit: small enough to sit in the socket buffers, so the client finishes
    // writing before the server answers 413 and closes.
    let big = "x".repeat(20_100);
    s.post(t2i, &key, &json!({ "prompt": big }))
        .assert_error(413, "payload_too_large");

    // Values and limits (400 naming the field and the limit).
    s.post(t2i, &key, &json!({})).assert_error(400, "bad_request");
    let r = s.post(t2i, &key, &json!({"prompt": "x", "width": 65}));
    r.assert_error(400, "bad_request");
    assert_eq!(r.json()["error"]["details"]["field"], "width");
    let r = s.post(t2i, &key, &json!({"prompt": "x", "steps": 31}));
    r.assert_error(400, "bad_request");
    assert_eq!(r.json()["error"]["details"]["limit"], 30);
    s.post(t2i, &key, &json!({"prompt": "x", "width": 4096, "height": 4096}))
        .assert_error(400, "bad_request");
    s.post(t2i, &key, &json!({"prompt": "x", "num_images": 100}))
        .assert_error(400, "bad_request");
    s.post(t2i, &key, &json!({"prompt": "y".repeat(5000)}))
        .assert_error(400, "bad_request");
    s.post(t2i, &key, &json!({"prompt": "x", "scheduler": "magic"}))
        .assert_error(400, "bad_request");
    // a model id not installed is a missing resource, as GET /v1/models/{id}
    s.post(t2i, &key, &json!({"prompt": "x", "model": "nope"}))
        .assert_error(404, "not_found");
    s.post(t2i, &key, &json!({"prompt": "x", "output_format": "gif"}))
        .assert_error(400, "bad_request");
    s.post(
        t2i,
        &key,
        &json!({"prompt": "x", "webhook_url": "http://127.0.0.1:9/x"}),
    )
    .assert_error(400, "bad_request");

    // Images: missing, bad base64, not an image, a bomb, URLs while fetching is off.
    let i2i = "/v1/image-to-image";
    s.post(i2i, &key, &json!({"prompt": "x"}))
        .assert_error(400, "bad_request");
    s.post(i2i, &key, &json!({"prompt": "x", "image": "%%%"}))
        .assert_error(400, "bad_request");
    s.post(i2i, &key, &json!({"prompt": "x", "image": b64(b"hello")}))
        .assert_error(400, "bad_request");
    let mut png = Vec::new();
    image::RgbImage::new(1, 1)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .expect("png");
    png[16..20].copy_from_slice(&30000u32.to_be_bytes());
    png[20..24].copy_from_slice(&30000u32.to_be_bytes());
    s.post(i2i, &key, &json!({"prompt": "x", "image": b64(&png)}))
        .assert_error(400, "bad_request");
    let r = s.post(
        i2i,
        &key,
        &json!({"prompt": "x", "image": "http://169.254.169.254/latest"}),
    );
    r.assert_error(400, "bad_request");
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("disabled"))
    );

    // Routing.
    s.get("/v1/nothing-here", Some(&key)).assert_error(404, "not_found");
    s.get("/nope", None).assert_error(404, "not_found");
    s.request("DELETE", "/v1/models", Some(&key), None)
        .assert_error(405, "method_not_allowed");
    s.get(t2i, Some(&key)).assert_error(405, "method_not_allowed");
}

#[test]
fn scopes_forbid_other_endpoints_and_models() {
    let env = Env::new();
    let key = env.key("pro", &["text-to-image", "model:tiny-sd15"]);
    let s = env.serve();
    let ok = s.post(
        "/v1/text-to-image",
        &key,
        &json!({"prompt": "x", "steps": 2, "model": "tiny-sd15"}),
    );
    assert_eq!(ok.status, 200, "{}", String::from_utf8_lossy(&ok.body));
    s.post(
        "/v1/text-to-image",
        &key,
        &json!({"prompt": "x", "steps": 2, "model": "tiny-sd2"}),
    )
    .assert_error(403, "forbidden");
    s.post("/v1/variations", &key, &json!({"image": "AAAA", "model": "tiny-sd15"}))
        .assert_error(403, "forbidden"); // the scope is checked before the image is read
    s.get("/v1/models", Some(&key)).assert_error(403, "forbidden");
    // Revoked keys stop working.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_imagen"))
        .args(["keys", "list", "--data-dir"])
        .arg(&env.data)
        .output()
        .expect("keys list");
    let list = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!list.contains(&key), "keys list must not print keys");
    let id = list.split_whitespace().next().expect("id").to_owned();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_imagen"))
        .args(["keys", "revoke", "--data-dir"])
        .arg(&env.data)
        .arg(&id)
        .output()
        .expect("revoke");
    assert!(out.status.success());
    s.post("/v1/text-to-image", &key, &json!({"prompt": "x"}))
        .assert_error(401, "unauthorized");
}

/// What the OpenAPI document promises, at its edges: `4.0` is an integer, null is "not set", a
/// steps default above the server's limit is clamped, a strength too low for one step still
/// runs one, OpenAI's own no-effect parameters pass and unknown ones are refused, a malformed
/// image link is a 400 even with the key.
#[test]
fn the_documents_edges_hold() {
    let env = Env::with_config("[limits]\nmax_steps = 3\n");
    let key = env.key("pro", &[]);
    let s = env.serve();
    let t2i = "/v1/text-to-image";
    let ok = |path: &str, body: Value| {
        let r = s.post(path, &key, &body);
        assert_eq!(r.status, 200, "{body}: {}", String::from_utf8_lossy(&r.body));
        r.json()
    };
    // steps left out: the model's 50, clamped to max_steps 3
    let g = ok(
        t2i,
        json!({"prompt": "x", "model": "tiny-sd15", "width": 64.0, "height": 64, "seed": 3.0,
                           "negative_prompt": null, "webhook_url": null, "num_images": 1.0}),
    );
    assert_eq!(g["images"][0]["seed"], 3);
    s.post(t2i, &key, &json!({"prompt": "x", "model": "tiny-sd15", "width": 64.5}))
        .assert_error(400, "bad_request");
    s.post(t2i, &key, &json!({"prompt": "x", "model": "tiny-sd15", "steps": 4}))
        .assert_error(400, "bad_request");
    let image = crate::harness::first_b64_image(&ok(
        t2i,
        json!({"prompt": "x", "model": "tiny-sd15", "width": 64, "height": 64, "response_format": "b64_json"}),
    ));
    let mut png = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .expect("png");
    ok(
        "/v1/image-to-image",
        json!({"prompt": "x", "model": "tiny-sd15", "image": b64(&png), "strength": 0.01, "steps": 3}),
    );
    let openai = "/v1/images/generations";
    ok(
        openai,
        json!({"prompt": "x", "model": "tiny-sd15", "size": "64x64", "n": 1.0, "quality": "hd", "user": "u"}),
    );
    let r = s.post(
        openai,
        &key,
        &json!({"prompt": "x", "model": "tiny-sd15", "colour": "red"}),
    );
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("colour"))
    );
    let url = g["images"][0]["url"].as_str().expect("url");
    let path = url
        .split_once("/v1/")
        .map(|(_, p)| format!("/v1/{}", p.split('?').next().unwrap_or(p)))
        .expect("path");
    assert_eq!(s.get(&path, Some(&key)).status, 200);
    s.get(&format!("{path}?expires=soon"), Some(&key))
        .assert_error(400, "bad_request");
}
