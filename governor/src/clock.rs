//! Wall-clock time behind a trait, so timing tests run on tokio's paused clock.
//!
//! Expirations are wall-clock instants from the server. Waiting for one sleeps in short slices and
//! re-reads the wall clock, so a clock step (NTP on a Pi without a real-time clock) is noticed.
//!
//! A Pi has no real-time clock: until systemd-timesyncd has synchronised it, its time is whatever
//! the last boot left (or 1970), behind or ahead. [`SyncedClock`] makes no time-bound decision on
//! such a clock: it waits for the synchronisation, or goes by the marketplace's own time (the `Date`
//! of its last answer, carried forward on the monotonic clock).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

/// Longest single sleep while waiting for a wall-clock instant.
const SLICE: Duration = Duration::from_secs(10);

pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;

    fn sleep(&self, d: Duration) -> impl Future<Output = ()> + Send;

    /// Returns at `t` (at once if `t` has passed).
    fn sleep_until(&self, t: DateTime<Utc>) -> impl Future<Output = ()> + Send {
        async move {
            loop {
                let Ok(left) = (t - self.now()).to_std() else {
                    return;
                };
                if left.is_zero() {
                    return;
                }
                self.sleep(left.min(SLICE)).await;
            }
        }
    }
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn sleep(&self, d: Duration) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(d)
    }
}

/// A clock that starts at a chosen wall time and advances with tokio's clock, which tests pause
/// (`tokio::time::pause`) and let auto-advance, so hours pass in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    origin: DateTime<Utc>,
    start: tokio::time::Instant,
}

impl TokioClock {
    pub fn starting_at(origin: DateTime<Utc>) -> Self {
        Self {
            origin,
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        self.origin
            + chrono::Duration::from_std(self.start.elapsed()).expect("test durations are small")
    }

    fn sleep(&self, d: Duration) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(d)
    }
}

/// The marketplace's `Date`, and the monotonic instant it was read.
type ServerDate = (DateTime<Utc>, tokio::time::Instant);

/// Whether the wall clock can be believed, and the marketplace's time as a second opinion.
#[derive(Debug, Clone, Default)]
pub struct TimeSource {
    /// systemd-timesyncd's marker of a synchronised clock; None: the clock is trusted as it is.
    marker: Option<PathBuf>,
    /// The `Date` of the marketplace's last answer, and when (monotonic) it came.
    server: Arc<Mutex<Option<ServerDate>>>,
}

impl TimeSource {
    /// Under systemd (`<run>/systemd/system` exists) the clock counts once timesyncd has
    /// synchronised it; elsewhere it is trusted, as an owner's own machine keeps its time.
    pub fn systemd(run: &Path) -> Self {
        if run.join("systemd/system").is_dir() {
            Self::until(run.join("systemd/timesync/synchronized"))
        } else {
            Self::default()
        }
    }

    /// The clock counts once `marker` exists.
    pub fn until(marker: impl Into<PathBuf>) -> Self {
        Self {
            marker: Some(marker.into()),
            ..Self::default()
        }
    }

    /// Whether the clock is believed as it is, with no synchronisation to wait for.
    pub fn trusted_as_is(&self) -> bool {
        self.marker.is_none()
    }

    pub fn synchronized(&self) -> bool {
        self.marker.as_ref().is_none_or(|m| m.exists())
    }

    /// The marketplace said it is `date` (an HTTP `Date`, to the second).
    pub fn observe_server_date(&self, date: DateTime<Utc>) {
        *self.server.lock().unwrap() = Some((date, tokio::time::Instant::now()));
    }

    /// The marketplace's time now, from its last answer.
    pub fn server_now(&self) -> Option<DateTime<Utc>> {
        let (date, seen) = (*self.server.lock().unwrap())?;
        Some(date + chrono::Duration::from_std(seen.elapsed()).ok()?)
    }
}

/// A clock whose waits for an instant ([`Clock::sleep_until`]) end only by a time that can be
/// believed: the wall clock once synchronised (or the marketplace's time if that is later: a clock
/// that lags), else the marketplace's time alone, else never (until one of them comes). `now` is
/// the wall clock, for records and schedules.
#[derive(Debug, Clone)]
pub struct SyncedClock<C> {
    inner: C,
    source: TimeSource,
}

impl<C: Clock> SyncedClock<C> {
    pub fn new(inner: C, source: TimeSource) -> Self {
        Self { inner, source }
    }

    /// The time that decides whether an instant has come; None while there is none to believe.
    pub fn decision_time(&self) -> Option<DateTime<Utc>> {
        let server = self.source.server_now();
        if self.source.synchronized() {
            let local = self.inner.now();
            Some(server.map_or(local, |s| s.max(local)))
        } else {
            server
        }
    }
}

