//! One suite for every store: each test is a function over `Store + Queue`, run on a fresh
//! SQLite file, and on PostgreSQL when `IMAGEN_TEST_POSTGRES_URL` names a server (each test in
//! its own schema). CI starts one.

use crate::pg::PgStore;
use crate::queue::{Outbox, Queue};
use crate::store::{Idempotency, JobRecord, SqliteStore, Store, Window};
use crate::workers::{WorkerInfo, Workers};

trait Both: Store + Queue + Workers {}
impl<T: Store + Queue + Workers> Both for T {}

/// Runs `test` on SQLite, and on PostgreSQL when one is configured.
fn each_store(name: &str, test: fn(&dyn Both)) {
    let dir = tempfile::tempdir().expect("tmp");
    test(&SqliteStore::open(&dir.path().join("t.db")).expect("sqlite"));
    let Ok(url) = std::env::var("IMAGEN_TEST_POSTGRES_URL") else {
        eprintln!("IMAGEN_TEST_POSTGRES_URL unset: {name} ran on SQLite only");
        return;
    };
    let schema = format!("t_{name}_{}", std::process::id());
    let mut admin = postgres::Client::connect(&url, postgres::NoTls).expect("postgres");
    admin
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
        ))
        .expect("schema");
    let sep = if url.contains('?') { '&' } else { '?' };
    let store = PgStore::open(&format!("{url}{sep}options=-csearch_path%3D{schema}")).expect("pg store");
    test(&store);
    drop(store);
    admin
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .expect("drop schema");
}

/// The models of a worker that has model `m`.
fn ms() -> Vec<String> {
    vec!["m".into()]
}

fn job(id: &str, t: u64) -> JobRecord {
    JobRecord {
        id: id.into(),
        key_id: "k".into(),
        status: "processing".into(),
        created_at: t,
        response: format!("{{\"id\":\"{id}\"}}"),
        webhook_url: Some("http://127.0.0.1:9/hook".into()),
        webhook_secret: Some("s".into()),
    }
}

/// Claims go oldest first; an expired lease is claimed again by a later attempt, whose finish
/// wins while the stale attempt's is fenced out; attempts run out; a release gives the
/// attempt back.
fn leases(s: &dyn Both) {
    assert!(s.enqueue(&job("a", 1), "m", "{}", 2, 10).expect("enqueue"));
    assert!(s.enqueue(&job("b", 2), "m", "{}", 1, 10).expect("enqueue"));
    assert!(
        !s.enqueue(&job("c", 3), "m", "{}", 1, 2).expect("full"),
        "capacity ignored"
    );
    assert_eq!(s.position("b").expect("pos"), Some(2));
    let a1 = s.claim("w1", &ms(), 1000, 2000).expect("claim").expect("a");
    assert_eq!((a1.id.as_str(), a1.attempt), ("a", 1));
    assert_eq!(s.heartbeat("a", 1, 3000).expect("hb"), Some(false));
    // w1 dies; its lease runs out at 3000: a, the oldest, is claimed again before b
    let a2 = s.claim("w2", &ms(), 3500, 4500).expect("claim").expect("a again");
    assert_eq!((a2.id.as_str(), a2.attempt), ("a", 2));
    let b1 = s.claim("w2", &ms(), 3600, 4600).expect("claim").expect("b");
    assert_eq!((b1.id.as_str(), b1.attempt), ("b", 1));
    assert_eq!(
        s.heartbeat("a", 1, 9000).expect("hb"),
        None,
        "stale attempt kept its lease"
    );
    let outbox = || Outbox {
        url: "http://x",
        secret: "s",
        body: "{}",
    };
    assert!(
        !s.finish("a", Some(1), "completed", "stale", Some(outbox()), 3700)
            .expect("fenced")
    );
    assert!(
        s.finish("a", Some(2), "completed", "fresh", Some(outbox()), 3700)
            .expect("finish")
    );
    assert_eq!(s.job("a").expect("job").expect("a").response, "fresh");
    assert_eq!(s.deliveries_for("a").expect("deliveries").len(), 1);
    // b's lease expires on its last attempt: exhausted, not claimable
    assert!(s.claim("w3", &ms(), 5000, 6000).expect("claim").is_none());
    let gone = s.exhausted(5000).expect("exhausted");
    assert_eq!(gone.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(), ["b"]);
    // a graceful release: queued again, the attempt not spent
    assert!(s.enqueue(&job("d", 4), "m", "{}", 1, 10).expect("enqueue"));
    let d1 = s.claim("w4", &ms(), 6000, 7000).expect("claim").expect("d");
    assert!(s.release("d", d1.attempt).expect("release"));
    assert_eq!(
        s.claim("w5", &ms(), 6100, 7100)
            .expect("claim")
            .expect("d again")
            .attempt,
        1
    );
}

fn cancels(s: &dyn Both) {
    assert!(s.enqueue(&job("a", 1), "m", "{}", 3, 10).expect("enqueue"));
    assert_eq!(s.request_cancel("a").expect("cancel").as_deref(), Some("queued"));
    assert!(s.finish("a", None, "failed", "cancelled", None, 10).expect("finish"));
    assert!(s.claim("w", &ms(), 20, 30).expect("claim").is_none());
    assert!(!s.finish("a", None, "failed", "again", None, 40).expect("twice"));
    assert_eq!(s.request_cancel("zzz").expect("cancel"), None);
}

