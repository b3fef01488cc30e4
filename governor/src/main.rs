//! The `p2pvps-governor` command: parses arguments and maps errors to exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use p2pvps_governor::config::{self, DeviceConfig};
use p2pvps_governor::daemon::{self, DaemonError, RunOptions};
use p2pvps_governor::state::StateStore;
use p2pvps_governor::{DEFAULT_STATE_DIR, EXIT_CONFIG, check, logging, status, update};

#[derive(Parser)]
#[command(
    version,
    about = "P2P VPS governor: rents this device out as a virtual private server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Run {
        #[arg(long, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// Name of the renter's container (change it only to run several governors on one host).
        #[arg(long, default_value = "p2pvps-renter")]
        container_name: String,
        /// Docker network of the renter's container: one of its own, made if absent (never
        /// Docker's default `bridge`, which the owner's other containers share).
        #[arg(long, default_value = p2pvps_governor::lifecycle::DEFAULT_NETWORK, value_parser = own_network)]
        network: String,
        /// When to tell the renter the rental ends: seconds before the expiration, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "86400,3600,600")]
        expiry_notices: Vec<u64>,
        /// The connector binary that keeps the tunnel, on the host (default: beside this
        /// program, else /usr/lib/p2pvps/p2pvps-connector).
        #[arg(long)]
        connector: Option<PathBuf>,
        /// The owner's page's port when device-config.json sets no `statusPort` (0: off; the
        /// image's unit sets 80).
        #[arg(long, default_value_t = 0)]
        status_port: u16,
        /// Name the host `p2pvps-<first 6 hex of deviceId>`, for its `.local` name (the image's
        /// unit sets it; an owner's own machine keeps its name).
        #[arg(long)]
        set_hostname: bool,
    },
    /// Show what the governor is doing.
    Status {
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Tell what is wrong: config, clock, Docker, image, storage, dm-crypt, server, tunnel.
    Check {
        #[arg(long, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// System updates (the image's A/B root slots): by default, ask the manifest what it offers.
    /// Updates install by themselves between rentals; this is for doing it now.
    Update {
        #[arg(long, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// Only say what the manifest (updateUrl) offers (the default).
        #[arg(long, conflicts_with_all = ["now", "bundle"])]
        check: bool,
        /// Download and install what the manifest offers now, even during a rental (the reboot
        /// restarts the renter's container), and reboot into it.
        #[arg(long, conflicts_with = "bundle")]
        now: bool,
        /// Install this bundle file (signed for this image), and reboot into it.
        #[arg(long, value_name = "PATH")]
        bundle: Option<PathBuf>,
        /// Let a bundle through that is not newer than the running version (a downgrade).
        #[arg(long, requires = "bundle")]
        force: bool,
        /// Write the update but do not reboot (it boots at the next restart).
        #[arg(long)]
        no_reboot: bool,
    },
    /// Validate a device-config.json and print it normalised.
    CheckConfig {
        #[arg(default_value = config::DEFAULT_PATH)]
        path: PathBuf,
    },
    /// Write the wpa_supplicant configuration of the config's Wi-Fi network (mode 0600). Exit
    /// status for systemd's ExecCondition: 0 written, 1 no `wifiSsid` in the config (the radio stays
    /// off), 255 the config is invalid (the unit fails).
    WifiConfig {
        #[arg(long, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
        /// The file to write.
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run {
            config,
            state_dir,
            container_name,
            network,
            expiry_notices,
            connector,
            status_port,
            set_hostname,
        } => run(RunOptions {
            status_port,
            set_hostname,
            connector: connector
                .unwrap_or_else(p2pvps_governor::sandbox::tunnel::default_connector),
            config,
            state_dir,
            container_name,
            network,
            led_root: p2pvps_governor::led::SYSFS_LEDS.into(),
            notices: expiry_notices
                .into_iter()
                .map(std::time::Duration::from_secs)
                .collect(),
        }),
        Command::Status { state_dir, json } => match status::load(&StateStore::new(state_dir)) {
            Ok(view) if json => {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&view).expect("status serialises")
                );
                ExitCode::SUCCESS
            }
            Ok(view) => {
                print!("{}", view.render(chrono::Utc::now()));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Check { config } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime starts");
            let lines = rt.block_on(check::run(&config, &check::CheckEnv::default()));
            for line in &lines {
                println!("{line}");
            }
            if lines.iter().any(|l| l.verdict == check::Verdict::Fail) {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Command::CheckConfig { path } => match DeviceConfig::load(&path) {
            Ok(c) => {
                println!("{}: OK", path.display());
                print!("{}", c.summary());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::WifiConfig { config, out } => wifi_config(&config, &out),
        Command::Update {
            config,
            state_dir,
            check: _,
            now,
            bundle,
            force,
            no_reboot,
        } => {
            let action = match (now, bundle) {
                (_, Some(path)) => update::cli::Action::Bundle(path),
                (true, None) => update::cli::Action::Now,
                (false, None) => update::cli::Action::Check,
            };
            update_command(&config, &state_dir, action, force, !no_reboot)
        }
    }
}

fn wifi_config(config: &std::path::Path, out: &std::path::Path) -> ExitCode {
    match DeviceConfig::load(config) {
        Ok(DeviceConfig {
            wifi: Some(wifi), ..
        }) => match wifi.write_supplicant_config(out) {
            Ok(()) => {
                eprintln!("Wi-Fi: {}", wifi.summary());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(255)
            }
        },
        Ok(_) => {
            eprintln!("{}: no wifiSsid: the radio stays off", config.display());
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(255)
        }
    }
}

fn update_command(
    config: &std::path::Path,
    state_dir: &std::path::Path,
    action: update::cli::Action,
    force: bool,
    reboot: bool,
) -> ExitCode {
    logging::init();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime starts");
    match rt.block_on(update::cli::run(config, state_dir, action, force, reboot)) {
        Ok(lines) => {
            for line in lines {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn own_network(name: &str) -> Result<String, String> {
    match name {
        "bridge" | "host" | "none" | "default" => Err(format!(
            "{name:?} is one of Docker's own networks; the renter's container needs a network of its own"
        )),
        _ => Ok(name.to_owned()),
    }
}

fn run(opts: RunOptions) -> ExitCode {
    logging::init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime starts");
    match rt.block_on(daemon::run(opts, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(DaemonError::Config(e)) => {
            tracing::error!("{e}");
            eprintln!("error: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
