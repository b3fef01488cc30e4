//! What keeps a hostile renter on the socket from hurting the governor (DESIGN.md §9): a cap on
//! open connections, an idle timeout, a request rate, and a growing wait after wrong passphrases
//! (each attempt is an argon2id derivation in the governor, outside the container's CPU and memory
//! limits; one runs at a time).

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Connections open at once; more are answered with an error and closed. The connector needs two
/// or three; the renter's tools one each.
pub const MAX_CONNECTIONS: usize = 16;
/// A connection that sends no complete line for this long is closed.
pub const IDLE: Duration = Duration::from_secs(30);
/// Requests per second over all connections, and how many may come at once before they wait.
pub const RATE_PER_SECOND: u32 = 500;
pub const BURST: u32 = 500;
/// The wait after the first wrong passphrase; doubled per failure up to [`PASSPHRASE_WAIT_CAP`].
pub const PASSPHRASE_WAIT: Duration = Duration::from_secs(1);
pub const PASSPHRASE_WAIT_CAP: Duration = Duration::from_mins(1);

/// Spaces requests evenly (a token bucket: `burst` at once, then one per interval); a request over
/// the rate waits its turn, so a flood slows only itself.
#[derive(Debug)]
pub struct RateLimit {
    interval: Duration,
    burst: Duration,
    /// When the bucket is full again (the theoretical arrival time of the next request).
    full_at: Mutex<Instant>,
}

impl RateLimit {
    pub fn new(per_second: u32, burst: u32) -> Self {
        let interval = Duration::from_secs(1) / per_second.max(1);
        Self {
            interval,
            burst: interval * burst,
            full_at: Mutex::new(Instant::now()),
        }
    }

    /// Take a place; returns after the wait it must make, if any.
    pub async fn admit(&self) {
        let wait = {
            let mut full_at = self.full_at.lock().unwrap();
            let now = Instant::now();
            let start = (*full_at).max(now);
            *full_at = start + self.interval;
            (start + self.interval).saturating_duration_since(now + self.burst)
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        Self::new(RATE_PER_SECOND, BURST)
    }
}

/// After a wrong passphrase, the next attempt is refused until a wait has passed, doubled per
/// failure; a right one resets it.
#[derive(Debug, Default)]
pub struct PassphraseBackoff {
    inner: Mutex<(u32, Option<Instant>)>,
}

impl PassphraseBackoff {
    /// Err(how long still) while an attempt must wait.
    pub fn check(&self) -> Result<(), Duration> {
        let (_, until) = *self.inner.lock().unwrap();
        match until {
            Some(t) if t > Instant::now() => Err(t - Instant::now()),
            _ => Ok(()),
        }
    }

    pub fn failed(&self) {
        let mut inner = self.inner.lock().unwrap();
        inner.0 = inner.0.saturating_add(1);
        let wait = PASSPHRASE_WAIT
            .saturating_mul(1 << (inner.0 - 1).min(16))
            .min(PASSPHRASE_WAIT_CAP);
        inner.1 = Some(Instant::now() + wait);
    }

    pub fn succeeded(&self) {
        *self.inner.lock().unwrap() = (0, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_flood_is_spaced_to_the_rate_after_the_burst() {
        let limit = RateLimit::new(10, 5);
        let start = Instant::now();
        for _ in 0..5 {
            limit.admit().await;
        }
        assert!(
            start.elapsed() < Duration::from_millis(1),
            "the burst waits"
        );
        for _ in 0..20 {
            limit.admit().await;
        }
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(1900) && took <= Duration::from_millis(2100),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn wrong_passphrases_wait_longer_each_time_and_a_right_one_resets() {
        let b = PassphraseBackoff::default();
        assert!(b.check().is_ok());
        b.failed();
        assert_eq!(b.check(), Err(Duration::from_secs(1)));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(b.check().is_ok());
        b.failed();
        assert_eq!(b.check(), Err(Duration::from_secs(2)));
        for _ in 0..20 {
            b.failed();
        }
        assert_eq!(b.check(), Err(PASSPHRASE_WAIT_CAP));
        b.succeeded();
        assert!(b.check().is_ok());
    }
}
