//! End-to-end tests: the model against transformers' golden vectors, and the binary as a user
//! runs it. One test binary, so the crate is linked once.

mod bucket_inputs;
mod bucket_urls;
mod buckets;
mod chunking;
mod cli;
mod damaged;
mod encoders;
mod examples;
mod fleet;
mod hub;
mod inputs;
mod moto;
mod pipeline;
mod preemption;
mod reference;
mod sync;
mod templates;
mod util;
mod verify;
