//! The `p2pvps-connector` command: reads the tunnel settings, keeps the tunnel up until SIGTERM or
//! SIGINT, and maps errors to exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use p2pvps_connector::serve::{ServeOptions, serve};
use p2pvps_connector::settings::TunnelSettings;
use p2pvps_connector::{EXIT_CONFIG, governor, logging, shutdown, tunnel};
use tracing::{error, info};

#[derive(Parser)]
#[command(
    version,
    about = "P2P VPS connector: keeps the renter container's reverse SSH tunnel up"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Keep the reverse SSH tunnel to the marketplace's endpoint up.
    Tunnel {
        /// The settings JSON: a file, or `-` for stdin (secrets never go through the environment).
        #[arg(long)]
        settings: PathBuf,
    },
    /// The renter container's main process: host keys, sshd, and the tunnel with settings from
    /// the governor's socket.
    Serve {
        #[arg(long, default_value = governor::DEFAULT_SOCKET)]
        socket: PathBuf,
        #[arg(long, default_value = "/usr/sbin/sshd")]
        sshd: PathBuf,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    logging::init();
    match Cli::parse().command {
        Command::Tunnel { settings } => {
            let settings = match TunnelSettings::load(&settings) {
                Ok(s) => s,
                Err(e) => {
                    error!("{e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let report = |state| match serde_json::to_string(&state) {
                Ok(json) => info!(state = %json, "tunnel state changed"),
                Err(e) => error!(error = %e, "cannot serialise the tunnel state"),
            };
            tunnel::run(settings, report, shutdown::signal()).await;
            ExitCode::SUCCESS
        }
        Command::Serve { socket, sshd } => {
            match serve(ServeOptions { socket, sshd }, shutdown::signal()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    error!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
