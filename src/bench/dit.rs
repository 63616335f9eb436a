//! `imagen bench --arch flux|sd35m`: the diffusion transformers at full width with random
//! weights, timed like the other components; the PyTorch side is
//! `tools/reference/bench_dit_torch.py` (same flags).
//!
//! - `flux --component blocks`: one double-stream and one single-stream block of FLUX.1-dev with
//!   the embedders and output layers around them (`FluxTransformer2DModel(num_layers=1,
//!   num_single_layers=1)`); `--latent 64` is a 512² image (1024 packed tokens), `--text-tokens`
//!   the T5 length (dev 512, schnell 256).
//! - `sd35m --component transformer`: SD3.5 Medium's whole MMDiT (2.2 B parameters); `--latent
//!   128` is 1024², the prompt 77 CLIP + `--text-tokens` T5 tokens.

use std::time::Instant;

use anyhow::{Result, bail};
use burn::module::Module;
use burn::tensor::{Distribution, Tensor};
use imagen_models::device;
use imagen_models::models::flux::{FluxConfig, FluxInputs, FluxTransformer2DModel};
use imagen_models::models::sd3::Sd3Config;

use super::{BenchArgs, first, peak_rss_bytes};

/// FLOPs of the transformer on `n_img` image and `n_txt` text tokens (matmuls and attention).
fn flops(c: &FluxConfig, b: usize, n_img: usize, n_txt: usize) -> u64 {
    let d = c.inner_dim() as u64;
    let (ni, nt, n) = (n_img as u64, n_txt as u64, (n_img + n_txt) as u64);
    // per stream: q, k, v, out (4d²) and the MLP (8d²); attention over the joint sequence
    let double = 2 * (ni + nt) * 12 * d * d + 4 * n * n * d;
    // q, k, v and MLP in (7d²), out from d + 4d (5d²)
    let single = 2 * n * 12 * d * d + 4 * n * n * d;
    let io = 2 * ni * c.in_channels as u64 * d * 2 + 2 * nt * c.joint_attention_dim as u64 * d;
    b as u64 * (c.num_layers as u64 * double + c.num_single_layers as u64 * single + io)
}

/// FLOPs of SD3's MMDiT on `n_img` patches and `n_txt` text tokens.
fn sd3_flops(c: &Sd3Config, b: usize, n_img: usize, n_txt: usize) -> u64 {
    let d = c.inner_dim() as u64;
    let (ni, nt, n) = (n_img as u64, n_txt as u64, (n_img + n_txt) as u64);
    let layers = c.num_layers as u64;
    let dual = c.dual_attention_layers.len() as u64;
    // per stream q, k, v, out (4d²) and MLP (8d²); the last block's text stream has no out/MLP
    let block = 2 * (ni + nt) * 12 * d * d + 4 * n * n * d;
    let attn2 = 2 * ni * 4 * d * d + 4 * ni * ni * d;
    let io = 2 * ni * (c.in_channels * 4) as u64 * d * 2 + 2 * nt * c.joint_attention_dim as u64 * d;
    b as u64 * (layers * block + dual * attn2 + io)
}

/// Times `work` as the other components are timed; prints the result line.
fn time(
    a: &BenchArgs,
    device: &burn::tensor::Device,
    shape: String,
    gflop: f64,
    params: usize,
    work: &dyn Fn() -> Tensor<2>,
) -> Result<()> {
    let _ = work().into_data();
    imagen_models::cpu::profile::set_enabled(a.profile);
    let mut runs = Vec::new();
    for _ in 0..a.runs.max(1) {
        let start = Instant::now();
        let _ = work().into_data();
        device.sync().map_err(|e| anyhow::anyhow!("device sync: {e:?}"))?;
        runs.push(start.elapsed().as_secs_f64());
    }
    let mut sorted = runs.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "tool": "imagen", "arch": a.arch, "component": a.component, "backend": a.backend, "dtype": a.dtype,
                "shape": shape, "median_s": median, "runs_s": runs, "gflop": gflop, "gflop_per_s": gflop / median,
                "peak_rss_bytes": peak_rss_bytes(), "params": params,
                "cpu_bf16_kernel": (a.dtype == "bf16").then(imagen_models::ops::cpu_bf16_kernel).flatten(),
            })
        );
    } else {
        let n = runs.len() as f64;
        for (k, s, calls) in imagen_models::cpu::profile::totals().into_iter().filter(|_| a.profile) {
            println!("  {k}: {:.3} s, {:.0} calls per run", s / n, calls as f64 / n);
        }
        println!(
            "{} {} [{shape}] on {} ({}): median {median:.3} s over {} runs, {gflop:.1} GFLOP, {:.1} GFLOP/s",
            a.arch,
            a.component,
            a.backend,
            a.dtype,
            runs.len(),
            gflop / median
        );
    }
    Ok(())
}

