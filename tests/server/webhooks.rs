//! Webhooks: answered 202 at once, delivered signed, retried, and not lost across a restart.

use std::net::TcpListener;
use std::time::Duration;

use imagen_server::signing::hmac_hex;
use serde_json::{Value, json};

use crate::harness::{Env, Hook, receiver, scripted_receiver};

/// The Standard Webhooks check a receiver's library makes: base64 HMAC-SHA256 over
/// "<webhook-id>.<webhook-timestamp>.<raw body>" with the secret (after `whsec_`, base64).
/// With IMAGEN_STANDARDWEBHOOKS_PYTHON naming a Python that has the `standardwebhooks`
/// package, that package's own verifier checks the delivery too.
pub(crate) fn verify_standard(hook: &Hook, secret: &str) {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let id = hook.headers.get("webhook-id").expect("webhook-id");
    let ts = hook.headers.get("webhook-timestamp").expect("webhook-timestamp");
    let sig = hook.headers.get("webhook-signature").expect("webhook-signature");
    let key = secret
        .strip_prefix("whsec_")
        .map_or(secret.as_bytes().to_vec(), |k| b64.decode(k).expect("whsec base64"));
    let hex = hmac_hex(&key, format!("{id}.{ts}.{}", hook.body).as_bytes());
    let mac: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect();
    assert_eq!(sig, &format!("v1,{}", b64.encode(mac)), "webhook-signature");
    if let Ok(python) = std::env::var("IMAGEN_STANDARDWEBHOOKS_PYTHON") {
        let script = "import json, sys\nfrom standardwebhooks.webhooks import Webhook\n\
                      d = json.load(sys.stdin)\nWebhook(d['secret']).verify(d['body'], d['headers'])\n";
        let input = json!({"secret": secret, "body": hook.body, "headers": hook.headers});
        let mut child = std::process::Command::new(python)
            .args(["-c", script])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("python");
        use std::io::Write as _;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.to_string().as_bytes())
            .expect("write");
        assert!(
            child.wait().expect("wait").success(),
            "standardwebhooks refused the delivery"
        );
    }
}

/// What a receiver does: recompute the HMAC over "<timestamp>.<raw body>" and compare.
fn verify(hook: &Hook, secret: &str) -> Value {
    let ts = hook.headers.get("x-imagen-timestamp").expect("timestamp header");
    let sig = hook.headers.get("x-imagen-signature").expect("signature header");
    let want = format!(
        "sha256={}",
        hmac_hex(secret.as_bytes(), format!("{ts}.{}", hook.body).as_bytes())
    );
    assert_eq!(sig, &want, "signature");
    let age = imagen_server::keys::now_secs().abs_diff(ts.parse().expect("ts"));
    assert!(age < 120, "timestamp {ts}");
    serde_json::from_str(&hook.body).expect("json body")
}

#[test]
fn webhook_is_delivered_signed() {
    let env = Env::new();
    let key = env.key("pro", &[]);
    let s = env.serve();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let hooks = receiver(listener);
    let r = s.post(
        "/v1/text-to-image",
        &key,
        &json!({"prompt": "a red fox", "steps": 3, "seed": 5,
                "webhook_url": format!("http://127.0.0.1:{port}/hook"), "webhook_secret": "whsec_test"}),
    );
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["status"], "processing");
    let id = v["id"].as_str().expect("id");
    let hook = hooks.recv_timeout(Duration::from_secs(60)).expect("webhook arrives");
    let body = verify(&hook, "whsec_test");
    verify_standard(&hook, "whsec_test");
    assert_eq!(hook.headers.get("webhook-id").map(String::as_str), Some(id));
    assert_eq!(body["id"], id);
    assert_eq!(body["status"], "completed");
    assert!(body["images"][0]["url"].as_str().is_some());
    // A forged body does not verify.
    let forged = Hook {
        headers: hook.headers.clone(),
        body: hook.body.replace("completed", "failed"),
    };
    assert!(std::panic::catch_unwind(|| verify(&forged, "whsec_test")).is_err());
    assert_eq!(
        s.get(&format!("/v1/generations/{id}"), Some(&key)).json()["status"],
        "completed"
    );
}

