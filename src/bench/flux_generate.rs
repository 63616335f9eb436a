//! `imagen bench --arch flux --component generate`: a whole FLUX.1-schnell generation at full
//! size (CLIP-L, T5-XXL, the 12 B transformer for `--steps`, the VAE decode) with random weights
//! made in process and held as a Q8_0 GGUF's are once loaded: every linear weight int8 with one
//! f32 scale per 32 (ggml's `block_q8_0`), everything else f32. bf16 (23.8 GB for the
//! transformer alone) does not fit a 24 GB machine; Q8_0 is the smallest of the two.
//!
//! The components are made in turn, and each is dropped once used: CLIP and T5 encode the
//! prompt, then the transformer is built and denoises, then the VAE decodes. That order is what
//! keeps the peak near the transformer's own size. Tokenizers and the scheduler come from the
//! tiny schnell fixture (its scheduler config is schnell's).

use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Device, Tensor};
use imagen_engine::GenerateRequest;
use imagen_engine::flux::{denoise_encoded, encode};
use imagen_engine::pipeline::decode;
use imagen_engine::rng::RngKind;
use imagen_models::load::t5_tokenizer::T5Tokenizer;
use imagen_models::models::clip::ClipTextConfig;
use imagen_models::models::flux::FluxConfig;
use imagen_models::models::t5::T5Config;
use imagen_models::models::vae::AutoencoderKLConfig;
use imagen_models::{DiffusersFolder, Flux, device};

use super::{BenchArgs, peak_rss_bytes};

/// Replaces every linear weight with random Q8_0 blocks kept quantized (the loader's
/// representation of a GGUF Q8_0 tensor); other parameters are initialised as burn does.
struct RandomQ8 {
    /// (field name, container type) of the modules entered, as the loader tracks them.
    path: Vec<(String, String)>,
    state: u64,
    bytes: usize,
    /// Where the quantized weights are made (each backend has its own layout).
    device: Device,
}

