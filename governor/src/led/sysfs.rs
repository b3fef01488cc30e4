//! An LED of the kernel LED class, such as the Pi's green `/sys/class/leds/ACT`: the same on
//! Raspberry Pi OS and on our Debian-kernel image, and needs no GPIO access.

use std::fs;
use std::path::{Path, PathBuf};

use super::{LedError, StatusLed};

/// An LED class device (a directory with `trigger`, `brightness` and `max_brightness`).
#[derive(Debug)]
pub struct SysfsLed {
    /// The LED's directory, e.g. `/sys/class/leds/ACT`.
    dir: PathBuf,
    /// Its `brightness` file, written on every switch.
    brightness: PathBuf,
    /// What "on" writes: the LED's `max_brightness` (1 on GPIO LEDs, 255 on others).
    max: u32,
}

impl SysfsLed {
    /// Take the LED at `dir` over from the kernel and switch it off.
    pub fn open(dir: &Path) -> Result<Self, LedError> {
        let max_path = dir.join("max_brightness");
        let text = fs::read_to_string(&max_path).map_err(io(&max_path, "read"))?;
        let max = text
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|&m| m > 0)
            .ok_or_else(|| LedError::BadMaxBrightness {
                path: max_path.clone(),
                found: text.trim().to_owned(),
            })?;
        // The Pi's ACT LED comes with a trigger (mmc0 or actpwr on Raspberry Pi kernels,
        // heartbeat in upstream device trees) that flashes it by itself; left on, those flashes
        // would mix with our pattern. We do not restore it when we stop: a dark LED then says
        // "the governor is not running".
        let trigger = dir.join("trigger");
        fs::write(&trigger, "none").map_err(io(&trigger, "set to none"))?;
        let mut led = Self {
            dir: dir.to_owned(),
            brightness: dir.join("brightness"),
            max,
        };
        led.set(false)?;
        Ok(led)
    }

    /// The LED's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn io(path: &Path, action: &'static str) -> impl FnOnce(std::io::Error) -> LedError {
    let path = path.to_owned();
    move |source| LedError::Io {
        path,
        action,
        source,
    }
}

impl StatusLed for SysfsLed {
    fn set(&mut self, on: bool) -> Result<(), LedError> {
        let value = if on { self.max } else { 0 };
        // A fresh open and write each time: sysfs attributes take one value per write from
        // offset 0, and at most 20 writes a second this costs nothing.
        fs::write(&self.brightness, value.to_string()).map_err(io(&self.brightness, "write"))
    }

    fn describe(&self) -> String {
        format!("kernel LED {}", self.dir.display())
    }
}
