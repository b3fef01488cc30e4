use super::*;

const RELEASE: &str = "PRETTY_NAME=\"P2P VPS\"\nIMAGE_ID=p2pvps-rpi4\nIMAGE_VERSION=\"0.9.1\"\n";

#[test]
fn the_running_system_is_read_from_os_release_and_the_command_line() {
    let running = Running::from_texts(
        RELEASE,
        "console=ttyS0 root=PARTUUID=ab-03 rauc.slot=B rw\n",
    )
    .unwrap();
    assert_eq!(
        running,
        Running {
            board: "rpi4".into(),
            version: "0.9.1".into(),
            slot: "B".into()
        }
    );
    assert_eq!(running.compatible(), "p2pvps-rpi4");
    let e = Running::from_texts(RELEASE, "root=/dev/sda2").unwrap_err();
    assert!(e.to_string().contains("rauc.slot"), "{e}");
    let e = Running::from_texts("ID=debian\n", "rauc.slot=A").unwrap_err();
    assert!(e.to_string().contains("IMAGE_ID"), "{e}");
}

#[test]
fn only_a_newer_semantic_version_is_newer() {
    let v = |s: &str| Version::parse(s).unwrap();
    assert!(is_newer(&v("0.9.2"), "0.9.1"));
    assert!(is_newer(&v("0.1.0"), "0.1.0-dev.1733000000"));
    assert!(is_newer(&v("0.1.0-dev.20"), "0.1.0-dev.3"));
    assert!(!is_newer(&v("0.9.1"), "0.9.1"));
    assert!(!is_newer(&v("0.0.9"), "0.9.1"));
    assert!(!is_newer(&v("9.9.9"), "unversioned"));
}

/// A devserver publishing `dir` at /files/.
async fn files_server(dir: &Path) -> p2pvps_devserver::Running {
    let options = p2pvps_devserver::Options {
        files: Some(dir.to_owned()),
        ..p2pvps_devserver::Options::default()
    };
    p2pvps_devserver::spawn("127.0.0.1:0".parse().unwrap(), options)
        .await
        .unwrap()
}

fn offer(server: &p2pvps_devserver::Running, name: &str, body: &[u8]) -> Offer {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(body);
    Offer {
        version: Version::new(0, 9, 2),
        url: Url::parse(&format!("{}/files/{name}", server.url())).unwrap(),
        sha256: hex::encode(ctx.finish()),
        size: body.len() as u64,
    }
}

fn client() -> reqwest::Client {
    http_client()
}

fn bundle_bytes() -> Vec<u8> {
    (0..3_000_000u32).map(|i| (i % 251) as u8).collect()
}

/// A bundle's bytes published as `b.raucb` by a devserver, and where the device keeps its download
/// (the temporary directories live as long as the first value).
async fn published_bundle() -> (
    [tempfile::TempDir; 2],
    p2pvps_devserver::Running,
    Vec<u8>,
    std::path::PathBuf,
) {
    let public = tempfile::tempdir().unwrap();
    let local = tempfile::tempdir().unwrap();
    let bytes = bundle_bytes();
    std::fs::write(public.path().join("b.raucb"), &bytes).unwrap();
    let server = files_server(public.path()).await;
    let dest = local.path().join("b.raucb");
    ([public, local], server, bytes, dest)
}

#[tokio::test]
async fn a_download_is_kept_only_with_the_manifests_size_and_digest() {
    let (_dirs, server, bytes, dest) = published_bundle().await;

    let good = offer(&server, "b.raucb", &bytes);
    download::fetch(&client(), &good, &dest).await.unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), bytes);
    assert!(!dest.with_extension("part").exists());

    std::fs::remove_file(&dest).unwrap();
    let mut wrong = good.clone();
    wrong.sha256 = "0".repeat(64);
    let e = download::fetch(&client(), &wrong, &dest).await.unwrap_err();
    assert!(matches!(e, DownloadError::Digest { .. }), "{e}");
    assert!(!dest.exists() && !dest.with_extension("part").exists());

    let mut short = good.clone();
    short.size -= 1000;
    let e = download::fetch(&client(), &short, &dest).await.unwrap_err();
    assert!(matches!(e, DownloadError::Size { .. }), "{e}");
    assert!(!dest.exists() && !dest.with_extension("part").exists());

    let missing = offer(&server, "nothing-here.raucb", &bytes);
    let e = download::fetch(&client(), &missing, &dest)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("404"), "{e}");
    server.stop().await;
}

#[tokio::test]
async fn an_interrupted_download_resumes_where_it_stopped() {
    let (_dirs, server, bytes, dest) = published_bundle().await;
    // The part already held differs from the server's first half: only a download that resumes
    // (and does not fetch those bytes again) ends with this file, whose digest the offer names.
    let half = bytes.len() / 2;
    let mut expected = vec![7u8; half];
    expected.extend_from_slice(&bytes[half..]);
    std::fs::write(dest.with_extension("part"), &expected[..half]).unwrap();
    let mut resumed = offer(&server, "b.raucb", &expected);
    resumed.size = bytes.len() as u64;
    download::fetch(&client(), &resumed, &dest).await.unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), expected);
    server.stop().await;
}

#[tokio::test]
async fn the_manifest_offers_only_newer_versions_that_did_not_fail_here() {
    let public = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let server = files_server(public.path()).await;
    let running = Running::from_texts(RELEASE, "rauc.slot=A").unwrap();
    let manifest = |version: &str| {
        format!(
            r#"{{"boards": {{"rpi4": {{"version": "{version}", "url": "b.raucb", "sha256": "{}", "size": 5}}}}}}"#,
            "a".repeat(64)
        )
    };
    let url = Url::parse(&format!("{}/files/manifest.json", server.url())).unwrap();
    let updater = Updater::new(state.path(), running, Some(url.clone()));

    std::fs::write(public.path().join("manifest.json"), manifest("0.9.2")).unwrap();
    let offer = updater.check().await.unwrap().unwrap();
    assert_eq!(offer.version, Version::new(0, 9, 2));
    assert_eq!(
        offer.url.as_str(),
        format!("{}/files/b.raucb", server.url())
    );
    let record = RecordStore::new(state.path()).load();
    assert_eq!(
        record.last_check.unwrap().available.as_deref(),
        Some("0.9.2")
    );

    for older in ["0.9.1", "0.0.9"] {
        std::fs::write(public.path().join("manifest.json"), manifest(older)).unwrap();
        assert_eq!(updater.check().await.unwrap(), None, "{older}");
    }
    RecordStore::new(state.path())
        .update(|r| r.failed_versions.push("0.9.2".into()))
        .unwrap();
    std::fs::write(public.path().join("manifest.json"), manifest("0.9.2")).unwrap();
    assert_eq!(updater.check().await.unwrap(), None);

    std::fs::write(public.path().join("manifest.json"), "x".repeat(100_000)).unwrap();
    let e = updater.check().await.unwrap_err();
    assert!(e.to_string().contains("not a manifest"), "{e}");
    let record = RecordStore::new(state.path()).load();
    assert!(
        record
            .last_check
            .unwrap()
            .error
            .unwrap()
            .contains("not a manifest")
    );
    server.stop().await;
}
