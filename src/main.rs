//! The `moonwatch` command line: parses and dispatches (`cli`).

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

mod cli;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    cli::init_logging(
        args.verbose,
        matches!(args.command, cli::Command::Run { .. }),
    );
    match cli::run(args.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("moonwatch: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}
