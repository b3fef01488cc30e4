//! The bollard runtime against this machine's real Docker engine and the locally built renter image
//! (`scripts/test` builds it: image/renter/build).

mod common;

use std::time::{Duration, Instant};

use common::{Cleanup, docker, random_device};
use p2pvps_governor::runtime::{
    ContainerRuntime as _, ContainerSpec, DockerRuntime, Limits, RuntimeError,
};
use p2pvps_governor::socket::LeaseNotice;
use p2pvps_governor::types::{PasswordHash, Secret, Username};

const IMAGE: &str = "p2pvps/renter:latest";

fn spec(name: &str, device: &str, storage: &std::path::Path) -> ContainerSpec {
    ContainerSpec {
        name: name.into(),
        image: IMAGE.into(),
        cmd: vec!["sleep".into(), "infinity".into()],
        device: device.into(),
        storage: storage.into(),
        storage_propagation: false,
        socket_dir: None,
        network: "none".into(),
        dns: Vec::new(),
        limits: Limits {
            memory_bytes: 256 << 20,
            nano_cpus: 1_500_000_000,
            pids: 512,
        },
        layer: None,
    }
}

/// A fresh device id, a container name from it, a storage dir, and the container's cleanup.
fn names() -> (String, String, tempfile::TempDir, Cleanup) {
    let device = random_device();
    let name = format!("p2pvps-test-{device}");
    let cleanup = Cleanup(vec![name.clone()]);
    (device, name, tempfile::tempdir().unwrap(), cleanup)
}

fn inspect(name: &str, format: &str) -> String {
    let (ok, out, err) = docker(&["inspect", "--format", format, name]);
    assert!(ok, "docker inspect {name}: {err}");
    out
}

