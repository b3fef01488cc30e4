//! Wall-clock time behind a trait, so timing tests run on tokio's paused clock.
//!
//! Expirations are wall-clock instants from the server. Waiting for one sleeps in short slices and
//! re-reads the wall clock, so a clock step (NTP on a Pi without a real-time clock) is noticed.

use std::future::Future;
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

#[cfg(test)]
mod tests {
    use super::*;

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
