//! `imagen`: the command line. `generate` makes images; `inspect` checks a model folder;
//! `serve` runs the HTTP API; `keys` manages its API keys; `bench` times components;
//! `quantize` writes GGUF; `pull` downloads a model from the Hugging Face Hub.

mod bench;
mod hub;
mod pull;
mod quantize;
mod serve;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use imagen_engine::pipeline::{SkipLayerGuidance, tensor_to_images};
use imagen_engine::rng::RngKind;
use imagen_engine::scheduler::SamplerKind;
use imagen_engine::{GenerateRequest, InitImage, MaskedContent, Model};
use imagen_models::device;
use imagen_models::load::lora::LoraFile;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser)]
#[command(name = "imagen", version, about = "Stable Diffusion on your own machine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate images from a prompt (text-to-image), an init image (image-to-image) or
    /// variations of an image.
    Generate(Box<GenerateArgs>),
    /// Load a diffusers model folder and report what it holds.
    Inspect {
        /// The diffusers pipeline folder.
        model: PathBuf,
        /// cpu, or wgpu for the GPU.
        #[arg(long, default_value = "cpu")]
        backend: String,
    },
    /// Serve the Image Generation API (and OpenAI-compatible image routes) over HTTP.
    Serve(Box<serve::ServeArgs>),
    /// Run jobs from a shared store (`--store postgres://…`) without serving HTTP: claims the
    /// jobs of the models in its `--models-dir`, one at a time, on its `--backend`.
    Worker(Box<serve::ServeArgs>),
    /// Create, list and revoke the server's API keys.
    #[command(subcommand)]
    Keys(serve::KeysCommand),
    /// Time one component of a full-size architecture with random weights (GFLOP/s, peak RSS).
    Bench(Box<bench::BenchArgs>),
    /// Write a checkpoint as GGUF with block-quantized weights (Q8_0, Q5_1, Q5_0, Q4_1, Q4_0).
    Quantize(Box<quantize::QuantizeArgs>),
    /// Download a model from the Hugging Face Hub (HF_ENDPOINT for a mirror, HF_TOKEN for
    /// gated repos) into the models folder: a diffusers pipeline's needed files, or one file.
    Pull(Box<pull::PullArgs>),
}