fn windows(s: &dyn Both) {
    let w = [Window {
        name: "minute",
        secs: 60,
        limit: 2,
    }];
    let t = 6000; // a window boundary
    assert!(s.hit("k", &w, t).expect("hit").0);
    assert!(s.hit("k", &w, t + 1).expect("hit").0);
    let (ok, st) = s.hit("k", &w, t + 2).expect("hit");
    assert!(!ok);
    assert_eq!((st[0].used, st[0].reset), (2, t + 60));
    assert!(s.hit("k", &w, t + 60).expect("next window").0);
    assert!(s.hit("other", &w, t + 2).expect("other key").0);
    assert_eq!(s.usage("k", &w, t + 61).expect("usage")[0].used, 1);
}

fn idempotency(s: &dyn Both) {
    let now = 100_000;
    assert_eq!(
        s.idempotency_begin("k", "i", "h1", now).expect("begin"),
        Idempotency::New
    );
    assert_eq!(
        s.idempotency_begin("k", "i", "h1", now + 5).expect("again"),
        Idempotency::InFlight { since: now }
    );
    assert_eq!(
        s.idempotency_begin("k", "i", "h2", now).expect("other"),
        Idempotency::Mismatch
    );
    s.idempotency_end("k", "i", 201, "application/json", b"{}")
        .expect("end");
    assert_eq!(
        s.idempotency_begin("k", "i", "h1", now + 5).expect("replay"),
        Idempotency::Replay(201, "application/json".into(), b"{}".to_vec())
    );
    assert_eq!(
        s.idempotency_begin("other", "i", "h2", now).expect("per key"),
        Idempotency::New
    );
    s.idempotency_abort("other", "i").expect("abort");
    assert_eq!(
        s.idempotency_begin("other", "i", "h3", now).expect("fresh"),
        Idempotency::New
    );
    // a day later the key is free
    assert_eq!(
        s.idempotency_begin("k", "i", "h9", now + 86_401).expect("expired"),
        Idempotency::New
    );
}

#[test]
fn leases_fence_and_run_out() {
    each_store("leases", leases);
}

#[test]
fn cancel_of_a_queued_job_wins_over_a_claim() {
    each_store("cancels", cancels);
}

#[test]
fn rate_windows_count_and_refuse() {
    each_store("windows", windows);
}

#[test]
fn idempotency_keys_remember_answers() {
    each_store("idempotency", idempotency);
}

/// A worker claims only the jobs of the models it has; jobs of other models wait for theirs.
fn models(s: &dyn Both) {
    assert!(s.enqueue(&job("x", 1), "other", "{}", 1, 10).expect("enqueue"));
    assert!(s.enqueue(&job("y", 2), "m", "{}", 1, 10).expect("enqueue"));
    assert_eq!(s.claim("w1", &ms(), 10, 20).expect("claim").expect("y").id, "y");
    assert!(
        s.claim("w1", &ms(), 30, 40).expect("claim").is_none(),
        "claimed another model's job"
    );
    let both = vec!["m".to_string(), "other".to_string()];
    assert_eq!(s.claim("w2", &both, 50, 60).expect("claim").expect("x").id, "x");
    assert!(s.claim("w3", &[], 70, 80).expect("claim").is_none());
}

/// Heartbeats register a worker and replace its row; old ones drop out; a stopping one leaves.
fn workers(s: &dyn Both) {
    let w = |id: &str, seen: u64| WorkerInfo {
        id: id.into(),
        host: "h".into(),
        pid: 7,
        backend: "cpu".into(),
        dtype: "f32".into(),
        models: ms(),
        started_ms: 1,
        seen_ms: seen,
        running: None,
    };
    s.worker_beat(&w("a", 100)).expect("beat");
    s.worker_beat(&w("b", 100)).expect("beat");
    let running = WorkerInfo {
        running: Some("gen_1".into()),
        ..w("a", 500)
    };
    s.worker_beat(&running).expect("beat");
    assert_eq!(s.workers(0).expect("list"), vec![running.clone(), w("b", 100)]);
    assert_eq!(s.workers(200).expect("list"), vec![running], "b not seen since 200");
    s.worker_gone("a").expect("gone");
    assert!(s.workers(0).expect("list").is_empty());
}

#[test]
fn workers_claim_only_their_models() {
    each_store("models", models);
}

#[test]
fn workers_register_and_expire() {
    each_store("workers", workers);
}

/// A due delivery goes to one sender until its lease runs out, then to the next.
fn delivery_leases(s: &dyn Both) {
    s.insert_delivery("j", "http://127.0.0.1:9/hook", "s", "{}", 100)
        .expect("insert");
    let first = s.due_deliveries(100, 16, 1000).expect("due");
    assert_eq!(first.len(), 1);
    assert!(
        s.due_deliveries(500, 16, 1500).expect("due").is_empty(),
        "claimed twice"
    );
    let again = s.due_deliveries(1000, 16, 2000).expect("due");
    assert_eq!(again.iter().map(|d| d.id).collect::<Vec<_>>(), [first[0].id]);
    s.delivery_done(first[0].id, "delivered", 1, None).expect("done");
    assert!(s.due_deliveries(5000, 16, 6000).expect("due").is_empty());
}

#[test]
fn deliveries_are_claimed_by_one_sender_at_a_time() {
    each_store("deliveries", delivery_leases);
}
