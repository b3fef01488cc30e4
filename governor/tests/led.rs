//! The status LED: each pattern's exact timeline on a paused clock with a recording LED, pattern
//! switches, shutdown, error logging; the sysfs backend against a temp dir laid out like
//! /sys/class/leds; and which backend `open` picks from the device files present.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use p2pvps_governor::config::Led;
use p2pvps_governor::led::{
    self, CdevLed, GpioBackend, GpioProbe, Indication, LedError, LedOptions, RecordingLed,
    RppalLed, StatusLed, SysfsLed,
};
use tokio::time::{Instant, sleep};

/// The record as (milliseconds since `t0`, on).
fn timeline(led: &RecordingLed, t0: Instant) -> Vec<(u64, bool)> {
    led.transitions()
        .into_iter()
        .map(|(at, on)| {
            let ms = u64::try_from((at - t0).as_millis()).unwrap();
            (ms, on)
        })
        .collect()
}

/// Two cycles of `cycle` (one period apart), then the first switch of the third, which shows
/// that the second cycle's last step lasted as long as it should.
fn two_cycles(cycle: &[(u64, bool)], period: u64) -> Vec<(u64, bool)> {
    let mut all: Vec<(u64, bool)> = cycle.to_vec();
    all.extend(cycle.iter().map(|&(ms, on)| (ms + period, on)));
    all.push((2 * period, cycle[0].1));
    all
}

/// Show `indication` from a fresh task for two cycles (plus 1 ms) and return the timeline.
async fn play(indication: Indication, period: u64) -> Vec<(u64, bool)> {
    let rec = RecordingLed::new();
    let t0 = Instant::now();
    let handle = led::spawn_showing(Box::new(rec.clone()), indication);
    sleep(Duration::from_millis(2 * period + 1)).await;
    assert_eq!(handle.current(), indication);
    timeline(&rec, t0)
}

#[tokio::test(start_paused = true)]
async fn booting_is_a_fast_even_blink() {
    let cycle = [(0, true), (100, false)];
    assert_eq!(
        play(Indication::Booting, 200).await,
        two_cycles(&cycle, 200)
    );
}

#[tokio::test(start_paused = true)]
async fn no_config_is_two_blinks_then_a_pause() {
    let cycle = [(0, true), (300, false), (600, true), (900, false)];
    assert_eq!(
        play(Indication::NoConfig, 2400).await,
        two_cycles(&cycle, 2400)
    );
}

#[tokio::test(start_paused = true)]
async fn waiting_for_storage_is_three_blinks_then_a_pause() {
    let cycle = [
        (0, true),
        (300, false),
        (600, true),
        (900, false),
        (1200, true),
        (1500, false),
    ];
    assert_eq!(
        play(Indication::WaitingForStorage, 3000).await,
        two_cycles(&cycle, 3000)
    );
}

#[tokio::test(start_paused = true)]
async fn registering_is_a_slow_even_blink() {
    let cycle = [(0, true), (1000, false)];
    assert_eq!(
        play(Indication::Registering, 2000).await,
        two_cycles(&cycle, 2000)
    );
}

#[tokio::test(start_paused = true)]
async fn ready_is_steady_on() {
    let rec = RecordingLed::new();
    let t0 = Instant::now();
    let _handle = led::spawn_showing(Box::new(rec.clone()), Indication::Ready);
    sleep(Duration::from_mins(1)).await;
    assert_eq!(timeline(&rec, t0), [(0, true)]);
}

#[tokio::test(start_paused = true)]
async fn renter_connected_is_on_with_a_blip() {
    let cycle = [(0, true), (1800, false)];
    assert_eq!(
        play(Indication::RenterConnected, 2000).await,
        two_cycles(&cycle, 2000)
    );
}

#[tokio::test(start_paused = true)]
async fn wiping_is_a_very_fast_flicker() {
    let cycle = [(0, true), (50, false)];
    assert_eq!(play(Indication::Wiping, 100).await, two_cycles(&cycle, 100));
}

