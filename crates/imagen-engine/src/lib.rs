//! Turning the models into images: samplers ([`scheduler`]), seeded noise ([`rng`]) and the
//! text-to-image / image-to-image pipelines ([`pipeline`]). Knows nothing of HTTP.

pub mod batch;
pub mod catalog;
pub mod error;
pub mod flow_init;
pub mod flux;
pub mod masked;
pub mod model;
pub mod pipeline;
pub mod rng;
pub mod scheduler;
pub mod sd3;
pub mod worker;

pub use error::{Error, Result};
pub use masked::MaskedContent;
pub use model::Model;
pub use pipeline::{GenerateRequest, InitImage, generate, generate_once, generate_seeded};
