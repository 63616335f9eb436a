//! Dynamic batching over the real binaries: jobs queued by an API-only server are claimed by
//! an `imagen worker` with `max_batch = 4` as batches of compatible jobs (same model, size,
//! steps, sampler), each keeping its prompt, seed and guidance; every image within 1/255 of
//! the same request run alone. Jobs that cannot share run alone.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Env, Server, png_diff};

fn pixels(b64: &Value) -> image::RgbImage {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.as_str().expect("b64_json"))
        .expect("base64");
    image::load_from_memory(&bytes).expect("image").to_rgb8()
}

fn wait_done(s: &Server, key: &str, id: &str) -> Value {
    for _ in 0..1200 {
        let g = s.get(&format!("/v1/generations/{id}"), Some(key)).json();
        if g["status"] != "processing" {
            return g;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{id} never finished");
}

#[test]
fn a_worker_runs_compatible_queued_jobs_as_one_batch() {
    let env = Env::with_config("[queue]\nmax_batch = 4\n");
    let key = env.key("enterprise", &[]);
    // the API alone first: everything waits in the queue until the worker starts
    let api = env.serve_with(&["--no-worker"]);
    let job = |prompt: &str, seed: u64, guidance: f64, width: u64| {
        json!({"model": "tiny-sd15", "prompt": prompt, "seed": seed, "guidance_scale": guidance,
               "steps": 4, "scheduler": "euler_a", "width": width, "height": 64,
               "response_format": "b64_json"})
    };
    let bodies = [
        job("a red cube", 10, 7.5, 64),
        job("a blue sphere", 11, 3.0, 64),
        job("another size", 12, 7.5, 72),
        job("a lighthouse", 13, 12.0, 64),
        job("a green cone", 14, 5.0, 64),
        job("a fifth one", 15, 7.5, 64),
    ];
    let ids: Vec<String> = bodies
        .iter()
        .map(|b| {
            let mut b = b.clone();
            b["async"] = true.into();
            let r = api.post("/v1/text-to-image", &key, &b);
            assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
            r.json()["id"].as_str().expect("id").to_owned()
        })
        .collect();
    let worker = env.worker(None);
    let done: Vec<Value> = ids.iter().map(|id| wait_done(&api, &key, id)).collect();
    drop(worker);
    for d in &done {
        assert_eq!(d["status"], "completed", "{d}");
    }
    // the oldest job and the three that fit with it (the 72-wide one does not) ran together;
    // the sixth was still queued, the odd size alone
    let batch: Vec<u64> = done.iter().map(|d| d["batch_size"].as_u64().unwrap_or(1)).collect();
    assert_eq!(batch, [4, 4, 1, 4, 4, 1], "{done:?}");

    // each image as the same request makes it alone (a server without batching)
    let alone = env.serve();
    for (body, d) in bodies.iter().zip(&done) {
        let r = alone.post("/v1/text-to-image", &key, body);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let want = pixels(&r.json()["images"][0]["b64_json"]);
        let got = pixels(&d["images"][0]["b64_json"]);
        let (max, mean) = png_diff(&got, &want);
        println!("{}: max {max}/255, mean {mean:.4}/255", body["prompt"]);
        assert!(max <= 1, "{}: max {max}/255", body["prompt"]);
    }
}
