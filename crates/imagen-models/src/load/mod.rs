//! Loading what users have on disk into the modules of [`crate::models`]: diffusers folders
//! ([`folder`]), single-file LDM/SGM checkpoints ([`single_file`]), safetensors → module
//! parameters with key remapping ([`weights`]), LoRA files ([`lora`]), components' `config.json`
//! ([`config`]), the CLIP tokenizer ([`tokenizer`]), ggml's block-quantized types ([`quants`])
//! and GGUF files ([`gguf`]).
//!
//! Where to add a weight format or a checkpoint layout: here.

pub mod config;
pub mod folder;
pub mod gguf;
pub mod lora;
pub mod quantize;
pub mod quants;
pub mod single_file;
pub mod tokenizer;
pub mod weights;
