//! `p2pvps-devserver`: a local marketplace for trying a device at home and for tests.
//! See the library docs and devserver/README.md for the routes.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use p2pvps_devserver::{DeviceId, Options};

/// A local P2P VPS marketplace speaking the client API of p2pvps-server2.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Address to listen on (port 0 picks a free port; the bound address is printed).
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,
    /// A device id (24 hex digits) the marketplace knows; repeat for more.
    #[arg(long = "device", value_name = "ID")]
    devices: Vec<DeviceId>,
    /// Length of the rental each registration starts.
    #[arg(long, value_name = "N", default_value_t = 86_400)]
    lease_seconds: u64,
    /// First tunnel port handed out (ports go up to this + 200, then wrap).
    #[arg(long, value_name = "P", default_value_t = 6000,
          value_parser = clap::value_parser!(u16).range(1..))]
    first_port: u16,
    /// JSON file keeping devices and leases across restarts.
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,
    /// Serve this directory's files at /files/… (update manifests and bundles; byte ranges).
    #[arg(long, value_name = "DIR")]
    files: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("p2pvps-devserver: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let stop = shutdown_signal()?;
    let options = Options {
        devices: cli.devices.iter().map(ToString::to_string).collect(),
        lease: Duration::from_secs(cli.lease_seconds),
        first_port: cli.first_port,
        state_file: cli.state,
        files: cli.files,
    };
    let running = p2pvps_devserver::spawn(cli.listen, options).await?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {}", running.addr)?;
    stdout.flush()?;
    drop(stdout);
    stop.await;
    tracing::info!("shutting down");
    running.stop().await;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM. Handlers are installed before serving, so an early signal counts.
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}
