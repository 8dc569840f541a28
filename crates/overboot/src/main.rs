//! The `overboot` command line: one module per verb under `commands/`; errors are printed with
//! their whole cause chain and mapped to the exit codes documented in [`overboot::exit`].

mod commands;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Installed as systemd's generator, overboot is called by that name.
    let args: Vec<String> = std::env::args().collect();
    let called = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .and_then(|n| n.to_str());
    if called == Some(overboot::host::systemd::GENERATOR) {
        return commands::systemd::generator(&args);
    }
    let cli = commands::Cli::parse();
    init_tracing(cli.verbose, cli.json);
    ExitCode::from(commands::exit_code(commands::run(cli)))
}

fn init_tracing(verbose: u8, json: bool) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter =
        EnvFilter::try_from_env("OVERBOOT_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
