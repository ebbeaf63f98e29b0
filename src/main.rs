//! The `batch-embed` binary: parse flags, hand them to the library, print the error chain once.

use std::process::ExitCode;

use batch_embed::cli::{Cli, Command};
use batch_embed::config::EmbedConfig;
use batch_embed::shutdown;
use batch_embed::storage::Location;
use clap::Parser;

// NOTE: every tensor op allocates its output; glibc hands large blocks back to the kernel on free,
// so each op paid for fresh zeroed pages (15% of CPU time in page faults). mimalloc reuses them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // NOTE: mimalloc hands freed memory back to the kernel 10 ms after it is freed; the model
    // frees and allocates its activations every layer, so each layer paid for freshly zeroed
    // pages again (~5% of CPU time on all-MiniLM-L6-v2). With a delay of a second, a 3 s chunked
    // no-model run still had ~400 MiB purged and faulted in again (mimalloc's stats); memory
    // idle for ten seconds still goes back.
    // SAFETY: sets an option of the allocator in use; 15 is `mi_option_purge_delay` in
    // mimalloc 2 and 3 (mimalloc.h).
    unsafe { libmimalloc_sys::mi_option_set(15, 10_000) };
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Embed(args) => embed(*args),
        Command::Verify(args) => verify(args),
        Command::Status(args) => status(args),
        Command::Changes(args) => changes(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", batch_embed::error_text::one_line(&err));
            ExitCode::FAILURE
        }
    }
}

fn embed(mut args: batch_embed::cli::EmbedArgs) -> anyhow::Result<ExitCode> {
    let devices = std::mem::take(&mut args.devices);
    let quiet = args.quiet;
    let mut note = |line: &str| {
        if !quiet {
            eprintln!("batch-embed: {line}");
        }
    };
    let config = EmbedConfig::from_args(args, &mut note)?;
    if !devices.is_empty() {
        let machine = batch_embed::identity::Identity {
            worker_id: config.partition.worker_id,
            num_workers: config.partition.num_workers,
            source: config.identity_source.clone(),
        };
        return batch_embed::launcher::run(&devices, &machine, config.quiet);
    }
    let stop = shutdown::install(config.stop_timeout, config.quiet)?;
    let summary = batch_embed::pipeline::run(&config, &stop)?;
    if !config.quiet || summary.interrupted {
        eprintln!("{summary}");
    }
    Ok(if summary.interrupted { ExitCode::from(shutdown::EXIT_INTERRUPTED) } else { ExitCode::SUCCESS })
}

fn verify(args: batch_embed::cli::VerifyArgs) -> anyhow::Result<ExitCode> {
    let report = batch_embed::verify::verify(&Location::from_arg(&args.output)?, args.deep)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", batch_embed::verify::render(&report));
    }
    Ok(if report.ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn status(args: batch_embed::cli::StatusArgs) -> anyhow::Result<ExitCode> {
    use batch_embed::status::{collect, render};
    let stale = std::time::Duration::from_secs(args.stale_after);
    let output = Location::from_arg(&args.output)?;
    if let Some(addr) = &args.serve {
        batch_embed::status_page::serve(&output, addr, stale)?;
        return Ok(ExitCode::SUCCESS);
    }
    loop {
        let status = collect(&output, stale)?;
        let text = if args.json { serde_json::to_string_pretty(&status)? + "\n" } else { render(&status) };
        if args.watch.is_some() {
            // Clear the screen and home the cursor, then redraw.
            print!("\x1b[2J\x1b[H{text}");
        } else {
            print!("{text}");
        }
        match args.watch {
            Some(every) if !status.complete => {
                std::thread::sleep(std::time::Duration::from_secs_f64(every.max(0.5)))
            }
            _ => return Ok(if status.complete { ExitCode::SUCCESS } else { ExitCode::FAILURE }),
        }
    }
}

fn changes(args: batch_embed::cli::ChangesArgs) -> anyhow::Result<ExitCode> {
    use batch_embed::sync::changes;
    let (previous, current) = (Location::from_arg(&args.previous)?, Location::from_arg(&args.current)?);
    let report =
        changes::changes(&previous, &current, &Location::from_arg(&args.output)?, args.allow_incomplete)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", changes::render(&report));
    }
    Ok(ExitCode::SUCCESS)
}
