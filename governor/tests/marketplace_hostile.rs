//! The REST client against a server that answers whatever a test wants (a hostile or broken
//! marketplace), over real HTTP on 127.0.0.1.

use std::time::Duration;

use p2pvps_governor::marketplace::{Marketplace, MarketplaceApi as _, MarketplaceError, Specs};
use p2pvps_governor::types::DeviceId;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

const DEVICE: &str = "5a2608cfd7df9800266a339d";

/// Serve one canned HTTP response to every connection; returns the base URL.
async fn canned(status: &str, headers: &str, body: Vec<u8>) -> reqwest::Url {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let head = format!("HTTP/1.1 {status}\r\nconnection: close\r\n{headers}\r\n");
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let head = head.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let _ = sock.read(&mut buf).await;
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(&body).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    reqwest::Url::parse(&format!("http://{addr}")).unwrap()
}

async fn json(body: &str) -> reqwest::Url {
    canned(
        "200 OK",
        &format!(
            "content-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        ),
        body.as_bytes().to_vec(),
    )
    .await
}

fn client(url: &reqwest::Url) -> Marketplace {
    Marketplace::with_timeout(
        url,
        DeviceId::parse(DEVICE).unwrap(),
        Duration::from_secs(2),
    )
    .unwrap()
}

fn specs() -> Specs {
    Specs {
        memory: "1 MB".into(),
        disk_space: "1 GB".into(),
        processor: "x".into(),
        internet_speed: "unmeasured".into(),
    }
}

fn device(fields: &str) -> String {
    format!(r#"{{"device": {{"_id": "{DEVICE}", "extra": [1, 2], {fields}}}}}"#)
}

const GOOD: &str = r#""username": "aB3xY9zQ1k", "password": "Xy7pQ2mN0a", "port": 6001, "expiration": "2026-11-26T21:01:15.123Z""#;

async fn register_err(body: &str) -> String {
    let url = json(body).await;
    let e = client(&url).register(&specs()).await.unwrap_err();
    e.to_string()
}

#[tokio::test]
async fn a_good_answer_with_extra_fields_is_accepted() {
    let url = json(&device(GOOD)).await;
    let lease = client(&url).register(&specs()).await.unwrap();
    assert_eq!(lease.username.as_str(), "aB3xY9zQ1k");
    assert_eq!(lease.password.expose(), "Xy7pQ2mN0a");
    assert_eq!(lease.port.get(), 6001);
    assert_eq!(
        lease.expiration.to_rfc3339(),
        "2026-11-26T21:01:15.123+00:00"
    );
}

#[tokio::test]
async fn hostile_registration_answers_are_refused_with_the_reason() {
    let cases = [
        (
            device(&GOOD.replace("aB3xY9zQ1k", "root")),
            "system account",
        ),
        (
            device(&GOOD.replace("aB3xY9zQ1k", "x;reboot")),
            "must be a login name",
        ),
        (
            device(&GOOD.replace("aB3xY9zQ1k", "--help")),
            "must be a login name",
        ),
        (
            device(&GOOD.replace("Xy7pQ2mN0a", "a\\nb")),
            "control character",
        ),
        (
            device(&GOOD.replace("6001", "70000")),
            "port must be 1-65535",
        ),
        (device(&GOOD.replace("6001", "0")), "port must be 1-65535"),
        (
            device(&GOOD.replace("6001", "\"6001\"")),
            "device.port is missing or not an integer",
        ),
        (
            device(&GOOD.replace("2026-11-26T21:01:15.123Z", "soon")),
            "not an ISO-8601 time",
        ),
        (device(r#""port": 6001"#), "device.username is missing"),
        (r#"{"success": true}"#.to_owned(), "no \"device\" object"),
        ("[]".to_owned(), "no \"device\" object"),
        ("<html>hello</html>".to_owned(), "not JSON"),
    ];
    for (body, want) in cases {
        let got = register_err(&body).await;
        assert!(
            got.contains(want),
            "body {body}\n got: {got}\n want: {want}"
        );
        assert!(got.starts_with("register http://127.0.0.1:"), "{got}");
        assert!(
            !got.contains("Xy7pQ2mN0a"),
            "a password reached an error message: {got}"
        );
    }
}

#[tokio::test]
async fn oversized_answers_are_refused_with_or_without_a_length() {
    let big = vec![b' '; 70 * 1024];
    let url = canned(
        "200 OK",
        &format!("content-length: {}\r\n", big.len()),
        big.clone(),
    )
    .await;
    let e = client(&url).check_in().await.unwrap_err();
    assert!(matches!(e, MarketplaceError::TooLarge { .. }), "{e}");
    // No content-length: the body is read until the limit and then refused.
    let url = canned("200 OK", "", big).await;
    let e = client(&url).check_in().await.unwrap_err();
    assert!(matches!(e, MarketplaceError::TooLarge { .. }), "{e}");
}

#[tokio::test]
async fn plain_text_errors_keep_status_and_body() {
    let url = canned(
        "404 Not Found",
        "content-length: 26\r\n",
        b"Could not find that device.".to_vec(),
    )
    .await;
    let e = client(&url).expiration().await.unwrap_err();
    assert!(e.is_unknown_device());
    assert!(
        e.to_string()
            .contains("404 Not Found: Could not find that device"),
        "{e}"
    );
    let url = canned(
        "500 Internal Server Error",
        "content-length: 5\r\n",
        b"oops\x07".to_vec(),
    )
    .await;
    let e = client(&url).check_in().await.unwrap_err();
    assert!(!e.is_unknown_device());
    assert!(
        e.to_string().ends_with("500 Internal Server Error: oops"),
        "{e}"
    );
}

#[tokio::test]
async fn check_in_needs_success_true() {
    let url = json(r#"{"success": false}"#).await;
    let e = client(&url).check_in().await.unwrap_err();
    assert!(e.to_string().contains("no \"success\": true"), "{e}");
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = reqwest::Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
    let started = std::time::Instant::now();
    let e = client(&url).check_in().await.unwrap_err();
    assert!(matches!(e, MarketplaceError::Unreachable { .. }), "{e}");
    assert!(started.elapsed() < Duration::from_secs(10));
    drop(listener);
}

#[tokio::test]
async fn nothing_listening_is_unreachable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = reqwest::Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
    drop(listener);
    let e = client(&url).register(&specs()).await.unwrap_err();
    assert!(e.to_string().contains("server unreachable"), "{e}");
}