impl<C: Clock> Clock for SyncedClock<C> {
    fn now(&self) -> DateTime<Utc> {
        self.inner.now()
    }

    fn sleep(&self, d: Duration) -> impl Future<Output = ()> + Send {
        self.inner.sleep(d)
    }

    async fn sleep_until(&self, t: DateTime<Utc>) {
        let mut told = false;
        loop {
            let Some(now) = self.decision_time() else {
                if !told {
                    tracing::info!(
                        "the clock is not synchronised yet: what is due at a given time waits for it, or for the marketplace's time"
                    );
                    told = true;
                }
                self.inner.sleep(SLICE).await;
                continue;
            };
            let Ok(left) = (t - now).to_std() else {
                return;
            };
            if left.is_zero() {
                return;
            }
            self.inner.sleep(left.min(SLICE)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    /// How long (on the paused clock) `clock` waits for `t`, if it is done within `limit`.
    async fn waits(
        clock: &SyncedClock<TokioClock>,
        t: DateTime<Utc>,
        limit: Duration,
    ) -> Option<Duration> {
        let start = tokio::time::Instant::now();
        tokio::time::timeout(limit, clock.sleep_until(t))
            .await
            .ok()
            .map(|()| start.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn an_unsynchronised_clock_decides_nothing_until_the_marketplace_speaks() {
        let dir = tempfile::tempdir().unwrap();
        let source = TimeSource::until(dir.path().join("synchronized"));
        // The Pi's clock runs two hours ahead, unsynchronised: a rental due in one hour must not end.
        let local = at("2026-12-01T12:00:00Z");
        let clock = SyncedClock::new(TokioClock::starting_at(local), source.clone());
        let expiration = local - chrono::Duration::hours(1);
        assert_eq!(
            waits(&clock, expiration, Duration::from_hours(1)).await,
            None
        );
        // The marketplace says it is 10:00 (an hour after the local start, less the lag): the end
        // comes by its time, an hour later.
        source.observe_server_date(at("2026-12-01T10:00:00Z"));
        let waited = waits(&clock, at("2026-12-01T11:00:00Z"), Duration::from_hours(2)).await;
        assert_eq!(waited, Some(Duration::from_hours(1)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_synchronised_clock_is_believed_and_a_lagging_one_is_pushed_forward() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("synchronized");
        std::fs::write(&marker, "").unwrap();
        let source = TimeSource::until(&marker);
        let local = at("2026-12-01T12:00:00Z");
        let clock = SyncedClock::new(TokioClock::starting_at(local), source.clone());
        let waited = waits(
            &clock,
            local + chrono::Duration::minutes(30),
            Duration::from_hours(2),
        );
        assert_eq!(waited.await, Some(Duration::from_mins(30)));
        // A marketplace behind us changes nothing; one ahead moves the end closer.
        source.observe_server_date(clock.now() - chrono::Duration::hours(1));
        let waited = waits(
            &clock,
            clock.now() + chrono::Duration::minutes(10),
            Duration::from_hours(2),
        );
        assert_eq!(waited.await, Some(Duration::from_mins(10)));
        source.observe_server_date(clock.now() + chrono::Duration::minutes(5));
        let waited = waits(
            &clock,
            clock.now() + chrono::Duration::minutes(10),
            Duration::from_hours(2),
        );
        assert_eq!(waited.await, Some(Duration::from_mins(5)));
    }

    #[test]
    fn without_systemd_the_clock_is_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let plain = TimeSource::systemd(dir.path());
        assert!(plain.trusted_as_is() && plain.synchronized());
        std::fs::create_dir_all(dir.path().join("systemd/system")).unwrap();
        let source = TimeSource::systemd(dir.path());
        assert!(!source.trusted_as_is() && !source.synchronized());
        std::fs::create_dir_all(dir.path().join("systemd/timesync")).unwrap();
        std::fs::write(dir.path().join("systemd/timesync/synchronized"), "").unwrap();
        assert!(source.synchronized());
    }

    #[tokio::test(start_paused = true)]
    async fn sleep_until_wakes_at_the_instant() {
        let origin = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .to_utc();
        let clock = TokioClock::starting_at(origin);
        let target = origin + chrono::Duration::seconds(3600);
        clock.sleep_until(target).await;
        assert_eq!(clock.now(), target);
        // A past instant returns at once.
        clock.sleep_until(origin).await;
        assert_eq!(clock.now(), target);
    }
}
