//! `imagen bench`: one component of a full-size architecture with random weights made in
//! process (same FLOPs as the real model, nothing to download), timed on a backend. The PyTorch
//! side is `tools/reference/bench_torch.py` (same flags); `tools/bench_compare.py` runs both.

use std::time::Instant;

use anyhow::{Result, bail};
use burn::tensor::{Device, Distribution, Int, Tensor};
use imagen_models::device;
use imagen_models::flops;
use imagen_models::models::clip::ClipTextConfig;
use imagen_models::models::unet_2d::{AddedCond, UNet2DConditionConfig};
use imagen_models::models::vae::AutoencoderKLConfig;

mod dit;
mod flux_generate;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// sd15, sd21, sdxl, flux (`--component blocks`, or `generate`: a whole FLUX.1-schnell
    /// generation with Q8_0 weights) or sd35m (`--component transformer`).
    #[arg(long, default_value = "sd15")]
    arch: String,
    /// unet, vae-decode, text-encoder or pipeline (text encoder + steps × UNet + VAE decode);
    /// single ops at the UNet's first level: conv (3×3), attention (self, 8 heads), group-norm
    /// (+ SiLU), linear (c → 8c, the feed-forward's first projection).
    #[arg(long, default_value = "unet")]
    component: String,
    /// Latent side (64 = 512² images for SD 1.5).
    #[arg(long, default_value_t = 64)]
    latent: usize,
    /// Batch of the UNet / text encoder / VAE (2 = one classifier-free-guidance step).
    #[arg(long, default_value_t = 2)]
    batch: usize,
    /// Channels of the single-op components (default: the UNet's first level, 320).
    #[arg(long)]
    channels: Option<usize>,
    /// UNet evaluations in `pipeline`.
    #[arg(long, default_value_t = 1)]
    steps: usize,
    /// FLUX: T5 tokens of the prompt (FLUX.1-dev 512, schnell 256).
    #[arg(long, default_value_t = 512)]
    text_tokens: usize,
    /// Timed runs after one warm-up run; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// cpu or wgpu.
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// f32; f16 (GPU backends); bf16 (cpu with AMX or AVX512-BF16: bf16 conv/linear weights).
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// One JSON line instead of text.
    #[arg(long)]
    json: bool,
    /// burn's stock CPU ops instead of imagen's CPU kernels (same as IMAGEN_CPU_KERNELS=0).
    #[arg(long)]
    stock: bool,
    /// Also report the time spent in each of imagen's CPU kernels (per timed run, averaged).
    #[arg(long)]
    profile: bool,
    /// unet / vae-decode with --dtype bf16: also run the same random weights and inputs once in
    /// f32 and once in bf16 and report max |bf16 − f32| / max |f32| (after the timing).
    #[arg(long)]
    error: bool,
}

struct Arch {
    unet: UNet2DConditionConfig,
    vae: AutoencoderKLConfig,
    text: Vec<ClipTextConfig>,
}

fn arch(name: &str) -> Result<Arch> {
    Ok(match name {
        "sd15" => Arch {
            unet: UNet2DConditionConfig::sd15(),
            vae: AutoencoderKLConfig::sd(),
            text: vec![ClipTextConfig::vit_l14()],
        },
        "sd21" => Arch {
            unet: UNet2DConditionConfig::sd21(),
            vae: AutoencoderKLConfig::sd(),
            text: vec![ClipTextConfig::open_clip_h14_sd2()],
        },
        "sdxl" => Arch {
            unet: UNet2DConditionConfig::sdxl(),
            vae: AutoencoderKLConfig::sd(),
            text: vec![ClipTextConfig::vit_l14(), ClipTextConfig::open_clip_big_g()],
        },
        other => bail!("unknown --arch {other:?} (sd15, sd21, sdxl)"),
    })
}

/// One element of an op's output: reading it back waits for the op (on any backend) without
/// timing a reduction over the whole output, which the PyTorch side does not do either.
fn first<const D: usize>(t: Tensor<D>) -> Tensor<2> {
    t.flatten::<1>(0, D - 1).narrow(0, 0, 1).reshape([1, 1])
}

