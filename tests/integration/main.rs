//! End-to-end tests: the model against transformers' golden vectors, and the binary as a user
//! runs it. One test binary, so the crate is linked once.

mod buckets;
mod cli;
mod examples;
mod fleet;
mod moto;
mod pipeline;
mod preemption;
mod reference;
mod sync;
mod util;
mod verify;