#[derive(clap::Args)]
struct GenerateArgs {
    /// The diffusers pipeline folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/),
    /// or a single-file SD 1.x / 2.x / XL checkpoint with --config: .safetensors (LDM/SGM layout,
    /// f32/f16/bf16/fp8) or .gguf (stable-diffusion.cpp's whole checkpoint, or ComfyUI-GGUF's UNet
    /// alone with the rest from --config; Q8_0/Q4_0/Q4_1/Q5_0/Q5_1/Q4_K/Q5_K/Q6_K/F16/BF16).
    #[arg(long)]
    model: PathBuf,
    /// For a single-file --model: a diffusers folder of the same architecture whose configs,
    /// tokenizer and scheduler to use (its weights are not read).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override the scheduler config's prediction type: epsilon or v_prediction (e.g. a single
    /// file from a v-prediction model with an epsilon config folder).
    #[arg(long)]
    prediction_type: Option<String>,
    /// What to draw. Optional with --variations-of.
    #[arg(long, default_value = "")]
    prompt: String,
    /// What to steer away from (classifier-free guidance's unconditional prompt).
    #[arg(long, default_value = "")]
    negative_prompt: String,
    /// Image width in pixels, a multiple of 8. Default: the init image's, else the model's native size.
    #[arg(long)]
    width: Option<usize>,
    /// Image height in pixels, a multiple of 8. Default: as --width.
    #[arg(long)]
    height: Option<usize>,
    /// Denoising steps (image-to-image runs floor(steps × strength) of them). Default: the
    /// model's (50; FLUX.1-schnell 4, FLUX.1-dev 28, SD3.5 Medium 40, Large 28).
    #[arg(long)]
    steps: Option<usize>,
    /// Classifier-free guidance scale; 1 or less skips the unconditional pass. FLUX.1-dev: its
    /// distilled guidance. Default: the model's (7.5; SDXL 5; FLUX.1-schnell 0, dev 3.5).
    #[arg(long)]
    guidance: Option<f64>,
    /// T5-conditioned models (FLUX, SD3): tokens the prompt is padded/truncated to (default:
    /// the model's, FLUX.1-schnell 256, dev 512, SD3 256).
    #[arg(long)]
    max_sequence_length: Option<usize>,
    /// FLUX: true classifier-free guidance with --negative-prompt (> 1 to enable).
    #[arg(long)]
    true_cfg_scale: Option<f64>,
    /// SD3: skip-layer guidance on these transformer blocks (e.g. 7,8,9 for SD3.5 Medium).
    #[arg(long, value_delimiter = ',')]
    skip_guidance_layers: Vec<usize>,
    /// SD3 skip-layer guidance strength (default 2.8).
    #[arg(long)]
    skip_layer_guidance_scale: Option<f64>,
    /// SD3 skip-layer guidance runs on steps between these fractions (defaults 0.01 and 0.2).
    #[arg(long)]
    skip_layer_guidance_start: Option<f64>,
    #[arg(long)]
    skip_layer_guidance_stop: Option<f64>,
    /// Sampler: pndm, ddim, euler, euler_a, dpmpp_2m, dpmpp_2m_karras, lcm, heun (FLUX/SD3 take
    /// euler, heun, dpmpp_2m). Default: the model's own (scheduler/scheduler_config.json).
    #[arg(long)]
    scheduler: Option<String>,
    /// Seed of the noise. Default: a random one, printed.
    #[arg(long)]
    seed: Option<u64>,
    /// Noise generator: torch (= diffusers with a CPU generator, ComfyUI) or philox (= A1111's GPU noise).
    #[arg(long, default_value = "torch")]
    rng: String,
    /// Images to make; several are written as PATH-0.png, PATH-1.png, …
    #[arg(long, default_value_t = 1)]
    num_images: usize,
    /// Start from this PNG (image-to-image).
    #[arg(long, conflicts_with = "variations_of")]
    init_image: Option<PathBuf>,
    /// Inpainting: a PNG the size of --init-image, white where to repaint, black where to keep.
    #[arg(long, requires = "init_image")]
    mask: Option<PathBuf>,
    /// What the masked area starts from: original, fill, latent_noise, latent_nothing
    /// (A1111's "masked content").
    #[arg(long, requires = "mask", default_value = "original", value_parser = MaskedContent::NAMES)]
    masked_content: String,
    /// How much of the init image to re-noise, 0..1 (diffusers' strength).
    #[arg(long, default_value_t = 0.8)]
    strength: f64,
    /// Make --num-images variations of this PNG (image-to-image at --strength, seeds seed, seed+1, …).
    #[arg(long)]
    variations_of: Option<PathBuf>,
    /// Where to write the PNG.
    #[arg(long)]
    output: PathBuf,
    /// cpu, or wgpu for the GPU.
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// f32; f16 (GPU backends: half the memory, faster on most cards); bf16 (cpu backend on CPUs
    /// with AMX-BF16 or AVX512-BF16: conv and linear layers in bf16, half the weight memory;
    /// IMAGEN_CPU_AMX=0 uses AVX512-BF16 even where AMX exists).
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Decode with TAESD (a diffusers `AutoencoderTiny` folder: madebyollin/taesd or taesdxl for
    /// SD, taef1 for FLUX.1, taesd3 for SD3) instead of the model's VAE: much faster, softer.
    #[arg(long)]
    taesd: Option<PathBuf>,
    /// With --taesd: write a TAESD preview of the latents every --preview-every steps to
    /// DIR/step-NNN.png (step-NNN-I.png for several images).
    #[arg(long, value_name = "DIR")]
    preview_dir: Option<PathBuf>,
    /// Steps between previews (1 = every step).
    #[arg(long, default_value_t = 1)]
    preview_every: usize,
    /// Merge a LoRA file (kohya or diffusers/PEFT names) at a scale (default 1); repeatable.
    #[arg(long = "lora", value_name = "PATH[:SCALE]")]
    loras: Vec<String>,
    /// Encode prompts over 75 tokens in 75-token chunks (A1111/ComfyUI) instead of truncating.
    #[arg(long)]
    long_prompt: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Generate(args) => run_generate(*args),
        Command::Serve(args) => serve::serve(*args, false),
        Command::Worker(args) => serve::serve(*args, true),
        Command::Keys(cmd) => serve::keys(cmd),
        Command::Bench(args) => bench::run(*args),
        Command::Quantize(args) => quantize::run(*args),
        Command::Pull(args) => pull::run(*args),
        Command::Inspect { model, backend } => {
            let device = device::by_name(&backend)?;
            let t = Instant::now();
            let m = Model::load(&model, None, &device).with_context(|| format!("loading {}", model.display()))?;
            println!("pipeline:     {}", m.folder().pipeline_class);
            println!("family:       {}", m.family().name());
            println!("parameters:   {}", m.num_params());
            println!("native size:  {}px", m.native_size());
            if let Model::StableDiffusion(sd) = &m {
                println!("unet blocks:  {:?}", sd.unet_config.block_out_channels);
            }
            println!("loaded in:    {:.2?} on {backend}", t.elapsed());
            Ok(())
        }
    }
}

