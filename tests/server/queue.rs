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
            body["webhook_secret"] = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into();
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
            // signed, with the generation id as the stable webhook-id
            crate::webhooks::verify_standard(&h, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
            let body: Value = serde_json::from_str(&h.body).expect("json");
            assert_eq!(h.headers.get("webhook-id").map(String::as_str), body["id"].as_str());
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

/// One SSE connection: the events an SSE client library (`eventsource-stream`) parses from the
/// first `limit` events of the stream (all of it when the job ends first).
fn sse(s: &Server, key: &str, id: &str, last_event_id: Option<&str>, limit: usize) -> Vec<eventsource_stream::Event> {
    use eventsource_stream::Eventsource;
    use futures::StreamExt;
    use std::io::Read;
    let mut req =
        ureq::get(&s.url(&format!("/v1/generations/{id}/events"))).header("Authorization", format!("Bearer {key}"));
    if let Some(last) = last_event_id {
        req = req.header("Last-Event-ID", last);
    }
    let resp = req.call().expect("events");
    assert_eq!(
        resp.headers().get("content-type").and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    let mut reader = resp.into_body().into_reader();
    let mut events = Vec::new();
    let mut buf = [0u8; 4096];
    let mut raw = Vec::new();
    // read until `limit` events have arrived (or the stream ends), then parse what came
    while events.len() < limit {
        let n = match reader.read(&mut buf) {
            Ok(n) => n,
            Err(e) => panic!("reading the stream: {e}"),
        };
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        let chunks = futures::stream::iter([Ok::<_, std::io::Error>(raw.clone())]);
        events = futures::executor::block_on(chunks.eventsource().collect::<Vec<_>>())
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| !e.event.is_empty() || !e.data.is_empty())
            .collect();
    }
    events
}

#[test]
fn events_stream_progress_and_resume() {
    let env = Env::new();
    let key = env.key("pro", &[]);
    let s = env.serve();
    let slow = json!({"prompt": "x", "steps": 60, "width": 256, "height": 256, "seed": 1, "async": true});
    let a = s.post("/v1/text-to-image", &key, &slow).json()["id"]
        .as_str()
        .expect("a")
        .to_owned();
    let b = s
        .post(
            "/v1/text-to-image",
            &key,
            &json!({"prompt": "y", "steps": 6, "seed": 2, "async": true}),
        )
        .json()["id"]
        .as_str()
        .expect("b")
        .to_owned();
    // b's stream, read whole in the background while a runs; a's read in two connections
    let (events, (first, rest, resume_from)) = std::thread::scope(|scope| {
        let b_stream = scope.spawn(|| sse(&s, &key, &b, None, usize::MAX));
        // resuming a's stream: two progress events, then from the last one's id
        let first = sse(&s, &key, &a, None, 2);
        let resume_from = first.last().map(|e| e.id.clone()).expect("an event");
        let rest = sse(&s, &key, &a, Some(&resume_from), usize::MAX);
        (b_stream.join().expect("b's stream"), (first, rest, resume_from))
    });
    assert!(first.iter().all(|e| e.event == "progress"), "a was not running");
    // b waited behind a: queued first, then its steps in order, then the final record
    let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"queued"), "{kinds:?}");
    let queued: Value = serde_json::from_str(&events[0].data).expect("json");
    assert!(queued["position"].as_u64().is_some_and(|p| p >= 1), "{queued}");
    let steps: Vec<(u64, u64)> = events
        .iter()
        .filter(|e| e.event == "progress")
        .map(|e| {
            let v: Value = serde_json::from_str(&e.data).expect("json");
            (v["step"].as_u64().expect("step"), v["total"].as_u64().expect("total"))
        })
        .collect();
    // every step, in order, up to the total (PNDM's warm-up makes 6 steps 7 model calls)
    let (last_step, total) = *steps.last().expect("progress events");
    assert!(total >= 6 && last_step == total, "{steps:?}");
    assert!(
        steps.iter().enumerate().all(|(i, &(s, _))| s == i as u64 + 1),
        "{steps:?}"
    );
    let last = events.last().expect("final");
    assert_eq!((last.event.as_str(), last.id.as_str()), ("completed", "done"));
    let record: Value = serde_json::from_str(&last.data).expect("json");
    assert_eq!(record["id"], b.as_str());
    assert!(record["images"][0]["url"].as_str().is_some());

    // another key sees nothing
    let other = env.key("pro", &[]);
    let r = s.get(&format!("/v1/generations/{a}/events"), Some(&other));
    assert_eq!(r.status, 404);
    // a's resumed stream: only steps after Last-Event-ID, then the end
    let from: u64 = resume_from.parse().expect("numeric id");
    for e in rest.iter().filter(|e| e.event == "progress") {
        assert!(
            e.id.parse::<u64>().expect("id") > from,
            "step {} repeated after {from}",
            e.id
        );
    }
    assert_eq!(rest.last().map(|e| e.event.as_str()), Some("completed"));
}

