//! The `p2pvps-devserver` binary: the `listening on` line, serving, and a clean exit on SIGTERM.

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use common::{DEVICE, client, specs};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_p2pvps-devserver");

#[tokio::test]
async fn prints_the_bound_address_serves_and_stops_on_sigterm() {
    let mut child = Command::new(BIN)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--device",
            DEVICE,
            "--first-port",
            "9000",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(10), stdout.read_line(&mut line))
        .await
        .expect("the line comes promptly")
        .unwrap();
    let addr: SocketAddr = line
        .strip_prefix("listening on ")
        .and_then(|rest| rest.strip_suffix('\n'))
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();
    assert_ne!(addr.port(), 0, "the actual port is printed");

    let client = client();
    let response = client
        .post(format!("http://{addr}/api/client/register/{DEVICE}"))
        .json(&specs())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let port = body["device"]["port"].as_u64().unwrap();
    assert!(
        (9000..=9200).contains(&port),
        "--first-port is used: {port}"
    );
    let password = body["device"]["password"].as_str().unwrap().to_owned();

    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits promptly on SIGTERM")
        .unwrap();
    assert!(status.success(), "clean exit: {status}");

    let mut rest = String::new();
    stdout.read_to_string(&mut rest).await.unwrap();
    assert_eq!(rest, "", "stdout has exactly one line");
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .await
        .unwrap();
    assert!(
        logs.contains("registered"),
        "registrations are logged: {logs}"
    );
    assert!(
        !logs.contains(&password),
        "passwords are never logged: {logs}"
    );
}

#[tokio::test]
async fn an_invalid_device_id_is_a_clear_error() {
    let output = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--device", "not-a-guid"])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(output.stdout.is_empty(), "nothing is listening");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("not-a-guid") && stderr.contains("24 hex digits"),
        "{stderr}"
    );
}
