//! The operator's log: one access line per request (method, route, status, latency, key id,
//! never the key), job lifecycle and webhook outcomes, a request id in every line of a
//! request, its `X-Request-Id` header and its error body; `--log-format json`; `RUST_LOG`.

use std::net::TcpListener;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Env, receiver};

/// Log lines (JSON objects) until `done` holds for one of them, or 30 s.
fn collect(rx: &Receiver<String>, seen: &mut Vec<Value>, done: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    if seen.iter().any(&done) {
        return;
    }
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        // the first start's admin key notice is plain text, not a log line
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let hit = done(&v);
        seen.push(v);
        if hit {
            return;
        }
    }
    panic!("log line never came; seen: {seen:#?}");
}

fn message(v: &Value) -> &str {
    v["fields"]["message"].as_str().unwrap_or_default()
}

fn access_of<'a>(seen: &'a [Value], request_id: &str) -> Vec<&'a Value> {
    seen.iter()
        .filter(|v| v["target"] == "imagen::access" && v["span"]["id"] == request_id)
        .collect()
}

#[test]
fn json_logs_carry_request_ids_jobs_and_webhooks() {
    let env = Env::new();
    let key = env.key("pro", &[]);
    let (s, rx) = env.serve_logged(&["--log-format", "json"], &[("RUST_LOG", "info")]);
    let mut seen = Vec::new();

    // a refused request: its id (the client's own) in the header, the body and the log
    let r = s.post_with(
        "/v1/text-to-image",
        &key,
        &json!({"prompt": "x", "width": 7}),
        &[("X-Request-Id", "client-abc.1")],
    );
    r.assert_error(400, "bad_request");
    assert_eq!(r.header("x-request-id"), Some("client-abc.1"));
    assert_eq!(r.json()["error"]["request_id"], "client-abc.1");
    collect(&rx, &mut seen, |v| v["span"]["id"] == "client-abc.1");
    let line = access_of(&seen, "client-abc.1")[0].clone();
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["fields"]["method"], "POST");
    assert_eq!(line["fields"]["route"], "/v1/text-to-image");
    assert_eq!(line["fields"]["status"], 400);
    assert!(
        line["fields"]["latency_ms"].as_f64().is_some_and(|ms| ms >= 0.0),
        "{line}"
    );
    assert!(
        line["span"]["key_id"].as_str().is_some_and(|k| k.starts_with("key_")),
        "{line}"
    );

    // a generation: a new id of the server's own, and the job's life under it
    let r = s.post(
        "/v1/text-to-image",
        &key,
        &json!({"prompt": "a fox", "model": "tiny-sd15", "width": 64, "height": 64, "steps": 2}),
    );
    assert_eq!(r.status, 200);
    let rid = r.header("x-request-id").expect("request id").to_owned();
    assert!(rid.starts_with("req_"), "{rid}");
    let job = r.json()["id"].as_str().expect("id").to_owned();
    collect(&rx, &mut seen, |v| {
        v["span"]["id"] == rid.as_str() && v["target"] == "imagen::access"
    });
    let of_job = |m: &str| {
        seen.iter()
            .find(|v| v["target"] == "imagen::jobs" && v["fields"]["job"] == job.as_str() && message(v) == m)
            .cloned()
            .unwrap_or_else(|| panic!("no {m:?} line for {job}: {seen:#?}"))
    };
    // queued while the request runs: the request's id ties the job to it
    assert_eq!(of_job("queued")["span"]["id"], rid.as_str());
    assert_eq!(of_job("queued")["fields"]["model"], "tiny-sd15");
    assert_eq!(of_job("started")["fields"]["attempt"], 1);
    assert_eq!(of_job("finished")["fields"]["images"], 1);
    assert_eq!(access_of(&seen, &rid)[0]["fields"]["status"], 200);

    // a failed job names its cause: cancelled while queued in the background
    let hooks = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!(
        "http://{}/hook?token=secret-in-query",
        hooks.local_addr().expect("addr")
    );
    let received = receiver(hooks);
    let r = s.post(
        "/v1/text-to-image",
        &key,
        &json!({"prompt": "slow", "model": "tiny-sd15", "width": 64, "height": 64, "steps": 40, "async": true,
                "webhook_url": url, "webhook_secret": "s3cret"}),
    );
    assert_eq!(r.status, 202);
    let slow = r.json()["id"].as_str().expect("id").to_owned();
    assert_eq!(
        s.request("POST", &format!("/v1/generations/{slow}/cancel"), Some(&key), None)
            .status
            / 100,
        2
    );
    received.recv_timeout(Duration::from_secs(60)).expect("webhook");
    collect(&rx, &mut seen, |v| {
        v["target"] == "imagen::webhooks" && v["fields"]["job"] == slow.as_str()
    });
    let failed = seen
        .iter()
        .find(|v| v["target"] == "imagen::jobs" && v["fields"]["job"] == slow.as_str() && message(v) == "cancelled")
        .unwrap_or_else(|| panic!("no cancelled line: {seen:#?}"));
    assert_eq!(failed["level"], "WARN");
    assert_eq!(failed["fields"]["code"], "cancelled");
    assert!(
        failed["fields"]["cause"]
            .as_str()
            .is_some_and(|c| !c.is_empty() && c != "-")
    );
    let hook = seen
        .iter()
        .find(|v| v["target"] == "imagen::webhooks" && v["fields"]["job"] == slow.as_str())
        .expect("webhook line");
    assert_eq!(message(hook), "delivered");
    // the receiver's query (where tokens live) stays out of the log
    assert!(!hook.to_string().contains("secret-in-query"), "{hook}");

    // an unknown route and a signed image link are logged too; the key never is
    assert_eq!(s.get("/nope", None).status, 404);
    collect(&rx, &mut seen, |v| v["fields"]["path"] == "/nope");
    drop(s);
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
        assert!(!line.contains(&key), "the key itself was logged: {line}");
    }
    for v in &seen {
        assert!(!v.to_string().contains(&key), "the key itself was logged: {v}");
    }
}

#[test]
fn text_logs_by_default_and_rust_log_filters() {
    let env = Env::new();
    let key = env.key("pro", &[]);
    // human text: the request's span with its id on the access line
    let (s, rx) = env.serve_logged(&[], &[("RUST_LOG", "info")]);
    let r = s.get("/v1/models", Some(&key));
    assert_eq!(r.status, 200);
    let rid = r.header("x-request-id").expect("id").to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("an access line");
        if line.contains(&rid) {
            assert!(line.contains("INFO"), "{line}");
            assert!(line.contains("imagen::access"), "{line}");
            assert!(
                line.contains("route=/v1/models") && line.contains("status=200"),
                "{line}"
            );
            assert!(serde_json::from_str::<Value>(&line).is_err(), "text, not JSON: {line}");
            break;
        }
    }
    drop(s);

    // RUST_LOG=warn: no access lines (a warning still comes through)
    let (s, rx) = env.serve_logged(&["--log-format", "json"], &[("RUST_LOG", "warn")]);
    assert_eq!(s.get("/v1/models", Some(&key)).status, 200);
    assert_eq!(s.get("/healthz", None).status, 200);
    drop(s);
    let lines: Vec<String> = rx.iter().collect();
    assert!(
        !lines.iter().any(|l| l.contains("imagen::access")),
        "filtered out: {lines:?}"
    );
}
