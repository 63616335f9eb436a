//! Loading what users have on disk into the modules of [`crate::models`]: diffusers folders
//! ([`folder`]), single-file LDM/SGM checkpoints ([`single_file`]), safetensors → module
//! parameters with key remapping ([`weights`]), LoRA files ([`lora`]), components' `config.json`
//! ([`config`]), the CLIP and T5 tokenizers ([`tokenizer`], [`t5_tokenizer`]), FLUX.1 folders
//! ([`flux`]), ggml's block-quantized types ([`quants`])
//! and GGUF files ([`gguf`]).
//!
//! Where to add a weight format or a checkpoint layout: here.

pub mod bfl;
pub mod config;
pub mod flux;
pub mod folder;
pub mod gguf;
pub mod lora;
pub mod mmdit;
pub mod quantize;
pub mod quants;
pub mod sd3;
pub mod single_file;
pub mod t5_tokenizer;
pub mod tokenizer;
pub mod view;
pub mod weights;
