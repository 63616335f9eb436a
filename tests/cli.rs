//! The real `imagen` binary: a generation equal to diffusers' PNG, several outputs, and one-line
//! errors (never a panic) for bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[path = "cli/fake_hub.rs"]
mod fake_hub;
#[path = "cli/pull.rs"]
mod pull;

fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(p)
}

fn imagen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_imagen"))
        .args(args)
        .output()
        .expect("run imagen")
}

/// The PNG at `out` is the golden within 2/255 per pixel.
fn assert_matches_golden(out: &std::path::Path, golden: &str) {
    let got = image::open(out).expect("png").to_rgb8();
    let want = image::open(fixture(golden)).expect("golden").to_rgb8();
    let max = got
        .as_raw()
        .iter()
        .zip(want.as_raw())
        .map(|(a, b)| a.abs_diff(*b))
        .max();
    assert!(max.is_some_and(|m| m <= 2), "{golden}: max difference {max:?}");
}

fn generate_args<'a>(model: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "generate",
        "--model",
        model,
        "--prompt",
        "a photograph of an astronaut riding a horse",
        "--steps",
        "5",
        "--seed",
        "1234",
        "--output",
        out,
        "--quiet",
    ]
}

#[test]
fn generates_the_diffusers_image_with_every_scheduler() {
    let tmp = tempfile::tempdir().expect("tmp");
    let model = fixture("tiny-sd15");
    for scheduler in ["pndm", "ddim", "euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "lcm"] {
        let out = tmp.path().join(format!("{scheduler}.png"));
        let (model, out_s) = (model.to_str().expect("utf8"), out.to_str().expect("utf8"));
        let mut args = generate_args(model, out_s);
        args.extend(["--scheduler", scheduler, "--negative-prompt", "blurry, low quality"]);
        let o = imagen(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), out_s);
        assert_matches_golden(&out, &format!("golden/generate/tiny-sd15-{scheduler}-txt2img.png"));
    }
}

#[test]
fn several_images_get_numbered_paths() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("batch.png");
    let model = fixture("tiny-sd2");
    let mut args = generate_args(model.to_str().expect("utf8"), out.to_str().expect("utf8"));
    args.extend([
        "--num-images",
        "2",
        "--width",
        "64",
        "--height",
        "48",
        "--scheduler",
        "euler_a",
        "--guidance",
        "1",
    ]);
    let o = imagen(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for i in 0..2 {
        let img = image::open(tmp.path().join(format!("batch-{i}.png")))
            .expect("numbered png")
            .to_rgb8();
        assert_eq!(img.dimensions(), (64, 48));
    }
}

