//! `imagen quantize`: a single-file checkpoint → a GGUF file that stable-diffusion.cpp,
//! ComfyUI-GGUF and the `gguf` Python package read. Names are kept; a tensor of 2+ dims whose
//! last dim is whole 32-value blocks gets `--type`, other 2+-dim tensors f16, 1-dim ones f32
//! (stable-diffusion.cpp's rule). Tensors are read, converted and written one at a time.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use imagen_models::load::gguf::GgmlType;
use imagen_models::load::quantize::{Entry, Meta, WRITABLE, quantize, write_gguf};
use imagen_models::load::single_file::{self, Arch};
use imagen_models::load::weights::Weights;

#[derive(clap::Args)]
pub struct QuantizeArgs {
    /// A single-file SD 1.x / 2.x / XL checkpoint: .safetensors (LDM/SGM layout) or .gguf, or a
    /// UNet alone (ComfyUI-GGUF's layout).
    model: PathBuf,
    /// q8_0, q5_1, q5_0, q4_1, q4_0, bf16, f16 or f32.
    #[arg(long = "type")]
    kind: String,
    /// The GGUF file to write.
    #[arg(long)]
    out: PathBuf,
    /// Write the UNet alone, without its `model.diffusion_model.` prefix (ComfyUI-GGUF's UNet
    /// files; the text encoders and VAE then come from a config folder).
    #[arg(long)]
    unet_only: bool,
}

const UNET: &str = "model.diffusion_model.";

pub fn run(a: QuantizeArgs) -> Result<()> {
    let kind = GgmlType::from_name(&a.kind)
        .filter(|k| WRITABLE.contains(k))
        .with_context(|| {
            let names: Vec<&str> = WRITABLE.iter().map(|t| t.name()).collect();
            format!("--type {:?}: one of {}", a.kind, names.join(", "))
        })?;
    let weights =
        Weights::open(std::slice::from_ref(&a.model)).with_context(|| format!("reading {}", a.model.display()))?;
    let (arch, unet_input) = if single_file::unet_only(&weights) {
        (None, true)
    } else {
        let arch = single_file::detect(&weights).with_context(|| a.model.display().to_string())?;
        (Some(arch), false)
    };
    let mut keys: Vec<String> = weights
        .keys()
        .filter(|k| !a.unet_only || unet_input || k.starts_with(UNET))
        .map(str::to_owned)
        .collect();
    keys.sort();
    let name = |k: &str| -> String {
        match (a.unet_only, k.strip_prefix(UNET)) {
            (true, Some(rest)) => rest.to_owned(),
            _ => k.to_owned(),
        }
    };
    let mut entries = Vec::with_capacity(keys.len());
    for k in &keys {
        let shape = weights.shape(k).with_context(|| format!("tensor `{k}`"))?.to_vec();
        let t = match (shape.len(), shape.last()) {
            (0 | 1, _) => GgmlType::F32,
            (_, Some(last)) if last % 32 == 0 => kind,
            _ if kind == GgmlType::F32 => GgmlType::F32,
            _ => GgmlType::F16,
        };
        entries.push(Entry {
            name: name(k),
            shape,
            kind: t,
        });
    }
    if entries.is_empty() {
        bail!("{}: no tensors to write", a.model.display());
    }
    let arch_name = match arch {
        Some(Arch::Sdxl) => "sdxl",
        Some(Arch::Sd2) => "sd2",
        Some(Arch::Sd1) | None => "sd1",
    };
    let stem = a
        .model
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("model")
        .to_owned();
    let metadata = [
        ("general.architecture", Meta::Str(arch_name.into())),
        ("general.name", Meta::Str(stem)),
        ("general.quantization_version", Meta::U32(2)),
    ];
    let quantized = entries.iter().filter(|e| e.kind == kind).count();
    write_gguf(&a.out, &metadata, &entries, |i| {
        let values = weights.read_f32("checkpoint", &keys[i])?;
        quantize(entries[i].kind, &values)
    })
    .with_context(|| format!("writing {}", a.out.display()))?;
    println!(
        "{}: {} tensors, {quantized} in {} ({arch_name})",
        a.out.display(),
        entries.len(),
        kind.name()
    );
    Ok(())
}
