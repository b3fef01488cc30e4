//! Logs go to stdout: inside the container that is what `docker logs` (and the governor) read.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// russh logs every packet at DEBUG/TRACE: keep it quiet unless asked with RUST_LOG.
const DEFAULT_FILTER: &str = "info,russh=warn";

pub fn init() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        // Colour codes are noise in `docker logs` and log files.
        .with_ansi(std::io::stdout().is_terminal())
        .init();
}
