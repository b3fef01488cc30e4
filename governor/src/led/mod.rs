//! The status LED: it tells an owner without a screen what the device is doing.
//!
//! A pattern task ([`spawn`]) owns the LED and plays the blink pattern of the current
//! [`Indication`]; the lifecycle only sends state changes through the [`LedHandle`]. The LED
//! itself sits behind the small [`StatusLed`] trait, with one implementation per way of reaching
//! it ([`open`] picks one from the config's `led` key):
//!
//! | backend | where | config |
//! | --- | --- | --- |
//! | [`SysfsLed`] | the board's own green LED, kernel LED class `/sys/class/leds/ACT` (or `led0`) | `"ACT"` (the default) |
//! | [`RppalLed`] | an external LED on a BCM GPIO through `/dev/gpiomem` (Raspberry Pi OS kernels) | a GPIO number |
//! | [`CdevLed`] | the same external LED through the GPIO character device `/dev/gpiochipN` (our image's Debian kernel has no `/dev/gpiomem`) | a GPIO number |
//! | [`NoLed`] | nothing: `"none"`, a machine that is not a Raspberry Pi, or no LED found | `"none"` |
//!
//! # Patterns
//!
//! Each state has one pattern, chosen to be told apart at a glance: a steady light means all is
//! well, even blinking means "working on it" (the faster, the busier), counted blinks mean "the
//! owner must do something", and SOS means "look at the console".
//!
//! | LED | state ([`Indication`]) | one cycle |
//! | --- | --- | --- |
//! | fast even blink | `Booting`: the governor is starting | 100 ms on, 100 ms off (0.2 s) |
//! | 2 blinks, pause | `NoConfig`: device-config.json is missing or invalid | on 300 ms, off 300 ms, on 300 ms, off 1.5 s (2.4 s) |
//! | 3 blinks, pause | `WaitingForStorage`: plug in the USB drive | 3 × (on 300 ms, off 300 ms), the last off 1.5 s (3 s) |
//! | slow even blink | `Registering` with the marketplace, or the server is unreachable | 1 s on, 1 s off (2 s) |
//! | steady on | `Ready`: listed on the marketplace, no renter connected | on |
//! | on, short dark blip every 2 s | `RenterConnected`: an SSH session is open in the container | 1.8 s on, 0.2 s off (2 s) |
//! | very fast flicker | `Wiping` the last renter's storage | 50 ms on, 50 ms off (0.1 s) |
//! | two quick flashes a second | `Updating`: a system update is downloaded or written; a reboot follows | on 100 ms, off 100 ms, on 100 ms, off 700 ms (1 s) |
//! | SOS (··· ― ― ― ···) | `Fatal` error: see the console or `journalctl -u p2pvps-governor` | Morse SOS: 200 ms dots, 600 ms dashes, 200 ms gaps, 600 ms between letters, 1.4 s dark (6.8 s) |
//! | off | the governor is not running (or `led` is `"none"`) | off |

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::{info, warn};

use crate::config::Led;

pub mod gpio;
pub mod pattern;
pub mod recording;
pub mod sysfs;
pub mod task;

pub use gpio::{CdevLed, ChipInfo, GpioBackend, GpioProbe, RppalLed};
pub use pattern::{Indication, Pattern, Step};
pub use recording::RecordingLed;
pub use sysfs::SysfsLed;
pub use task::{LedHandle, spawn, spawn_showing};

/// Where the kernel's LED class lives on a real system.
pub const SYSFS_LEDS: &str = "/sys/class/leds";

/// The on-board LED's names under the LED class, newest first: current kernels (Raspberry Pi's
/// and upstream device trees) call it `ACT`, older Raspberry Pi kernels `led0`.
pub const ONBOARD_NAMES: [&str; 2] = ["ACT", "led0"];

