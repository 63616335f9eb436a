//! Loading real-layout folders: clear errors for broken ones, and the layouts found in the wild
//! (bf16 weights, sharded weights, legacy VAE names, text encoders with or without `text_model.`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use imagen_models::{DiffusersFolder, Error, StableDiffusion};
use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, TensorView};

use crate::common::{Golden, assert_close, fixture};

/// A copy of a fixture folder in a fresh temporary directory.
fn copy_fixture(name: &str) -> (tempfile::TempDir, PathBuf) {
    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).expect("mkdir");
        for entry in std::fs::read_dir(from).expect("read_dir") {
            let entry = entry.expect("entry");
            let dst = to.join(entry.file_name());
            if entry.path().is_dir() {
                copy_dir(&entry.path(), &dst);
            } else {
                std::fs::copy(entry.path(), dst).expect("copy");
            }
        }
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let dst = tmp.path().join(name);
    copy_dir(&fixture(name), &dst);
    (tmp, dst)
}

type Entry = (String, Dtype, Vec<usize>, Vec<u8>);

fn read_entries(path: &Path) -> Vec<Entry> {
    let bytes = std::fs::read(path).expect("read");
    let st = SafeTensors::deserialize(&bytes).expect("safetensors");
    let mut out: Vec<Entry> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn write_entries(path: &Path, entries: &[Entry]) {
    let views: Vec<(String, TensorView<'_>)> = entries
        .iter()
        .map(|(k, dt, shape, data)| (k.clone(), TensorView::new(*dt, shape.clone(), data).expect("view")))
        .collect();
    safetensors::serialize_to_file(views, None, path).expect("write");
}

/// Rewrite a safetensors file entry by entry (`None` drops the entry).
fn rewrite(path: &Path, f: impl FnMut(Entry) -> Option<Entry>) {
    let entries: Vec<Entry> = read_entries(path).into_iter().filter_map(f).collect();
    write_entries(path, &entries);
}

fn cpu() -> Device {
    Device::flex()
}

const UNET_FILE: &str = "unet/diffusion_pytorch_model.safetensors";
const VAE_FILE: &str = "vae/diffusion_pytorch_model.safetensors";

#[test]
fn wrong_folders_give_clear_errors() {
    let missing = StableDiffusion::load("/definitely/not/here", &cpu())
        .err()
        .expect("error");
    assert!(missing.to_string().contains("not a directory"), "{missing}");

    let not_diffusers = DiffusersFolder::open(fixture("golden")).expect_err("error");
    assert!(
        not_diffusers.to_string().contains("no model_index.json"),
        "{not_diffusers}"
    );

    let (_tmp, dir) = copy_fixture("tiny-sd15");
    std::fs::write(dir.join("model_index.json"), r#"{"_class_name": "KandinskyPipeline"}"#).expect("write");
    let unsupported = DiffusersFolder::open(&dir).expect_err("error");
    assert!(
        unsupported.to_string().contains("KandinskyPipeline is not supported"),
        "{unsupported}"
    );

    let (_tmp, dir) = copy_fixture("tiny-sd15");
    std::fs::remove_file(dir.join(VAE_FILE)).expect("rm");
    let no_weights = StableDiffusion::load(&dir, &cpu()).err().expect("error");
    assert!(no_weights.to_string().contains("no weights found"), "{no_weights}");
}

#[test]
fn missing_tensor_is_named() {
    let (_tmp, dir) = copy_fixture("tiny-sd15");
    let gone = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight";
    rewrite(&dir.join(UNET_FILE), |e| (e.0 != gone).then_some(e));
    match DiffusersFolder::open(&dir).and_then(|f| f.load_unet(&cpu())) {
        Err(Error::MissingTensor { component, key }) => {
            assert_eq!(component, "unet");
            assert_eq!(key, gone);
        }
        other => panic!("expected MissingTensor, got {:?}", other.err()),
    }
}

#[test]
fn misshaped_tensor_names_both_shapes() {
    let (_tmp, dir) = copy_fixture("tiny-sd15");
    rewrite(&dir.join(UNET_FILE), |(k, dt, shape, data)| {
        if k == "conv_in.weight" {
            // [8, 4, 3, 3] stored as [4, 8, 3, 3]: same size, wrong layout.
            Some((k, dt, vec![4, 8, 3, 3], data))
        } else {
            Some((k, dt, shape, data))
        }
    });
    let err = DiffusersFolder::open(&dir)
        .and_then(|f| f.load_unet(&cpu()))
        .expect_err("error");
    match &err {
        Error::ShapeMismatch {
            key, expected, found, ..
        } => {
            assert_eq!(key, "conv_in.weight");
            assert_eq!(expected, &vec![8, 4, 3, 3]);
            assert_eq!(found, &vec![4, 8, 3, 3]);
        }
        other => panic!("expected ShapeMismatch, got {other}"),
    }
    assert!(err.to_string().contains("conv_in.weight"), "{err}");
}

#[test]
fn corrupt_files_are_errors_not_panics() {
    let (_tmp, dir) = copy_fixture("tiny-sd15");
    let path = dir.join(VAE_FILE);
    let bytes = std::fs::read(&path).expect("read");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("truncate");
    let err = DiffusersFolder::open(&dir)
        .and_then(|f| f.load_vae(&cpu()))
        .expect_err("error");
    assert!(matches!(err, Error::Safetensors { .. }), "{err}");

    std::fs::write(&path, b"not a safetensors file at all").expect("write");
    let err = DiffusersFolder::open(&dir)
        .and_then(|f| f.load_vae(&cpu()))
        .expect_err("error");
    assert!(matches!(err, Error::Safetensors { .. }), "{err}");

    std::fs::write(dir.join("unet/config.json"), "{ broken").expect("write");
    let err = DiffusersFolder::open(&dir)
        .and_then(|f| f.load_unet(&cpu()))
        .expect_err("error");
    assert!(err.to_string().contains("invalid JSON"), "{err}");
}

#[test]
fn unsupported_config_is_named() {
    let (_tmp, dir) = copy_fixture("tiny-sd15");
    let cfg_path = dir.join("unet/config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).expect("read")).expect("json");
    cfg["addition_embed_type"] = "text_time".into();
    std::fs::write(&cfg_path, cfg.to_string()).expect("write");
    let err = DiffusersFolder::open(&dir)
        .and_then(|f| f.unet_config())
        .expect_err("error");
    assert!(err.to_string().contains("addition_embed_type"), "{err}");
}

/// bf16 weights load (converted to f32); the result matches the f32 golden to bf16 precision.
#[test]
fn bf16_weights_load() {
    let (_tmp, dir) = copy_fixture("tiny-sd15");
    rewrite(&dir.join(VAE_FILE), |(k, dt, shape, data)| {
        assert_eq!(dt, Dtype::F32);
        let bf: Vec<u8> = data
            .chunks_exact(4)
            .flat_map(|b| half::bf16::from_f32(f32::from_le_bytes([b[0], b[1], b[2], b[3]])).to_le_bytes())
            .collect();
        Some((k, Dtype::BF16, shape, bf))
    });
    let vae = DiffusersFolder::open(&dir)
        .and_then(|f| f.load_vae(&cpu()))
        .expect("load bf16 vae");
    let g = Golden::open("tiny-sd15");
    // bf16 keeps 8 significant bits: ~0.4% per weight, a few % through the whole decoder.
    assert_close(
        &g,
        "vae_dec_image",
        vae.decode(g.tensor("vae_dec_latents", &cpu())),
        5e-2,
    );
}

/// Weights split in shards with a `diffusion_pytorch_model.safetensors.index.json`.
#[test]
fn sharded_weights_load() {
    let (_tmp, dir) = copy_fixture("tiny-sd15");
    let path = dir.join(UNET_FILE);
    let entries = read_entries(&path);
    std::fs::remove_file(&path).expect("rm");
    let (a, b) = entries.split_at(entries.len() / 2);
    let mut map = HashMap::new();
    for (name, part) in [
        ("diffusion_pytorch_model-00001-of-00002.safetensors", a),
        ("diffusion_pytorch_model-00002-of-00002.safetensors", b),
    ] {
        write_entries(&dir.join("unet").join(name), part);
        for e in part {
            map.insert(e.0.clone(), name.to_owned());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(
        dir.join("unet/diffusion_pytorch_model.safetensors.index.json"),
        index.to_string(),
    )
    .expect("write");
    let unet = DiffusersFolder::open(&dir)
        .and_then(|f| f.load_unet(&cpu()))
        .expect("load sharded unet");
    let g = Golden::open("tiny-sd15");
    let (_, t) = g.f32_values("unet_timesteps");
    let out = unet.forward(g.tensor("unet_latents", &cpu()), &t, &g.tensor("unet_context", &cpu()));
    assert_close(&g, "unet_out", out, 1e-4);
}

/// Pre-0.14 diffusers VAEs name the mid-block attention `query/key/value/proj_attn`.
#[test]
fn legacy_vae_attention_names_load() {
    let (_tmp, dir) = copy_fixture("tiny-sd15");
    let mut renamed = 0;
    rewrite(&dir.join(VAE_FILE), |(k, dt, shape, data)| {
        let new = k
            .replace(".to_q.", ".query.")
            .replace(".to_k.", ".key.")
            .replace(".to_v.", ".value.")
            .replace(".to_out.0.", ".proj_attn.");
        renamed += usize::from(new != k);
        Some((new, dt, shape, data))
    });
    assert_eq!(
        renamed, 16,
        "q/k/v/out weight+bias in the encoder and decoder mid-blocks"
    );
    let vae = DiffusersFolder::open(&dir)
        .and_then(|f| f.load_vae(&cpu()))
        .expect("load legacy vae");
    let g = Golden::open("tiny-sd15");
    assert_close(
        &g,
        "vae_dec_image",
        vae.decode(g.tensor("vae_dec_latents", &cpu())),
        1e-4,
    );
}

/// transformers 5.x writes `CLIPTextModel` without the `text_model.` prefix; both load.
#[test]
fn text_encoder_without_prefix_loads() {
    let (_tmp, dir) = copy_fixture("tiny-sd15");
    let path = dir.join("text_encoder/model.safetensors");
    let mut stripped = 0;
    rewrite(&path, |(k, dt, shape, data)| {
        let new = k.strip_prefix("text_model.").map(str::to_owned);
        stripped += usize::from(new.is_some());
        Some((new.unwrap_or(k), dt, shape, data))
    });
    assert!(stripped > 10);
    let te = DiffusersFolder::open(&dir)
        .and_then(|f| f.load_text_encoder(&cpu()))
        .expect("load");
    let g = Golden::open("tiny-sd15");
    assert_close(&g, "text_hidden", te.forward(g.ids("text_ids", &cpu()), 0), 1e-4);
}

#[test]
fn whole_pipeline_loads() {
    let sd = StableDiffusion::load(fixture("tiny-sd2"), &cpu()).expect("load");
    assert_eq!(sd.vae_config.scale_factor(), 8);
    assert!(sd.unet_config.use_linear_projection);
    assert!(sd.num_params() > 100_000);
}
