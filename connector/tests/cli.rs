//! The `p2pvps-connector tunnel` command: settings on stdin, logs on stderr (state lines on stdout
//! with `--report-json`, as the governor runs it), SIGTERM ends it with status 0, bad settings end
//! it with EX_CONFIG.

mod common;

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use common::{
    Endpoint, echo_server, free_port, keygen, settings_json, tunnel_password, wait_usable,
};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};

struct Connector {
    child: Child,
    /// The log.
    lines: Lines<BufReader<ChildStderr>>,
    seen: Vec<String>,
    /// State lines, with `--supervised`.
    states: Lines<BufReader<ChildStdout>>,
    /// Kept open when supervised (its end stops the keeper).
    stdin: Option<tokio::process::ChildStdin>,
}

impl Connector {
    async fn start(settings: &Value) -> Self {
        Self::start_with(settings, &[]).await
    }

    async fn start_with(settings: &Value, args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_p2pvps-connector"))
            .args(["tunnel", "--settings", "-"])
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start p2pvps-connector");
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(format!("{settings}\n").as_bytes())
            .await
            .unwrap();
        // Unsupervised, EOF ends the settings; supervised, the open pipe keeps the keeper going.
        let stdin = args.contains(&"--supervised").then_some(stdin);
        let lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let states = BufReader::new(child.stdout.take().unwrap()).lines();
        Self {
            child,
            lines,
            seen: Vec::new(),
            states,
            stdin,
        }
    }