#[tokio::test]
async fn a_renter_container_is_confined_has_its_login_and_stops_fast() {
    let rt = DockerRuntime::connect()
        .await
        .expect("Docker engine reachable");
    rt.ensure_image(IMAGE, None)
        .await
        .expect("scripts/test builds the renter image");
    let (device, name, storage, _cleanup) = names();
    let mut confined = spec(&name, &device, storage.path());
    // A documentation address: with no network it is only written down, never asked.
    confined.dns = vec!["192.0.2.53".parse().unwrap()];
    let id = rt.create(&confined).await.unwrap();
    assert_eq!(
        rt.state(&id).await.unwrap(),
        Some(false),
        "created, not started"
    );
    rt.start(&id, None).await.unwrap();
    assert_eq!(rt.state(&id).await.unwrap(), Some(true));
    assert_eq!(
        inspect(&name, "{{json .HostConfig.Dns}}"),
        r#"["192.0.2.53"]"#
    );
    assert_eq!(rt.list(&device).await.unwrap(), vec![id.clone()]);

    // Confinement: not privileged, no published port, no Docker socket, limits set, an init.
    assert_eq!(inspect(&name, "{{.HostConfig.Privileged}}"), "false");
    let ports = inspect(&name, "{{json .HostConfig.PortBindings}}");
    assert!(ports == "null" || ports == "{}", "published ports: {ports}");
    assert_eq!(inspect(&name, "{{.HostConfig.PublishAllPorts}}"), "false");
    assert_eq!(
        inspect(&name, "{{.HostConfig.Memory}}"),
        (256u64 << 20).to_string()
    );
    assert_eq!(inspect(&name, "{{.HostConfig.NanoCpus}}"), "1500000000");
    assert_eq!(inspect(&name, "{{.HostConfig.PidsLimit}}"), "512");
    assert_eq!(inspect(&name, "{{.HostConfig.Init}}"), "true");
    // What the renter writes to the container's output is not kept under the engine's root.
    assert_eq!(inspect(&name, "{{.HostConfig.LogConfig.Type}}"), "none");
    let mounts = inspect(&name, "{{json .Mounts}}");
    assert!(!mounts.contains("docker.sock"), "{mounts}");
    assert!(mounts.contains("/media/storage"), "{mounts}");
    assert_eq!(
        inspect(&name, "{{index .Config.Labels \"io.p2pvps.device\"}}"),
        device
    );
    let env = inspect(&name, "{{json .Config.Env}}");

    // The login: exists, in sudo, the shadow entry is our hash, and it owns the storage.
    let password = Secret::password("Xy7pQ2mN0a").unwrap();
    let hash = PasswordHash::of(&password);
    let user = Username::parse("aB3xY9zQ1k").unwrap();
    rt.add_login(&id, &user, &hash, &lease()).await.unwrap();
    // The lease is saved with the login, so the first login's banner already names the end.
    let (ok, saved, err) = docker(&["exec", &name, "cat", "/run/p2pvps-lease.json"]);
    assert!(ok, "no lease saved with the login: {err}");
    assert!(
        saved.contains("\"expiration\":\"2030-01-02T03:04:05Z\"")
            && saved.contains("\"port\":40022"),
        "{saved}"
    );
    let (ok, groups, err) = docker(&["exec", &name, "id", "-nG", "aB3xY9zQ1k"]);
    assert!(ok, "{err}");
    assert!(groups.split_whitespace().any(|g| g == "sudo"), "{groups}");
    let (_, shadow, _) = docker(&["exec", &name, "getent", "shadow", "aB3xY9zQ1k"]);
    assert_eq!(shadow.split(':').nth(1), Some(hash.as_str()));
    let (ok, _, err) = docker(&[
        "exec",
        "-u",
        "aB3xY9zQ1k",
        &name,
        "sh",
        "-c",
        "echo hi > /media/storage/f",
    ]);
    assert!(ok, "renter cannot write its storage: {err}");
    assert_eq!(
        std::fs::read_to_string(storage.path().join("f")).unwrap(),
        "hi\n"
    );
    // The password is nowhere in the container's config or environment.
    assert!(!env.contains("Xy7pQ2mN0a") && !inspect(&name, "{{json .}}").contains("Xy7pQ2mN0a"));

    // Made again (a login interrupted half-way): the user is kept, the password set anew.
    let again = PasswordHash::of(&Secret::password("Qq1wE2rT3y").unwrap());
    rt.add_login(&id, &user, &again, &lease()).await.unwrap();
    let (_, shadow, _) = docker(&["exec", &name, "getent", "shadow", "aB3xY9zQ1k"]);
    assert_eq!(shadow.split(':').nth(1), Some(again.as_str()));

    let started = Instant::now();
    rt.remove(&id, Duration::from_secs(3)).await.unwrap();
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "stop waited for the kill: {took:?}"
    );
    assert_eq!(rt.state(&id).await.unwrap(), None);
    let left = rt.list(&device).await.unwrap();
    assert!(left.is_empty(), "containers left: {left:?}");
    rt.remove(&id, Duration::from_secs(3))
        .await
        .expect("removing a gone container is fine");
}

#[tokio::test]
async fn a_stopped_container_is_seen_and_restarted() {
    let rt = DockerRuntime::connect().await.unwrap();
    let (device, name, storage, _cleanup) = names();
    let id = rt
        .create(&spec(&name, &device, storage.path()))
        .await
        .unwrap();
    rt.start(&id, None).await.unwrap();
    let (ok, _, err) = docker(&["stop", "-t", "1", &name]);
    assert!(ok, "{err}");
    assert_eq!(rt.state(&id).await.unwrap(), Some(false));
    rt.start(&id, None).await.unwrap();
    assert_eq!(rt.state(&id).await.unwrap(), Some(true));
}

