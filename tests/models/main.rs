//! Model tests against goldens from diffusers (`tools/reference/make_fixtures.py`): one test
//! binary, so burn is linked once.

mod batch;
mod bf16;
mod common;
mod flow_samplers;
mod flux;
mod generate;
mod loader;
mod lora;
mod parity;
mod sd3;
mod sdxl;
mod single_file;
mod tokenizer;
