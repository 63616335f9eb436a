//! Two servers on one PostgreSQL store (`IMAGEN_TEST_POSTGRES_URL`; CI starts a server): jobs
//! accepted by either are run by whichever worker claims them, one dying under its job
//! (kill -9) loses nothing, and a free key hammered through both front-ends gets exactly its
//! 10 requests a minute. Skipped, with a note, when no PostgreSQL is configured.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Env, Server, copy_dir, fixture};

/// The PostgreSQL tests take turns: the chaos test restarts the server under everyone.
static PG_TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A schema of its own on the test server, as a store URL, and this test's turn on the server;
/// `None` without one.
pub fn pg_url(name: &str) -> Option<(String, std::sync::MutexGuard<'static, ()>)> {
    let turn = PG_TURN.lock().unwrap_or_else(|p| p.into_inner());
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
    Some((format!("{url}{sep}options=-csearch_path%3D{schema}"), turn))
}

pub fn env_on(url: &str, extra: &str) -> Env {
    Env::with_config(&format!("[store]\nurl = \"{url}\"\n{extra}"))
}

fn wait_done(s: &Server, key: &str, id: &str) -> Value {
    wait_for(&format!("{id} to finish"), || {
        let g = s.get(&format!("/v1/generations/{id}"), Some(key)).json();
        (g["status"] != "processing").then_some(g)
    })
}

#[test]
fn two_servers_share_the_queue_and_survive_kill_9() {
    let Some((url, _turn)) = pg_url("share") else { return };
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
    let Some((url, _turn)) = pg_url("limits") else { return };
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

    // a key made on one node works on every front-end at once; revoked, it stops on all at
    // once (keys are read from the store on each request, never cached)
    let fresh = env.key_on_store(&url, "pro", &[]);
    for s in &servers {
        assert_eq!(s.get("/v1/models", Some(&fresh)).status, 200);
    }
    let list = std::process::Command::new(crate::harness::bin())
        .args(["keys", "list", "--data-dir"])
        .arg(&env.data)
        .env("IMAGEN_STORE_URL", &url)
        .output()
        .expect("keys list");
    let listed = String::from_utf8_lossy(&list.stdout).into_owned();
    // the newest key is the pro one just made (the others are free)
    let id = listed
        .lines()
        .filter(|l| l.split('\t').nth(1) == Some("pro"))
        .filter_map(|l| l.split('\t').next())
        .next_back()
        .unwrap_or_else(|| panic!("no pro key listed: {listed}"))
        .to_owned();
    let revoked = std::process::Command::new(crate::harness::bin())
        .args(["keys", "revoke", "--data-dir"])
        .arg(&env.data)
        .arg(&id)
        .env("IMAGEN_STORE_URL", &url)
        .output()
        .expect("keys revoke");
    assert!(revoked.status.success(), "{}", String::from_utf8_lossy(&revoked.stderr));
    for s in &servers {
        s.get("/v1/models", Some(&fresh)).assert_error(401, "unauthorized");
    }
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

/// Polls `f` every 50 ms until it gives a value (two minutes at most).
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    for _ in 0..2400 {
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
    let Some((url, _turn)) = pg_url("roles") else { return };
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
    // a request that waits for its images gets them, though another process ran the job
    let body = json!({"model": "tiny-sd15", "prompt": "x", "steps": 2, "width": 64, "height": 64});
    let sync = api.post("/v1/text-to-image", &key, &body);
    assert_eq!(sync.status, 200, "{}", String::from_utf8_lossy(&sync.body));
    assert_eq!(sync.json()["images"].as_array().map(Vec::len), Some(1));
    // SIGTERM: the worker deregisters as it stops
    assert!(w2.terminate().success());
    let left = workers(&api, &admin);
    assert_eq!(left.len(), 1, "{left:?}");
    assert_ne!(left[0]["models"], json!(["tiny-sd2"]));
    assert!(api.terminate().success());
}

/// Front-ends with data directories of their own sign links with the store's one secret: a
/// link one hands out opens on the other (given the file, which shared storage provides).
#[test]
fn links_signed_on_one_front_end_open_on_another() {
    let Some((url, _turn)) = pg_url("secret") else { return };
    let (env_a, env_b) = (env_on(&url, ""), env_on(&url, ""));
    let key = env_a.key_on_store(&url, "pro", &[]);
    let (a, b) = (env_a.serve(), env_b.serve());
    let body = json!({"model": "tiny-sd15", "prompt": "x", "steps": 2, "width": 64, "height": 64});
    let made = a.post("/v1/text-to-image", &key, &body).json();
    let id = made["id"].as_str().expect("id");
    let link = made["images"][0]["url"].as_str().expect("url");
    let path = link.split_once("/v1/").expect("a /v1/ link").1;
    // either process may have run it: the file where B looks
    let (in_a, in_b) = (env_a.data.join("images").join(id), env_b.data.join("images").join(id));
    if !in_b.exists() {
        copy_dir(&in_a, &in_b);
    }
    let r = b.get(&format!("/v1/{path}"), None);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.body.starts_with(b"\x89PNG"));
}
