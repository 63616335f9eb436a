//! Images in S3-compatible object storage (`[store] images = "s3://bucket/prefix"`), against a
//! local S3 server: moto's, from PyPI (`IMAGEN_TEST_S3_PYTHON` names a Python that has
//! `moto[s3]` and flask; CI installs them). Skipped, with a note, without one.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::harness::{Env, Server, assert_golden, b64, first_b64_image, fixture};
use crate::shared_store::{env_on, pg_url};

struct S3Server {
    child: Child,
    endpoint: String,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl S3Server {
    /// moto's server on a free port, with `bucket` made.
    fn start(bucket: &str) -> Option<S3Server> {
        let Ok(python) = std::env::var("IMAGEN_TEST_S3_PYTHON") else {
            eprintln!("IMAGEN_TEST_S3_PYTHON unset: the S3 tests are skipped");
            return None;
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new(python)
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto.server");
        let server = S3Server {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        for _ in 0..200 {
            // moto takes unsigned bucket creation
            if let Ok(r) = ureq::put(&format!("{}/{bucket}", server.endpoint)).send_empty()
                && r.status() == 200
            {
                return Some(server);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the S3 server never answered");
    }

    /// The variables the AWS tools read, pointing at this server.
    fn vars(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", "us-east-1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// (key, size) of the objects under `prefix` (moto lists a bucket unsigned).
    fn list(&self, bucket: &str, prefix: &str) -> Vec<(String, usize)> {
        let xml = ureq::get(&format!("{}/{bucket}?prefix={prefix}", self.endpoint))
            .call()
            .expect("list")
            .into_body()
            .read_to_string()
            .expect("xml");
        let field = |part: &str, tag: &str| -> Option<String> {
            let open = format!("<{tag}>");
            let start = part.find(&open)? + open.len();
            Some(part[start..].split_once(&format!("</{tag}>"))?.0.to_owned())
        };
        xml.split("<Contents>")
            .skip(1)
            .filter_map(|c| Some((field(c, "Key")?, field(c, "Size")?.parse().ok()?)))
            .collect()
    }
}

fn image_to_image(s: &Server, key: &str) -> serde_json::Value {
    let init = std::fs::read(fixture("golden/generate/tiny-sd2-init.png")).expect("init");
    let r = s.post(
        "/v1/image-to-image",
        key,
        &json!({"prompt": crate::contract::PROMPT, "model": "tiny-sd2",
                "image": format!("data:image/png;base64,{}", b64(&init)),
                "strength": 0.6, "steps": 5, "seed": 99, "scheduler": "euler_a", "response_format": "b64_json"}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

#[test]
fn images_and_inputs_live_in_the_object_store() {
    let Some(s3) = S3Server::start("imagen-one") else {
        return;
    };
    let mut env = Env::with_config("[store]\nimages = \"s3://imagen-one/run\"\n");
    env.vars = s3.vars();
    let key = env.key("pro", &[]);
    let s = env.serve();
    // the input image goes through the object store to the engine, the result comes back
    // from it as base64: the same pixels as with local files
    assert_golden(
        &first_b64_image(&image_to_image(&s, &key)),
        "tiny-sd2-euler_a-img2img.png",
    );
    assert_eq!(
        s3.list("imagen-one", "run/inputs/"),
        [],
        "inputs are removed once a job ends"
    );

    let body = json!({"model": "tiny-sd15", "prompt": "x", "steps": 2, "width": 64, "height": 64});
    let made = s.post("/v1/text-to-image", &key, &body).json();
    let id = made["id"].as_str().expect("id");
    let png = s.get(made["images"][0]["url"].as_str().expect("url"), None);
    assert_eq!(png.status, 200);
    assert!(png.body.starts_with(b"\x89PNG"));
    assert_eq!(
        s3.list("imagen-one", &format!("run/images/{id}/")),
        [(format!("run/images/{id}/0.png"), png.body.len())]
    );
    assert!(!env.data.join("images").join(id).exists(), "nothing on local disk");
}

/// An API-only front-end and a worker with data directories of their own, on one PostgreSQL
/// store and one bucket: the worker reads the input the front-end stored, the front-end serves
/// the image the worker wrote.
#[test]
fn a_front_end_and_a_worker_share_the_bucket() {
    let Some(s3) = S3Server::start("imagen-two") else {
        return;
    };
    let Some((url, _turn)) = pg_url("s3") else { return };
    let images = "images = \"s3://imagen-two/shared\"\n";
    let (mut env_a, mut env_b) = (env_on(&url, images), env_on(&url, images));
    env_a.vars = s3.vars();
    env_b.vars = s3.vars();
    let key = env_a.key_on_store(&url, "pro", &[]);
    let api = env_a.serve_with(&["--no-worker"]);
    let _worker = env_b.worker(None);
    let done = image_to_image(&api, &key);
    assert_golden(&first_b64_image(&done), "tiny-sd2-euler_a-img2img.png");
    let body = json!({"model": "tiny-sd15", "prompt": "x", "steps": 2, "width": 64, "height": 64});
    let made = api.post("/v1/text-to-image", &key, &body).json();
    let png = api.get(made["images"][0]["url"].as_str().expect("url"), None);
    assert_eq!(png.status, 200, "{}", String::from_utf8_lossy(&png.body));
    assert!(png.body.starts_with(b"\x89PNG"));
}