#[tokio::test(start_paused = true)]
async fn fatal_is_sos() {
    let cycle = [
        // S
        (0, true),
        (200, false),
        (400, true),
        (600, false),
        (800, true),
        (1000, false),
        // O
        (1600, true),
        (2200, false),
        (2400, true),
        (3000, false),
        (3200, true),
        (3800, false),
        // S
        (4400, true),
        (4600, false),
        (4800, true),
        (5000, false),
        (5200, true),
        (5400, false),
    ];
    assert_eq!(
        play(Indication::Fatal, 6800).await,
        two_cycles(&cycle, 6800)
    );
}

#[tokio::test(start_paused = true)]
async fn spawn_starts_with_booting() {
    let rec = RecordingLed::new();
    let handle = led::spawn(Box::new(rec.clone()));
    assert_eq!(handle.current(), Indication::Booting);
    sleep(Duration::from_millis(150)).await;
    assert_eq!(rec.is_on(), Some(false));
}

#[tokio::test(start_paused = true)]
async fn a_switch_during_a_dark_step_lights_the_led_at_once() {
    let rec = RecordingLed::new();
    let t0 = Instant::now();
    let handle = led::spawn_showing(Box::new(rec.clone()), Indication::Registering);
    sleep(Duration::from_millis(1300)).await; // Registering is dark from 1000 to 2000
    handle.show(Indication::Booting);
    sleep(Duration::from_millis(250)).await;
    assert_eq!(
        timeline(&rec, t0),
        [
            (0, true),
            (1000, false),
            (1300, true),
            (1400, false),
            (1500, true)
        ]
    );
    assert_eq!(handle.current(), Indication::Booting);
}

#[tokio::test(start_paused = true)]
async fn a_switch_during_a_lit_step_starts_the_new_pattern_at_the_switch() {
    let rec = RecordingLed::new();
    let t0 = Instant::now();
    let handle = led::spawn_showing(Box::new(rec.clone()), Indication::Ready);
    sleep(Duration::from_millis(500)).await;
    handle.show(Indication::Wiping);
    sleep(Duration::from_millis(175)).await;
    // Already lit: Wiping's first step writes nothing, and its first dark step comes 50 ms after
    // the switch, not at the end of some cycle.
    assert_eq!(
        timeline(&rec, t0),
        [(0, true), (550, false), (600, true), (650, false)]
    );
}

