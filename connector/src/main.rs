//! The `p2pvps-connector` command: reads the tunnel settings, keeps the tunnel up until SIGTERM or
//! SIGINT, and maps errors to exit codes. Called as `p2pvps-storage` or `p2pvps-lease` (links to it
//! in the renter image), it is the renter's storage key tool or tells when the rental ends.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use p2pvps_connector::serve::{ServeOptions, serve};
use p2pvps_connector::settings::TunnelSettings;
use p2pvps_connector::storage_cli::{self, StorageArgs};
use p2pvps_connector::{EXIT_CONFIG, governor, logging, notices, shutdown, tunnel};
use tracing::{error, info};

#[derive(Parser)]
#[command(
    version,
    about = "P2P VPS connector: the renter container's sshd and the device's reverse SSH tunnel"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Keep the reverse SSH tunnel to the marketplace's endpoint up. The governor runs it on the
    /// host, outside the renter's container, with the settings on stdin.
    Tunnel {
        /// The settings JSON: a file, or `-` for stdin (secrets never go through the environment).
        #[arg(long)]
        settings: PathBuf,
        /// Run under the governor: the settings are the first line of stdin (with `--settings -`);
        /// without `remotePort` there, the keeper logs in and waits for a later line
        /// `{"remotePort": N}` (the rental's port); each state change is one JSON line on stdout,
        /// and the end of stdin (the governor gone, even killed) stops the tunnel, so no keeper
        /// outlives its governor.
        #[arg(long)]
        supervised: bool,
    },
    /// The renter container's main process: host keys, sshd, the session count and the expiry
    /// notices (the tunnel runs outside the container).
    Serve {
        #[arg(long, default_value = governor::DEFAULT_SOCKET)]
        socket: PathBuf,
        #[arg(long, default_value = "/usr/sbin/sshd")]
        sshd: PathBuf,
    },
    /// Make the renter's login from `USER:HASH` on stdin (the governor runs it in the container).
    AddLogin,
    /// The renter's storage key (installed as `p2pvps-storage` too).
    Storage(StorageArgs),
    /// When the rental ends (installed as `p2pvps-lease` too).
    Lease(LeaseArgs),
}

#[derive(clap::Args)]
struct LeaseArgs {
    #[arg(long, default_value = notices::LEASE_FILE)]
    file: PathBuf,
    /// Print the server and port renters log in at instead (`SERVER PORT`).
    #[arg(long)]
    contact: bool,
}

/// `p2pvps-lease ARGS`, the renter's name for `p2pvps-connector lease ARGS`.
#[derive(Parser)]
#[command(name = "p2pvps-lease", version, about = "When this rental ends")]
struct LeaseCli {
    #[command(flatten)]
    args: LeaseArgs,
}

/// `p2pvps-lease [--contact]`: when the rental ends, or (`--contact`) the server and port renters
/// log in at, as `SERVER PORT` (from the file the connector keeps: any user may ask).
fn lease(args: &LeaseArgs) -> ExitCode {
    match notices::saved_lease(&args.file) {
        Ok(l) if args.contact => {
            if let Some((server, port)) = l.contact {
                println!("{server} {port}");
                ExitCode::SUCCESS
            } else {
                eprintln!("p2pvps-lease: the governor did not name the server");
                ExitCode::FAILURE
            }
        }
        Ok(l) => {
            println!("{}", notices::describe(&l, chrono::Utc::now()));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("p2pvps-lease: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `p2pvps-storage ARGS`, the renter's name for `p2pvps-connector storage ARGS`.
#[derive(Parser)]
#[command(
    name = "p2pvps-storage",
    version,
    about = "Your storage's encryption key: status, set-passphrase, unlock (run with sudo)"
)]
struct StorageCli {
    #[command(flatten)]
    args: StorageArgs,
}

async fn storage(args: StorageArgs) -> ExitCode {
    match storage_cli::run(args).await {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("p2pvps-storage: {e}");
            if e.to_string().contains("Permission denied") {
                eprintln!("p2pvps-storage: run it as root: sudo p2pvps-storage …");
            }
            ExitCode::FAILURE
        }
    }
}

/// `add-login`: `USER:HASH` and the lease, a line each, on stdin (at most 8 KiB).
fn add_login() -> ExitCode {
    use std::io::Read as _;
    let mut input = String::new();
    if std::io::stdin()
        .take(8192)
        .read_to_string(&mut input)
        .is_err()
    {
        eprintln!("add-login: stdin is not text");
        return ExitCode::FAILURE;
    }
    match p2pvps_connector::login::add_login(&input, Path::new(notices::LEASE_FILE)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("add-login: {e}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    match Path::new(&argv0).file_name().and_then(|n| n.to_str()) {
        Some("p2pvps-storage") => return storage(StorageCli::parse().args).await,
        Some("p2pvps-lease") => return lease(&LeaseCli::parse().args),
        _ => {}
    }
    logging::init();
    match Cli::parse().command {
        Command::AddLogin => add_login(),
        Command::Storage(args) => storage(args).await,
        Command::Lease(args) => lease(&args),
        Command::Tunnel {
            settings,
            supervised,
        } => {
            let loaded = if supervised && settings == Path::new("-") {
                TunnelSettings::first_line_of_stdin()
            } else {
                TunnelSettings::load(&settings)
            };
            let settings = match loaded {
                Ok(s) => s,
                Err(e) => {
                    error!("{e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let report = |state| match serde_json::to_string(&state) {
                Ok(json) if supervised => {
                    use std::io::Write as _;
                    let mut out = std::io::stdout().lock();
                    // The governor reading this went away: it stops the tunnel too.
                    let _ = writeln!(out, "{json}").and_then(|()| out.flush());
                }
                Ok(json) => info!(state = %json, "tunnel state changed"),
                Err(e) => error!(error = %e, "cannot serialise the tunnel state"),
            };
            let (port_tx, port) = tokio::sync::watch::channel(settings.remote_port);
            if supervised {
                // A blocking read on a thread of its own, which ends with the pipe. Each line
                // after the settings is the rental's port. Not tokio's blocking pool: the runtime
                // waits for those at exit, and a stop by signal would then wait for the pipe.
                let (gone_tx, gone) = tokio::sync::oneshot::channel::<()>();
                std::thread::spawn(move || {
                    use std::io::BufRead as _;
                    for line in std::io::stdin().lock().lines() {
                        let Ok(line) = line else { break };
                        match TunnelSettings::port_from_json(&line) {
                            Ok(p) => {
                                port_tx.send_replace(Some(p));
                            }
                            Err(e) => error!("ignoring a line from the governor: {e}"),
                        }
                    }
                    let _ = gone_tx.send(());
                });
                let parent_gone = async {
                    let _ = gone.await;
                    info!("the governor closed our stdin; stopping");
                };
                let stop = async {
                    tokio::select! {
                        () = shutdown::signal() => {}
                        () = parent_gone => {}
                    }
                };
                tunnel::run(settings, port, report, stop).await;
            } else if settings.remote_port.is_none() {
                error!(
                    "tunnel settings: `remotePort` is required (only under --supervised may it follow on stdin)"
                );
                return ExitCode::from(EXIT_CONFIG);
            } else {
                tunnel::run(settings, port, report, shutdown::signal()).await;
            }
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
