//! An external LED on a BCM GPIO line, through rppal (`/dev/gpiomem`, Raspberry Pi OS kernels)
//! or the GPIO character device (`/dev/gpiochipN`, any kernel, our Debian-kernel image). Which
//! one is decided at open from what exists ([`GpioProbe`]), since one .deb and one image serve
//! both kinds of kernel.

use std::fs;
use std::path::{Path, PathBuf};

use gpiocdev::line::Value;
use tracing::warn;

use super::{LedError, NoLed, StatusLed, found, note_not_a_pi};

/// The labels of the Raspberry Pi's main GPIO controller, whose line N is BCM GPIO N (Pi 1-3,
/// Pi 4, Pi 5); rppal looks for the same ones.
pub const PI_CHIP_LABELS: [&str; 3] = ["pinctrl-bcm2835", "pinctrl-bcm2711", "pinctrl-rp1"];

/// The consumer name the kernel shows for our line (`gpioinfo`), so an owner sees who holds it.
const CONSUMER: &str = "p2pvps-governor";

/// A GPIO character device found in the device directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChipInfo {
    /// E.g. `/dev/gpiochip0`.
    pub path: PathBuf,
    /// The chip's label (its driver, e.g. "pinctrl-bcm2711"); `None` when it could not be read.
    pub label: Option<String>,
}

/// A way to drive the GPIO LED.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpioBackend {
    /// rppal, through /dev/gpiomem.
    Rppal,
    /// The GPIO character device at this path.
    Cdev {
        /// E.g. `/dev/gpiochip0`.
        chip: PathBuf,
    },
}

impl GpioBackend {
    /// Open `line` with this backend.
    pub fn open(&self, line: u8, active_low: bool) -> Result<Box<dyn StatusLed + Send>, LedError> {
        Ok(match self {
            Self::Rppal => Box::new(RppalLed::open(line, active_low)?),
            Self::Cdev { chip } => Box::new(CdevLed::open(chip, line, active_low)?),
        })
    }
}

/// What a device directory offers for driving a GPIO line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GpioProbe {
    /// `gpiomem` (or the Pi 5's `gpiomem0`) exists: a Raspberry Pi kernel, where rppal works.
    pub gpiomem: bool,
    /// The `gpiochipN` devices, in chip-number order.
    pub chips: Vec<ChipInfo>,
}

impl GpioProbe {
    /// Look at the device directory `dev` (normally `/dev`). A chip whose label cannot be read
    /// (not a real character device, no permission) is still listed, with no label.
    pub fn scan(dev: &Path) -> Self {
        let gpiomem = dev.join("gpiomem").exists() || dev.join("gpiomem0").exists();
        let mut chips: Vec<(u32, PathBuf)> = fs::read_dir(dev)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let name = entry.file_name();
                let number = name.to_str()?.strip_prefix("gpiochip")?.parse().ok()?;
                Some((number, entry.path()))
            })
            .collect();
        chips.sort();
        let chips = chips
            .into_iter()
            .map(|(_, path)| {
                let label = gpiocdev::Chip::from_path(&path)
                    .and_then(|chip| chip.info())
                    .map(|info| info.label)
                    .ok();
                ChipInfo { path, label }
            })
            .collect();
        Self { gpiomem, chips }
    }

    /// The backends to try, best first: rppal when /dev/gpiomem exists (it is what Raspberry Pi
    /// OS users have and expect), then the character device of the Pi's main GPIO controller, or
    /// failing a known label the first chip, `gpiochip0`, which is that controller on every Pi
    /// kernel we know of.
    pub fn backends(&self) -> Vec<GpioBackend> {
        let mut backends = Vec::new();
        if self.gpiomem {
            backends.push(GpioBackend::Rppal);
        }
        let pi_chip = self.chips.iter().find(|chip| {
            chip.label
                .as_deref()
                .is_some_and(|label| PI_CHIP_LABELS.contains(&label))
        });
        let chip = pi_chip.or_else(|| {
            self.chips
                .iter()
                .find(|chip| chip.path.file_name().is_some_and(|n| n == "gpiochip0"))
        });
        if let Some(chip) = chip {
            backends.push(GpioBackend::Cdev {
                chip: chip.path.clone(),
            });
        }
        backends
    }
}

/// Open the LED on BCM GPIO `line`, probing `dev`; [`NoLed`] off the Pi or when nothing works.
pub(super) fn open(line: u8, active_low: bool, dev: &Path) -> Box<dyn StatusLed + Send> {
    if !super::is_raspberry_pi() {
        note_not_a_pi(line);
        return Box::new(NoLed);
    }
    let backends = GpioProbe::scan(dev).backends();
    if backends.is_empty() {
        warn!(
            gpio = line,
            dev = %dev.display(),
            "no /dev/gpiomem and no GPIO character device; running without a status LED"
        );
        return Box::new(NoLed);
    }
    for backend in backends {
        match backend.open(line, active_low) {
            Ok(led) => return found(led),
            Err(LedError::Rppal {
                source: rppal::gpio::Error::UnknownModel,
                ..
            }) => {
                note_not_a_pi(line);
                return Box::new(NoLed);
            }
            Err(e) => warn!(error = %e, "this way to the status LED failed"),
        }
    }
    warn!(
        gpio = line,
        "no way to drive the status LED worked; running without it"
    );
    Box::new(NoLed)
}