#[tokio::test(start_paused = true)]
async fn showing_the_same_indication_again_does_not_restart_it() {
    let rec = RecordingLed::new();
    let t0 = Instant::now();
    let handle = led::spawn_showing(Box::new(rec.clone()), Indication::Registering);
    for _ in 0..5 {
        sleep(Duration::from_millis(300)).await;
        handle.show(Indication::Registering);
    }
    sleep(Duration::from_millis(600)).await;
    assert_eq!(timeline(&rec, t0), [(0, true), (1000, false), (2000, true)]);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_handle_leaves_the_led_off_and_ends_the_task() {
    let rec = RecordingLed::new();
    let t0 = Instant::now();
    let handle = led::spawn_showing(Box::new(rec.clone()), Indication::Booting);
    sleep(Duration::from_millis(250)).await; // lit from 200 to 300
    drop(handle);
    sleep(Duration::from_secs(10)).await;
    assert_eq!(
        timeline(&rec, t0),
        [(0, true), (100, false), (200, true), (250, false)]
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_the_led_to_be_off() {
    let rec = RecordingLed::new();
    let handle = led::spawn_showing(Box::new(rec.clone()), Indication::Ready);
    sleep(Duration::from_millis(10)).await;
    assert_eq!(rec.is_on(), Some(true));
    handle.shutdown().await;
    assert_eq!(rec.is_on(), Some(false));
}

/// An LED whose every switch fails, alternating between two kinds of error.
struct BrokenLed {
    calls: Arc<Mutex<u32>>,
}

impl StatusLed for BrokenLed {
    fn set(&mut self, _on: bool) -> Result<(), LedError> {
        let mut calls = self.calls.lock().unwrap();
        *calls += 1;
        let kind = if calls.is_multiple_of(2) {
            io::ErrorKind::PermissionDenied
        } else {
            io::ErrorKind::NotFound
        };
        Err(LedError::Io {
            path: PathBuf::from("/sys/class/leds/ACT/brightness"),
            action: "write",
            source: io::Error::from(kind),
        })
    }

    fn describe(&self) -> String {
        "broken".to_owned()
    }
}

/// Collects what a tracing subscriber writes.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_failing_led_is_logged_once_per_kind_and_the_task_goes_on() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    // Thread-local: #[tokio::test] runs the pattern task on this thread.
    let _guard = tracing::subscriber::set_default(subscriber);

    let calls = Arc::new(Mutex::new(0));
    let handle = led::spawn_showing(
        Box::new(BrokenLed {
            calls: calls.clone(),
        }),
        Indication::Wiping,
    );
    sleep(Duration::from_millis(975)).await;
    handle.shutdown().await;

    // 20 steps of 50 ms, then the final "off": every one tried, although each failed.
    assert_eq!(*calls.lock().unwrap(), 21);
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("cannot switch the status LED"))
        .collect();
    assert_eq!(warnings.len(), 2, "{text}");
    assert!(warnings[0].contains("brightness"), "{text}");
}

// ---- the kernel LED class, against a temp dir ----

/// Lay out an LED class directory like the Pi's.
fn led_dir(root: &Path, name: &str, max: &str) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("trigger"), "none [mmc0] timer heartbeat\n").unwrap();
    std::fs::write(dir.join("brightness"), "255\n").unwrap();
    std::fs::write(dir.join("max_brightness"), max).unwrap();
    dir
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn sysfs_open_takes_the_led_from_its_trigger_and_switches_it_off() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = led_dir(tmp.path(), "ACT", "255\n");
    let mut led = SysfsLed::open(&dir).unwrap();
    assert_eq!(read(&dir.join("trigger")), "none");
    assert_eq!(read(&dir.join("brightness")), "0");
    led.set(true).unwrap();
    assert_eq!(read(&dir.join("brightness")), "255");
    led.set(false).unwrap();
    assert_eq!(read(&dir.join("brightness")), "0");
    assert_eq!(led.dir(), dir);
    assert_eq!(led.describe(), format!("kernel LED {}", dir.display()));
}

#[test]
fn sysfs_on_is_max_brightness() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = led_dir(tmp.path(), "led0", "1\n");
    let mut led = SysfsLed::open(&dir).unwrap();
    led.set(true).unwrap();
    assert_eq!(read(&dir.join("brightness")), "1");
}

#[test]
fn sysfs_missing_dir_names_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ACT");
    let err = SysfsLed::open(&dir).unwrap_err();
    assert!(
        matches!(&err, LedError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&dir.display().to_string()),
        "{err}"
    );
}

#[test]
fn sysfs_bad_max_brightness_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    for bad in ["", "0", "bright"] {
        let dir = led_dir(tmp.path(), "ACT", bad);
        let err = SysfsLed::open(&dir).unwrap_err();
        assert!(matches!(err, LedError::BadMaxBrightness { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains(&dir.join("max_brightness").display().to_string()),
            "{err}"
        );
    }
}

#[test]
fn open_act_prefers_act_and_falls_back_to_led0() {
    let tmp = tempfile::tempdir().unwrap();
    let led0 = led_dir(tmp.path(), "led0", "255");
    let led = led::open(&Led::Act, tmp.path());
    assert_eq!(led.describe(), format!("kernel LED {}", led0.display()));
    assert_eq!(read(&led0.join("trigger")), "none");

    let act = led_dir(tmp.path(), "ACT", "255");
    let led = led::open(&Led::Act, tmp.path());
    assert_eq!(led.describe(), format!("kernel LED {}", act.display()));
}

#[test]
fn open_gives_no_led_when_there_is_none_to_drive() {
    let tmp = tempfile::tempdir().unwrap();
    // led: "none", even where an LED exists.
    led_dir(tmp.path(), "ACT", "255");
    assert_eq!(led::open(&Led::None, tmp.path()).describe(), "none");
    // No LED class at all (x86, QEMU's virt board).
    let missing = tmp.path().join("no-such-dir");
    assert_eq!(led::open(&Led::Act, &missing).describe(), "none");
    // An ACT directory that cannot be used.
    let empty = tempfile::tempdir().unwrap();
    std::fs::create_dir(empty.path().join("ACT")).unwrap();
    assert_eq!(led::open(&Led::Act, empty.path()).describe(), "none");
}

#[tokio::test(start_paused = true)]
async fn the_pattern_task_drives_a_sysfs_led() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = led_dir(tmp.path(), "ACT", "255");
    let handle = led::spawn_showing(led::open(&Led::Act, tmp.path()), Indication::Ready);
    sleep(Duration::from_millis(10)).await;
    assert_eq!(read(&dir.join("brightness")), "255");
    handle.shutdown().await;
    assert_eq!(read(&dir.join("brightness")), "0");
}