fn read_mask(path: &Path) -> Result<image::GrayImage> {
    Ok(image::open(path)
        .with_context(|| format!("cannot read mask {}", path.display()))?
        .to_luma8())
}

fn read_png(path: &Path) -> Result<image::RgbImage> {
    Ok(image::open(path)
        .with_context(|| format!("cannot read image {}", path.display()))?
        .to_rgb8())
}

fn run_generate(a: GenerateArgs) -> Result<()> {
    // Check everything cheap before loading weights.
    let scheduler = a.scheduler.as_deref().map(SamplerKind::parse).transpose()?;
    let Some(rng) = RngKind::parse(&a.rng) else {
        bail!("unknown --rng {:?} (torch or philox)", a.rng);
    };
    if let Some(dir) = &a.preview_dir {
        if a.taesd.is_none() {
            bail!("--preview-dir needs --taesd (previews are decoded with TAESD)");
        }
        if a.preview_every == 0 {
            bail!("--preview-every must be at least 1");
        }
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    if !(0.0..=1.0).contains(&a.strength) {
        bail!("--strength must be between 0 and 1 (got {})", a.strength);
    }
    let source = match (&a.init_image, &a.variations_of) {
        (Some(p), _) | (_, Some(p)) => Some(read_png(p)?),
        _ => None,
    };
    let device = device::open(&a.backend, &a.dtype)?;
    let taesd = a
        .taesd
        .as_deref()
        .map(|dir| {
            imagen_models::models::taesd::load(dir, &device).with_context(|| format!("loading TAESD {}", dir.display()))
        })
        .transpose()?;
    let loras = a
        .loras
        .iter()
        .map(|spec| {
            // PATH:SCALE, or just PATH (scale 1).
            let (path, scale) = match spec.rsplit_once(':').map(|(p, s)| (p, s.parse::<f32>())) {
                Some((p, Ok(s))) => (p, s),
                _ => (spec.as_str(), 1.0),
            };
            let file = LoraFile::open(Path::new(path)).with_context(|| format!("loading LoRA {path}"))?;
            Ok((file, scale))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut sd = if a.model.is_file() {
        let Some(config) = &a.config else {
            bail!(
                "{} is a single file: pass --config <diffusers folder of the same architecture>",
                a.model.display()
            );
        };
        Model::load(config, Some(&a.model), &device)
    } else {
        Model::load(&a.model, None, &device)
    }
    .with_context(|| format!("loading {}", a.model.display()))?;
    if let Some(p) = &a.prediction_type {
        if !matches!(p.as_str(), "epsilon" | "v_prediction") {
            bail!("--prediction-type must be epsilon or v_prediction (got {p:?})");
        }
        sd.set_prediction_type(Some(p.clone()))?;
    }
    if !loras.is_empty() {
        let refs: Vec<(&LoraFile, f32)> = loras.iter().map(|(f, s)| (f, *s)).collect();
        sd = sd.with_loras(&refs, &device)?;
    }
    if let Some((config, _)) = &taesd
        && config.latent_channels != sd.latent_channels()
    {
        bail!(
            "--taesd: this tiny decoder takes {}-channel latents, the model makes {} \
             (taesd/taesdxl for SD, taef1 for FLUX.1, taesd3 for SD3)",
            config.latent_channels,
            sd.latent_channels()
        );
    }
    let native = sd.native_size();
    let (default_steps, default_guidance) = sd.default_steps_guidance();
    let (dw, dh) = source
        .as_ref()
        .map_or((native, native), |i| (i.width() as usize, i.height() as usize));
    let width = a.width.unwrap_or(dw);
    let height = a.height.or(a.width).unwrap_or(dh);
    let seed = a.seed.unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        (nanos as u64) & 0xffff_ffff
    });
    if a.skip_guidance_layers.is_empty()
        && (a.skip_layer_guidance_scale.is_some()
            || a.skip_layer_guidance_start.is_some()
            || a.skip_layer_guidance_stop.is_some())
    {
        anyhow::bail!("--skip-layer-guidance-scale/-start/-stop need --skip-guidance-layers");
    }
    let req = GenerateRequest {
        prompt: a.prompt,
        negative_prompt: a.negative_prompt,
        width,
        height,
        steps: a.steps.unwrap_or(default_steps),
        guidance: a.guidance.unwrap_or(default_guidance),
        scheduler,
        seed,
        rng,
        num_images: a.num_images,
        long_prompt: a.long_prompt,
        max_sequence_length: a.max_sequence_length,
        true_cfg_scale: a.true_cfg_scale,
        skip_layer_guidance: (!a.skip_guidance_layers.is_empty()).then(|| SkipLayerGuidance {
            layers: a.skip_guidance_layers.clone(),
            scale: a.skip_layer_guidance_scale.unwrap_or(SkipLayerGuidance::DEFAULT_SCALE),
            start: a.skip_layer_guidance_start.unwrap_or(SkipLayerGuidance::DEFAULT_START),
            stop: a.skip_layer_guidance_stop.unwrap_or(SkipLayerGuidance::DEFAULT_STOP),
        }),
        init: match a.init_image.as_ref().and(source.clone()) {
            Some(image) => Some(InitImage {
                image,
                strength: a.strength,
                mask: a.mask.as_deref().map(read_mask).transpose()?,
                masked: MaskedContent::parse(&a.masked_content).unwrap_or_default(),
            }),
            None => None,
        },
    };

    let bar = if a.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {per_sec}  eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut progress = |step: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(step as u64);
        true
    };
    let started = Instant::now();
    let images = match (&a.variations_of, source, &taesd) {
        (Some(_), _, Some(_)) => bail!("--taesd does not combine with --variations-of yet"),
        (Some(_), Some(img), None) => sd.variations(&req, &img, a.strength, &device, &mut progress)?,
        // the pipelines' `latents / scaling_factor + shift_factor` with the tiny decoder's own
        (_, _, Some((config, decoder))) => {
            let mut failed: Option<anyhow::Error> = None;
            let mut preview = |step: usize, latents: &burn::tensor::Tensor<4>| {
                let Some(dir) = &a.preview_dir else { return };
                if failed.is_some() || !step.is_multiple_of(a.preview_every) {
                    return;
                }
                let saved = tensor_to_images(decoder.decode(config.unscale(latents.clone())))
                    .map_err(anyhow::Error::from)
                    .and_then(|images| save_images(&images, &dir.join(format!("step-{step:03}.png"))));
                failed = saved.err();
            };
            let latents = sd.denoise_with(&req, &device, &mut progress, &mut preview)?;
            if let Some(e) = failed {
                return Err(e.context("writing a step preview"));
            }
            tensor_to_images(decoder.decode(config.unscale(latents)))?
        }
        _ => sd.generate_once(&req, &device, &mut progress)?,
    };
    bar.finish_and_clear();

    let paths = save_images(&images, &a.output)?;
    if !a.quiet {
        eprintln!("seed {seed}, {:.1?}", started.elapsed());
    }
    for p in paths {
        println!("{}", p.display());
    }
    Ok(())
}

/// Writes the images as [`output_paths`] names them; returns the paths.
fn save_images(images: &[image::RgbImage], output: &Path) -> Result<Vec<PathBuf>> {
    let paths = output_paths(output, images.len());
    for (img, path) in images.iter().zip(&paths) {
        img.save(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(paths)
}

/// `out.png` for one image; `out-0.png`, `out-1.png`, … for several.
fn output_paths(output: &Path, n: usize) -> Vec<PathBuf> {
    if n == 1 {
        return vec![output.to_owned()];
    }
    let stem = output
        .file_stem()
        .map_or("image".into(), |s| s.to_string_lossy().into_owned());
    let ext = output
        .extension()
        .map_or("png".into(), |e| e.to_string_lossy().into_owned());
    (0..n)
        .map(|i| output.with_file_name(format!("{stem}-{i}.{ext}")))
        .collect()
}
