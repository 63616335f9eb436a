//! Webhooks: answered 202 at once, delivered signed, retried, and not lost across a restart.

use std::net::TcpListener;
use std::time::Duration;

use imagen_server::signing::hmac_hex;
use serde_json::{Value, json};

use crate::harness::{Env, Hook, receiver};

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
