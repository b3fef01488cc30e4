//! Exponential backoff with jitter, for every retry: the governor against the server and the
//! engine, the connector between reconnections.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The next delay: base·2ⁿ capped, then a random 50-100 % of it, so that the many devices of
    /// one server or endpoint that just came back do not all return in the same second.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.base.saturating_mul(1 << self.attempt.min(20));
        self.attempt = self.attempt.saturating_add(1);
        exp.min(self.cap).mul_f64(rand::random_range(0.5..=1.0))
    }

    /// After a connection that stayed up: the next failure is a fresh incident, not the n-th
    /// retry of an old one.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_caps_with_jitter() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_mins(1));
        let d: Vec<Duration> = (0..12).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(500) && d[0] <= Duration::from_secs(1));
        assert!(d[3] >= Duration::from_secs(4) && d[3] <= Duration::from_secs(8));
        for late in &d[7..] {
            assert!(
                *late >= Duration::from_secs(30) && *late <= Duration::from_mins(1),
                "{late:?}"
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_secs(1));
    }
}
