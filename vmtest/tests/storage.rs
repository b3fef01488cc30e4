//! The governor's encrypted USB storage on a real kernel: QEMU (TCG) with Debian's kernel, the
//! drive on qemu-xhci + usb-storage (so discovery takes the real USB path), dm-crypt for LUKS2, and
//! a virtio state disk that carries the state dir from one boot to the next (reboots).
//!
//! One test walks a rental's storage through four boots: provision and hand the key to the renter;
//! reboot into a locked volume and unlock it with the passphrase; a power cut mid-wipe; the wipe
//! resumed at the next boot, verified, and the next renter's volume empty. Another plugs the drive
//! in through the QEMU monitor while discovery waits. The last runs the governor's own lifecycle in
//! the VM against the devserver on the host: a rental on the encrypted drive, the renter taking the
//! key over through the socket, a reboot into a locked volume unlocked by the renter, and at the end
//! of the lease the crypto-erase and the next registration, all done by the governor.

use std::path::Path;
use std::time::{Duration, Instant};

use p2pvps_vmtest::disk::{self, MIB};
use p2pvps_vmtest::{Vm, VmBuilder};

const GUEST: &str = env!("CARGO_BIN_EXE_vm-storage");
const TIMEOUT: Duration = Duration::from_mins(5);

/// The governor's storage tools (the LUKS2 helper among them) and the state disk.
fn machine(state: &Path) -> VmBuilder {
    VmBuilder::new(GUEST).state_disk(state).storage_tools()
}

/// Boot a VM running `scenario`.
fn start(builder: VmBuilder, scenario: &str) -> (Vm, Instant) {
    let started = Instant::now();
    let vm = builder
        .args([scenario])
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    (vm, started)
}