/// SD3.5 Medium's whole transformer.
fn run_sd3(a: &BenchArgs) -> Result<()> {
    if a.component != "transformer" {
        bail!("--arch sd35m benches --component transformer (the whole MMDiT)");
    }
    let device = device::open(&a.backend, &a.dtype)?;
    let c = Sd3Config::default();
    let model = imagen_models::ops::prepare_weights(c.init(&device));
    let (b, l) = (a.batch, a.latent);
    let n_txt = 77 + a.text_tokens;
    let x = Tensor::<4>::random([b, c.in_channels, l, l], Distribution::Normal(0.0, 1.0), &device);
    let ctx = Tensor::<3>::random(
        [b, n_txt, c.joint_attention_dim],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    let pooled = Tensor::<2>::random([b, c.pooled_projection_dim], Distribution::Normal(0.0, 1.0), &device);
    let t = vec![500.0f32; b];
    let n_img = (l / c.patch_size) * (l / c.patch_size);
    let gflop = sd3_flops(&c, b, n_img, n_txt) as f64 / 1e9;
    let work = || first(model.forward(x.clone(), ctx.clone(), pooled.clone(), &t));
    let shape = format!("{b}x16x{l}x{l} + {n_txt} text tokens");
    time(a, &device, shape, gflop, model.num_params(), &work)
}

pub(super) fn run(a: &BenchArgs) -> Result<()> {
    if a.arch == "sd35m" {
        return run_sd3(a);
    }
    if a.component != "blocks" {
        bail!("--arch flux benches --component blocks (one double- and one single-stream block at full width)");
    }
    let device = device::open(&a.backend, &a.dtype)?;
    let c = FluxConfig {
        num_layers: 1,
        num_single_layers: 1,
        guidance_embeds: true,
        ..FluxConfig::default()
    };
    let model: FluxTransformer2DModel = imagen_models::ops::prepare_weights(c.init(&device));
    let (b, side) = (a.batch, a.latent / 2);
    let (n_img, n_txt) = (side * side, a.text_tokens);
    let randn3 = |dims: [usize; 3]| Tensor::<3>::random(dims, Distribution::Normal(0.0, 1.0), &device);
    let (x, context) = (
        randn3([b, n_img, c.in_channels]),
        randn3([b, n_txt, c.joint_attention_dim]),
    );
    let pooled = Tensor::<2>::random([b, c.pooled_projection_dim], Distribution::Normal(0.0, 1.0), &device);
    let mut ids = vec![vec![0.0; 3]; n_txt];
    ids.extend(FluxTransformer2DModel::image_ids(side, side));
    let (t, g) = (vec![0.5f32; b], vec![3.5f32; b]);
    let params = model.num_params();
    let work = || {
        let inputs = FluxInputs {
            context: context.clone(),
            pooled: pooled.clone(),
            timesteps: &t,
            guidance: Some(&g),
            ids: &ids,
        };
        first(model.forward(x.clone(), inputs))
    };
    let gflop = flops(&c, b, n_img, n_txt) as f64 / 1e9;
    let shape = format!("{b}x{n_img}x64 + {n_txt} text tokens");
    time(a, &device, shape, gflop, params, &work)
}