#[tokio::test]
async fn an_absent_image_is_imported_from_a_tarball() {
    let rt = DockerRuntime::connect().await.unwrap();
    let tag = format!("p2pvps/import-test:{}", random_device());
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/marker"), "imported").unwrap();
    let tar = tmp.path().join("rootfs.tar");
    let status = std::process::Command::new("tar")
        .args([
            "-cf",
            tar.to_str().unwrap(),
            "-C",
            root.to_str().unwrap(),
            ".",
        ])
        .status()
        .unwrap();
    assert!(status.success());

    let e = rt.ensure_image(&tag, None).await.unwrap_err();
    assert!(e.to_string().contains("no renterImageTar"), "{e}");
    let missing = tmp.path().join("missing.tar");
    let e = rt.ensure_image(&tag, Some(&missing)).await.unwrap_err();
    assert!(matches!(e, RuntimeError::ImageTar { .. }), "{e}");

    rt.ensure_image(&tag, Some(&tar)).await.unwrap();
    let (ok, _, err) = docker(&["image", "inspect", &tag]);
    let _ = docker(&["rmi", &tag]);
    assert!(ok, "imported image not found: {err}");
}

/// Runs `mount ARGS`, panicking with its stderr.
fn mount(args: &[&str]) {
    let out = std::process::Command::new("mount")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mount {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Undoes the mounts of the propagation test even when it fails.
struct Unmount(Vec<std::path::PathBuf>);

impl Drop for Unmount {
    fn drop(&mut self) {
        for p in self.0.iter().rev() {
            let _ = std::process::Command::new("umount")
                .arg("-R")
                .arg(p)
                .status();
        }
    }
}

/// A locked volume: the container starts on the read-only placeholder (the login is still made),
/// and the volume mounted over it later (the renter's unlock) reaches the running container.
#[tokio::test]
async fn a_volume_mounted_after_the_start_reaches_the_container() {
    let rt = DockerRuntime::connect().await.unwrap();
    let (device, name, state, _cleanup) = names();
    let root = state.path().join("mnt");
    let point = root.join("vol");
    std::fs::create_dir_all(&point).unwrap();
    let root_s = root.to_str().unwrap();
    let point_s = point.to_str().unwrap();
    let _unmount = Unmount(vec![root.clone()]);
    mount(&["--bind", root_s, root_s]);
    mount(&["--make-shared", root_s]);
    mount(&[
        "-t",
        "tmpfs",
        "-o",
        "ro,size=4k,mode=0555",
        "p2pvps-locked",
        point_s,
    ]);

    let mut s = spec(&name, &device, &point);
    s.storage_propagation = true;
    let id = rt.create(&s).await.unwrap();
    rt.start(&id, None).await.unwrap();
    assert!(inspect(&name, "{{json .Mounts}}").contains("\"Propagation\":\"rslave\""));
    let user = Username::parse("renter1").unwrap();
    let hash = PasswordHash::of(&Secret::password("Xy7pQ2mN0a").unwrap());
    rt.add_login(&id, &user, &hash, &lease())
        .await
        .expect("the login is made on a locked volume too");
    let (ok, _, err) = docker(&["exec", &name, "touch", "/media/storage/leak"]);
    assert!(
        !ok && err.contains("Read-only"),
        "the placeholder took a write: {err}"
    );

    // The "unlock": a filesystem mounted over the placeholder on the host.
    mount(&["-t", "tmpfs", "-o", "size=1m", "unlocked", point_s]);
    std::fs::write(point.join("hello"), "from the volume\n").unwrap();
    let (ok, out, err) = docker(&["exec", &name, "cat", "/media/storage/hello"]);
    assert!(ok, "the unlocked volume did not reach the container: {err}");
    assert_eq!(out, "from the volume");
    rt.remove(&id, Duration::from_secs(3)).await.unwrap();
}

/// Whether `path` is a mount point in this mount namespace.
fn is_mount_point(path: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(path))
}

/// The renter's writes, anywhere in the container, land in the layer directory on the volume (a
/// filesystem of its own here), and nowhere under the engine's data root; the engine's copy of the
/// layer is the volume's only while the container lives, and the volume's survives the removal
/// (the wipe takes it), so the engine never deletes the renter's files through the bind.
#[tokio::test]
async fn the_renter_writes_only_to_its_layer_on_the_volume() {
    let rt = DockerRuntime::connect().await.unwrap();
    let (device, name, state, _cleanup) = names();
    let volume = state.path().join("vol");
    std::fs::create_dir_all(&volume).unwrap();
    let volume_s = volume.to_str().unwrap();
    let _unmount = Unmount(vec![volume.clone()]);
    mount(&[
        "-t",
        "tmpfs",
        "-o",
        "size=16m",
        "p2pvps-test-volume",
        volume_s,
    ]);
    let layer = volume.join("layer");
    std::fs::create_dir_all(&layer).unwrap();
    let storage = volume.join("renter");
    std::fs::create_dir_all(&storage).unwrap();

    let mut s = spec(&name, &device, &storage);
    s.layer = Some(layer.clone());
    s.dns = vec!["192.0.2.53".parse().unwrap()];
    let id = rt.create(&s).await.unwrap();
    let missing = state.path().join("closed-volume");
    let e = rt.start(&id, Some(&missing)).await.unwrap_err();
    assert!(e.to_string().contains("closed-volume"), "{e}");
    assert_eq!(
        rt.state(&id).await.unwrap(),
        Some(false),
        "started without its layer"
    );

    rt.start(&id, Some(&layer)).await.unwrap();
    let upper = inspect(&name, "{{.GraphDriver.Data.UpperDir}}");
    let home = std::path::Path::new(&upper)
        .parent()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(is_mount_point(&home), "{home} is not bound");
    let (ok, _, err) = docker(&[
        "exec",
        &name,
        "sh",
        "-c",
        "echo canary-7f3 > /root/canary && echo '10.1.2.3 renter-host' >> /etc/hosts && \
         echo renterbox > /etc/hostname && cat /etc/resolv.conf",
    ]);
    assert!(ok, "{err}");
    assert_eq!(
        std::fs::read_to_string(layer.join("home/diff/root/canary")).unwrap(),
        "canary-7f3\n"
    );
    let hosts = std::fs::read_to_string(layer.join("etc/hosts")).unwrap();
    assert!(hosts.contains("10.1.2.3 renter-host"), "{hosts}");
    assert_eq!(
        std::fs::read_to_string(layer.join("etc/resolv.conf")).unwrap(),
        "nameserver 192.0.2.53\n"
    );
    // A reboot drops the binds: the stopped container starts again only on the volume's layer.
    let (ok, _, err) = docker(&["stop", "-t", "0", &name]);
    assert!(ok, "{err}");
    let (ok, _, err) = common::run("umount", &[&home]);
    assert!(ok, "{err}");
    // Nothing of it under the engine's own root: the container's layer and its directory.
    let own = rt.root_dir().join("containers").join(&id);
    for (what, text) in [("file", "canary-7f3"), ("hosts line", "renter-host")] {
        let (_, found, _) = common::run("grep", &["-rlsF", text, &home, own.to_str().unwrap()]);
        assert!(
            found.is_empty(),
            "the renter's {what} under the engine's root: {found}"
        );
    }
    rt.start(&id, Some(&layer)).await.unwrap();
    let (ok, out, err) = docker(&["exec", &name, "cat", "/root/canary"]);
    assert!(ok, "{err}");
    assert_eq!(out, "canary-7f3");

    rt.remove(&id, Duration::from_secs(1)).await.unwrap();
    assert!(!is_mount_point(&home));
    assert!(
        layer.join("home/diff/root/canary").exists(),
        "the engine deleted the renter's files through the bind"
    );
}

/// A rental's lease as the governor hands it over with the login.
fn lease() -> LeaseNotice {
    LeaseNotice {
        expiration: "2030-01-02T03:04:05Z".parse().unwrap(),
        notices: vec![Duration::from_mins(10)],
        contact: Some(("tunnel.example".into(), 40022)),
    }
}
