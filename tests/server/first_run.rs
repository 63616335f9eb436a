//! Zero setup: `imagen serve` on an empty data directory and a models folder that does not
//! exist yet makes the folder, says how to add a model, and prints an admin key once — usable
//! at once; a second start prints none.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::harness::bin;

/// Starts `imagen serve`; returns the child, its base URL and a channel of its stderr lines.
fn start(models: &std::path::Path, data: &std::path::Path) -> (std::process::Child, String, mpsc::Receiver<String>) {
    let mut cmd = Command::new(bin());
    cmd.args(["serve", "--bind", "127.0.0.1:0", "--models-dir"])
        .arg(models)
        .arg("--data-dir")
        .arg(data);
    spawn(cmd)
}

fn spawn(mut cmd: Command) -> (std::process::Child, String, mpsc::Receiver<String>) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn imagen serve");
    let (tx, rx) = mpsc::channel();
    let err = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("listening line");
    let base = line
        .trim()
        .strip_prefix("imagen listening on ")
        .expect("listening")
        .to_owned();
    (child, base, rx)
}

/// The log up to the line saying the models folder is empty (20 s at most between lines).
fn until_no_models(err: &mpsc::Receiver<String>) -> Vec<String> {
    let mut lines = Vec::new();
    while let Ok(l) = err.recv_timeout(Duration::from_secs(20)) {
        let done = l.contains("no models in");
        lines.push(l);
        if done {
            break;
        }
    }
    lines
}

fn get(url: &str, key: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut r = agent
        .get(url)
        .header("Authorization", format!("Bearer {key}"))
        .call()
        .expect("http");
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap_or_default())
}

#[test]
fn a_first_start_needs_no_setup() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (models, data) = (tmp.path().join("weights"), tmp.path().join("data"));
    let (mut child, base, err) = start(&models, &data);
    let lines = until_no_models(&err);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("no models in") && l.contains("imagen pull")),
        "{lines:?}"
    );
    let key = lines
        .iter()
        .find_map(|l| l.trim().strip_prefix("imk_").map(|k| format!("imk_{k}")))
        .unwrap_or_else(|| panic!("no admin key printed: {lines:?}"));
    assert!(lines.iter().any(|l| l.contains("first start")), "{lines:?}");
    assert!(models.is_dir(), "the models folder is made");
    let (status, body) = get(&format!("{base}/v1/models"), &key);
    assert_eq!(status, 200, "{body}");
    // the admin key may read the operator routes
    assert_eq!(get(&format!("{base}/v1/workers"), &key).0, 200);
    let _ = child.kill();
    let _ = child.wait();
    // a second start: the key stands, no new one
    let (mut child, base, err) = start(&models, &data);
    assert_eq!(get(&format!("{base}/v1/models"), &key).0, 200);
    let _ = child.kill();
    let _ = child.wait();
    let later: Vec<String> = err.iter().collect();
    assert!(
        !later
            .iter()
            .any(|l| l.contains("first start") || l.trim().starts_with("imk_")),
        "{later:?}"
    );
}

/// No flags, no `./weights` here: the user's data folder (`$HOME/.local/share/imagen`, or
/// `$XDG_DATA_HOME/imagen`) holds the models and the data.
#[test]
fn without_a_checkout_the_users_data_folder_is_used() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (cwd, home) = (tmp.path().join("somewhere"), tmp.path().join("home"));
    std::fs::create_dir_all(&cwd).expect("cwd");
    for xdg in [None, Some(tmp.path().join("xdg"))] {
        let mut cmd = Command::new(bin());
        cmd.args(["serve", "--bind", "127.0.0.1:0"])
            .current_dir(&cwd)
            .env("HOME", &home)
            .env_remove("XDG_DATA_HOME")
            .env_remove("IMAGEN_MODELS_DIR")
            .env_remove("IMAGEN_DATA_DIR");
        if let Some(x) = &xdg {
            cmd.env("XDG_DATA_HOME", x);
        }
        let (mut child, _base, err) = spawn(cmd);
        let root = xdg.clone().unwrap_or_else(|| home.join(".local/share")).join("imagen");
        let lines = until_no_models(&err);
        let _ = child.kill();
        let _ = child.wait();
        let models = root.join("models");
        assert!(
            lines
                .iter()
                .any(|l| l.contains(&format!("no models in {}", models.display()))),
            "{lines:?}"
        );
        assert!(
            models.is_dir() && root.join("data/imagen.db").is_file(),
            "{}",
            root.display()
        );
        assert!(!cwd.join("weights").exists() && !cwd.join("data").exists());
    }
}