/// An LED on a GPIO line held through the GPIO character device.
#[derive(Debug)]
pub struct CdevLed {
    /// The kernel's hold on the line; released on drop.
    request: gpiocdev::Request,
    /// The chip, for messages.
    chip: PathBuf,
    /// BCM GPIO number, which is the line's offset on the Pi's main controller.
    line: u8,
}

impl CdevLed {
    /// Request `line` of `chip` as an output, LED off. With `active_low` the kernel inverts the
    /// line, so "active" (on) drives it low.
    pub fn open(chip: &Path, line: u8, active_low: bool) -> Result<Self, LedError> {
        let mut builder = gpiocdev::Request::builder();
        builder
            .on_chip(chip)
            .with_consumer(CONSUMER)
            .with_line(u32::from(line));
        if active_low {
            builder.as_active_low();
        }
        let request = builder
            .as_output(Value::Inactive)
            .request()
            .map_err(|source| LedError::Cdev {
                chip: chip.to_owned(),
                line,
                action: "request as an output",
                source,
            })?;
        Ok(Self {
            request,
            chip: chip.to_owned(),
            line,
        })
    }
}

impl StatusLed for CdevLed {
    fn set(&mut self, on: bool) -> Result<(), LedError> {
        let value = if on { Value::Active } else { Value::Inactive };
        self.request
            .set_value(u32::from(self.line), value)
            .map_err(|source| LedError::Cdev {
                chip: self.chip.clone(),
                line: self.line,
                action: "set the value",
                source,
            })
    }

    fn describe(&self) -> String {
        format!(
            "GPIO {} on {} (character device)",
            self.line,
            self.chip.display()
        )
    }
}

/// An LED on a GPIO line driven through rppal's register access.
#[derive(Debug)]
pub struct RppalLed {
    /// The pin, configured as an output.
    pin: rppal::gpio::OutputPin,
    /// BCM GPIO number.
    line: u8,
    /// Lit when low; rppal has no inversion of its own.
    active_low: bool,
}

impl RppalLed {
    /// Take `line` as an output, LED off. Fails with rppal's `UnknownModel` off the Pi.
    pub fn open(line: u8, active_low: bool) -> Result<Self, LedError> {
        let err = |source| LedError::Rppal { line, source };
        let pin = rppal::gpio::Gpio::new()
            .map_err(err)?
            .get(line)
            .map_err(err)?;
        let mut pin = if active_low {
            pin.into_output_high()
        } else {
            pin.into_output_low()
        };
        // rppal would make the pin an input again on drop: a floating pin can leave an LED
        // glowing dimly. We switch it off before dropping it, and off it stays.
        pin.set_reset_on_drop(false);
        Ok(Self {
            pin,
            line,
            active_low,
        })
    }
}

impl StatusLed for RppalLed {
    fn set(&mut self, on: bool) -> Result<(), LedError> {
        if on == self.active_low {
            self.pin.set_low();
        } else {
            self.pin.set_high();
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("GPIO {} through rppal (/dev/gpiomem)", self.line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chip(n: u32, label: Option<&str>) -> ChipInfo {
        ChipInfo {
            path: PathBuf::from(format!("/dev/gpiochip{n}")),
            label: label.map(str::to_owned),
        }
    }

    fn cdev(n: u32) -> GpioBackend {
        GpioBackend::Cdev {
            chip: PathBuf::from(format!("/dev/gpiochip{n}")),
        }
    }

    #[test]
    fn raspberry_pi_os_tries_rppal_then_the_character_device() {
        let probe = GpioProbe {
            gpiomem: true,
            chips: vec![
                chip(0, Some("pinctrl-bcm2711")),
                chip(1, Some("raspberrypi-exp-gpio")),
            ],
        };
        assert_eq!(probe.backends(), [GpioBackend::Rppal, cdev(0)]);
    }

    #[test]
    fn debian_kernel_uses_the_chip_labelled_as_the_pi_controller() {
        // Chip numbering follows probe order, so the main controller need not be gpiochip0.
        let probe = GpioProbe {
            gpiomem: false,
            chips: vec![
                chip(0, Some("raspberrypi-exp-gpio")),
                chip(1, Some("pinctrl-bcm2835")),
            ],
        };
        assert_eq!(probe.backends(), [cdev(1)]);
    }

    #[test]
    fn unknown_labels_fall_back_to_gpiochip0() {
        let probe = GpioProbe {
            gpiomem: false,
            chips: vec![chip(0, None), chip(1, Some("something-else"))],
        };
        assert_eq!(probe.backends(), [cdev(0)]);
    }

    #[test]
    fn nothing_to_use() {
        assert_eq!(GpioProbe::default().backends(), []);
        let probe = GpioProbe {
            gpiomem: false,
            chips: vec![chip(2, Some("something-else"))],
        };
        assert_eq!(probe.backends(), []);
    }

    #[test]
    fn gpiomem_alone_means_rppal() {
        let probe = GpioProbe {
            gpiomem: true,
            chips: vec![],
        };
        assert_eq!(probe.backends(), [GpioBackend::Rppal]);
    }
}