/// One op with `c` channels at `l²` positions: what the CPU kernels
/// replace, timed alone. Returns the run and its FLOPs.
fn op(name: &str, c: usize, b: usize, l: usize, device: &Device) -> (Box<dyn FnMut() -> Tensor<2>>, u64) {
    use burn::nn::conv::Conv2dConfig;
    use burn::nn::{GroupNormConfig, PaddingConfig2d};
    let x = Tensor::<4>::random([b, c, l, l], Distribution::Normal(0.0, 1.0), device);
    let n = (b * l * l) as u64;
    match name {
        "conv" => {
            let conv = imagen_models::ops::prepare_weights(
                Conv2dConfig::new([c, c], [3, 3])
                    .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                    .init(device),
            );
            let f = move || first(imagen_models::ops::conv2d(&conv, x.clone()));
            (Box::new(f), 2 * n * (c * c * 9) as u64)
        }
        "linear" => {
            // the feed-forward's first projection (GEGLU): c -> 8c over every position
            let lin = imagen_models::ops::prepare_weights(burn::nn::LinearConfig::new(c, 8 * c).init(device));
            let seq = Tensor::<3>::random([b, l * l, c], Distribution::Normal(0.0, 1.0), device);
            let f = move || first(imagen_models::ops::linear(&lin, seq.clone()));
            (Box::new(f), 2 * n * (c * 8 * c) as u64)
        }
        "attention" => {
            let heads = 8;
            // a projection's output: [b, l², c], contiguous
            let seq = Tensor::<3>::random([b, l * l, c], Distribution::Normal(0.0, 1.0), device);
            let f = move || {
                let out = imagen_models::ops::attention(seq.clone(), seq.clone(), seq.clone(), heads, false);
                first(out)
            };
            // q·kᵀ and p·v: 2 · 2 · n · l² · c
            (Box::new(f), 4 * n * (l * l * c) as u64)
        }
        _ => {
            let norm = GroupNormConfig::new(32, c).with_epsilon(1e-5).init(device);
            let f = move || first(imagen_models::ops::group_norm(&norm, x.clone(), true));
            (Box::new(f), 0)
        }
    }
}

