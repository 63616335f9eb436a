//! The HTTP server over a real socket: the real `imagen serve` binary, a real HTTP client.

mod chaos;
mod contract;
mod errors;
mod flux;
mod harness;
mod limits;
mod openai;
mod queue;
mod shared_store;
mod webhooks;
