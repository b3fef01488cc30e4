//! The command line as an owner or systemd meets it: exit codes and one-line messages.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_p2pvps-governor");
const ID: &str = "5a2608cfd7df9800266a339d";

fn governor(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn write_config(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device-config.json");
    std::fs::write(&path, text).unwrap();
    (dir, path.to_str().unwrap().to_owned())
}

#[test]
fn check_config_accepts_and_summarises() {
    let (_d, path) = write_config(&format!(
        r#"{{"deviceId": "{ID}", "serverIp": "p2pvps.net", "serverPort": "3001", "sshPassword": "hunter22"}}"#
    ));
    let out = governor(&["check-config", &path]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains(": OK\n"));
    assert!(
        text.contains("serverUrl        http://p2pvps.net:3001"),
        "{text}"
    );
    assert!(text.contains("sshServer        p2pvps.net:6100"), "{text}");
    assert!(!text.contains("hunter22"));
}

#[test]
fn check_config_exits_78_with_one_line_naming_the_key() {
    for (text, want) in [
        (String::new(), "the file is empty"),
        ("{not json".to_owned(), "not valid JSON"),
        (
            format!(r#"{{"deviceId": "{ID}", "serverUrl": "http://x", "ledd": 1}}"#),
            "unknown key \"ledd\" (did you mean \"led\"?)",
        ),
        (
            r#"{"serverUrl": "http://x"}"#.to_owned(),
            "missing key \"deviceId\"",
        ),
    ] {
        let (_d, path) = write_config(&text);
        let out = governor(&["check-config", &path]);
        assert_eq!(out.status.code(), Some(78), "{text}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(want), "{text}: {err}");
    }
    let out = governor(&["check-config", "/nonexistent/device-config.json"]);
    assert_eq!(out.status.code(), Some(78));
}

#[test]
fn run_with_a_bad_config_exits_78_at_once() {
    let (d, path) = write_config(&format!(
        r#"{{"deviceId": "{ID}", "serverUrl": "http://127.0.0.1:9", "heartbeatSeconds": -5}}"#
    ));
    let state = d.path().join("state");
    let out = governor(&[
        "run",
        "--config",
        &path,
        "--state-dir",
        state.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("heartbeatSeconds"));
}

#[test]
fn run_without_a_usb_drive_waits_for_one() {
    let (d, path) = write_config(&format!(
        r#"{{"deviceId": "{ID}", "serverUrl": "http://127.0.0.1:9", "led": "none"}}"#
    ));
    let err = run_waiting_then_sigterm(Path::new(&path), d.path(), "a drive");
    assert!(
        err.contains("waiting for storage") && err.contains("no USB drive found"),
        "{err}"
    );
}

#[test]
fn run_without_a_config_waits_for_one_and_stops_on_sigterm() {
    let d = tempfile::tempdir().unwrap();
    let err = run_waiting_then_sigterm(&d.path().join("device-config.json"), d.path(), "a config");
    assert!(err.contains("no device-config.json yet"), "{err}");
}

/// `run` must still be waiting (for `what`) after 1.5 s, and stop at once with exit 0 on SIGTERM;
/// returns what it logged.
fn run_waiting_then_sigterm(config: &Path, dir: &Path, what: &str) -> String {
    let mut child = Command::new(BIN)
        .arg("run")
        .arg("--config")
        .arg(config)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "exited instead of waiting for {what}"
    );
    let started = Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(kill.unwrap().success());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", out.status);
    assert!(started.elapsed() < Duration::from_secs(5), "slow to stop");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn status_of_a_device_that_never_ran() {
    let d = tempfile::tempdir().unwrap();
    let out = governor(&[
        "status",
        "--json",
        "--state-dir",
        d.path().to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["phase"], "not-started");
    let out = governor(&["status", "--state-dir", d.path().to_str().unwrap()]);
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .starts_with("phase            not-started")
    );
}

#[test]
fn status_of_a_corrupt_state_fails_with_the_path() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("state.json"), "{").unwrap();
    let out = governor(&["status", "--state-dir", d.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("state.json") && err.contains("corrupt state"),
        "{err}"
    );
}

/// Under systemd (`Type=notify`, `WatchdogSec=`): READY=1 and a STATUS at once, keep-alives at
/// half the watchdog's interval; none while the process is stopped (systemd then kills and
/// restarts it), again once it runs; STOPPING=1 on SIGTERM. The socket is systemd's side of it.
#[test]
fn run_under_systemd_notifies_and_keeps_the_watchdog_fed() {
    use std::os::unix::net::UnixDatagram;
    let d = tempfile::tempdir().unwrap();
    let socket_path = d.path().join("notify");
    let systemd = UnixDatagram::bind(&socket_path).unwrap();
    let mut child = Command::new(BIN)
        .arg("run")
        .arg("--config")
        .arg(d.path().join("device-config.json"))
        .arg("--state-dir")
        .arg(d.path().join("state"))
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let signal = |sig: &str| {
        let status = Command::new("kill").args([sig, &pid]).status().unwrap();
        assert!(status.success(), "kill {sig}");
    };
    // Every message that arrives within `window`.
    let receive = |window: Duration| {
        let mut got = Vec::new();
        let end = Instant::now() + window;
        let mut buf = [0u8; 512];
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            systemd
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            match systemd.recv(&mut buf) {
                Ok(n) => got.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                Err(_) => break,
            }
        }
        got
    };
    let first = receive(Duration::from_millis(1500));
    assert_eq!(
        first.first().map(String::as_str),
        Some("READY=1"),
        "{first:?}"
    );
    assert!(
        first
            .iter()
            .any(|m| m.starts_with("STATUS=waiting for a valid device-config.json")),
        "{first:?}"
    );
    let fed = first.iter().filter(|m| *m == "WATCHDOG=1").count();
    assert!(fed >= 4, "keep-alives every 200 ms: {first:?}");

    signal("-STOP");
    // What was sent just before the stop may still be queued.
    receive(Duration::from_millis(100));
    let stopped = receive(Duration::from_millis(800));
    assert!(
        stopped.is_empty(),
        "a stopped governor fed the watchdog: {stopped:?}"
    );
    signal("-CONT");
    let resumed = receive(Duration::from_millis(800));
    assert!(resumed.iter().any(|m| m == "WATCHDOG=1"), "{resumed:?}");

    signal("-TERM");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    let last = receive(Duration::from_millis(200));
    assert!(last.iter().any(|m| m == "STOPPING=1"), "{last:?}");
}

#[test]
fn the_daemon_links_neither_libcryptsetup_nor_openssl() {
    // The LUKS2 work is the helper's (p2pvps-luks): what the daemon links stays resident for as long
    // as it runs (libcrypto alone was 1.4 MiB of its RSS on x86-64, 4 MiB on aarch64).
    let out = Command::new("readelf")
        .args(["--dynamic", BIN])
        .output()
        .expect("run readelf (binutils)");
    assert!(out.status.success(), "{out:?}");
    let dynamic = String::from_utf8_lossy(&out.stdout);
    let needed: Vec<&str> = dynamic.lines().filter(|l| l.contains("(NEEDED)")).collect();
    assert!(needed.iter().any(|l| l.contains("libc.so")), "{dynamic}");
    for lib in [
        "libcryptsetup",
        "libcrypto",
        "libssl",
        "libdevmapper",
        "libargon2",
    ] {
        assert!(
            !needed.iter().any(|l| l.contains(lib)),
            "the governor links {lib}: {needed:#?}"
        );
    }
}
