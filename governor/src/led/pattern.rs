//! What the LED shows: one [`Indication`] per state of the device, each with its blink
//! [`Pattern`] (the table is in the module doc of [`crate::led`]).

use std::fmt;
use std::time::Duration;

/// What the device is doing, as far as the owner needs to know. The lifecycle picks one; the
/// pattern task turns it into blinking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Indication {
    /// The governor is starting (before the config is read).
    Booting,
    /// device-config.json is missing or invalid: the owner must fix it.
    NoConfig,
    /// No usable USB drive yet: the owner must plug one in.
    WaitingForStorage,
    /// Registering with the marketplace, or the server is unreachable (retrying).
    Registering,
    /// Listed on the marketplace, no renter connected.
    Ready,
    /// A renter is connected: an SSH session is open in the container.
    RenterConnected,
    /// Destroying the last renter's storage.
    Wiping,
    /// Downloading or writing a system update (the device reboots into it next).
    Updating,
    /// The governor hit an error it cannot recover from by itself.
    Fatal,
}

/// One step of a repeating pattern: the LED is lit (or dark) for `ms` milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Step {
    /// Lit during this step.
    pub on: bool,
    /// How long the step lasts.
    pub ms: u64,
}

impl Step {
    /// The step's length.
    pub fn duration(self) -> Duration {
        Duration::from_millis(self.ms)
    }
}

/// How an indication looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pattern {
    /// Held until the indication changes.
    Steady(bool),
    /// These steps, over and over; each starts lit and lit and dark steps alternate.
    Repeat(&'static [Step]),
}

impl Pattern {
    /// The length of one cycle; `None` for a steady light.
    pub fn period(self) -> Option<Duration> {
        match self {
            Self::Steady(_) => None,
            Self::Repeat(steps) => Some(steps.iter().map(|s| s.duration()).sum()),
        }
    }
}

const fn on(ms: u64) -> Step {
    Step { on: true, ms }
}

const fn off(ms: u64) -> Step {
    Step { on: false, ms }
}

// The vocabulary: even blinking = working on it (the faster, the busier); counted blinks with a
// pause = the owner must act (the count says what to fix, as on the Pi's own boot error codes);
// steady = fine; SOS = look at the console. Counted blinks are slower (300 ms) than SOS dots
// (200 ms), and SOS's dashes show within its first two seconds, so the three-blink pattern and
// SOS's leading "S" are not confused.

/// 5 Hz: busy, and over in seconds.
const BOOTING: &[Step] = &[on(100), off(100)];
/// Two counted blinks, then a pause long enough to separate the groups.
const NO_CONFIG: &[Step] = &[on(300), off(300), on(300), off(1500)];
/// Three counted blinks, same rhythm as NO_CONFIG.
const WAITING_FOR_STORAGE: &[Step] = &[on(300), off(300), on(300), off(300), on(300), off(1500)];
/// 0.5 Hz: calmly retrying; may last long while the server is down.
const REGISTERING: &[Step] = &[on(1000), off(1000)];
/// Mostly lit like Ready, with a dark blip every 2 s that says "someone is using it".
const RENTER_CONNECTED: &[Step] = &[on(1800), off(200)];
/// 10 Hz, twice Booting's rate: reads as a flicker rather than a blink.
const WIPING: &[Step] = &[on(50), off(50)];
/// Two quick flashes a second: busy like Booting, and told apart from the counted blinks by
/// their speed.
const UPDATING: &[Step] = &[on(100), off(100), on(100), off(700)];
/// Morse SOS at a 200 ms unit: dot 1 unit, dash 3, gaps inside a letter 1, between letters 3,
/// and 7 after the word.
const FATAL: &[Step] = &[
    on(200),
    off(200),
    on(200),
    off(200),
    on(200),
    off(600),
    on(600),
    off(200),
    on(600),
    off(200),
    on(600),
    off(600),
    on(200),
    off(200),
    on(200),
    off(200),
    on(200),
    off(1400),
];

impl Indication {
    /// Every indication, in the order a device usually goes through them.
    pub const ALL: [Self; 9] = [
        Self::Booting,
        Self::NoConfig,
        Self::WaitingForStorage,
        Self::Registering,
        Self::Ready,
        Self::RenterConnected,
        Self::Wiping,
        Self::Updating,
        Self::Fatal,
    ];

    /// How this indication looks on the LED.
    pub fn pattern(self) -> Pattern {
        match self {
            Self::Booting => Pattern::Repeat(BOOTING),
            Self::NoConfig => Pattern::Repeat(NO_CONFIG),
            Self::WaitingForStorage => Pattern::Repeat(WAITING_FOR_STORAGE),
            Self::Registering => Pattern::Repeat(REGISTERING),
            Self::Ready => Pattern::Steady(true),
            Self::RenterConnected => Pattern::Repeat(RENTER_CONNECTED),
            Self::Wiping => Pattern::Repeat(WIPING),
            Self::Updating => Pattern::Repeat(UPDATING),
            Self::Fatal => Pattern::Repeat(FATAL),
        }
    }

    /// A stable name for logs and `status --json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Booting => "booting",
            Self::NoConfig => "no-config",
            Self::WaitingForStorage => "waiting-for-storage",
            Self::Registering => "registering",
            Self::Ready => "ready",
            Self::RenterConnected => "renter-connected",
            Self::Wiping => "wiping",
            Self::Updating => "updating",
            Self::Fatal => "fatal",
        }
    }

    /// The pattern in words, for `status` and the docs.
    pub fn looks(self) -> &'static str {
        match self {
            Self::Booting => "fast even blink",
            Self::NoConfig => "2 blinks, pause",
            Self::WaitingForStorage => "3 blinks, pause",
            Self::Registering => "slow even blink",
            Self::Ready => "steady on",
            Self::RenterConnected => "on, short dark blip every 2 s",
            Self::Wiping => "very fast flicker",
            Self::Updating => "two quick flashes a second",
            Self::Fatal => "SOS",
        }
    }
}

impl fmt::Display for Indication {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeating_patterns_start_lit_and_alternate() {
        for indication in Indication::ALL {
            if let Pattern::Repeat(steps) = indication.pattern() {
                assert!(
                    steps.len() >= 2 && steps.len().is_multiple_of(2),
                    "{indication}"
                );
                for (i, step) in steps.iter().enumerate() {
                    assert_eq!(step.on, i % 2 == 0, "{indication} step {i}");
                    assert!(
                        step.ms >= 50,
                        "{indication}: a step under 50 ms is not seen"
                    );
                }
            }
        }
    }

    #[test]
    fn every_pattern_and_name_is_distinct() {
        for (i, a) in Indication::ALL.iter().enumerate() {
            for b in &Indication::ALL[i + 1..] {
                assert_ne!(a.pattern(), b.pattern(), "{a} and {b}");
                assert_ne!(a.as_str(), b.as_str());
                assert_ne!(a.looks(), b.looks());
            }
        }
    }

    #[test]
    fn periods() {
        let ms = |i: Indication| i.pattern().period().map(|d| d.as_millis());
        assert_eq!(ms(Indication::Booting), Some(200));
        assert_eq!(ms(Indication::NoConfig), Some(2400));
        assert_eq!(ms(Indication::WaitingForStorage), Some(3000));
        assert_eq!(ms(Indication::Registering), Some(2000));
        assert_eq!(ms(Indication::Ready), None);
        assert_eq!(ms(Indication::RenterConnected), Some(2000));
        assert_eq!(ms(Indication::Wiping), Some(100));
        assert_eq!(ms(Indication::Updating), Some(1000));
        assert_eq!(ms(Indication::Fatal), Some(6800));
    }
}