#[test]
fn bad_input_is_a_one_line_error() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("x.png");
    let out = out.to_str().expect("utf8");
    let model = fixture("tiny-sd15");
    let model = model.to_str().expect("utf8");
    let junk = tmp.path().join("junk.png");
    std::fs::write(&junk, b"not an image").expect("write");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (generate_args("/no/such/model", out), "not a directory"),
        (
            [generate_args(model, out), vec!["--width", "65"]].concat(),
            "multiples of 8",
        ),
        (
            [
                generate_args(model, out),
                vec!["--init-image", junk.to_str().expect("utf8"), "--strength", "0.5"],
            ]
            .concat(),
            "cannot read image",
        ),
        (
            [generate_args(model, out), vec!["--strength", "1.5"]].concat(),
            "--strength must be between 0 and 1",
        ),
        (
            [generate_args(model, out), vec!["--scheduler", "magic"]].concat(),
            "unknown scheduler",
        ),
        (
            [generate_args(model, out), vec!["--rng", "dice"]].concat(),
            "unknown --rng",
        ),
    ];
    for (args, expect) in cases {
        let o = imagen(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(err.contains(expect), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
}

/// `--device N` is the N-th discrete GPU: asked of the CPU backend, or where there is no such
/// GPU, a worker stops at once with a one-line error instead of running elsewhere.
#[test]
fn a_worker_without_its_gpu_stops_with_an_error() {
    let tmp = tempfile::tempdir().expect("tmp");
    let models = fixture("tiny-sd15");
    let models = models.parent().expect("fixtures").to_str().expect("utf8");
    let data = tmp.path().to_str().expect("utf8");
    for (backend, expect) in [
        ("cpu", "only the wgpu backend has numbered devices"),
        ("wgpu", "wgpu:9: no such GPU"),
    ] {
        let o = imagen(&[
            "worker",
            "--backend",
            backend,
            "--device",
            "9",
            "--models-dir",
            models,
            "--data-dir",
            data,
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{backend}: {err}");
        assert!(err.contains(expect), "{backend}: {err}");
        assert!(!err.contains("panicked"), "{backend}: {err}");
    }
}

#[test]
fn help_documents_every_flag() {
    let o = imagen(&["generate", "--help"]);
    let help = String::from_utf8_lossy(&o.stdout);
    for flag in [
        "--model",
        "--prompt",
        "--negative-prompt",
        "--width",
        "--height",
        "--steps",
        "--guidance",
        "--scheduler",
        "--seed",
        "--rng",
        "--num-images",
        "--init-image",
        "--strength",
        "--variations-of",
        "--output",
        "--backend",
        "--quiet",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

#[test]
fn lora_flag_gives_diffusers_fused_image() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("lora.png");
    let model = fixture("tiny-sd15");
    let lora = format!("{}:0.5", fixture("loras/tiny-kohya.safetensors").display());
    let o = imagen(&[
        "generate",
        "--model",
        model.to_str().expect("utf8"),
        "--prompt",
        "a photograph of an astronaut riding a horse",
        "--steps",
        "5",
        "--seed",
        "21",
        "--scheduler",
        "euler",
        "--lora",
        &lora,
        "--output",
        out.to_str().expect("utf8"),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_matches_golden(&out, "golden/generate/tiny-sd15-lora-0.5.png");
}

#[test]
fn single_file_model_needs_and_uses_a_config_folder() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("single.png");
    let file = fixture("single-file/tiny-sd15.safetensors");
    let config = fixture("tiny-sd15");
    let mut args = generate_args(file.to_str().expect("utf8"), out.to_str().expect("utf8"));
    let o = imagen(&args);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--config"));
    args.extend(["--config", config.to_str().expect("utf8"), "--scheduler", "euler"]);
    args.extend(["--negative-prompt", "blurry, low quality"]);
    let o = imagen(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_matches_golden(&out, "golden/generate/tiny-sd15-euler-txt2img.png");
}

#[test]
fn sdxl_single_file_through_the_cli() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("xl.png");
    let (file, config) = (fixture("single-file/tiny-sdxl.safetensors"), fixture("tiny-sdxl"));
    let mut args = generate_args(file.to_str().expect("utf8"), out.to_str().expect("utf8"));
    for a in args.iter_mut() {
        if *a == "1234" {
            *a = "42"; // the golden's seed
        }
    }
    args.extend([
        "--config",
        config.to_str().expect("utf8"),
        "--guidance",
        "5",
        "--width",
        "64",
    ]);
    let o = imagen(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_matches_golden(&out, "golden/generate/tiny-sdxl-txt2img.png");
}

#[test]
fn bench_prints_one_json_line() {
    let o = imagen(&[
        "bench",
        "--arch",
        "sd15",
        "--component",
        "text-encoder",
        "--batch",
        "1",
        "--runs",
        "1",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON line");
    // CLIP ViT-L, 1 × 77 tokens, as PyTorch's FlopCounterMode counts it (half of batch 2).
    assert_eq!(v["gflop"].as_f64(), Some(13.29850368));
    assert!(v["median_s"].as_f64().is_some_and(|s| s > 0.0));
    assert_eq!(v["runs_s"].as_array().map(Vec::len), Some(1));
    assert!(v["peak_rss_bytes"].as_u64().is_some_and(|b| b > 0));
}

/// Step previews: one TAESD-decoded PNG per step; the last is the final image, bit for bit.
#[test]
fn taesd_previews_every_step() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (out, dir) = (tmp.path().join("final.png"), tmp.path().join("previews"));
    let model = fixture("tiny-sd15");
    let taesd = fixture("tiny-taesd");
    let mut args = generate_args(model.to_str().expect("utf8"), out.to_str().expect("utf8"));
    args.extend([
        "--taesd",
        taesd.to_str().expect("utf8"),
        "--preview-dir",
        dir.to_str().expect("utf8"),
    ]);
    let steps = args.iter().position(|&a| a == "--steps").expect("--steps") + 1;
    args[steps] = "3";
    // Euler: one UNet step per requested step (PNDM, the fixture's default, adds a warm-up one).
    args.extend(["--scheduler", "euler"]);
    let o = imagen(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("preview dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["step-001.png", "step-002.png", "step-003.png"]);
    let last = image::open(dir.join("step-003.png")).expect("png").to_rgb8();
    let first = image::open(dir.join("step-001.png")).expect("png").to_rgb8();
    let fin = image::open(&out).expect("png").to_rgb8();
    assert_eq!(last, fin, "the last preview is the final image");
    assert_ne!(first, fin, "previews follow the denoising");

    // Without TAESD there is nothing to preview with: a clear error, not a silent no-op.
    let mut args = generate_args(model.to_str().expect("utf8"), out.to_str().expect("utf8"));
    args.extend(["--preview-dir", dir.to_str().expect("utf8")]);
    let o = imagen(&args);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--preview-dir needs --taesd"));
    args.extend(["--taesd", taesd.to_str().expect("utf8"), "--preview-every", "0"]);
    let o = imagen(&args);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--preview-every must be at least 1"));
}

#[test]
fn taesd_decodes_instead_of_the_vae() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (fast, full) = (tmp.path().join("taesd.png"), tmp.path().join("vae.png"));
    let model = fixture("tiny-sd15");
    let taesd = fixture("tiny-taesd");
    let mut args = generate_args(model.to_str().expect("utf8"), fast.to_str().expect("utf8"));
    args.extend([
        "--taesd",
        taesd.to_str().expect("utf8"),
        "--width",
        "80",
        "--height",
        "48",
    ]);
    let o = imagen(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got = image::open(&fast).expect("png").to_rgb8();
    assert_eq!(got.dimensions(), (80, 48));
    let mut args = generate_args(model.to_str().expect("utf8"), full.to_str().expect("utf8"));
    args.extend(["--width", "80", "--height", "48"]);
    assert!(imagen(&args).status.success());
    assert_ne!(
        got,
        image::open(&full).expect("png").to_rgb8(),
        "a different decoder ran"
    );
}

/// `imagen quantize` writes what the `gguf` package writes for the same checkpoint and rule
/// (`tools/reference/make_gguf_pipeline_fixture.py`): every tensor's name, shape, type and bytes.
#[test]
fn quantize_writes_what_the_gguf_package_writes() {
    use imagen_models::load::gguf::GgufFile;
    let tmp = tempfile::tempdir().expect("tmp");
    let src = fixture("single-file/tiny-sd15.safetensors");
    for (kind, unet_only, reference) in [
        ("q8_0", false, "single-file/tiny-sd15-q8_0.gguf"),
        ("q4_0", true, "single-file/tiny-sd15-unet-q4_0.gguf"),
    ] {
        let out = tmp.path().join(format!("{kind}.gguf"));
        let mut args = vec![
            "quantize",
            src.to_str().expect("path"),
            "--type",
            kind,
            "--out",
            out.to_str().expect("path"),
        ];
        if unet_only {
            args.push("--unet-only");
        }
        let o = imagen(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let (got, want) = (
            GgufFile::open(&out).expect("ours"),
            GgufFile::open(&fixture(reference)).expect("gguf's"),
        );
        assert_eq!(got.tensors.len(), want.tensors.len(), "{kind}");
        for t in &want.tensors {
            let g = got.tensor(&t.name).unwrap_or_else(|| panic!("{kind}: no `{}`", t.name));
            assert_eq!((&g.shape, g.kind), (&t.shape, t.kind), "{kind}: `{}`", t.name);
            assert!(
                got.raw(&t.name) == want.raw(&t.name),
                "{kind}: `{}` bytes differ",
                t.name
            );
        }
    }
    // unknown types and non-checkpoints are one-line errors
    let o = imagen(&[
        "quantize",
        src.to_str().expect("path"),
        "--type",
        "q3_k",
        "--out",
        "/dev/null",
    ]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("q8_0"));
    let not_sd = fixture("golden/quants/fp8.safetensors");
    let o = imagen(&[
        "quantize",
        not_sd.to_str().expect("path"),
        "--type",
        "q8_0",
        "--out",
        "/dev/null",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("not a single-file") && !err.contains("panicked"),
        "{err}"
    );
}

/// `--dtype bf16` through the real binary: on a CPU with AMX-BF16 or AVX512-BF16 the diffusers
/// image within bf16's rounding (mean ≤ 3/255; the f32 route matches within 2/255 per pixel), on
/// tiles and on dot products; elsewhere a one-line error saying what is missing.
#[test]
fn bf16_generates_close_to_the_diffusers_image_or_says_why_not() {
    let tmp = tempfile::tempdir().expect("tmp");
    let model = fixture("tiny-sd15");
    let out = tmp.path().join("bf16.png");
    let (model, out_s) = (model.to_str().expect("utf8"), out.to_str().expect("utf8"));
    let mut args = generate_args(model, out_s);
    args.extend([
        "--scheduler",
        "euler",
        "--negative-prompt",
        "blurry, low quality",
        "--dtype",
        "bf16",
    ]);
    let o = imagen(&args);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let amx = cpuinfo.contains(" amx_bf16");
    if !amx && !cpuinfo.contains(" avx512_bf16") {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains("AMX-BF16") && !err.contains("panicked"),
            "{err}"
        );
        return;
    }
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got = image::open(&out).expect("png").to_rgb8();
    let want = image::open(fixture("golden/generate/tiny-sd15-euler-txt2img.png"))
        .expect("golden")
        .to_rgb8();
    let diffs: Vec<u8> = got
        .as_raw()
        .iter()
        .zip(want.as_raw())
        .map(|(a, b)| a.abs_diff(*b))
        .collect();
    let mean = diffs.iter().map(|&d| d as f64).sum::<f64>() / diffs.len() as f64;
    assert!(mean <= 3.0, "bf16: mean difference {mean:.3}/255");
    // the same on AVX512-BF16 dot products instead of tiles (what CPUs without AMX run)
    let o = Command::new(env!("CARGO_BIN_EXE_imagen"))
        .args(&args)
        .env("IMAGEN_CPU_AMX", "0")
        .output()
        .expect("run imagen");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let dots = image::open(&out).expect("png").to_rgb8();
    let mean = dots
        .as_raw()
        .iter()
        .zip(want.as_raw())
        .map(|(a, b)| a.abs_diff(*b) as f64)
        .sum::<f64>()
        / diffs.len() as f64;
    assert!(mean <= 3.0, "bf16 on dot products: mean difference {mean:.3}/255");
    if amx {
        // other sums, other roundings: a different image, so the tiles did not run again
        assert!(dots != got, "IMAGEN_CPU_AMX=0 changed nothing");
    }
}

/// A FLUX.1 folder through the same command: the model's own defaults (schnell: 4 steps, no
/// guidance) give diffusers' image; what FLUX does not take is a one-line error.
#[test]
fn flux_generates_through_the_cli() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("flux.png");
    let model = fixture("tiny-flux-schnell");
    let (model, out_s) = (model.to_str().expect("utf8"), out.to_str().expect("utf8"));
    let base = [
        "generate",
        "--model",
        model,
        "--prompt",
        "a photograph of an astronaut riding a horse",
        "--seed",
        "42",
        "--width",
        "64",
        "--output",
        out_s,
        "--quiet",
    ];
    let o = imagen(&base);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_matches_golden(&out, "golden/generate/tiny-flux-schnell-txt2img.png");
    let mut args = base.to_vec();
    args.extend(["--negative-prompt", "blurry"]);
    let o = imagen(&args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("negative prompt") && err.lines().count() == 1,
        "{err}"
    );
}

/// 16-channel tiny decoders for the diffusion transformers (taef1 for FLUX.1, taesd3 with its
/// scaling and shift factors for SD3): diffusers' pipelines with that decoder as the VAE; FLUX
/// previews every step; a 4-channel TAESD on FLUX is refused by name.
#[test]
fn tiny_decoders_for_flux_and_sd3() {
    let tmp = tempfile::tempdir().expect("tmp");
    for (model, decoder, png, extra) in [
        (
            "tiny-flux-dev",
            "tiny-taef1",
            "tiny-flux-dev-taef1.png",
            vec!["--width", "64", "--height", "48", "--steps", "4", "--guidance", "3.5"],
        ),
        (
            "tiny-sd35",
            "tiny-taesd3",
            "tiny-sd35-taesd3.png",
            vec![
                "--width",
                "64",
                "--height",
                "64",
                "--steps",
                "5",
                "--guidance",
                "4.5",
                "--negative-prompt",
                "blurry, low quality",
            ],
        ),
    ] {
        let out = tmp.path().join(png);
        let previews = tmp.path().join(decoder);
        let (model, decoder) = (fixture(model), fixture(decoder));
        let mut args = vec![
            "generate",
            "--model",
            model.to_str().expect("utf8"),
            "--prompt",
            "a photograph of an astronaut riding a horse",
            "--seed",
            "42",
            "--max-sequence-length",
            "64",
            "--taesd",
            decoder.to_str().expect("utf8"),
            "--preview-dir",
            previews.to_str().expect("utf8"),
            "--output",
            out.to_str().expect("utf8"),
            "--quiet",
        ];
        args.extend(extra);
        let o = imagen(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_matches_golden(&out, &format!("golden/generate/{png}"));
        // the last preview is the final image
        let mut names: Vec<_> = std::fs::read_dir(&previews)
            .expect("previews")
            .map(|e| e.expect("entry").path())
            .collect();
        names.sort();
        let last = names.last().expect("a preview");
        assert_eq!(
            image::open(last).expect("preview").to_rgb8(),
            image::open(&out).expect("png").to_rgb8()
        );
    }

    let (model, taesd) = (fixture("tiny-flux-dev"), fixture("tiny-taesd"));
    let out = tmp.path().join("refused.png");
    let o = imagen(&[
        "generate",
        "--model",
        model.to_str().expect("utf8"),
        "--prompt",
        "a cat",
        "--taesd",
        taesd.to_str().expect("utf8"),
        "--output",
        out.to_str().expect("utf8"),
        "--quiet",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("4-channel latents"), "{err}");
}
