//! Processes started before their PostgreSQL (or during its restart) wait for it instead of
//! exiting; a store that can never work (no such database) fails at once. The server is
//! reached through a relay in this test that drops the first connections, as a server that is
//! not up yet would, then forwards to the real one. Skipped without `IMAGEN_TEST_POSTGRES_URL`.

use std::io::copy;
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::harness::bin;
use crate::shared_store::{env_on, pg_url};

/// `url` with its host:port replaced.
fn via(url: &str, addr: &str) -> String {
    let at = url.find('@').expect("user@host in the URL") + 1;
    let end = at + url[at..].find('/').expect("/database in the URL");
    format!("{}{addr}{}", &url[..at], &url[end..])
}

/// Relays to `upstream`, dropping every connection for the first `refuse_for`; counts those.
fn relay(upstream: String, refuse_for: Duration) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let dropped = Arc::new(AtomicUsize::new(0));
    let counter = dropped.clone();
    let until = Instant::now() + refuse_for;
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            if Instant::now() < until || counter.load(Ordering::SeqCst) == 0 {
                counter.fetch_add(1, Ordering::SeqCst);
                continue; // closed unanswered
            }
            let Ok(server) = TcpStream::connect(&upstream) else {
                continue;
            };
            let (mut c2, mut s2) = (client.try_clone().expect("clone"), server.try_clone().expect("clone"));
            let (mut c, mut s) = (client, server);
            std::thread::spawn(move || copy(&mut c2, &mut s2));
            std::thread::spawn(move || copy(&mut s, &mut c));
        }
    });
    (addr, dropped)
}

#[test]
fn a_server_started_before_postgres_waits_for_it() {
    let Some((url, _turn)) = pg_url("start") else { return };
    let at = url.find('@').expect("@") + 1;
    let upstream = url[at..at + url[at..].find('/').expect("/")].to_owned();
    let (addr, dropped) = relay(upstream, Duration::from_secs(1));
    let env = env_on(&via(&url, &addr), "");
    // serve_with returns once /readyz answers 200, and panics if the process exits
    let server = env.serve_with(&["--no-worker"]);
    assert!(
        dropped.load(Ordering::SeqCst) >= 1,
        "the server never met a missing PostgreSQL"
    );
    assert_eq!(server.get("/readyz", None).status, 200);
}

#[test]
fn a_missing_database_is_an_error_at_once() {
    let Some((url, _turn)) = pg_url("nodb") else { return };
    let at = url.find('@').expect("@");
    let db = at + url[at..].find('/').expect("/database");
    let rest = url[db..].find('?').map_or("", |q| &url[db + q..]);
    let bad = format!("{}/imagen_no_such_database{rest}", &url[..db]);
    let data = tempfile::tempdir().expect("tmp");
    let out = Command::new(bin())
        .args(["keys", "create", "--data-dir"])
        .arg(data.path())
        .env("IMAGEN_STORE_URL", &bad)
        .output()
        .expect("imagen keys create");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("imagen_no_such_database"), "{err}");
    assert!(!err.contains("waiting for PostgreSQL"), "{err}");
}
