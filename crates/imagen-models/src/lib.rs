//! Stable Diffusion's networks as burn modules, loaded from the checkpoints users have.
//!
//! - [`clip`]: the CLIP text encoder, [`tokenizer`]: its BPE tokenizer.
//! - [`unet_2d`]: the denoising UNet, [`vae`]: the KL autoencoder.
//! - [`folder`]: a diffusers pipeline folder, [`weights`]: safetensors → modules.
//!
//! Each `*Config` is read from the component's own `config.json`; `init(&device)` builds the
//! module with lazy parameters and the loader fills them, so no random initialiser runs.

pub mod attention;
pub mod clip;
pub mod config;
pub mod cpu;
pub mod device;
pub mod error;
pub mod flops;
pub mod folder;
pub mod fused;
pub mod gpu;
pub mod layers;
pub mod lora;
pub mod single_file;
pub mod taesd;
pub mod tokenizer;
pub mod unet_2d;
pub mod vae;
pub mod weights;

pub use error::{Error, Result};
pub use folder::{DiffusersFolder, StableDiffusion};
