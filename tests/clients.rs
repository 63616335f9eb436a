//! The SDKs in `clients/` against the real `imagen serve` (each suite starts its own server from
//! this build's binary): the Python package's pytest suite when `IMAGEN_TEST_SDK_PYTHON` names a
//! Python with httpx and pytest (CI's venv), the Node package's `node --test` suite when `node`
//! (18 or later) is on the PATH; and the Go/PHP/curl examples match the OpenAPI document they
//! are generated from. Each is skipped, with a note, when its interpreter is missing.

use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run(mut cmd: Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed:\n{text}");
    eprintln!(
        "{what}: {}",
        text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("")
    );
}

#[test]
fn python_sdk_against_a_real_server() {
    let Ok(python) = std::env::var("IMAGEN_TEST_SDK_PYTHON") else {
        eprintln!("IMAGEN_TEST_SDK_PYTHON unset: the Python SDK's suite is skipped");
        return;
    };
    let mut cmd = Command::new(python);
    cmd.args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"])
        .current_dir(root().join("clients/python"))
        .env("PYTHONPATH", root().join("clients/python/src"))
        .env("IMAGEN_BIN", env!("CARGO_BIN_EXE_imagen"))
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()));
    run(cmd, "clients/python pytest");
}

#[test]
fn node_sdk_against_a_real_server() {
    let version = Command::new("node").arg("--version").output();
    let major = version.ok().filter(|o| o.status.success()).and_then(|o| {
        let v = String::from_utf8_lossy(&o.stdout)
            .trim()
            .trim_start_matches('v')
            .to_owned();
        v.split('.').next()?.parse::<u32>().ok()
    });
    if major.is_none_or(|m| m < 18) {
        eprintln!("no node 18+ on the PATH: the Node SDK's suite is skipped");
        return;
    }
    let mut cmd = Command::new("node");
    cmd.args(["--test", "test/client.test.js"])
        .current_dir(root().join("clients/node"))
        .env("IMAGEN_BIN", env!("CARGO_BIN_EXE_imagen"))
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()));
    run(cmd, "clients/node node --test");
}

#[test]
fn client_examples_match_the_openapi_document() {
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("no python3: the examples check is skipped");
        return;
    }
    let mut cmd = Command::new("python3");
    cmd.args(["tools/client_examples.py", "--check"]).current_dir(root());
    run(cmd, "tools/client_examples.py --check");
}
