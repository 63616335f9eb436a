//! The networks, as burn modules that read like their diffusers/transformers counterparts:
//! one file per component, the checkpoints' key names kept as field names. Model code calls
//! [`crate::ops`] only, never a kernel or a backend check.
//!
//! - [`clip`]: the CLIP text encoder; [`t5`]: the T5 v1.1 encoder; [`unet_2d`]: the denoising
//!   UNet; [`flux`]: FLUX.1's transformer; [`sd3`]: SD3/3.5's MMDiT; [`dit`]: what they share; [`vae`]: the KL autoencoder; [`taesd`]: the tiny
//!   autoencoder's decoder; [`embeddings`]: the transformers' timestep/text/RoPE embeddings;
//! - [`attention`]: attention, feed-forward, transformer blocks; [`resnet`]: ResNet blocks,
//!   down/up-sampling and module constructors with PyTorch's defaults.
//!
//! Where to add a model: a file here with its `*Config` (`from` its `config.json`, validated),
//! `init(&device)` building the module with lazy parameters, and an infallible `forward` with
//! shapes in doc comments; its loading in [`crate::load`]; a golden test in `tests/models/`
//! from a script in `tools/reference/`.

pub mod attention;
pub mod clip;
pub mod dit;
pub mod embeddings;
pub mod flux;
pub mod resnet;
pub mod sd3;
pub mod t5;
pub mod taesd;
pub mod unet_2d;
pub mod vae;
