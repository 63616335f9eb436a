//! Full-size SD 1.5 UNet and VAE decoder, and the SDXL UNet, with random weights (same FLOPs as
//! the real models; no download), timed on one backend. The PyTorch side is
//! `tools/reference/bench_torch.py`.
//!
//!     cargo bench --bench sd15 -- [--runs 3] [--backend cpu|wgpu] [--only unet|vae-decode|sdxl-unet]
//!
//! `sdxl-unet` (not run unless asked: ~10 GiB of weights) is one step at 1024² without CFG
//! (128×128 latents, batch 1).
//!
//! Prints one JSON line per component: median and every run in seconds.

use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};
use imagen_models::device;
use imagen_models::models::unet_2d::{AddedCond, UNet2DConditionConfig};
use imagen_models::models::vae::AutoencoderKLConfig;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// Median wall time of `runs` calls after one warm-up call (which also materialises the lazily
/// initialised random weights).
fn time<F: FnMut() -> Tensor<4>>(runs: usize, mut f: F) -> (f64, Vec<f64>) {
    f().into_data();
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            // Reading the result back forces the work on lazy/async backends.
            let _ = f().into_data();
            t.elapsed().as_secs_f64()
        })
        .collect();
    let runs_s = times.clone();
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], runs_s)
}

fn report(component: &str, backend: &str, shape: &str, (median, runs): (f64, Vec<f64>)) {
    println!(
        "{{\"component\":\"{component}\",\"backend\":\"{backend}\",\"shape\":\"{shape}\",\"median_s\":{median:.3},\"runs_s\":{runs:?}}}"
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let runs: usize = arg(&args, "--runs").map(|r| r.parse()).transpose()?.unwrap_or(3);
    let backend = arg(&args, "--backend").unwrap_or_else(|| "cpu".into());
    let only = arg(&args, "--only");
    let device: Device = device::by_name(&backend)?;
    let want = |c: &str| only.as_deref().is_none_or(|o| o == c);

    if want("unet") {
        let unet = UNet2DConditionConfig::sd15().init(&device);
        let latents = Tensor::<4>::random([2, 4, 64, 64], Distribution::Normal(0.0, 1.0), &device);
        let context = Tensor::<3>::random([2, 77, 768], Distribution::Normal(0.0, 1.0), &device);
        let r = time(runs, || unet.forward(latents.clone(), &[981.0], &context));
        report("unet", &backend, "2x4x64x64", r);
    }
    if only.as_deref() == Some("sdxl-unet") {
        let unet = UNet2DConditionConfig::sdxl().init(&device);
        let latents = Tensor::<4>::random([1, 4, 128, 128], Distribution::Normal(0.0, 1.0), &device);
        let context = Tensor::<3>::random([1, 77, 2048], Distribution::Normal(0.0, 1.0), &device);
        let cond = AddedCond {
            text_embeds: Tensor::random([1, 1280], Distribution::Normal(0.0, 1.0), &device),
            time_ids: vec![[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]],
        };
        let r = time(runs, || {
            unet.forward_with(latents.clone(), &[981.0], &context, Some(&cond), None)
        });
        report("sdxl-unet", &backend, "1x4x128x128", r);
    }
    if want("vae-decode") {
        let vae = AutoencoderKLConfig::sd().init(&device);
        let z = Tensor::<4>::random([1, 4, 64, 64], Distribution::Normal(0.0, 1.0), &device);
        let r = time(runs, || vae.decode(z.clone()));
        report("vae-decode", &backend, "1x4x64x64->512x512", r);
    }
    Ok(())
}
