//! The `batch-embed` binary: parse flags, hand them to the library, print the error chain once.

use std::process::ExitCode;

use batch_embed::cli::{Cli, Command};
use batch_embed::config::EmbedConfig;
use clap::Parser;

// NOTE: every tensor op allocates its output; glibc hands large blocks back to the kernel on free,
// so each op paid for fresh zeroed pages (15% of CPU time in page faults). mimalloc reuses them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Embed(args) => embed(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn embed(args: batch_embed::cli::EmbedArgs) -> anyhow::Result<()> {
    let config = EmbedConfig::from_args(args)?;
    let quiet = config.quiet;
    let summary = batch_embed::pipeline::run(&config)?;
    if !quiet {
        eprintln!("{summary}");
    }
    Ok(())
}