impl RandomQ8 {
    /// xorshift64*: fast enough for 12 B weights, and the values do not matter for timing.
    fn next(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

impl ModuleMapper for RandomQ8 {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.push((name.to_owned(), container_type.to_owned()));
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let shape = param.lazy_shape().to_vec();
        let linear = self
            .path
            .last()
            .is_some_and(|(name, container)| name == "weight" && container == "Struct:Linear");
        // burn's Linear stores [d_in, d_out]
        let (&[d_in, d_out], true, 2) = (shape.as_slice(), linear, D) else {
            // initialised lazily, as burn does, when first used
            self.bytes += shape.iter().product::<usize>() * 4;
            return param;
        };
        // kaiming-uniform magnitudes: |w| ≤ 1/√d_in, so one scale per block of 32
        let scale = 1.0 / ((d_in as f32).sqrt() * 127.0);
        let mut q = vec![0i8; d_out * d_in];
        for chunk in q.chunks_mut(8) {
            let r = self.next().to_le_bytes();
            for (v, b) in chunk.iter_mut().zip(r) {
                *v = (b as i8).clamp(-127, 127);
            }
        }
        let scales = vec![scale; d_out * d_in / 32];
        self.bytes += q.len() + scales.len() * 4;
        match imagen_models::ops::quantized_linear_weight(&q, &scales, d_out, d_in, &self.device) {
            Some(t) => {
                let id = param.id;
                param.transform_for_load(Tensor::from_dispatch(t.into_dispatch()), id)
            }
            None => param,
        }
    }
}

/// `module` with random Q8_0 linear weights, and the bytes its weights take.
fn random_q8<M: Module>(module: M, seed: u64, device: &Device) -> (M, usize) {
    let mut m = RandomQ8 {
        device: device.clone(),
        path: Vec::new(),
        state: seed | 1,
        bytes: 0,
    };
    let module = module.map(&mut m);
    (module, m.bytes)
}

fn gib(bytes: usize) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

fn rss() -> String {
    peak_rss_bytes().map_or("n/a".into(), |b| gib(b as usize))
}

pub(super) fn run(a: &BenchArgs) -> Result<()> {
    if a.backend != "cpu" {
        bail!("--component generate runs on the CPU (Q8_0 weights are kept quantized there)");
    }
    if !imagen_models::ops::Routes::current().keep_quantized {
        bail!("--component generate needs quantized weights kept (unset IMAGEN_KEEP_QUANTIZED=0)");
    }
    let device: Device = device::open(&a.backend, &a.dtype)?;
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-flux-schnell");
    let folder = DiffusersFolder::open(fixture).context("the tiny schnell fixture (tokenizers, scheduler)")?;
    let (clip_c, t5_c, tr_c) = (ClipTextConfig::vit_l14(), T5Config::default(), FluxConfig::default());
    let vae_c = AutoencoderKLConfig {
        latent_channels: 16,
        scaling_factor: 0.3611,
        shift_factor: Some(0.1159),
        use_quant_conv: false,
        use_post_quant_conv: false,
        ..AutoencoderKLConfig::sd()
    };
    let started = Instant::now();
    // CLIP-L and the VAE in f32 as their safetensors are used beside GGUF transformers
    let text_encoder = clip_c.init(&device);
    let clip_bytes = text_encoder.num_params() * 4;
    let (text_encoder_2, t5_bytes) = random_q8(t5_c.init(&device), 2, &device);
    let built_text = started.elapsed().as_secs_f64();
    let mut flux = Flux {
        tokenizer: folder.tokenizer()?,
        text_encoder,
        tokenizer_2: T5Tokenizer::from_dir(&folder.root().join("tokenizer_2"))?,
        text_encoder_2,
        // not materialised until built below
        transformer: tr_c.init(&device),
        transformer_config: tr_c.clone(),
        vae: vae_c.init(&device),
        vae_config: vae_c.clone(),
        weight_formats: Default::default(),
        folder,
    };
    let side = a.latent * 8;
    let req = GenerateRequest {
        prompt: "a photograph of an astronaut riding a horse on the moon".into(),
        negative_prompt: String::new(),
        width: side,
        height: side,
        steps: a.steps.max(1),
        guidance: 0.0,
        scheduler: None,
        seed: 42,
        rng: RngKind::Torch,
        num_images: 1,
        init: None,
        long_prompt: false,
        max_sequence_length: Some(a.text_tokens),
        true_cfg_scale: None,
        skip_layer_guidance: None,
    };

    let t = Instant::now();
    let conditioning = encode(&flux, &req, &device)?;
    let _ = conditioning.cond.embeds.clone().into_data();
    let text_s = t.elapsed().as_secs_f64();
    let rss_text = rss();
    // drop the text encoders (their lazily initialised shells take no memory)
    flux.text_encoder = clip_c.init(&device);
    flux.text_encoder_2 = t5_c.init(&device);

    let t = Instant::now();
    let (transformer, tr_bytes) = random_q8(tr_c.init(&device), 3, &device);
    flux.transformer = transformer;
    let build_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut marks = Vec::new();
    let mut progress = |_: usize, _: usize| {
        marks.push(t.elapsed().as_secs_f64());
        true
    };
    let latents = denoise_encoded(&flux, &req, &conditioning, &device, &mut progress, &mut |_, _| {})?;
    let _ = latents.clone().into_data();
    let denoise_s = t.elapsed().as_secs_f64();
    let rss_denoise = rss();
    flux.transformer = tr_c.init(&device);

    let t = Instant::now();
    let vae = vae_c.init(&device);
    let vae_bytes = vae.num_params() * 4;
    let images = decode(&vae, &vae_c, latents)?;
    let decode_s = t.elapsed().as_secs_f64();
    let steps: Vec<f64> = marks
        .iter()
        .scan(0.0, |prev, &m| {
            let d = m - *prev;
            *prev = m;
            Some(d)
        })
        .collect();
    let total = text_s + denoise_s + decode_s;
    let result = serde_json::json!({
        "tool": "imagen", "arch": "flux-schnell", "component": "generate", "weights": "T5 and transformer: q8_0 linear weights, f32 rest; CLIP-L, VAE f32",
        "dtype": a.dtype, "image": format!("{side}x{side}"), "steps": req.steps, "text_tokens": a.text_tokens,
        "text_encoders_s": text_s, "denoise_s": denoise_s, "step_s": steps, "vae_decode_s": decode_s,
        "generation_s": total, "build_text_s": built_text, "build_transformer_s": build_s,
        "weights_bytes": {"clip_l": clip_bytes, "t5_xxl": t5_bytes, "transformer": tr_bytes, "vae": vae_bytes},
        "peak_rss_after_text": rss_text, "peak_rss_after_denoise": rss_denoise, "peak_rss_bytes": peak_rss_bytes(),
        "image_pixels": images.first().map(|i| i.width() * i.height()),
    });
    if a.json {
        println!("{result}");
    } else {
        println!(
            "flux-schnell generate {side}x{side}, {} steps, Q8_0: text encoders {text_s:.1} s, denoise {denoise_s:.1} s \
             ({:.1} s/step), VAE decode {decode_s:.1} s, total {total:.1} s; weights CLIP {} T5 {} transformer {} \
             VAE {}; peak RSS {}",
            req.steps,
            denoise_s / req.steps as f64,
            gib(clip_bytes),
            gib(t5_bytes),
            gib(tr_bytes),
            gib(vae_bytes),
            rss()
        );
    }
    Ok(())
}
