//! Two servers on one PostgreSQL store (`IMAGEN_TEST_POSTGRES_URL`; CI starts a server): jobs
//! accepted by either are run by whichever worker claims them, one dying under its job
//! (kill -9) loses nothing, and a free key hammered through both front-ends gets exactly its
//! 10 requests a minute. Skipped, with a note, when no PostgreSQL is configured.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Env, Server, copy_dir, fixture};

/// A schema of its own on the test server, as a store URL; `None` without one.
fn pg_url(name: &str) -> Option<String> {
    let Ok(url) = std::env::var("IMAGEN_TEST_POSTGRES_URL") else {
        eprintln!("IMAGEN_TEST_POSTGRES_URL unset: {name} skipped");
        return None;
    };
    let schema = format!("srv_{name}_{}", std::process::id());
    let mut admin = postgres::Client::connect(&url, postgres::NoTls).expect("postgres");
    admin
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
        ))
        .expect("schema");
    let sep = if url.contains('?') { '&' } else { '?' };
    Some(format!("{url}{sep}options=-csearch_path%3D{schema}"))
}

fn env_on(url: &str, extra: &str) -> Env {
    Env::with_config(&format!("[store]\nurl = \"{url}\"\n{extra}"))
}

fn wait_done(s: &Server, key: &str, id: &str) -> Value {
    for _ in 0..2400 {
        let g = s.get(&format!("/v1/generations/{id}"), Some(key)).json();
        if g["status"] != "processing" {
            return g;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{id} never finished");
}

#[test]
fn two_servers_share_the_queue_and_survive_kill_9() {
    let Some(url) = pg_url("share") else { return };
    let env = env_on(&url, "[queue]\nlease_ms = 1200\n");
    // keys made on one node are everyone's: the store is shared
    let key = env.key_on_store(&url, "enterprise", &[]);
    let a = env.serve();
    let b = env.serve();
    let mut ids = Vec::new();
    for (i, s) in [&a, &b, &a, &b, &a, &b].into_iter().enumerate() {
        let r = s.post(
            "/v1/text-to-image",
            &key,
            &json!({"prompt": "x", "steps": 12, "seed": i, "width": 64, "height": 64, "async": true}),
        );
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
        ids.push(r.json()["id"].as_str().expect("id").to_owned());
    }
    drop(a); // SIGKILL one server, whatever it was running
    for id in &ids {
        assert_eq!(wait_done(&b, &key, id)["status"], "completed", "{id}");
    }
}

#[test]
fn a_free_key_gets_exactly_ten_through_two_front_ends() {
    let Some(url) = pg_url("limits") else { return };
    let env = env_on(&url, "");
    let key = env.key_on_store(&url, "free", &[]);
    let servers = [Arc::new(env.serve()), Arc::new(env.serve())];
    let handles: Vec<_> = (0..24)
        .map(|i| {
            let (s, key) = (servers[i % 2].clone(), key.clone());
            std::thread::spawn(move || {
                s.post("/v1/text-to-image", &key, &json!({"prompt": "x", "width": 65}))
                    .status
            })
        })
        .collect();
    let statuses: Vec<u16> = handles.into_iter().map(|h| h.join().expect("thread")).collect();
    // 400 = counted, then refused by validation (no engine work); 429 = over the limit
    assert_eq!(statuses.iter().filter(|&&s| s == 400).count(), 10, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|&&s| s == 429).count(), 14, "{statuses:?}");
}

fn submit(s: &Server, key: &str, model: &str, seed: u64) -> String {
    let body =
        json!({"model": model, "prompt": "x", "steps": 2, "seed": seed, "width": 64, "height": 64, "async": true});
    let r = s.post("/v1/text-to-image", key, &body);
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    r.json()["id"].as_str().expect("id").to_owned()
}

/// Workers as the store sees them, through the admin route.
fn workers(s: &Server, admin: &str) -> Vec<Value> {
    let r = s.get("/v1/workers", Some(admin));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["data"].as_array().expect("data").clone()
}

fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    for _ in 0..1200 {
        if let Some(v) = f() {
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what}: timed out");
}

/// `imagen serve --no-worker` answers and queues but runs nothing; `imagen worker` processes
/// run the jobs, each only for the models in its own models directory, advertise themselves
/// (`GET /v1/workers`, admin keys only; `/readyz`), and leave the register on SIGTERM.
#[test]
fn api_only_front_end_and_workers_with_their_own_models() {
    let Some(url) = pg_url("roles") else { return };
    let env = env_on(&url, "[queue]\nlease_ms = 3000\n");
    let key = env.key_on_store(&url, "enterprise", &[]);
    let admin = env.key_on_store(&url, "free", &["admin"]);
    let mut api = env.serve_with(&["--no-worker"]);
    let ready = api.get("/readyz", None).json();
    assert_eq!(
        (ready["role"].as_str(), ready["workers"].as_u64()),
        (Some("api"), Some(0)),
        "{ready}"
    );
    assert_eq!(
        api.get("/v1/workers", Some(&key)).status,
        403,
        "a key without the admin scope"
    );
    let sd15 = submit(&api, &key, "tiny-sd15", 1);
    let sd2 = submit(&api, &key, "tiny-sd2", 2);
    // a worker with only tiny-sd2 runs that job and never claims the other
    let only_sd2 = env.data.parent().expect("tmp").join("models-sd2");
    copy_dir(&fixture("tiny-sd2"), &only_sd2.join("tiny-sd2"));
    let mut w2 = env.worker(Some(&only_sd2));
    assert_eq!(wait_done(&api, &key, &sd2)["status"], "completed");
    let listed = workers(&api, &admin);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["models"], json!(["tiny-sd2"]));
    assert_eq!(listed[0]["backend"], "cpu");
    std::thread::sleep(Duration::from_millis(500));
    let waiting = api.get(&format!("/v1/generations/{sd15}"), Some(&key)).json();
    assert_eq!(waiting["status"], "processing", "{waiting}");
    assert_eq!(waiting["progress"]["queued"], true, "{waiting}");
    // a worker with every model takes it
    let _all = env.worker(None);
    assert_eq!(wait_done(&api, &key, &sd15)["status"], "completed");
    let n = wait_for("two workers on readyz", || {
        let r = api.get("/readyz", None).json();
        (r["workers"] == 2).then_some(2)
    });
    assert_eq!(workers(&api, &admin).len(), n);
    // SIGTERM: the worker deregisters as it stops
    assert!(w2.terminate().success());
    let left = workers(&api, &admin);
    assert_eq!(left.len(), 1, "{left:?}");
    assert_ne!(left[0]["models"], json!(["tiny-sd2"]));
    assert!(api.terminate().success());
}
