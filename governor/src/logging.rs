//! Logs go to journald under systemd and to stderr elsewhere.
//!
//! Under systemd (stderr is a journal stream), each event is one line with its fields after the
//! message (`wipe storage failed error=… retry_in=1s`) and a `<N>` syslog priority prefix, which
//! journald reads as the entry's priority: `journalctl -u p2pvps-governor` and the console then show
//! why something failed, not only that it did.

use std::collections::VecDeque;
use std::fmt;
use std::io::IsTerminal as _;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;

/// hyper, h2 and reqwest log every frame at TRACE/DEBUG: keep them quiet unless asked.
const DEFAULT_FILTER: &str = "info,hyper=warn,h2=warn,reqwest=warn,bollard=warn,rustls=warn";

/// `RUST_LOG` as `level,target=level,…` (tracing's `Targets`: no span or field filters, so the
/// daemon carries no regex engine); the default when it is unset or does not parse.
fn filter(rust_log: Option<&str>) -> Targets {
    rust_log
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| DEFAULT_FILTER.parse().expect("the default filter parses"))
}

pub fn init() {
    let filter = filter(std::env::var("RUST_LOG").ok().as_deref());
    let registry = tracing_subscriber::registry().with(filter).with(Recent);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(false)
                    .event_format(JournalLine),
            )
            .init();
        return;
    }
    // On a systemd machine without a terminal to read stderr (not started by systemd).
    if std::path::Path::new("/run/systemd/journal/socket").exists()
        && !std::io::stderr().is_terminal()
        && let Ok(journald) = tracing_journald::layer()
    {
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

/// How many of the last log lines the owner's page shows.
const RECENT_LINES: usize = 40;
/// Fields left out of the page's lines: the renter's login name is theirs, not the owner's
/// business (secrets never reach the log at all).
const NOT_ON_THE_PAGE: [&str; 2] = ["username", "user"];

static RECENT: std::sync::Mutex<VecDeque<String>> = std::sync::Mutex::new(VecDeque::new());

/// The last log lines (INFO and above, oldest first), for the owner's page.
pub fn recent_lines() -> Vec<String> {
    RECENT.lock().unwrap().iter().cloned().collect()
}

/// The layer that keeps [`recent_lines`].
pub struct Recent;

impl<S: Subscriber> tracing_subscriber::Layer<S> for Recent {
    fn on_event(&self, event: &Event<'_>, _ctx: tracing_subscriber::layer::Context<'_, S>) {
        let level = *event.metadata().level();
        if level > Level::INFO {
            return;
        }
        let mut line = RecentLine::default();
        event.record(&mut line);
        let text = format!(
            "{} {:<5} {}{}",
            chrono::Utc::now().format("%Y-%m-%d %H:%M:%S"),
            level,
            line.message,
            line.fields
        );
        let mut recent = RECENT.lock().unwrap();
        if recent.len() == RECENT_LINES {
            recent.pop_front();
        }
        recent.push_back(text);
    }
}

#[derive(Default)]
struct RecentLine {
    message: String,
    fields: String,
}

impl tracing::field::Visit for RecentLine {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.record(field.name(), value);
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        self.record(field.name(), &format!("{value:?}"));
    }
}

impl RecentLine {
    fn record(&mut self, name: &str, value: &str) {
        use fmt::Write as _;
        if name == "message" {
            value.clone_into(&mut self.message);
        } else if !NOT_ON_THE_PAGE.contains(&name) {
            let _ = write!(self.fields, " {name}={value}");
        }
    }
}

/// `<priority>message field=value…`: journald adds the time, the unit and the process.
#[derive(Debug, Clone, Copy)]
pub struct JournalLine;

impl<S, N> FormatEvent<S, N> for JournalLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let priority = match *event.metadata().level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            Level::DEBUG | Level::TRACE => 7,
        };
        write!(writer, "<{priority}>")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt as _;

    use super::JournalLine;

    #[test]
    fn the_filter_keeps_the_chatty_crates_quiet_unless_asked() {
        use tracing::Level;
        let default = super::filter(None);
        assert!(default.would_enable("p2pvps_governor::lifecycle", &Level::INFO));
        assert!(!default.would_enable("p2pvps_governor::lifecycle", &Level::DEBUG));
        assert!(!default.would_enable("hyper::proto", &Level::INFO));
        assert!(default.would_enable("hyper::proto", &Level::WARN));
        let asked = super::filter(Some("warn,p2pvps_governor=debug"));
        assert!(asked.would_enable("p2pvps_governor::storage", &Level::DEBUG));
        assert!(!asked.would_enable("bollard", &Level::INFO));
        // What does not parse leaves the default, not silence.
        let bad = super::filter(Some("=[{"));
        assert!(bad.would_enable("p2pvps_governor", &Level::INFO));
    }

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_page_keeps_the_last_lines_without_the_renters_name() {
        let subscriber = tracing_subscriber::registry().with(super::Recent);
        let _default = tracing::subscriber::set_default(subscriber);
        tracing::info!(username = "aB3xY9zQ1k", port = 40022, "registered");
        tracing::debug!("not for the page");
        tracing::error!(error = "gone", "failed");
        let lines = super::recent_lines();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].ends_with("INFO  registered port=40022"),
            "{lines:?}"
        );
        assert!(lines[1].ends_with("ERROR failed error=gone"), "{lines:?}");
        for n in 0..super::RECENT_LINES {
            tracing::warn!(n, "filler");
        }
        let lines = super::recent_lines();
        assert_eq!(lines.len(), super::RECENT_LINES);
        assert!(
            lines[0].ends_with("WARN  filler n=0"),
            "the oldest go: {lines:?}"
        );
    }

    #[test]
    fn journal_lines_carry_the_priority_and_the_fields() {
        let lines = Lines::default();
        let out = lines.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_writer(move || out.clone())
                .with_ansi(false)
                .event_format(JournalLine),
        );
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(error = "umount: target is busy", retry_in = ?std::time::Duration::from_secs(1), "wipe storage failed");
            tracing::info!(volume = "v1", "storage wiped and verified");
            tracing::error!("cannot create the renter's login");
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text,
            "<4>wipe storage failed error=\"umount: target is busy\" retry_in=1s\n\
             <6>storage wiped and verified volume=\"v1\"\n\
             <3>cannot create the renter's login\n"
        );
    }
}
