//! `GET /v1/generations`: a key's own generations, newest first, paged, each with parameters
//! that, sent again, make the same image.

use serde_json::{Value, json};

use crate::harness::Env;

#[test]
fn a_keys_generations_page_newest_first_and_reuse_reproduces() {
    let env = Env::new();
    let key = env.key("pro", &[]);
    let other = env.key("pro", &[]);
    let s = env.serve();
    let mut ids = Vec::new();
    for (i, prompt) in ["one", "two", "three"].iter().enumerate() {
        let mut body = json!({"prompt": prompt, "width": 64, "height": 64, "steps": 2,
                              "negative_prompt": "blurry", "guidance_scale": 5.0 + i as f64,
                              "scheduler": "euler"});
        if i == 1 {
            body["response_format"] = "b64_json".into();
        }
        let r = s.post("/v1/text-to-image", &key, &body);
        assert_eq!(r.status, 200, "{}", r.json());
        ids.push(r.json()["id"].as_str().expect("id").to_owned());
    }
    assert_eq!(
        s.post(
            "/v1/text-to-image",
            &other,
            &json!({"prompt": "theirs", "width": 64, "height": 64, "steps": 1})
        )
        .status,
        200
    );

    let page = s.get("/v1/generations?limit=2", Some(&key)).json();
    let data = page["data"].as_array().expect("data");
    let got: Vec<&str> = data.iter().map(|g| g["id"].as_str().unwrap_or_default()).collect();
    assert_eq!(got, [ids[2].as_str(), ids[1].as_str()]);
    assert_eq!(page["has_more"], true);
    // a listing links images, even those asked for as base64
    assert!(
        data[1]["images"][0]["url"].as_str().is_some_and(|u| u.contains("sig=")),
        "{}",
        data[1]
    );
    assert!(data[1]["images"][0].get("b64_json").is_none());
    assert_eq!(data[1]["response_format"], "b64_json");
    let p = &data[0]["parameters"];
    assert_eq!(p["prompt"], "three");
    assert_eq!(p["negative_prompt"], "blurry");
    assert_eq!(p["guidance_scale"], 7.0);
    assert_eq!(p["scheduler"], "euler");
    assert_eq!((p["width"].as_u64(), p["steps"].as_u64()), (Some(64), Some(2)));
    assert_eq!(p["seed"], data[0]["images"][0]["seed"]);

    let next = s.get(&format!("/v1/generations?before={}", ids[1]), Some(&key)).json();
    let rest: Vec<&str> = next["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|g| g["id"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(rest, [ids[0].as_str()]);
    assert_eq!(next["has_more"], false);

    // "reuse these settings": the parameters, sent again, make the same image
    let mut again: serde_json::Map<String, Value> = p.as_object().expect("parameters").clone();
    again.retain(|k, v| !v.is_null() && k != "mask" && k != "strength");
    again.insert("response_format".into(), "b64_json".into());
    let redo = s.post("/v1/text-to-image", &key, &Value::Object(again));
    assert_eq!(redo.status, 200, "{}", redo.json());
    let original = s.get(data[0]["images"][0]["url"].as_str().expect("url"), None);
    assert_eq!(original.status, 200);
    let redone = crate::harness::first_b64_image(&redo.json());
    let original = image::load_from_memory(&original.body).expect("png").to_rgb8();
    assert_eq!(crate::harness::png_diff(&redone, &original).0, 0, "the same image");

    // another key sees only its own; bad queries are 400 in the contract's shape
    let theirs = s.get("/v1/generations", Some(&other)).json();
    assert_eq!(theirs["data"].as_array().map(Vec::len), Some(1));
    s.get(&format!("/v1/generations?before={}", ids[0]), Some(&other))
        .assert_error(404, "not_found");
    assert_eq!(s.get("/v1/generations?before=", Some(&other)).status, 200);
    s.get("/v1/generations?limit=0", Some(&key))
        .assert_error(400, "bad_request");
    s.get("/v1/generations?limit=abc", Some(&key))
        .assert_error(400, "bad_request");
    s.get("/v1/generations?page=2", Some(&key))
        .assert_error(400, "bad_request");
    assert_eq!(s.get("/v1/generations", None).status, 401);
}