/// Wait for `scenario` to end and return the guest's output; panics with the diagnostics if it
/// failed.
fn finish(mut vm: Vm, scenario: &str, started: Instant) -> String {
    let code = vm.wait_exit(TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let out = vm.serial_output();
    eprintln!(
        "vm-storage {scenario}: exit {code}, /init after {:.1?}, total {:.1?}\n{}",
        vm.boot_time().unwrap_or_default(),
        started.elapsed(),
        out.lines()
            .filter(|l| l.starts_with("ok:") || l.starts_with("measure:"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(code, 0, "{scenario} failed:\n{}", vm.diagnostics());
    assert!(
        out.contains(&format!("vm-storage {scenario}: passed")),
        "{out}"
    );
    out
}

/// Boot, run `scenario` to its end, and return the guest's output.
fn boot(builder: VmBuilder, scenario: &str) -> String {
    let (vm, started) = start(builder, scenario);
    finish(vm, scenario, started)
}

/// Neither LUKS header magic (primary, LUKS2 secondary) is anywhere on the drive image.
fn assert_no_luks_header(usb: &Path) {
    for magic in [b"LUKS\xba\xbe", b"SKUL\xba\xbe"] {
        assert!(
            !file_contains(usb, magic),
            "a LUKS header survived the wipe"
        );
    }
}

/// Whether `needle` is anywhere in the file (a drive's image, read after the VM is off).
fn file_contains(path: &Path, needle: &[u8]) -> bool {
    let data = std::fs::read(path).unwrap();
    data.windows(needle.len()).any(|w| w == needle)
}

/// The canary the `provision` boot wrote into the volume.
fn canary(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("canary: "))
        .expect("provision prints its canary")
        .trim()
        .to_owned()
}

#[test]
fn an_encrypted_rental_survives_reboots_with_the_renters_key_and_is_crypto_erased() {
    let dir = tempfile::tempdir().unwrap();
    let usb = disk::sparse(&dir.path().join("usb.img"), 512 * MIB).unwrap();
    let state = disk::ext4(&dir.path().join("state.img"), 64 * MIB).unwrap();
    let vm = || machine(&state).usb_disk("usb1", &usb);

    let out = boot(vm(), "provision");
    assert!(out.contains("ok: discovery picked /dev/sda"), "{out}");
    assert!(out.contains("ok: the device key is deleted"), "{out}");
    let canary = canary(&out);
    assert!(canary.starts_with("P2PVPS-CANARY-"), "{canary}");
    assert!(
        !file_contains(&usb, canary.as_bytes()),
        "the canary lies in plain text on the drive"
    );
    assert!(
        file_contains(&usb, b"LUKS\xba\xbe"),
        "no LUKS header on the drive"
    );

    let out = boot(vm(), "locked-then-unlock");
    assert!(out.contains("ok: locked after the reboot"), "{out}");
    assert!(out.contains("ok: a wrong passphrase is refused"), "{out}");
    assert!(
        out.contains("ok: the canary is back after the unlock"),
        "{out}"
    );

    boot(vm(), "crash-mid-wipe");

    let out = boot(vm(), "resume-wipe");
    assert!(out.contains("ok: no LUKS header on the drive"), "{out}");
    assert!(out.contains("ok: the next volume is empty"), "{out}");
    assert!(!file_contains(&usb, canary.as_bytes()));
    assert_no_luks_header(&usb);
}

#[test]
fn a_drive_plugged_in_later_is_found_provisioned_and_wiped() {
    let dir = tempfile::tempdir().unwrap();
    let usb = disk::sparse(&dir.path().join("hot.img"), 256 * MIB).unwrap();
    let state = disk::ext4(&dir.path().join("state.img"), 64 * MIB).unwrap();
    let (mut vm, started) = start(machine(&state), "hotplug");
    vm.wait_for_line("waiting for storage", TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    vm.usb_attach("hot1", &usb)
        .unwrap_or_else(|e| panic!("{e}"));
    let out = finish(vm, "hotplug", started);
    assert!(out.contains("ok: discovery picked /dev/sda"), "{out}");
    assert!(out.contains("ok: the hot-plugged drive is wiped"), "{out}");
}

/// A drive pulled mid-rental and plugged back in (under a new name, the old one still held) is
/// found again and crypto-erased at the end.
#[test]
fn a_drive_pulled_and_plugged_back_is_still_wiped() {
    let dir = tempfile::tempdir().unwrap();
    let usb = disk::sparse(&dir.path().join("usb.img"), 256 * MIB).unwrap();
    let state = disk::ext4(&dir.path().join("state.img"), 64 * MIB).unwrap();
    let (mut vm, started) = start(machine(&state).usb_disk("usb1", &usb), "pulled-drive");
    vm.wait_for_line("pull the drive", TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    vm.usb_detach("usb1").unwrap_or_else(|e| panic!("{e}"));
    vm.usb_attach("usb2", &usb)
        .unwrap_or_else(|e| panic!("{e}"));
    let out = finish(vm, "pulled-drive", started);
    assert!(out.contains("ok: the drive is back as /dev/sdb"), "{out}");
    assert!(
        out.contains("ok: no LUKS header on the returned drive"),
        "{out}"
    );
    assert!(!file_contains(&usb, canary(&out).as_bytes()));
    assert_no_luks_header(&usb);
}

/// `POST /admin/expire/{device}` on the devserver: the lease ends now.
fn expire(addr: std::net::SocketAddr, device: &str) {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST /admin/expire/{device} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[test]
fn the_governor_rents_out_locks_unlocks_and_crypto_erases_the_drive_across_a_reboot() {
    const DEVICE: &str = "5a2608cfd7df9800266a3f01";
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt
        .block_on(p2pvps_devserver::spawn(
            "127.0.0.1:0".parse().unwrap(),
            p2pvps_devserver::Options {
                devices: vec![DEVICE.into()],
                ..p2pvps_devserver::Options::default()
            },
        ))
        .expect("the devserver starts");
    let addr = server.addr;
    let dir = tempfile::tempdir().unwrap();
    let usb = disk::sparse(&dir.path().join("usb.img"), 256 * MIB).unwrap();
    let state = disk::ext4(&dir.path().join("state.img"), 64 * MIB).unwrap();
    let market = format!("http://{}:{}", p2pvps_vmtest::HOST_ADDR, addr.port());
    let vm = || {
        machine(&state)
            .usb_disk("usb1", &usb)
            // The marketplace client loads the system's CA certificates even for plain HTTP.
            .file(
                "/etc/ssl/certs/ca-certificates.crt",
                "/etc/ssl/certs/ca-certificates.crt",
            )
            .host_port(addr.port())
            .env("P2PVPS_MARKET", &market)
            .env("P2PVPS_DEVICE", DEVICE)
    };

    let out = boot(vm(), "governor-rent");
    assert!(
        out.contains("ok: the renter holds the key, still open"),
        "{out}"
    );
    let canary = canary(&out);
    assert!(
        !file_contains(&usb, canary.as_bytes()),
        "plain text on the drive"
    );

    let (mut guest, started) = start(vm(), "governor-reboot");
    guest
        .wait_for_line("expire me", TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n{}", guest.diagnostics()));
    expire(addr, DEVICE);
    let out = finish(guest, "governor-reboot", started);
    for want in [
        "ok: locked after the reboot",
        "ok: a wrong passphrase is refused",
        "ok: the canary is back in the container's storage",
        "ok: wiped and serving the next rental",
        "ok: the next renter's storage is empty",
    ] {
        assert!(out.contains(want), "{want}: {out}");
    }
    assert!(!file_contains(&usb, canary.as_bytes()));
    rt.block_on(server.stop());
}