/// Why an LED could not be opened or switched; each variant names the file or the GPIO line.
#[derive(Debug, thiserror::Error)]
pub enum LedError {
    /// Reading or writing a file of the kernel LED class failed.
    #[error("{path}: {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        source: io::Error,
    },
    /// `max_brightness` did not hold a positive number, so "on" has no value to write.
    #[error("{path}: expected a positive number, found {found:?}")]
    BadMaxBrightness { path: PathBuf, found: String },
    /// The GPIO character device refused the line (busy, no such line, permission…).
    #[error("GPIO {line} on {chip}: {action}: {source}")]
    Cdev {
        chip: PathBuf,
        line: u8,
        action: &'static str,
        source: gpiocdev::Error,
    },
    /// rppal could not drive the line through /dev/gpiomem.
    #[error("GPIO {line} through rppal (/dev/gpiomem): {source}")]
    Rppal {
        line: u8,
        source: rppal::gpio::Error,
    },
}

impl LedError {
    /// What makes two errors "the same kind" for logging once: the variant and, for I/O, the
    /// io::ErrorKind (EACCES and ENOENT are different problems with different fixes).
    pub(crate) fn kind_key(&self) -> (std::mem::Discriminant<Self>, Option<io::ErrorKind>) {
        let io_kind = match self {
            Self::Io { source, .. } => Some(source.kind()),
            _ => None,
        };
        (std::mem::discriminant(self), io_kind)
    }
}

/// A light that can be switched on and off. Synchronous on purpose: every backend is a write to
/// a sysfs file or one ioctl, which take microseconds, so an async trait would add nothing.
pub trait StatusLed {
    /// Light the LED (`true`) or put it out (`false`).
    fn set(&mut self, on: bool) -> Result<(), LedError>;

    /// What drives the LED, for logs and `status`, e.g. "kernel LED /sys/class/leds/ACT".
    fn describe(&self) -> String;
}

/// No LED: `led: "none"`, or nothing to drive on this machine. Every `set` succeeds.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoLed;

impl StatusLed for NoLed {
    fn set(&mut self, _on: bool) -> Result<(), LedError> {
        Ok(())
    }

    fn describe(&self) -> String {
        "none".to_owned()
    }
}

/// Where [`open_with`] looks for LEDs; [`LedOptions::new`] gives the real system's paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedOptions {
    /// The kernel LED class directory (`/sys/class/leds`): tests use a temp dir laid out like it.
    pub sysfs_root: PathBuf,
    /// Where device nodes are (`/dev`): `gpiomem` and `gpiochipN` are probed here. rppal itself
    /// always opens `/dev/gpiomem`, so this only steers the probing.
    pub dev: PathBuf,
    /// The external LED lights when its GPIO is driven low (wired from 3.3 V to the pin).
    pub active_low: bool,
}

impl LedOptions {
    /// The LED class at `sysfs_root`, device nodes in `/dev`, an active-high LED.
    pub fn new(sysfs_root: &Path) -> Self {
        Self {
            sysfs_root: sysfs_root.to_owned(),
            dev: PathBuf::from("/dev"),
            active_low: false,
        }
    }
}

/// Open the LED the config names, with the LED class at `sysfs_root` (normally [`SYSFS_LEDS`]).
/// Never fails: an LED that is absent or unusable is logged and replaced by [`NoLed`], since a
/// device without its LED still serves renters.
pub fn open(config: &Led, sysfs_root: &Path) -> Box<dyn StatusLed + Send> {
    open_with(config, &LedOptions::new(sysfs_root))
}

/// [`open`] with every path and the GPIO polarity given.
pub fn open_with(config: &Led, options: &LedOptions) -> Box<dyn StatusLed + Send> {
    match config {
        Led::None => {
            info!("status LED disabled (led: \"none\")");
            Box::new(NoLed)
        }
        Led::Act => open_onboard(&options.sysfs_root),
        Led::Gpio(line) => gpio::open(*line, options.active_low, &options.dev),
    }
}

/// Logs the LED that was found; each way of not finding one logs its own reason instead, so an
/// owner reads one line either way.
fn found(led: Box<dyn StatusLed + Send>) -> Box<dyn StatusLed + Send> {
    info!(led = %led.describe(), "status LED");
    led
}