/// Peak resident set size of this process so far (Linux `VmHWM`).
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub fn run(a: BenchArgs) -> Result<()> {
    if a.arch == "flux" && a.component == "generate" {
        return flux_generate::run(&a);
    }
    if a.arch == "flux" || a.arch == "sd35m" {
        return dit::run(&a);
    }
    let arch = arch(&a.arch)?;
    if a.stock {
        let routes = imagen_models::ops::Routes::current();
        imagen_models::ops::Routes {
            cpu_kernels: false,
            ..routes
        }
        .set();
    }
    let device: Device = device::open(&a.backend, &a.dtype)?;
    // bf16 on the CPU: conv and linear weights (nearly all parameters) in bf16
    let dtype_bytes = match device::dtype_name(&device) {
        "bf16" => 2,
        _ => burn::tensor::DType::from(device.settings().float_dtype).size(),
    };
    let (b, l) = (a.batch, a.latent);
    let ctx: usize = arch.text.iter().map(|t| t.hidden_size).sum();
    let xl = arch.text.len() == 2;
    let randn = |dims: [usize; 4]| Tensor::<4>::random(dims, Distribution::Normal(0.0, 1.0), &device);

    // as loaded from a checkpoint: `load_module` pads the CPU linear weights' rows
    let unet = || imagen_models::ops::prepare_weights(arch.unet.init(&device));
    let text_models = || {
        arch.text
            .iter()
            .map(|c| imagen_models::ops::prepare_weights(c.init(&device)))
            .collect::<Vec<_>>()
    };
    let cond = AddedCond {
        text_embeds: Tensor::random([b, 1280], Distribution::Normal(0.0, 1.0), &device),
        time_ids: vec![[(l * 8) as f32, (l * 8) as f32, 0.0, 0.0, (l * 8) as f32, (l * 8) as f32]; b],
    };
    let context = Tensor::<3>::random([b, 77, ctx], Distribution::Normal(0.0, 1.0), &device);
    let ids = Tensor::<2, Int>::random([b, 77], Distribution::Uniform(0.0, 49407.0), &device);
    let unet_gflop = flops::unet(&arch.unet, b, l, l, 77);
    let text_gflop: u64 = arch.text.iter().map(|c| flops::clip(c, b, 77)).sum();
    let vae_gflop = flops::vae_decode(&arch.vae, b, l, l);

    // Each closure does one run and returns a small tensor read back to force the work; the
    // parameter count times the dtype's size is the memory target's "bytes of the weights".
    use burn::module::Module;
    let params: usize;
    let (shape, gflop, mut work): (String, u64, Box<dyn FnMut() -> Tensor<2>>) = match a.component.as_str() {
        "unet" => {
            let (net, lat) = (unet(), randn([b, 4, l, l]));
            params = net.num_params();
            let f = move || {
                let out = net.forward_with(lat.clone(), &[981.0], &context, xl.then_some(&cond), None);
                out.sum().reshape([1, 1])
            };
            (format!("{b}x4x{l}x{l}"), unet_gflop, Box::new(f))
        }
        "vae-decode" => {
            let (vae, z) = (
                imagen_models::ops::prepare_weights(arch.vae.init(&device)),
                randn([b, 4, l, l]),
            );
            params = vae.num_params();
            let f = move || vae.decode(z.clone()).sum().reshape([1, 1]);
            (format!("{b}x4x{l}x{l}->{}x{}", l * 8, l * 8), vae_gflop, Box::new(f))
        }
        "text-encoder" => {
            let tes = text_models();
            params = tes.iter().map(|t| t.num_params()).sum();
            let f = move || {
                let outs: Vec<Tensor<2>> = tes
                    .iter()
                    .map(|t| t.forward(ids.clone(), 0).sum().reshape([1, 1]))
                    .collect();
                Tensor::cat(outs, 1)
            };
            (format!("{b}x77"), text_gflop, Box::new(f))
        }
        "pipeline" => {
            let (tes, net, vae, lat) = (
                text_models(),
                unet(),
                imagen_models::ops::prepare_weights(arch.vae.init(&device)),
                randn([b, 4, l, l]),
            );
            params = tes.iter().map(|t| t.num_params()).sum::<usize>() + net.num_params() + vae.num_params();
            let steps = a.steps;
            let f = move || {
                let _ctx: Vec<Tensor<2>> = tes
                    .iter()
                    .map(|t| t.forward(ids.clone(), 0).sum().reshape([1, 1]))
                    .collect();
                let mut x = lat.clone();
                // as a generation does (imagen_engine::pipeline): the prompt's keys/values once
                let kv = net.cross_kv(&context);
                for _ in 0..steps {
                    x = net.forward_kv(x, &[981.0], &kv, xl.then_some(&cond), None);
                }
                vae.decode(x).sum().reshape([1, 1])
            };
            let g = text_gflop + a.steps as u64 * unet_gflop + vae_gflop;
            (format!("{b}x4x{l}x{l}, {} steps", a.steps), g, Box::new(f))
        }
        "conv" | "attention" | "group-norm" | "linear" => {
            let c = a.channels.unwrap_or(arch.unet.block_out_channels[0]);
            let (run, g) = op(&a.component, c, b, l, &device);
            params = 0;
            (format!("{b}x{c}x{l}x{l}"), g, run)
        }
        other => bail!(
            "unknown --component {other:?} (unet, vae-decode, text-encoder, pipeline, conv, attention, group-norm, linear)"
        ),
    };

    // Warm-up (also materialises the lazily initialised random weights). Reading the result
    // back is not enough on wgpu: a read of one element of a conv's output returned before
    // the conv had run (lavapipe: 48 µs for a 15 GFLOP conv), so each run ends in a device sync.
    let sync = |device: &Device| device.sync().map_err(|e| anyhow::anyhow!("device sync: {e:?}"));
    let _ = work().into_data();
    sync(&device)?;
    use imagen_models::cpu::profile;
    profile::set_enabled(a.profile);
    let mut runs = Vec::new();
    for _ in 0..a.runs.max(1) {
        let t = Instant::now();
        let _ = work().into_data();
        sync(&device)?;
        runs.push(t.elapsed().as_secs_f64());
    }
    let runs_s = runs.clone();
    runs.sort_by(f64::total_cmp);
    let median = runs[runs.len() / 2];
    let gflop = gflop as f64 / 1e9;
    let rss = peak_rss_bytes();
    // GPU pools keep their pages once taken, so what they reserve after the runs is their peak.
    let device_bytes = device.memory_pool_usage().map(|u| u.bytes_reserved);
    let n = runs_s.len() as f64;
    let error = if a.error {
        Some(bf16_error(&a.component, &arch, b, l, &device)?)
    } else {
        None
    };
    let kernels: serde_json::Map<String, serde_json::Value> = profile::totals()
        .into_iter()
        .filter(|_| a.profile)
        .map(|(k, s, calls)| {
            (
                k.to_string(),
                serde_json::json!({"s": s / n, "calls": calls as f64 / n}),
            )
        })
        .collect();
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "tool": "imagen", "arch": a.arch, "component": a.component, "backend": a.backend, "dtype": a.dtype,
                "shape": shape, "median_s": median, "runs_s": runs_s, "gflop": gflop,
                "gflop_per_s": gflop / median, "peak_rss_bytes": rss, "weights_bytes": params * dtype_bytes,
                "device_reserved_bytes": device_bytes, "rel_error_vs_f32": error,
                "kernels": a.profile.then_some(&kernels),
                "cpu_bf16_kernel": (a.dtype == "bf16").then(imagen_models::ops::cpu_bf16_kernel).flatten(),
            })
        );
    } else {
        println!(
            "{} {} [{shape}] on {} ({}): median {median:.3} s over {} runs, {gflop:.1} GFLOP, {:.1} GFLOP/s, peak RSS {}",
            a.arch,
            a.component,
            a.backend,
            a.dtype,
            runs_s.len(),
            gflop / median,
            rss.map_or("n/a".into(), |r| format!("{:.2} GiB", r as f64 / (1u64 << 30) as f64))
        );
        for (k, v) in &kernels {
            println!("  {k}: {v}");
        }
        if let Some(e) = error {
            println!("  bf16 vs f32 (same weights and inputs): max relative error {e:.3e}");
        }
    }
    Ok(())
}