    /// Reads log lines until one contains `needle`; panics with what it saw after `limit`.
    async fn wait_line(&mut self, needle: &str, limit: Duration) -> String {
        let found = tokio::time::timeout(limit, async {
            while let Ok(Some(line)) = self.lines.next_line().await {
                self.seen.push(line.clone());
                if line.contains(needle) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            _ => panic!(
                "no line with `{needle}` within {limit:?}; output:\n{}",
                self.seen.join("\n")
            ),
        }
    }

    async fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().expect("still running").to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        assert!(sent.success());
        self.exit_status().await
    }

    async fn exit_status(&mut self) -> ExitStatus {
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("exits within 10 s")
            .unwrap();
        while let Ok(Some(line)) = self.lines.next_line().await {
            self.seen.push(line);
        }
        status
    }

    fn output(&self) -> String {
        self.seen.join("\n")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_from_stdin_bring_the_tunnel_up_and_sigterm_stops_it() {
    let endpoint = Endpoint::start();
    let local = echo_server().await;
    let remote = free_port();
    let mut settings = settings_json(&endpoint, remote, local);
    settings["hostKey"] = json!(endpoint.fingerprint);
    let mut connector = Connector::start(&settings).await;

    connector
        .wait_line(r#""state":"up""#, Duration::from_secs(15))
        .await;
    wait_usable(remote, Duration::from_secs(10)).await;

    let status = connector.terminate().await;
    assert_eq!(status.code(), Some(0), "{}", connector.output());
    let out = connector.output();
    assert!(out.contains("SIGTERM received; stopping"), "{out}");
    assert!(out.contains(r#"state={"state":"connecting"}"#), "{out}");
    assert!(
        !out.contains(&tunnel_password()),
        "the password reached the log: {out}"
    );
    // Plain text for `docker logs`: stderr is a pipe here, so no colour codes.
    assert!(!out.contains('\u{1b}'), "{out}");
    // A clean stop tells the endpoint, which frees the port at once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        endpoint.log().contains("connector stopping"),
        "{}",
        endpoint.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervised_it_puts_only_state_lines_on_stdout_and_stops_with_its_stdin() {
    let endpoint = Endpoint::start();
    let remote = free_port();
    let settings = settings_json(&endpoint, remote, echo_server().await);
    let mut connector = Connector::start_with(&settings, &["--supervised"]).await;
    let mut states = Vec::new();
    let up = tokio::time::timeout(Duration::from_secs(15), async {
        while let Ok(Some(line)) = connector.states.next_line().await {
            let state: Value = serde_json::from_str(&line).expect("a JSON state line");
            states.push(state["state"].as_str().unwrap().to_owned());
            if state["state"] == "up" {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(up, Ok(true), "states: {states:?}");
    assert_eq!(states, ["connecting", "up"]);
    // The governor going away closes the pipe: the keeper stops by itself.
    drop(connector.stdin.take());
    assert_eq!(connector.exit_status().await.code(), Some(0));
    let out = connector.output();
    assert!(
        out.contains("tunnel up") && out.contains("closed our stdin"),
        "{out}"
    );
}

/// Before the device is rented the governor's keeper logs in with no port; the port follows on
/// stdin, and the forward is then one request away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervised_without_a_port_it_logs_in_and_forwards_the_port_given_later() {
    let endpoint = Endpoint::start();
    let remote = free_port();
    let mut settings = settings_json(&endpoint, remote, echo_server().await);
    settings.as_object_mut().unwrap().remove("remotePort");
    let mut connector = Connector::start_with(&settings, &["--supervised"]).await;
    let mut states = Vec::new();
    let mut next_state = async || {
        let line = tokio::time::timeout(Duration::from_secs(15), connector.states.next_line())
            .await
            .expect("a state line within 15 s")
            .unwrap()
            .expect("the keeper still runs");
        let state: Value = serde_json::from_str(&line).expect("a JSON state line");
        state["state"].as_str().unwrap().to_owned()
    };
    states.push(next_state().await);
    states.push(next_state().await);
    assert_eq!(states, ["connecting", "standby"]);
    assert!(
        endpoint
            .log()
            .contains("Accepted password for p2pvps-tunnel"),
        "standby is logged in: {}",
        endpoint.log()
    );
    assert!(
        common::round_trip(remote, b"x").await.is_err(),
        "nothing forwarded before the port is given"
    );
    let stdin = connector.stdin.as_mut().unwrap();
    stdin
        .write_all(format!("{}\n", json!({"remotePort": remote})).as_bytes())
        .await
        .unwrap();
    assert_eq!(next_state().await, "up");
    wait_usable(remote, Duration::from_secs(5)).await;
    assert_eq!(
        endpoint.log().matches("Accepted password").count(),
        1,
        "the port is forwarded in the session already open: {}",
        endpoint.log()
    );
    // A stop by signal while the governor still holds stdin open: the keeper exits (its stdin
    // reader must not keep the process alive until the governor's SIGKILL).
    assert!(connector.stdin.is_some());
    assert_eq!(connector.terminate().await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_pin_gives_one_clear_log_line() {
    let endpoint = Endpoint::start();
    keygen(&endpoint.path("other_key"));
    let pin = common::fingerprint(&endpoint.path("other_key.pub"));
    let mut settings = settings_json(&endpoint, free_port(), echo_server().await);
    settings["hostKey"] = json!(pin);
    let mut connector = Connector::start(&settings).await;

    let line = connector
        .wait_line("host key mismatch", Duration::from_secs(15))
        .await;
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains(&format!("expected {pin}")), "{line}");
    assert!(
        line.contains(&format!("the server presented {}", endpoint.fingerprint)),
        "{line}"
    );
    assert_eq!(connector.terminate().await.code(), Some(0));
    assert!(!connector.output().contains(r#""state":"up""#));
}

#[tokio::test]
async fn bad_settings_exit_with_ex_config_naming_the_key() {
    let settings = json!({
        "server": "127.0.0.1",
        "serverPort": 6100,
        "user": "p2pvps-tunnel",
        "password": "x",
        "remotePort": 0,
    });
    let mut connector = Connector::start(&settings).await;
    let status = connector.exit_status().await;
    assert_eq!(status.code(), Some(78), "{}", connector.output());
    let out = connector.output();
    assert!(
        out.contains("`remotePort` must be a port number 1-65535, got 0"),
        "{out}"
    );
    // Only the governor's keeper may wait for its port.
    let mut without = settings;
    without.as_object_mut().unwrap().remove("remotePort");
    let mut connector = Connector::start(&without).await;
    assert_eq!(connector.exit_status().await.code(), Some(78));
    let out = connector.output();
    assert!(out.contains("`remotePort` is required"), "{out}");
}

#[tokio::test]
async fn an_unreadable_settings_file_exits_with_ex_config() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_p2pvps-connector"))
        .args(["tunnel", "--settings"])
        .arg(dir.path().join("missing.json"))
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(78));
    let out = String::from_utf8_lossy(&output.stderr);
    assert!(out.contains("missing.json"), "{out}");
}
