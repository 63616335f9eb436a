//! `GET /metrics` parsed as Prometheus' text format after real work: every family has its HELP
//! and TYPE, jobs are counted by model and outcome, images by model, histograms are cumulative
//! with `+Inf` = `_count`, the webhook delivery and the loaded model show, no key is needed.

use std::collections::HashMap;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{Env, receiver};

/// `name{labels}` → value, and the TYPE of each family; panics on a malformed line.
fn parse(text: &str) -> (HashMap<String, f64>, HashMap<String, String>) {
    let (mut samples, mut types) = (HashMap::new(), HashMap::new());
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            types.insert(name.to_owned(), kind.to_owned());
        } else if !line.starts_with('#') && !line.is_empty() {
            let (series, value) = line.rsplit_once(' ').expect("series value");
            let v: f64 = value.parse().unwrap_or_else(|_| panic!("value of {line:?}"));
            assert!(
                series.bytes().next().is_some_and(|b| b.is_ascii_alphabetic()),
                "{line:?}"
            );
            samples.insert(series.to_owned(), v);
        }
    }
    (samples, types)
}

#[test]
fn metrics_count_jobs_images_steps_and_webhooks() {
    let env = Env::new();
    let key = env.key("pro", &[]);
    let s = env.serve();
    let hooks = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/hook", hooks.local_addr().expect("addr"));
    let received = receiver(hooks);
    // Euler: one UNet step per step (PNDM, the model's own, adds one)
    let body = json!({"prompt": "a fox", "model": "tiny-sd15", "width": 64, "height": 64, "steps": 3,
                      "num_images": 2, "scheduler": "euler"});
    assert_eq!(s.post("/v1/text-to-image", &key, &body).status, 200);
    let mut hooked = body.clone();
    hooked["webhook_url"] = url.into();
    hooked["webhook_secret"] = "s3cret".into();
    assert_eq!(s.post("/v1/text-to-image", &key, &hooked).status, 202);
    received.recv_timeout(Duration::from_secs(60)).expect("webhook");
    // a refused request counts nothing
    assert_eq!(
        s.post("/v1/text-to-image", &key, &json!({"prompt": "x", "width": 7}))
            .status,
        400
    );

    // the sender counts a delivery once it has read the answer, a moment after the receiver
    // has the body: wait for it
    let deadline = Instant::now() + Duration::from_secs(30);
    let (r, text) = loop {
        let r = s.get("/metrics", None);
        assert_eq!(r.status, 200);
        let text = String::from_utf8_lossy(&r.body).into_owned();
        if text.contains(r#"imagen_webhook_deliveries_total{outcome="delivered"}"#) || Instant::now() > deadline {
            break (r, text);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (m, types) = parse(&text);
    let get = |k: &str| *m.get(k).unwrap_or_else(|| panic!("{k} missing:\n{text}"));
    for (family, kind) in [
        ("imagen_jobs_total", "counter"),
        ("imagen_images_generated_total", "counter"),
        ("imagen_job_duration_seconds", "histogram"),
        ("imagen_step_duration_seconds", "histogram"),
        ("imagen_webhook_deliveries_total", "counter"),
        ("imagen_queue_depth", "gauge"),
        ("imagen_models_loaded", "gauge"),
        ("imagen_process_resident_memory_bytes", "gauge"),
    ] {
        assert_eq!(types.get(family).map(String::as_str), Some(kind), "{family}");
    }
    assert_eq!(get(r#"imagen_jobs_total{model="tiny-sd15",status="accepted"}"#), 2.0);
    assert_eq!(get(r#"imagen_jobs_total{model="tiny-sd15",status="completed"}"#), 2.0);
    assert_eq!(get(r#"imagen_images_generated_total{model="tiny-sd15"}"#), 4.0);
    assert_eq!(get(r#"imagen_job_duration_seconds_count{model="tiny-sd15"}"#), 2.0);
    // 3 steps × 2 images per job (one image after the other), the first from the job's start
    assert_eq!(get(r#"imagen_step_duration_seconds_count{model="tiny-sd15"}"#), 12.0);
    assert_eq!(
        get(r#"imagen_step_duration_seconds_bucket{model="tiny-sd15",le="+Inf"}"#),
        12.0
    );
    let mut prev = 0.0;
    for line in text
        .lines()
        .filter(|l| l.starts_with("imagen_job_duration_seconds_bucket"))
    {
        let v: f64 = line.rsplit_once(' ').and_then(|(_, v)| v.parse().ok()).expect("bucket");
        assert!(v >= prev, "buckets must be cumulative: {line}");
        prev = v;
    }
    assert!(get(r#"imagen_job_duration_seconds_sum{model="tiny-sd15"}"#) > 0.0);
    assert_eq!(get(r#"imagen_webhook_deliveries_total{outcome="delivered"}"#), 1.0);
    assert_eq!(get("imagen_queue_depth"), 0.0);
    assert_eq!(get(r#"imagen_model_loaded{model="tiny-sd15"}"#), 1.0);
    // tiny-sd15 holds about 2.6 MB of f32 weights
    let held = get(r#"imagen_model_memory_bytes{model="tiny-sd15"}"#);
    assert!(held > 5e5 && held < 1e9, "{held}");
    assert!(get("imagen_process_resident_memory_bytes") > 1e6);
    assert!(
        r.headers
            .get("content-type")
            .is_some_and(|c| c.starts_with("text/plain"))
    );
}