/// The component once with f32 weights and once with the same weights laid out in bf16 (the AMX
/// route), on the same inputs: max |bf16 − f32| / max |f32| (`--error`).
fn bf16_error(component: &str, arch: &Arch, b: usize, l: usize, device: &Device) -> Result<f32> {
    use burn::module::{Module, ModuleMapper, Param};
    use imagen_models::ops::{Routes, cpu_bf16_available, prepare_weights};
    if !cpu_bf16_available() {
        bail!("--error compares the bf16 route with f32: this CPU has neither AMX-BF16 nor AVX512-BF16");
    }
    /// Reads every parameter, so that a clone shares the values instead of initialising anew.
    struct Materialise;
    impl ModuleMapper for Materialise {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            param.map(|t| t)
        }
    }
    let routes = Routes::current();
    let (f32_routes, bf16_routes) = (
        Routes {
            cpu_bf16: false,
            ..routes
        },
        Routes {
            cpu_bf16: true,
            ..routes
        },
    );
    let z = Tensor::<4>::random([b, 4, l, l], Distribution::Normal(0.0, 1.0), device);
    let ctx: usize = arch.text.iter().map(|t| t.hidden_size).sum();
    let context = Tensor::<3>::random([b, 77, ctx], Distribution::Normal(0.0, 1.0), device);
    let cond = (arch.text.len() == 2).then(|| AddedCond {
        text_embeds: Tensor::random([b, 1280], Distribution::Normal(0.0, 1.0), device),
        time_ids: vec![[(l * 8) as f32, (l * 8) as f32, 0.0, 0.0, (l * 8) as f32, (l * 8) as f32]; b],
    });
    let (want, got) = match component {
        "unet" => {
            let f32_net = f32_routes.scoped(|| prepare_weights(arch.unet.init(device).map(&mut Materialise)));
            let bf16_net = bf16_routes.scoped(|| prepare_weights(f32_net.clone()));
            let run = |net: &imagen_models::models::unet_2d::UNet2DConditionModel| {
                net.forward_with(z.clone(), &[981.0], &context, cond.as_ref(), None)
            };
            (
                f32_routes.scoped(|| run(&f32_net)),
                bf16_routes.scoped(|| run(&bf16_net)),
            )
        }
        "vae-decode" => {
            let f32_vae = f32_routes.scoped(|| prepare_weights(arch.vae.init(device).map(&mut Materialise)));
            let bf16_vae = bf16_routes.scoped(|| prepare_weights(f32_vae.clone()));
            (
                f32_routes.scoped(|| f32_vae.decode(z.clone())),
                bf16_routes.scoped(|| bf16_vae.decode(z.clone())),
            )
        }
        other => bail!("--error is for unet and vae-decode, not {other}"),
    };
    let (want, got) = (
        want.into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?,
        got.into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?,
    );
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())).max(f32::MIN_POSITIVE);
    let diff = want.iter().zip(&got).fold(0f32, |m, (w, g)| m.max((w - g).abs()));
    Ok(diff / scale)
}
