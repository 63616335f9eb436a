//! `imagen pull` against a local server speaking the Hub's routes (tests/cli/fake_hub.rs):
//! the real download path (file list, redirects to the LFS store, Range resumes, checksums),
//! no network.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

use super::fake_hub::{FakeHub, File, Repo};
use super::fixture;

fn pull(hub: &FakeHub, args: &[&str], token: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_imagen"));
    cmd.arg("pull").args(args).arg("--quiet").env("HF_ENDPOINT", &hub.base);
    cmd.env_remove("HF_TOKEN").env_remove("HUGGING_FACE_HUB_TOKEN");
    if let Some(t) = token {
        cmd.env("HF_TOKEN", t);
    }
    cmd.output().expect("run imagen pull")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Every file under `dir`, relative, `/`-separated.
fn tree(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").map_while(Result::ok) {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                let rel = e
                    .path()
                    .strip_prefix(dir)
                    .expect("rel")
                    .to_string_lossy()
                    .replace('\\', "/");
                out.insert(rel);
            }
        }
    }
    out
}

/// A Hub repo as a diffusers pipeline is published: tiny-sd15's files, the fp16 variant's
/// weights beside them, and what a pull must leave behind (PyTorch .bin weights, a safety
/// checker, a README, a top-level single-file checkpoint).
fn pipeline_repo() -> Repo {
    let mut files = Vec::new();
    let mut add = |path: &str, data: Vec<u8>| {
        let lfs = path.ends_with(".safetensors") || path.ends_with(".bin") || path.ends_with(".gguf");
        files.push(File {
            path: path.into(),
            data,
            lfs,
        });
    };
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("tiny-sd15/model_index.json")).expect("index")).expect("json");
    index["safety_checker"] = serde_json::json!(["stable_diffusion", "StableDiffusionSafetyChecker"]);
    index["feature_extractor"] = serde_json::json!(["transformers", "CLIPImageProcessor"]);
    add("model_index.json", serde_json::to_vec_pretty(&index).expect("json"));
    for (root, rel) in [("tiny-sd15", ""), ("tiny-sd15-fp16", "")] {
        let base = fixture(root);
        for f in tree(&base) {
            if f == "model_index.json" || (root == "tiny-sd15-fp16" && !f.contains(".fp16.")) {
                continue;
            }
            add(&format!("{rel}{f}"), std::fs::read(base.join(&f)).expect("read"));
        }
    }
    add("unet/diffusion_pytorch_model.bin", vec![7; 4096]);
    add("safety_checker/config.json", b"{}".to_vec());
    add("safety_checker/model.safetensors", vec![1; 2048]);
    add("feature_extractor/preprocessor_config.json", b"{}".to_vec());
    add("README.md", b"# tiny".to_vec());
    add("v1-5-pruned-emaonly.safetensors", vec![3; 1024]);
    add(
        "gguf/tiny-sd15-Q8_0.gguf",
        std::fs::read(fixture("single-file/tiny-sd15-q8_0.gguf")).expect("gguf"),
    );
    Repo { files, token: None }
}

