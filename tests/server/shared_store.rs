//! Two servers on one PostgreSQL store (`IMAGEN_TEST_POSTGRES_URL`; CI starts a server): jobs
//! accepted by either are run by whichever worker claims them, one dying under its job
//! (kill -9) loses nothing, and a free key hammered through both front-ends gets exactly its
//! 10 requests a minute. Skipped, with a note, when no PostgreSQL is configured.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Env, Server};

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
    let key = env.key_on_store(&url, "enterprise");
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
    let key = env.key_on_store(&url, "free");
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
