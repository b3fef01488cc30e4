//! Logs go to stderr: `docker logs` reads it inside the container, and the governor's journal
//! takes it from the tunnel keeper on the host, whose stdout carries its state lines.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// russh logs every packet at DEBUG/TRACE: keep it quiet unless asked with RUST_LOG.
const DEFAULT_FILTER: &str = "info,russh=warn";

pub fn init() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes are noise in `docker logs` and log files.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