#[test]
fn pulls_a_pipeline_resuming_and_checking_what_it_fetches() {
    let hub = FakeHub::start();
    hub.add("imagen-test/tiny-sd", pipeline_repo());
    let tmp = tempfile::tempdir().expect("tmp");
    let models = tmp.path().join("models");
    let models_arg = models.to_str().expect("utf-8");
    let dest = models.join("tiny-sd");

    // an earlier pull cut in the UNet's weights, and a cut during this one in the VAE's
    let unet = std::fs::read(fixture("tiny-sd15/unet/diffusion_pytorch_model.safetensors")).expect("unet");
    std::fs::create_dir_all(dest.join("unet")).expect("mkdir");
    std::fs::write(
        dest.join("unet/diffusion_pytorch_model.safetensors.part"),
        &unet[..unet.len() / 3],
    )
    .expect("part");
    hub.cut_once("vae/diffusion_pytorch_model.safetensors");

    let out = pull(&hub, &["imagen-test/tiny-sd", "--models-dir", models_arg], None);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("pulled imagen-test/tiny-sd"), "{}", text(&out));
    // only what the pipeline needs: no .bin, no safety checker, no fp16 copies, no leftovers
    let want: BTreeSet<String> = tree(&fixture("tiny-sd15"))
        .into_iter()
        .chain([".imagen-pull.json".to_owned()])
        .collect();
    assert_eq!(tree(&dest), want);
    for f in tree(&fixture("tiny-sd15")) {
        if f != "model_index.json" {
            assert_eq!(
                std::fs::read(dest.join(&f)).ok(),
                std::fs::read(fixture("tiny-sd15").join(&f)).ok(),
                "{f}"
            );
        }
    }
    let log = hub.take_log();
    let third = unet.len() / 3;
    assert!(
        log.iter()
            .any(|l| l.starts_with("GET /lfs/") && l.ends_with(&format!("bytes={third}-"))),
        "the UNet resumed from its .part: {log:#?}"
    );
    assert!(
        log.iter()
            .any(|l| l.contains("/api/models/imagen-test/tiny-sd/revision/main?blobs=true"))
    );
    assert!(
        !log.iter()
            .any(|l| l.contains(".bin") || l.contains("safety_checker") || l.contains(".fp16.")),
        "{log:#?}"
    );
    assert!(
        log.iter()
            .filter(|l| l.contains("resolve") && l.contains("vae/diffusion_pytorch_model.safetensors"))
            .count()
            >= 2,
        "the cut VAE download was tried again: {log:#?}"
    );
    // what was pulled loads
    let inspect = super::imagen(&["inspect", dest.to_str().expect("utf-8")]);
    assert!(inspect.status.success(), "{}", text(&inspect));

    // again: nothing left to fetch but the index
    let out = pull(&hub, &["imagen-test/tiny-sd", "--models-dir", models_arg], None);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !hub.take_log().iter().any(|l| l.starts_with("GET /lfs/")),
        "complete files are not fetched again"
    );

    // the fp16 variant under another id: half-size weights, plain configs
    let out = pull(
        &hub,
        &[
            "imagen-test/tiny-sd@main",
            "--variant",
            "fp16",
            "--name",
            "tiny-sd-fp16",
            "--models-dir",
            models_arg,
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    let got = tree(&models.join("tiny-sd-fp16"));
    let weights: Vec<&String> = got.iter().filter(|f| f.ends_with(".safetensors")).collect();
    assert_eq!(weights.len(), 3, "{got:?}");
    assert!(weights.iter().all(|f| f.contains(".fp16.")), "{got:?}");
    let inspect = super::imagen(&["inspect", models.join("tiny-sd-fp16").to_str().expect("utf-8")]);
    assert!(inspect.status.success(), "{}", text(&inspect));

    // one file by its path in the repo
    let out = pull(
        &hub,
        &[
            "imagen-test/tiny-sd/gguf/tiny-sd15-Q8_0.gguf",
            "--models-dir",
            models_arg,
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read(models.join("tiny-sd15-Q8_0.gguf")).ok(),
        std::fs::read(fixture("single-file/tiny-sd15-q8_0.gguf")).ok()
    );
}

#[test]
fn pull_refuses_bad_bytes_gates_and_non_pipelines() {
    let hub = FakeHub::start();
    hub.add("imagen-test/tiny-sd", pipeline_repo());
    let mut gated = pipeline_repo();
    gated.token = Some("hf_letmein".into());
    hub.add("imagen-test/gated", gated);
    hub.add(
        "imagen-test/loose",
        Repo {
            files: vec![File {
                path: "model.safetensors".into(),
                data: vec![1; 64],
                lfs: true,
            }],
            token: None,
        },
    );
    let index = br#"{"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}"#;
    hub.add(
        "imagen-test/pickles",
        Repo {
            files: vec![
                File {
                    path: "model_index.json".into(),
                    data: index.to_vec(),
                    lfs: false,
                },
                File {
                    path: "unet/config.json".into(),
                    data: b"{}".to_vec(),
                    lfs: false,
                },
                File {
                    path: "unet/diffusion_pytorch_model.bin".into(),
                    data: vec![0; 64],
                    lfs: true,
                },
            ],
            token: None,
        },
    );
    let tmp = tempfile::tempdir().expect("tmp");
    let models = tmp.path().to_str().expect("utf-8");

    // a corrupted body: a checksum error, and the bad file is not kept under its name
    hub.corrupt("text_encoder/model.safetensors");
    let out = pull(&hub, &["imagen-test/tiny-sd", "--models-dir", models], None);
    assert!(!out.status.success());
    assert!(text(&out).contains("checksum mismatch"), "{}", text(&out));
    let enc = tmp.path().join("tiny-sd/text_encoder");
    assert!(!enc.join("model.safetensors").exists() && !enc.join("model.safetensors.part").exists());
    hub.heal("text_encoder/model.safetensors");

    // gated: a clear word about HF_TOKEN; with the token it works
    let out = pull(&hub, &["imagen-test/gated", "--models-dir", models], None);
    assert!(!out.status.success());
    assert!(text(&out).contains("HF_TOKEN"), "{}", text(&out));
    let out = pull(&hub, &["imagen-test/gated", "--models-dir", models], Some("hf_letmein"));
    assert!(out.status.success(), "{}", text(&out));

    for (args, says) in [
        (vec!["imagen-test/loose"], "--file"),
        (vec!["imagen-test/pickles"], "safetensors"),
        (vec!["imagen-test/nope"], "no such repo"),
        (vec!["imagen-test/tiny-sd@v9"], "no such repo or revision"),
        (vec!["imagen-test/tiny-sd/missing.gguf"], "no file"),
        (vec!["just-a-name"], "owner/name"),
        (vec!["imagen-test/tiny-sd", "--name", "../up"], "cannot be a model id"),
    ] {
        let mut a = args.clone();
        a.extend(["--models-dir", models]);
        let out = pull(&hub, &a, None);
        assert!(!out.status.success(), "{args:?}");
        assert!(text(&out).contains(says), "{args:?}: {}", text(&out));
    }
}
