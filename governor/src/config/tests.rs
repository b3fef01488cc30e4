use super::*;

const ID: &str = "5a2608cfd7df9800266a339d";

fn parse(text: &str) -> Result<DeviceConfig, ConfigError> {
    DeviceConfig::parse(Path::new("device-config.json"), text)
}

fn err(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn minimal_config_gets_defaults() {
    let c = parse(&format!(
        r#"{{"deviceId": "{ID}", "serverUrl": "http://p2pvps.net:5000"}}"#
    ))
    .unwrap();
    assert_eq!(c.device_id.as_str(), ID);
    assert_eq!(c.server_url.as_str(), "http://p2pvps.net:5000/");
    assert_eq!(c.ssh_server, "p2pvps.net");
    assert_eq!(c.ssh_server_port.get(), 6100);
    assert_eq!(c.ssh_user, "sshuser");
    assert_eq!(c.heartbeat_seconds, 600);
    assert_eq!(c.storage_device, StorageDevice::Auto);
    assert!(c.encrypt_storage);
    assert_eq!(c.led, Led::Act);
    assert_eq!(c.renter_image, "p2pvps/renter:latest");
}

#[test]
fn legacy_keys_with_string_port_like_the_original_client() {
    let c = parse(&format!(
        r#"{{"deviceId": "{ID}", "serverIp": "p2pvps.net", "serverPort": "3001", "sshServerPort": 6100}}"#
    ))
    .unwrap();
    assert_eq!(c.server_url.as_str(), "http://p2pvps.net:3001/");
    assert_eq!(c.ssh_server_port.get(), 6100);
}

#[test]
fn full_config() {
    let c = parse(&format!(
        r#"{{"deviceId": "{ID}", "serverUrl": "https://m.example:8443", "sshServer": "t.example",
            "sshServerPort": "2222", "sshUser": "tunnel", "sshPassword": "pw", "heartbeatSeconds": 5,
            "sshHostKey": "SHA256:{}", "storageDevice": "none", "encryptStorage": false, "led": 17,
            "renterImage": "p2pvps/renter:test", "renterImageTar": "/opt/renter.tar"}}"#,
        "a".repeat(43)
    ))
    .unwrap();
    assert_eq!(c.ssh_server, "t.example");
    assert_eq!(c.ssh_server_port.get(), 2222);
    assert_eq!(c.heartbeat_seconds, 5);
    assert_eq!(c.storage_device, StorageDevice::None);
    assert!(!c.encrypt_storage);
    assert_eq!(c.led, Led::Gpio(17));
    assert_eq!(
        c.renter_image_tar.as_deref(),
        Some(Path::new("/opt/renter.tar"))
    );
    assert!(
        !c.summary().contains("pw\n"),
        "summary must not show the password"
    );
    assert!(c.summary().contains("sshPassword      (set)"));
}

#[test]
fn the_sandbox_keys_read_with_their_defaults() {
    let c = DeviceConfig::parse(
        Path::new("t.json"),
        &format!(r#"{{"deviceId": "{ID}", "serverUrl": "http://x"}}"#),
    )
    .unwrap();
    assert_eq!(c.sandbox, Policy::default());
    assert_eq!(c.storage_size_mb, DEFAULT_STORAGE_SIZE_MB);
    assert_eq!(c.ssh_key, None);
    let c = DeviceConfig::parse(
        Path::new("t.json"),
        &format!(
            r#"{{"deviceId": "{ID}", "serverUrl": "http://x", "lanAllow": ["192.168.1.20", "fd00::/8"],
                "allowSmtp": true, "storageSizeMb": "64", "sshKey": "generate"}}"#
        ),
    )
    .unwrap();
    let allowed: Vec<String> = c.sandbox.allow.iter().map(ToString::to_string).collect();
    assert_eq!(allowed, ["192.168.1.20/32", "fd00::/8"]);
    assert!(c.sandbox.smtp);
    assert_eq!(c.storage_size_mb, 64);
    assert_eq!(c.ssh_key, Some(SshKey::Generate));
    assert!(
        c.summary()
            .contains("lanAllow         192.168.1.20/32, fd00::/8")
    );
}