/// Polls until a job reports a step (it is running).
fn wait_running(s: &Server, key: &str, id: &str) {
    let start = Instant::now();
    loop {
        let g = s.get(&format!("/v1/generations/{id}"), Some(key)).json();
        if g["progress"]["step"].as_u64().unwrap_or(0) >= 1 {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{id} never started: {g}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM: nothing more is claimed; the running job finishes within the shutdown timeout, or
/// is handed back to the queue without spending an attempt; nothing accepted is lost.
#[test]
fn sigterm_finishes_or_hands_back_the_running_job() {
    let slow = json!({"prompt": "x", "steps": 30, "width": 256, "height": 256, "seed": 1, "async": true});
    // time enough: the job ends before the process does
    let env = Env::with_config("[queue]\nshutdown_timeout_ms = 60000\n");
    let key = env.key("pro", &[]);
    let mut s = env.serve();
    let a = s.post("/v1/text-to-image", &key, &slow).json()["id"]
        .as_str()
        .expect("a")
        .to_owned();
    wait_running(&s, &key, &a);
    assert!(s.terminate().success());
    let store = SqliteStore::open(&env.data.join("imagen.db")).expect("store");
    assert_eq!(store.job(&a).expect("job").expect("a").status, "completed");

    // no time: the running job goes back to the queue unspent (max_attempts 1), the queued one
    // stays; both complete after a restart
    let env = Env::with_config("[queue]\nshutdown_timeout_ms = 100\nmax_attempts = 1\n");
    let key = env.key("pro", &[]);
    let mut s = env.serve();
    let a = s.post("/v1/text-to-image", &key, &slow).json()["id"]
        .as_str()
        .expect("a")
        .to_owned();
    let b = s
        .post(
            "/v1/text-to-image",
            &key,
            &json!({"prompt": "y", "steps": 3, "seed": 2, "async": true}),
        )
        .json()["id"]
        .as_str()
        .expect("b")
        .to_owned();
    wait_running(&s, &key, &a);
    assert!(s.terminate().success());
    let store = SqliteStore::open(&env.data.join("imagen.db")).expect("store");
    for id in [&a, &b] {
        assert_eq!(store.job(id).expect("job").expect("id").status, "processing", "{id}");
    }
    let s = env.serve();
    for id in [&a, &b] {
        assert_eq!(
            wait_done(&s, &key, id, Duration::from_secs(120))["status"],
            "completed",
            "{id}"
        );
    }
}

/// A model folder with a `taesd/` decoder: `GET /v1/models` says so, and every progress event
/// of its jobs carries a small PNG preview of that step.
#[test]
fn events_carry_previews_with_a_tiny_decoder() {
    let env = Env::new();
    crate::harness::copy_dir(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-taesd"),
        &env.models.join("tiny-sd15/taesd"),
    );
    let key = env.key("pro", &[]);
    let s = env.serve();
    let models = s.get("/v1/models", Some(&key)).json();
    let listed = models["data"]
        .as_array()
        .expect("models")
        .iter()
        .find(|m| m["id"] == "tiny-sd15")
        .cloned()
        .expect("tiny-sd15");
    assert_eq!(listed["previews"], true, "{listed}");
    let body = json!({"prompt": "x", "model": "tiny-sd15", "steps": 4, "seed": 3, "width": 80, "height": 48,
                      "scheduler": "euler", "async": true});
    // the stream is opened before the job can start: a slow job ahead of it holds the engine
    let ahead = json!({"prompt": "x", "model": "tiny-sd15", "steps": 30, "width": 256, "height": 256,
                       "seed": 1, "async": true});
    s.post("/v1/text-to-image", &key, &ahead);
    let id = s.post("/v1/text-to-image", &key, &body).json()["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let events = sse(&s, &key, &id, None, usize::MAX);
    let previews: Vec<image::RgbImage> = events
        .iter()
        .filter(|e| e.event == "progress")
        .map(|e| {
            use base64::Engine as _;
            let v: Value = serde_json::from_str(&e.data).expect("json");
            let uri = v["preview"].as_str().unwrap_or_else(|| panic!("no preview: {v}"));
            let b64 = uri.strip_prefix("data:image/png;base64,").expect("a PNG data URI");
            let png = base64::engine::general_purpose::STANDARD.decode(b64).expect("base64");
            image::load_from_memory(&png).expect("png").to_rgb8()
        })
        .collect();
    assert_eq!(previews.len(), 4);
    assert!(previews.iter().all(|p| p.dimensions() == (80, 48)));
    assert_ne!(previews[0], previews[3], "previews follow the denoising");
}