#[test]
fn pending_webhook_is_delivered_after_a_restart() {
    let env = Env::with_config("[webhooks]\nretry_base_ms = 100\nmax_attempts = 1000\n");
    let key = env.key("pro", &[]);
    // A port with nobody listening (yet).
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let id = {
        let s = env.serve();
        let r = s.post(
            "/v1/text-to-image",
            &key,
            &json!({"prompt": "x", "steps": 2, "webhook_url": format!("http://127.0.0.1:{port}/"),
                    "webhook_secret": "k"}),
        );
        assert_eq!(r.status, 202);
        let id = r.json()["id"].as_str().expect("id").to_owned();
        for _ in 0..400 {
            if s.get(&format!("/v1/generations/{id}"), Some(&key)).json()["status"] == "completed" {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(300)); // at least one failed attempt
        id
    }; // server killed here, the delivery still pending
    let store = imagen_server::store::SqliteStore::open(&env.data.join("imagen.db")).expect("store");
    use imagen_server::store::Store;
    let before = store.deliveries_for(&id).expect("deliveries");
    assert_eq!(before.len(), 1);
    assert_eq!(before[0].0, "pending", "{before:?}");
    assert!(before[0].1 >= 1, "no failed attempt recorded: {before:?}");

    let hooks = receiver(TcpListener::bind(("127.0.0.1", port)).expect("rebind"));
    let _s = env.serve();
    let hook = hooks
        .recv_timeout(Duration::from_secs(60))
        .expect("delivered after restart");
    assert_eq!(verify(&hook, "k")["id"], id.as_str());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(store.deliveries_for(&id).expect("deliveries")[0].0, "delivered");
}

/// A `whsec_` secret as Standard Webhooks issues them; a receiver that asks to wait
/// (`Retry-After`) is retried no sooner, with the same `webhook-id`; `410 Gone` stops retries.
#[test]
fn standard_webhooks_retry_after_and_gone() {
    let env = Env::with_config("[webhooks]\nretry_base_ms = 50\nmax_attempts = 10\n");
    let key = env.key("pro", &[]);
    let s = env.serve();
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let busy = "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 2\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://127.0.0.1:{}/hook", listener.local_addr().expect("addr").port());
    let hooks = scripted_receiver(
        listener,
        vec![busy.into(), "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".into()],
    );
    let r = s.post(
        "/v1/text-to-image",
        &key,
        &json!({"prompt": "x", "steps": 2, "webhook_url": url, "webhook_secret": secret}),
    );
    assert_eq!(r.status, 202);
    let first = hooks.recv_timeout(Duration::from_secs(60)).expect("first attempt");
    let t = std::time::Instant::now();
    let second = hooks.recv_timeout(Duration::from_secs(30)).expect("retried");
    assert!(
        t.elapsed() >= Duration::from_millis(1900),
        "Retry-After ignored: {:?}",
        t.elapsed()
    );
    assert_eq!(first.headers.get("webhook-id"), second.headers.get("webhook-id"));
    verify_standard(&second, secret);

    // 410: no retry
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://127.0.0.1:{}/hook", listener.local_addr().expect("addr").port());
    let gone = scripted_receiver(listener, vec!["HTTP/1.1 410 Gone\r\nContent-Length: 0\r\n\r\n".into()]);
    let r = s.post(
        "/v1/text-to-image",
        &key,
        &json!({"prompt": "x", "steps": 2, "webhook_url": url, "webhook_secret": secret}),
    );
    let id = r.json()["id"].as_str().expect("id").to_owned();
    gone.recv_timeout(Duration::from_secs(60)).expect("the one attempt");
    assert!(
        gone.recv_timeout(Duration::from_millis(600)).is_err(),
        "retried after 410"
    );
    let store = imagen_server::store::SqliteStore::open(&env.data.join("imagen.db")).expect("store");
    use imagen_server::store::Store;
    assert_eq!(store.deliveries_for(&id).expect("deliveries"), [("gone".to_owned(), 1)]);
}
