//! Runs the real `imagen serve` binary on a free port with the tiny fixture models, and talks to
//! it over a real socket (ureq). Also a minimal webhook receiver.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

pub fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(p)
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_imagen")
}

/// A models directory and a data directory that outlive server restarts.
pub struct Env {
    _tmp: tempfile::TempDir,
    pub models: PathBuf,
    pub data: PathBuf,
    pub config: Option<PathBuf>,
    /// Environment variables every process started from this env gets (e.g. `AWS_*`).
    pub vars: Vec<(String, String)>,
}

impl Env {
    pub fn new() -> Env {
        Self::with_config("")
    }

    /// `toml`: extra server configuration (e.g. `[limits]` tables).
    pub fn with_config(toml: &str) -> Env {
        let tmp = tempfile::tempdir().expect("tmp");
        let models = tmp.path().join("models");
        std::fs::create_dir_all(&models).expect("models");
        for m in ["tiny-sd15", "tiny-sd2", "tiny-sdxl"] {
            copy_dir(&fixture(m), &models.join(m));
        }
        // A LoRA in `loras/`, another at the top level, side by side with the model folders.
        std::fs::create_dir_all(models.join("loras")).expect("loras");
        std::fs::copy(
            fixture("loras/tiny-kohya.safetensors"),
            models.join("loras/kohya.safetensors"),
        )
        .expect("lora");
        std::fs::copy(fixture("loras/tiny-peft.safetensors"), models.join("peft.safetensors")).expect("lora");
        // A single-file checkpoint with its sidecar naming the config folder.
        std::fs::copy(
            fixture("single-file/tiny-sd15.safetensors"),
            models.join("single.safetensors"),
        )
        .expect("ckpt");
        std::fs::write(models.join("single.json"), r#"{"config": "tiny-sd15"}"#).expect("sidecar");
        std::fs::copy(
            fixture("single-file/tiny-sdxl.safetensors"),
            models.join("single-xl.safetensors"),
        )
        .expect("ckpt");
        std::fs::write(models.join("single-xl.json"), r#"{"config": "tiny-sdxl"}"#).expect("sidecar");
        std::fs::copy(
            fixture("single-file/tiny-sd15.safetensors"),
            models.join("single-v.safetensors"),
        )
        .expect("ckpt");
        std::fs::write(
            models.join("single-v.json"),
            r#"{"config": "tiny-sd15", "prediction_type": "v_prediction"}"#,
        )
        .expect("sidecar");
        // A GGUF checkpoint (stable-diffusion.cpp's layout, Q8_0 blocks), served the same way.
        std::fs::copy(
            fixture("single-file/tiny-sd15-q8_0.gguf"),
            models.join("tiny-sd15-q8.gguf"),
        )
        .expect("gguf");
        std::fs::write(models.join("tiny-sd15-q8.json"), r#"{"config": "tiny-sd15"}"#).expect("sidecar");
        let data = tmp.path().join("data");
        let config = (!toml.is_empty()).then(|| {
            let p = tmp.path().join("imagen.toml");
            std::fs::write(&p, toml).expect("config");
            p
        });
        Env {
            _tmp: tmp,
            models,
            data,
            config,
            vars: Vec::new(),
        }
    }

    /// `imagen keys create` against a PostgreSQL store.
    pub fn key_on_store(&self, url: &str, plan: &str, scopes: &[&str]) -> String {
        let out = Command::new(bin())
            .args(["keys", "create", "--data-dir"])
            .arg(&self.data)
            .args(["--plan", plan])
            .args(scopes.iter().flat_map(|s| ["--scope", s]))
            .env("IMAGEN_STORE_URL", url)
            .envs(self.vars.iter().cloned())
            .output()
            .expect("imagen keys create");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .expect("key line")
            .trim()
            .to_owned()
    }

    /// `imagen keys create`; the key is the last stdout line.
    pub fn key(&self, plan: &str, scopes: &[&str]) -> String {
        let mut cmd = Command::new(bin());
        cmd.args(["keys", "create", "--data-dir"])
            .arg(&self.data)
            .args(["--plan", plan]);
        for s in scopes {
            cmd.args(["--scope", s]);
        }
        let out = cmd.output().expect("keys create");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let key = text.trim().lines().last().expect("key line").trim().to_owned();
        assert!(key.starts_with("imk_"), "{text}");
        key
    }

    pub fn serve(&self) -> Server {
        self.serve_with(&[])
    }

    /// `imagen worker` (no listener: `base` is empty) over `models` (default: the env's models
    /// directory); killed with -9 when dropped.
    pub fn worker(&self, models: Option<&Path>) -> Server {
        let mut cmd = Command::new(bin());
        cmd.args(["worker", "--models-dir"])
            .arg(models.unwrap_or(&self.models))
            .arg("--data-dir")
            .arg(&self.data)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .env("RUST_LOG", quiet())
            .envs(self.vars.iter().cloned());
        if let Some(c) = &self.config {
            cmd.arg("--config").arg(c);
        }
        Server {
            child: cmd.spawn().expect("spawn imagen worker"),
            base: String::new(),
        }
    }

    /// `imagen serve` with extra flags (e.g. `--no-worker`).
    pub fn serve_with(&self, extra: &[&str]) -> Server {
        self.start(extra, &[], None)
    }

    /// `imagen serve` with extra flags and variables, its stderr (the log) line by line.
    pub fn serve_logged(&self, extra: &[&str], vars: &[(&str, &str)]) -> (Server, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel();
        (self.start(extra, vars, Some(tx)), rx)
    }

    fn start(&self, extra: &[&str], vars: &[(&str, &str)], log: Option<mpsc::Sender<String>>) -> Server {
        let mut cmd = Command::new(bin());
        cmd.args(["serve", "--bind", "127.0.0.1:0", "--models-dir"])
            .arg(&self.models)
            .arg("--data-dir")
            .arg(&self.data)
            .stdout(Stdio::piped())
            .stderr(if log.is_some() {
                Stdio::piped()
            } else {
                Stdio::inherit()
            })
            // the access log of every test's requests would drown a failure's output
            .env("RUST_LOG", quiet())
            .envs(self.vars.iter().cloned())
            .envs(vars.iter().copied());
        if let Some(c) = &self.config {
            cmd.arg("--config").arg(c);
        }
        cmd.args(extra);
        let mut child = cmd.spawn().expect("spawn imagen serve");
        if let (Some(tx), Some(err)) = (log, child.stderr.take()) {
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("listening line");
        let base = line
            .trim()
            .strip_prefix("imagen listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        let server = Server { child, base };
        // Ready = the default model is loaded.
        for _ in 0..200 {
            if server.get("/readyz", None).status == 200 {
                return server;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("server never became ready");
    }
}

/// Test servers log warnings and errors only, unless `RUST_LOG` says otherwise.
fn quiet() -> String {
    std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into())
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).expect("copy");
        }
    }
}

pub struct Server {
    child: Child,
    pub base: String,
}

impl Server {
    /// SIGTERM, then waits for the process to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(sent.success());
        self.child.wait().expect("wait")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Resp {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// A contract error with this status and code.
    pub fn assert_error(&self, status: u16, code: &str) {
        let v = self.json();
        assert_eq!(self.status, status, "{v}");
        assert_eq!(v["error"]["code"], code, "{v}");
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Any method, optional key, optional (content type, body).
    pub fn request(&self, method: &str, path: &str, key: Option<&str>, body: Option<(&str, Vec<u8>)>) -> Resp {
        self.request_with(method, path, key, body, &[])
    }

    /// A JSON POST with extra headers.
    pub fn post_with(&self, path: &str, key: &str, body: &Value, headers: &[(&str, &str)]) -> Resp {
        let bytes = serde_json::to_vec(body).expect("json");
        self.request_with("POST", path, Some(key), Some(("application/json", bytes)), headers)
    }

    pub fn request_with(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<(&str, Vec<u8>)>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let url = if path.starts_with("http") {
            path.to_owned()
        } else {
            self.url(path)
        };
        let mut b = ureq::http::Request::builder().method(method).uri(url);
        if let Some(k) = key {
            b = b.header("Authorization", format!("Bearer {k}"));
        }
        for (name, value) in headers {
            b = b.header(*name, *value);
        }
        let (ct, bytes) = body.unwrap_or(("", Vec::new()));
        if !ct.is_empty() {
            b = b.header("Content-Type", ct);
        }
        let req = b.body(bytes).expect("request");
        let resp = agent().run(req).expect("http");
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let body = resp
            .into_body()
            .with_config()
            .limit(64 << 20)
            .read_to_vec()
            .expect("body");
        Resp { status, headers, body }
    }

    pub fn get(&self, path: &str, key: Option<&str>) -> Resp {
        self.request("GET", path, key, None)
    }

    pub fn post(&self, path: &str, key: &str, body: &Value) -> Resp {
        self.request(
            "POST",
            path,
            Some(key),
            Some(("application/json", body.to_string().into_bytes())),
        )
    }
}

/// One received webhook: headers (lower-case names) and raw body.
pub struct Hook {
    pub headers: HashMap<String, String>,
    pub body: String,
}

/// A tiny HTTP server that answers 200 to every POST and hands the requests over.
pub fn receiver(listener: TcpListener) -> mpsc::Receiver<Hook> {
    scripted_receiver(listener, vec![OK.into()])
}

const OK: &str = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// [`receiver`] answering the n-th request with `answers[n]` (raw status line and headers; the
/// last answer repeats).
pub fn scripted_receiver(listener: TcpListener, answers: Vec<String>) -> mpsc::Receiver<Hook> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for (nth, stream) in listener.incoming().enumerate() {
            let Ok(mut s) = stream else { continue };
            let mut reader = BufReader::new(s.try_clone().expect("clone"));
            let mut headers = HashMap::new();
            let mut line = String::new();
            let _ = reader.read_line(&mut line); // request line
            loop {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = line.split_once(':') {
                    headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
                }
            }
            let n: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
            let mut body = vec![0; n];
            let _ = reader.read_exact(&mut body);
            let answer = answers.get(nth).or(answers.last()).map_or(OK, String::as_str);
            let _ = s.write_all(answer.as_bytes());
            let _ = tx.send(Hook {
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
    });
    rx
}

/// (max, mean) per-channel difference in 8-bit levels.
pub fn png_diff(a: &image::RgbImage, b: &image::RgbImage) -> (u8, f64) {
    assert_eq!(a.dimensions(), b.dimensions());
    let d: Vec<u8> = a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| x.abs_diff(*y)).collect();
    (
        *d.iter().max().unwrap_or(&0),
        d.iter().map(|&x| x as f64).sum::<f64>() / d.len() as f64,
    )
}

pub fn golden(name: &str) -> image::RgbImage {
    image::open(fixture("golden/generate").join(name))
        .expect("golden")
        .to_rgb8()
}

/// The first image of a `response_format: "b64_json"` answer.
pub fn first_b64_image(v: &Value) -> image::RgbImage {
    use base64::Engine as _;
    let data = v["images"][0]["b64_json"].as_str().expect("b64_json");
    let bytes = base64::engine::general_purpose::STANDARD.decode(data).expect("base64");
    image::load_from_memory(&bytes).expect("png").to_rgb8()
}

/// Within the generation tests' bound of diffusers' PNG: max ≤ 2/255, mean ≤ 0.1/255.
pub fn assert_golden(got: &image::RgbImage, name: &str) {
    let (max, mean) = png_diff(got, &golden(name));
    assert!(max <= 2 && mean <= 0.1, "{name}: max {max} mean {mean}");
}

pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
