//! Logs go to journald under systemd and to stderr elsewhere.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// hyper, h2 and reqwest log every frame at TRACE/DEBUG: keep them quiet unless asked.
const DEFAULT_FILTER: &str = "info,hyper=warn,h2=warn,reqwest=warn,bollard=warn,rustls=warn";

pub fn init() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    // Started by systemd, or on a systemd machine without a terminal to read stderr.
    let systemd = std::env::var_os("JOURNAL_STREAM").is_some()
        || (std::path::Path::new("/run/systemd/journal/socket").exists()
            && !std::io::stderr().is_terminal());
    let registry = tracing_subscriber::registry().with(filter);
    if systemd && let Ok(journald) = tracing_journald::layer() {
        registry.with(journald).init();
        return;
    }
    registry
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal()),
        )
        .init();
}
