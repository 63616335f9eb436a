//! `imagen`: the command-line entry point. Generation and serving arrive with their issues; for
//! now it loads a diffusers folder and reports what it found.

use anyhow::{Context, Result, bail};
use imagen_models::{StableDiffusion, device};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("inspect") => {
            let dir = args.get(1).context("usage: imagen inspect <MODEL_DIR> [cpu|wgpu]")?;
            let backend = args.get(2).map(String::as_str).unwrap_or("cpu");
            let device = device::by_name(backend)?;
            let t = std::time::Instant::now();
            let sd = StableDiffusion::load(dir, &device).with_context(|| format!("loading {dir}"))?;
            println!("pipeline:     {}", sd.folder.pipeline_class);
            println!("parameters:   {}", sd.num_params());
            println!(
                "native size:  {}px",
                sd.unet_config.sample_size * sd.vae_config.scale_factor()
            );
            println!("unet blocks:  {:?}", sd.unet_config.block_out_channels);
            println!("loaded in:    {:.2?} on {backend}", t.elapsed());
            Ok(())
        }
        _ => bail!("usage: imagen inspect <MODEL_DIR> [cpu|wgpu]"),
    }
}