#[test]
#[allow(clippy::too_many_lines)] // a table of cases
fn errors_name_the_key_and_the_fix() {
    let cases: &[(&str, &str)] = &[
        ("", "the file is empty"),
        ("   \n", "the file is empty"),
        ("{\"deviceId\": ", "not valid JSON"),
        ("[1,2]", "must hold one JSON object"),
        ("{}", "missing key \"deviceId\""),
        (
            r#"{"deviceId": "abc", "serverUrl": "http://x"}"#,
            "key \"deviceId\": must be exactly 24 hex digits",
        ),
        (
            r#"{"deviceId": 5, "serverUrl": "http://x"}"#,
            "key \"deviceId\": must be a string in quotes, got a number",
        ),
        (
            &format!(r#"{{"deviceId": "{ID}"}}"#),
            "missing key \"serverUrl\"",
        ),
        (
            &format!(r#"{{"deviceId": "{ID}", "serverUrl": "ftp://x"}}"#),
            "key \"serverUrl\": \"ftp://x\" must be an http://",
        ),
        (
            &format!(r#"{{"deviceId": "{ID}", "serverUrl": "not a url"}}"#),
            "key \"serverUrl\": \"not a url\" is not a URL",
        ),
        (
            &format!(r#"{{"deviceId": "{ID}", "serverIp": "p2pvps.net"}}"#),
            "missing key \"serverPort\"",
        ),
        (
            &format!(r#"{{"deviceId": "{ID}", "serverIp": "h", "serverPort": 70000}}"#),
            "key \"serverPort\": port must be 1-65535, got 70000",
        ),
        (
            &format!(r#"{{"deviceId": "{ID}", "serverIp": "h", "serverPort": "http"}}"#),
            "key \"serverPort\": must be a port number",
        ),
        (
            &format!(r#"{{"deviceId": "{ID}", "serverUrl": "http://x", "sshServerPort": 0}}"#),
            "key \"sshServerPort\": port must be 1-65535, got 0",
        ),
        (
            &format!(r#"{{"deviceId": "{ID}", "serverUrl": "http://x", "serverIp": "y"}}"#),
            "not both",
        ),
        (
            &format!(r#"{{"deviceId": "{ID}", "serverUrl": "http://x", "lanAllow": "10.0.0.5"}}"#),
            "key \"lanAllow\": must be a list such as",
        ),
        (
            &format!(
                r#"{{"deviceId": "{ID}", "serverUrl": "http://x", "lanAllow": ["nas.local"]}}"#
            ),
            "key \"lanAllow\": \"nas.local\" is not an IP address or network",
        ),
        (
            &format!(r#"{{"deviceId": "{ID}", "serverUrl": "http://x", "allowSmtp": "yes"}}"#),
            "key \"allowSmtp\": must be true or false",
        ),
        (
            &format!(r#"{{"deviceId": "{ID}", "serverUrl": "http://x", "storageSizeMb": 1}}"#),
            "key \"storageSizeMb\": must be a whole number of MB from 16",
        ),
        (
            &format!(r#"{{"deviceId": "{ID}", "serverUrl": "http://x", "sshKey": "key.pem"}}"#),
            "key \"sshKey\": must be \"generate\" or the absolute path",
        ),
        (
            &format!(r#"{{"deviceId": "{ID}", "serverUrl": "http://x", "devicId": "y"}}"#),
            "unknown key \"devicId\" (did you mean \"deviceId\"?)",
        ),
        (
            &format!(r#"{{"deviceId": "{ID}", "serverUrl": "http://x", "colour": "y"}}"#),
            "unknown key \"colour\"; remove it",
        ),
        (
            &format!(r#"{{"deviceId": "{ID}", "serverUrl": "http://x", "heartbeatSeconds": 0}}"#),
            "key \"heartbeatSeconds\": must be a whole number",
        ),
        (
            &format!(r#"{{"deviceId": "{ID}", "serverUrl": "http://x", "encryptStorage": "yes"}}"#),
            "key \"encryptStorage\": must be true or false",
        ),
        (
            &format!(r#"{{"deviceId": "{ID}", "serverUrl": "http://x", "activeLow": 1}}"#),
            "key \"activeLow\": must be true or false, got a number",
        ),
        (
            &format!(r#"{{"deviceId": "{ID}", "serverUrl": "http://x", "storageDevice": "sda"}}"#),
            "key \"storageDevice\": must be \"auto\"",
        ),
        (
            &format!(r#"{{"deviceId": "{ID}", "serverUrl": "http://x", "led": 99}}"#),
            "key \"led\": must be a BCM GPIO number",
        ),
        (
            &format!(r#"{{"deviceId": "{ID}", "serverUrl": "http://x", "sshHostKey": "MD5:aa"}}"#),
            "key \"sshHostKey\": must be a fingerprint",
        ),
        (
            &format!(r#"{{"deviceId": "{ID}", "serverUrl": "http://x", "sshServer": "a;b"}}"#),
            "key \"sshServer\": \"a;b\" is not a host name",
        ),
        (
            &format!(r#"{{"deviceId": "{ID}", "serverUrl": "http://x", "sshUser": "-o"}}"#),
            "key \"sshUser\": \"-o\" is not a valid login name",
        ),
        (
            &format!(
                r#"{{"deviceId": "{ID}", "serverUrl": "http://x", "renterImage": "Bad Image"}}"#
            ),
            "key \"renterImage\"",
        ),
        (
            &format!(
                r#"{{"deviceId": "{ID}", "serverUrl": "http://x", "renterImageTar": "rel.tar"}}"#
            ),
            "key \"renterImageTar\": must be an absolute path",
        ),
        (
            &format!(r#"{{"deviceId": "{ID}", "serverUrl": " "}}"#),
            "key \"serverUrl\": is empty",
        ),
    ];
    for (text, want) in cases {
        let got = err(text);
        assert!(
            got.contains(want),
            "input {text:?}\n  got:  {got}\n  want: …{want}…"
        );
        assert!(got.starts_with("device-config.json: "), "{got}");
        assert!(!got.contains('\n'), "one line: {got}");
    }
}

#[test]
fn byte_order_mark_is_tolerated() {
    assert!(
        parse(&format!(
            "\u{feff}{{\"deviceId\": \"{ID}\", \"serverUrl\": \"http://x\"}}"
        ))
        .is_ok()
    );
}

#[test]
fn unreadable_file_names_the_path() {
    let e = DeviceConfig::load(Path::new("/nonexistent/device-config.json")).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("/nonexistent/device-config.json: cannot read"),
        "{e}"
    );
}

#[test]
fn wifi_is_read_and_its_passphrase_never_shown() {
    let c = parse(&format!(
        r#"{{"deviceId": "{ID}", "serverUrl": "http://x",
            "wifiSsid": "Home", "wifiPassphrase": "correct horse", "wifiCountry": "de"}}"#
    ))
    .unwrap();
    let wifi = c.wifi.as_ref().unwrap();
    assert_eq!((wifi.ssid.as_str(), wifi.country.as_str()), ("Home", "DE"));
    let summary = c.summary();
    assert!(
        summary.contains("\"Home\", country DE, passphrase (set)"),
        "{summary}"
    );
    assert!(!summary.contains("horse"), "{summary}");
    let bad = err(&format!(
        r#"{{"deviceId": "{ID}", "serverUrl": "http://x", "wifiSsid": "Home"}}"#
    ));
    assert!(
        bad.contains("wifiCountry") && bad.contains("is missing"),
        "{bad}"
    );
    let wired = parse(&format!(
        r#"{{"deviceId": "{ID}", "serverUrl": "http://x"}}"#
    ))
    .unwrap();
    assert!(wired.wifi.is_none() && wired.summary().contains("(none: wired)"));
}

#[test]
fn the_status_port_is_a_port_or_zero_for_off() {
    let with = |v: &str| {
        format!(r#"{{"deviceId": "{ID}", "serverUrl": "http://m.example", "statusPort": {v}}}"#)
    };
    assert_eq!(parse(&with("8080")).unwrap().status_port, Some(8080));
    assert_eq!(parse(&with("0")).unwrap().status_port, Some(0));
    assert_eq!(
        parse(&format!(
            r#"{{"deviceId": "{ID}", "serverUrl": "http://m.example"}}"#
        ))
        .unwrap()
        .status_port,
        None
    );
    for bad in ["70000", "-1", "\"web\"", "true"] {
        let e = err(&with(bad));
        assert!(
            e.contains("statusPort") && e.contains("0 to turn the owner's page off"),
            "{bad}: {e}"
        );
    }
    assert!(
        parse(&with("0"))
            .unwrap()
            .summary()
            .contains("the owner's page is off")
    );
}

#[test]
fn the_update_url_is_an_http_address_or_absent() {
    let with = |v: &str| {
        format!(r#"{{"deviceId": "{ID}", "serverUrl": "http://m.example", "updateUrl": {v}}}"#)
    };
    let url = parse(&with(r#""https://updates.example/p2pvps/manifest.json""#))
        .unwrap()
        .update_url
        .unwrap();
    assert_eq!(url.as_str(), "https://updates.example/p2pvps/manifest.json");
    let off = parse(&format!(
        r#"{{"deviceId": "{ID}", "serverUrl": "http://m.example"}}"#
    ))
    .unwrap();
    assert_eq!(off.update_url, None);
    assert!(off.summary().contains("no system updates"));
    for bad in [
        r#""ftp://u.example/m.json""#,
        r#""manifest.json""#,
        "42",
        r#""file:///m.json""#,
    ] {
        let e = err(&with(bad));
        assert!(e.contains("updateUrl"), "{bad}: {e}");
    }
}
