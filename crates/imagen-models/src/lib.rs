//! Stable Diffusion's networks as burn modules, loaded from the checkpoints users have.
//!
//! Layers, one direction (`tests/layers.rs` checks it): [`load`] → [`models`] →
//! [`ops`] → [`cpu`] / `gpu` → burn.
//!
//! - [`models`]: the networks (CLIP, UNet, VAE, TAESD and their blocks), shaped like diffusers'
//!   modules. **Add a model here**; it calls ops only.
//! - [`load`]: diffusers folders, single files, safetensors key mapping, LoRA, configs, the
//!   tokenizer. **Add a checkpoint format here.**
//! - [`ops`]: what models call (convolutions, linear layers with their epilogues, norms,
//!   attention, resampling); each op picks its route in one place from [`ops::Routes`] (every
//!   switch, read once). **Add an op, or a route for one, here.**
//! - [`cpu`]: imagen's CPU kernels (f32, AVX-512/AVX2 picked at run time); `gpu`: imagen's
//!   CubeCL kernels behind [`ops::kernels::GpuKernels`]. Leaves: **add a kernel here**, and call
//!   it from its op.
//! - [`device`]: picking a backend and precision by name; [`flops`]: FLOP counts for benchmarks.
//!
//! Each `*Config` is read from the component's own `config.json`; `init(&device)` builds the
//! module with lazy parameters and the loader fills them, so no random initialiser runs.

pub mod cpu;
pub mod device;
pub mod error;
pub mod flops;
// GPU-only code, behind the one gate (`build.rs`): where burn's tensors are raw cube tensors.
#[cfg(cube_kernels)]
pub mod gpu;
pub mod load;
pub mod models;
pub mod ops;

pub use error::{Error, Result};
pub use load::flux::Flux;
pub use load::folder::{DiffusersFolder, Family, StableDiffusion};
pub use load::sd3::Sd3;