/// The board's own LED: the first of [`ONBOARD_NAMES`] present under `root`.
fn open_onboard(root: &Path) -> Box<dyn StatusLed + Send> {
    let Some(dir) = ONBOARD_NAMES
        .iter()
        .map(|name| root.join(name))
        .find(|dir| dir.exists())
    else {
        // Normal off the Pi (x86, QEMU's virt board): nothing to blink, nothing wrong.
        info!(
            root = %root.display(),
            "no on-board LED (ACT or led0); running without a status LED"
        );
        return Box::new(NoLed);
    };
    match SysfsLed::open(&dir) {
        Ok(led) => found(Box::new(led)),
        Err(e) => {
            warn!(error = %e, "cannot drive the on-board LED; running without a status LED");
            Box::new(NoLed)
        }
    }
}

/// The kernel's blink (on-board LED only) for "device-config.json is invalid": the governor exits
/// then (status 78, no restart), so no task of ours could blink; the kernel's `timer` trigger keeps
/// a short flash every two seconds going without us, until the next start takes the LED back.
/// An external GPIO LED stays dark (nothing blinks a GPIO line without a process).
pub const CONFIG_ERROR_BLINK: (u32, u32) = (100, 1900);

/// Leave the on-board LED to the kernel's timer trigger with [`CONFIG_ERROR_BLINK`]; false when
/// there is no on-board LED or its kernel has no timer trigger.
pub fn hand_over_config_error(root: &Path) -> bool {
    let Some(dir) = ONBOARD_NAMES
        .iter()
        .map(|name| root.join(name))
        .find(|dir| dir.exists())
    else {
        return false;
    };
    let (on, off) = CONFIG_ERROR_BLINK;
    // Selecting the timer trigger creates delay_on/delay_off; then the rhythm is written.
    let done = std::fs::write(dir.join("trigger"), "timer")
        .and_then(|()| std::fs::write(dir.join("delay_on"), on.to_string()))
        .and_then(|()| std::fs::write(dir.join("delay_off"), off.to_string()));
    match done {
        Ok(()) => true,
        Err(e) => {
            warn!(led = %dir.display(), error = %e, "cannot leave the config-error blink to the kernel");
            false
        }
    }
}

/// Whether rppal recognises this board as a Raspberry Pi (from /proc/cpuinfo or the device
/// tree). Off the Pi there is no GPIO LED to drive, and touching some other board's GPIO lines
/// could do harm.
pub fn is_raspberry_pi() -> bool {
    rppal::system::DeviceInfo::new().is_ok()
}

/// Logs, once per process, that a GPIO LED is configured on a machine that is not a Pi: expected
/// when the same config is tried on a PC, so info and not an error.
fn note_not_a_pi(line: u8) {
    static LOGGED: AtomicBool = AtomicBool::new(false);
    if !LOGGED.swap(true, Ordering::Relaxed) {
        info!(
            gpio = line,
            "not a Raspberry Pi (rppal: unknown model); running without a status LED"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn none_is_no_led() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(open(&Led::None, tmp.path()).describe(), "none");
    }

    #[test]
    fn act_without_the_class_dir_is_no_led() {
        let tmp = tempfile::tempdir().unwrap();
        let led = open(&Led::Act, &tmp.path().join("missing"));
        assert_eq!(led.describe(), "none");
    }

    #[test]
    fn error_kinds_separate_io_kinds() {
        let io = |kind| LedError::Io {
            path: "/x".into(),
            action: "write",
            source: io::Error::from(kind),
        };
        let denied = io(io::ErrorKind::PermissionDenied);
        assert_eq!(
            denied.kind_key(),
            io(io::ErrorKind::PermissionDenied).kind_key()
        );
        assert_ne!(denied.kind_key(), io(io::ErrorKind::NotFound).kind_key());
        let bad = LedError::BadMaxBrightness {
            path: "/x".into(),
            found: String::new(),
        };
        assert_ne!(denied.kind_key(), bad.kind_key());
    }
}
