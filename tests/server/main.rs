//! The HTTP server over a real socket: the real `imagen serve` binary, a real HTTP client.

mod a1111;
mod batching;
mod chaos;
mod contract;
mod errors;
mod first_run;
mod flux;
mod harness;
mod history;
mod limits;
mod logs;
mod metrics;
mod openai;
mod pg_start;
mod playground;
mod queue;
mod s3;
mod shared_store;
mod webdriver;
mod webhooks;
