//! The `kiln` command line.

mod config;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// kiln: a programmable CI/CD engine that runs Dagger pipelines, without Docker.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about, long_about = None)]
struct Cli {
    /// Engine config file (TOML) [default: /etc/kiln/kiln.toml as root, else ~/.config/kiln/kiln.toml]
    #[arg(long, global = true, env = "KILN_CONFIG")]
    config: Option<PathBuf>,
    /// State directory (cache, snapshots, database); overrides the config
    #[arg(long, global = true, env = "KILN_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// OCI runtime to use (crun, runc, or a path); overrides the config
    #[arg(long, global = true, env = "KILN_RUNTIME")]
    runtime: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print kiln's version and the engine API version it speaks
    Version,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("kiln {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
    }
}
