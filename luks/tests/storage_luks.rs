//! LUKS2 on real loop devices as the governor does it: its client (`storage::luks::Luks`) running
//! this package's helper binary, which does the work through libcryptsetup: format, keyslots, the
//! renter's passphrase taking over from the device key, and the crypto-erase. None of this maps a device, so it runs on
//! this machine's kernel (no dm-crypt); opening, mounting and the whole encrypted volume's life are
//! the VM tests' (vmtest/).
//!
//! Needs root and loop devices (as CI has); fails, never skips, without them.

use std::process::Command;

use p2pvps_governor::storage::luks::{DEVICE_SLOT, Luks, PassphraseKdf, RENTER_SLOT};
use p2pvps_testkit::Loop;

/// The governor's client with the helper cargo built for this test.
fn luks() -> Luks {
    Luks::new(env!("CARGO_BIN_EXE_p2pvps-luks"))
}

fn disk() -> (Loop, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let disk = Loop::new(&dir.path().join("luks.img"), 40);
    (disk, dir)
}

/// What `cryptsetup` (the command-line tool, an independent reader) says of the header.
fn dump(dev: &std::path::Path) -> Option<String> {
    let out = Command::new("cryptsetup")
        .arg("luksDump")
        .arg(dev)
        .output()
        .expect("run cryptsetup (cryptsetup-bin)");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn format_gives_luks2_with_only_the_device_key() {
    let (disk, _dir) = disk();
    let key = [7u8; 64];
    luks().format(&disk.dev, &key).unwrap();
    let d = dump(&disk.dev).expect("cryptsetup reads our header");
    let field = |name: &str| {
        d.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_default()
    };
    assert_eq!(field("Version:"), "2", "{d}");
    assert_eq!(field("Label:"), "p2pvps", "{d}");
    assert_eq!(field("\tcipher:"), "aes-xts-plain64", "{d}");
    assert_eq!(luks().active_slots(&disk.dev).unwrap(), vec![DEVICE_SLOT]);
    assert_eq!(luks().check_key(&disk.dev, &key).unwrap(), DEVICE_SLOT);
    let wrong = luks().check_key(&disk.dev, &[8u8; 64]).unwrap_err();
    assert!(wrong.is_wrong_key(), "{wrong}");
}

#[test]
fn the_renters_passphrase_takes_over_and_changes() {
    let (disk, _dir) = disk();
    let key = [1u8; 64];
    luks().format(&disk.dev, &key).unwrap();
    luks()
        .set_renter_passphrase(&disk.dev, &key, b"correct horse", PassphraseKdf::Fast)
        .unwrap();
    assert_eq!(
        luks().active_slots(&disk.dev).unwrap(),
        vec![DEVICE_SLOT, RENTER_SLOT]
    );
    let d = dump(&disk.dev).unwrap();
    assert!(
        d.contains("argon2id"),
        "the passphrase slot is argon2id: {d}"
    );
    luks().destroy_slot(&disk.dev, DEVICE_SLOT).unwrap();
    assert!(
        luks()
            .check_key(&disk.dev, &key)
            .unwrap_err()
            .is_wrong_key()
    );
    assert_eq!(
        luks().check_key(&disk.dev, b"correct horse").unwrap(),
        RENTER_SLOT
    );

    // A change needs the current passphrase; the old one stops working.
    let e = luks()
        .set_renter_passphrase(&disk.dev, b"guess", b"new one!", PassphraseKdf::Fast)
        .unwrap_err();
    assert!(e.is_wrong_key(), "{e}");
    luks()
        .set_renter_passphrase(
            &disk.dev,
            b"correct horse",
            b"battery staple",
            PassphraseKdf::Fast,
        )
        .unwrap();
    assert_eq!(luks().active_slots(&disk.dev).unwrap(), vec![RENTER_SLOT]);
    assert!(
        luks()
            .check_key(&disk.dev, b"correct horse")
            .unwrap_err()
            .is_wrong_key()
    );
    assert_eq!(
        luks().check_key(&disk.dev, b"battery staple").unwrap(),
        RENTER_SLOT
    );
}

#[test]
fn erase_destroys_every_keyslot_and_says_how_much_header_to_overwrite() {
    let (disk, dir) = disk();
    let key = [3u8; 64];
    luks().format(&disk.dev, &key).unwrap();
    luks()
        .set_renter_passphrase(&disk.dev, &key, b"a passphrase", PassphraseKdf::Fast)
        .unwrap();
    let header = luks()
        .erase(&disk.dev)
        .unwrap()
        .expect("a header was there");
    assert_eq!(header, 16 << 20, "LUKS2's default header size");
    // The header is still readable, but nothing opens it any more.
    let slots = luks().active_slots(&disk.dev).unwrap();
    assert!(slots.is_empty(), "keyslots left: {slots:?}");
    assert!(
        luks()
            .check_key(&disk.dev, &key)
            .unwrap_err()
            .is_wrong_key()
    );
    assert!(
        luks()
            .check_key(&disk.dev, b"a passphrase")
            .unwrap_err()
            .is_wrong_key()
    );
    assert!(luks().has_header(&disk.dev).unwrap());
    // Nothing to erase on a blank device.
    let blank = Loop::new(&dir.path().join("blank.img"), 20);
    assert_eq!(luks().erase(&blank.dev).unwrap(), None);
    assert!(!luks().has_header(&blank.dev).unwrap());
}

#[test]
fn any_byte_of_a_passphrase_reaches_the_keyslot() {
    // The wire carries keys in hex: a line end, a NUL or a non-UTF-8 byte inside a passphrase is
    // part of it, not the end of it.
    let (disk, _dir) = disk();
    let key = [5u8; 64];
    let odd = b"line one\nline two\0\xff end";
    luks().format(&disk.dev, &key).unwrap();
    luks()
        .set_renter_passphrase(&disk.dev, &key, odd, PassphraseKdf::Fast)
        .unwrap();
    assert_eq!(luks().check_key(&disk.dev, odd).unwrap(), RENTER_SLOT);
    assert!(
        luks()
            .check_key(&disk.dev, b"line one")
            .unwrap_err()
            .is_wrong_key()
    );
}

#[test]
fn a_failure_names_the_device_and_what_failed() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-device");
    let e = luks().format(&missing, &[1; 64]).unwrap_err();
    let text = e.to_string();
    assert!(
        text.starts_with(&format!("{}: format LUKS2: ", missing.display())),
        "{text}"
    );
    assert!(!e.is_wrong_key(), "{text}");
    // Opening nothing on a blank device is not a wrong key either: there is no keyslot at all.
    let blank = Loop::new(&dir.path().join("blank.img"), 20);
    let e = luks().check_key(&blank.dev, b"x").unwrap_err();
    assert!(e.to_string().contains("read the LUKS2 header"), "{e}");
}
