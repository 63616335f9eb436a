//! OpenAI-compatible routes: `{created, data}` answers and OpenAI's error shape.
//! (`tools/openai_sdk_check.py` drives the same routes with the official Python SDK.)

use serde_json::{Value, json};

use crate::harness::{Env, Server, fixture};

fn multipart(fields: &[(&str, &str)], files: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "imagen-test-boundary-7d1f";
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").bytes(),
        );
    }
    for (name, bytes) in files {
        body.extend(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}.png\"\r\nContent-Type: image/png\r\n\r\n"
            )
            .bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend(b"\r\n");
    }
    body.extend(format!("--{boundary}--\r\n").bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn openai_error(v: &Value) {
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(e["type"].is_string(), "{v}");
    assert!(e.get("param").is_some() && e.get("code").is_some(), "{v}");
}

fn post_form(s: &Server, path: &str, key: &str, form: (String, Vec<u8>)) -> crate::harness::Resp {
    s.request("POST", path, Some(key), Some((&form.0, form.1)))
}

#[test]
fn openai_routes_answer_in_openai_shapes() {
    let env = Env::new();
    let key = env.key("pro", &[]);
    let s = env.serve();
    let r = s.post(
        "/v1/images/generations",
        &key,
        &json!({"prompt": "a lighthouse", "model": "dall-e-2", "n": 2, "size": "64x64", "quality": "standard"}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert!(v["created"].is_u64());
    let data = v["data"].as_array().expect("data");
    assert_eq!(data.len(), 2);
    let png = s.get(data[0]["url"].as_str().expect("url"), None);
    assert_eq!(png.status, 200);
    assert_eq!(image::load_from_memory(&png.body).expect("png").width(), 64);

    let r = s.post("/v1/images/generations", &key, &json!({"prompt": "x", "size": "big"}));
    assert_eq!(r.status, 400);
    openai_error(&r.json());
    let r = s.request("POST", "/v1/images/generations", None, None);
    assert_eq!(r.status, 401);
    openai_error(&r.json());

    let init = std::fs::read(fixture("golden/generate/tiny-sd15-init.png")).expect("init");
    let r = post_form(
        &s,
        "/v1/images/variations",
        &key,
        multipart(&[("n", "1"), ("response_format", "b64_json")], &[("image", &init)]),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.json()["data"][0]["b64_json"].as_str().is_some_and(|b| b.len() > 100));

    let r = post_form(
        &s,
        "/v1/images/edits",
        &key,
        multipart(&[("prompt", "make it blue")], &[("image", &init)]),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // A mask: transparent = repaint (OpenAI's convention).
    let mut mask = image::RgbaImage::from_pixel(64, 64, image::Rgba([0, 0, 0, 255]));
    for (x, _, p) in mask.enumerate_pixels_mut() {
        if x >= 32 {
            p.0[3] = 0;
        }
    }
    let mut mask_png = Vec::new();
    mask.write_to(&mut std::io::Cursor::new(&mut mask_png), image::ImageFormat::Png)
        .expect("png");
    let r = post_form(
        &s,
        "/v1/images/edits",
        &key,
        multipart(&[("prompt", "x")], &[("image", &init), ("mask", &mask_png)]),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = post_form(
        &s,
        "/v1/images/variations",
        &key,
        multipart(&[], &[("image", &init), ("mask", &mask_png)]),
    );
    assert_eq!(r.status, 400);
    openai_error(&r.json());
    let r = s.request(
        "POST",
        "/v1/images/edits",
        Some(&key),
        Some(("application/json", b"{}".to_vec())),
    );
    assert_eq!(r.status, 415);
    openai_error(&r.json());
}