// ---- GPIO: backend choice from the device files present ----

#[test]
fn scan_finds_gpiomem_and_the_chips_in_number_order() {
    let tmp = tempfile::tempdir().unwrap();
    for name in [
        "gpiomem",
        "gpiochip10",
        "gpiochip1",
        "gpiochip0",
        "gpiochipX",
        "tty0",
    ] {
        std::fs::write(tmp.path().join(name), "").unwrap();
    }
    let probe = GpioProbe::scan(tmp.path());
    assert!(probe.gpiomem);
    let chips: Vec<_> = probe.chips.iter().map(|c| c.path.clone()).collect();
    assert_eq!(
        chips,
        [0, 1, 10].map(|n| tmp.path().join(format!("gpiochip{n}")))
    );
    // Plain files are no GPIO character devices: their labels cannot be read.
    assert!(probe.chips.iter().all(|c| c.label.is_none()));
    // rppal first, then the first chip for lack of a known label.
    assert_eq!(
        probe.backends(),
        [
            GpioBackend::Rppal,
            GpioBackend::Cdev {
                chip: tmp.path().join("gpiochip0")
            }
        ]
    );
}

#[test]
fn scan_without_gpiomem_uses_the_character_device() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("gpiochip0"), "").unwrap();
    let probe = GpioProbe::scan(tmp.path());
    assert!(!probe.gpiomem);
    assert_eq!(
        probe.backends(),
        [GpioBackend::Cdev {
            chip: tmp.path().join("gpiochip0")
        }]
    );
}

#[test]
fn scan_of_the_pi_5s_gpiomem0_means_rppal() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("gpiomem0"), "").unwrap();
    assert_eq!(GpioProbe::scan(tmp.path()).backends(), [GpioBackend::Rppal]);
}

#[test]
fn scan_of_an_empty_or_missing_dir_finds_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    assert_eq!(GpioProbe::scan(tmp.path()), GpioProbe::default());
    assert_eq!(
        GpioProbe::scan(&tmp.path().join("missing")),
        GpioProbe::default()
    );
}

#[test]
fn cdev_on_something_that_is_no_gpio_chip_names_chip_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let chip = tmp.path().join("gpiochip0");
    std::fs::write(&chip, "").unwrap();
    let err = CdevLed::open(&chip, 17, true).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, LedError::Cdev { line: 17, .. }), "{err:?}");
    assert!(
        text.contains("GPIO 17") && text.contains(&chip.display().to_string()),
        "{text}"
    );
}

#[test]
fn off_the_pi_a_gpio_led_is_no_led() {
    if led::is_raspberry_pi() {
        eprintln!("skipped: this is a Raspberry Pi, whose GPIO 17 this test must not take");
        return;
    }
    let err = RppalLed::open(17, false).unwrap_err();
    assert!(
        matches!(
            err,
            LedError::Rppal {
                line: 17,
                source: rppal::gpio::Error::UnknownModel
            }
        ),
        "{err:?}"
    );
    // Even with device files that look like a Pi's: a non-Pi's GPIO lines are left alone.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("gpiomem"), "").unwrap();
    std::fs::write(tmp.path().join("gpiochip0"), "").unwrap();
    let options = LedOptions {
        sysfs_root: tmp.path().to_owned(),
        dev: tmp.path().to_owned(),
        active_low: false,
    };
    assert_eq!(led::open_with(&Led::Gpio(17), &options).describe(), "none");
    assert_eq!(led::open(&Led::Gpio(17), tmp.path()).describe(), "none");
}
