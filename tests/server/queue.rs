//! The durable queue over the real binary: accepted jobs survive kill -9 at any point (claimed
//! again once the dead process's lease runs out, same seed, same image, one final record and
//! one webhook each), and cancel stops queued and running jobs.

use std::collections::HashMap;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use imagen_server::keys;
use imagen_server::store::{SqliteStore, Store};
use serde_json::{Value, json};

use crate::harness::{Env, Server, receiver};

/// Polls a generation until it leaves `processing`.
fn wait_done(s: &Server, key: &str, id: &str, within: Duration) -> Value {
    let start = Instant::now();
    loop {
        let g = s.get(&format!("/v1/generations/{id}"), Some(key)).json();
        if g["status"] != "processing" {
            return g;
        }
        assert!(start.elapsed() < within, "{id} still processing: {g}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn pixels(b64: &Value) -> image::RgbImage {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.as_str().expect("b64_json"))
        .expect("base64");
    image::load_from_memory(&bytes).expect("image").to_rgb8()
}

#[test]
fn accepted_jobs_survive_kill_9() {
    let env = Env::with_config("[queue]\nlease_ms = 1200\n");
    let key = env.key("enterprise", &[]);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let hook_url = format!("http://127.0.0.1:{}/hook", listener.local_addr().expect("addr").port());
    let hooks = receiver(listener);
    let job = |seed: u64| {
        json!({"prompt": "a red fox", "steps": 12, "seed": seed, "width": 64, "height": 64,
               "response_format": "b64_json"})
    };
    let mut accepted: Vec<(String, u64)> = Vec::new();
    let mut posts = 0;
    let mut unfinished = 0;
    // kill -9 right after accepting, and at later points (queued, mid-step, writing, delivering)
    for (round, kill_after_ms) in [0u64, 120, 350, 800].into_iter().enumerate() {
        let s = env.serve();
        for k in 0..3 {
            let seed = 100 + (round * 3 + k) as u64;
            let mut body = job(seed);
            body["async"] = true.into();
            body["webhook_url"] = hook_url.clone().into();
            body["webhook_secret"] = "whsec_q".into();
            let r = s.post("/v1/text-to-image", &key, &body);
            posts += 1;
            assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
            accepted.push((r.json()["id"].as_str().expect("id").to_owned(), seed));
        }
        std::thread::sleep(Duration::from_millis(kill_after_ms));
        drop(s); // SIGKILL
        let store = SqliteStore::open(&env.data.join("imagen.db")).expect("store");
        let open = accepted
            .iter()
            .filter(|(id, _)| store.job(id).expect("job").is_some_and(|j| j.status == "processing"))
            .count();
        println!("killed after {kill_after_ms} ms with {open} jobs unfinished");
        unfinished += open;
    }
    assert!(
        unfinished > 0,
        "no kill caught a job unfinished: the test proves nothing"
    );
    let s = env.serve();
    let store = SqliteStore::open(&env.data.join("imagen.db")).expect("store");
    for (id, seed) in &accepted {
        let g = wait_done(&s, &key, id, Duration::from_secs(120));
        assert_eq!(g["status"], "completed", "{id}: {g}");
        // a fresh synchronous run of the same request gives the same image
        let fresh = s.post("/v1/text-to-image", &key, &job(*seed));
        posts += 1;
        assert_eq!(fresh.status, 200);
        assert_eq!(
            pixels(&g["images"][0]["b64_json"]),
            pixels(&fresh.json()["images"][0]["b64_json"]),
            "{id}: not the image its seed gives"
        );
        // one final record, one outbox row: no job completed twice
        assert_eq!(store.deliveries_for(id).expect("deliveries").len(), 1, "{id}");
    }
    // every webhook arrives (at least once), for the job's final record
    let mut seen: HashMap<String, Value> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < accepted.len() && Instant::now() < deadline {
        if let Ok(h) = hooks.recv_timeout(Duration::from_millis(200)) {
            let body: Value = serde_json::from_str(&h.body).expect("json");
            seen.insert(body["id"].as_str().unwrap_or_default().to_owned(), body);
        }
    }
    for (id, _) in &accepted {
        assert_eq!(seen.get(id).map(|b| &b["status"]), Some(&json!("completed")), "{id}");
    }
    // usage counted each accepted request once, across the restarts
    let record = store.key_by_hash(&keys::hash(&key)).expect("key").expect("key");
    let day = store
        .usage(&record.id, &keys::windows("enterprise"), keys::now_secs())
        .expect("usage")[1]
        .used;
    assert_eq!(day, posts);
}

#[test]
fn cancel_stops_queued_and_running_jobs() {
    let env = Env::new();
    let key = env.key("pro", &[]);
    let other = env.key("pro", &[]);
    let s = env.serve();
    let slow = json!({"prompt": "x", "steps": 150, "width": 512, "height": 512, "seed": 1, "async": true,
                      "webhook_url": "http://127.0.0.1:9/hook", "webhook_secret": "s"});
    let a = s.post("/v1/text-to-image", &key, &slow).json()["id"]
        .as_str()
        .expect("a")
        .to_owned();
    let b = s.post("/v1/text-to-image", &key, &slow).json()["id"]
        .as_str()
        .expect("b")
        .to_owned();
    let start = Instant::now();
    loop {
        let g = s.get(&format!("/v1/generations/{a}"), Some(&key)).json();
        if g["progress"]["step"].as_u64().unwrap_or(0) >= 1 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "a never started: {g}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let queued = s.get(&format!("/v1/generations/{b}"), Some(&key)).json();
    assert_eq!(queued["progress"]["position"], 1, "{queued}");

    // another key's job is not there to cancel
    s.post(&format!("/v1/generations/{b}/cancel"), &other, &json!({}))
        .assert_error(404, "not_found");
    // queued: never starts, ends at once
    let r = s.post(&format!("/v1/generations/{b}/cancel"), &key, &json!({}));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        (r.json()["status"].clone(), r.json()["error"]["code"].clone()),
        (json!("failed"), json!("cancelled"))
    );
    // running: stops after the step under way
    let r = s.post(&format!("/v1/generations/{a}/cancel"), &key, &json!({}));
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let g = wait_done(&s, &key, &a, Duration::from_secs(30));
    assert_eq!(g["error"]["code"], "cancelled", "{g}");
    // cancelling an ended job changes nothing
    let again = s.post(&format!("/v1/generations/{b}/cancel"), &key, &json!({}));
    assert_eq!(
        (again.status, again.json()["error"]["code"].clone()),
        (200, json!("cancelled"))
    );
    // each told its webhook once; the engine is free for the next job
    let store = SqliteStore::open(&env.data.join("imagen.db")).expect("store");
    for id in [&a, &b] {
        assert_eq!(store.deliveries_for(id).expect("deliveries").len(), 1, "{id}");
    }
    let next = s.post(
        "/v1/text-to-image",
        &key,
        &json!({"prompt": "y", "steps": 2, "seed": 3}),
    );
    assert_eq!(next.status, 200, "{}", String::from_utf8_lossy(&next.body));
}
