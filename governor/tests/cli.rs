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
