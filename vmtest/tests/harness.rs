//! The harness itself, end to end under QEMU TCG: each test boots Debian's kernel with the vmtest
//! initramfs and runs a vm-guest scenario. They print their boot and total times (`--nocapture`).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use p2pvps_vmtest::disk::{self, MIB};
use p2pvps_vmtest::{HOST_ADDR, Vm, VmBuilder};

const GUEST: &str = env!("CARGO_BIN_EXE_vm-guest");
/// TCG boots in well under a minute here; the margin is for a machine busy with other builds.
const EXIT_TIMEOUT: Duration = Duration::from_mins(5);

fn report(test: &str, vm: &Vm, started: Instant) {
    eprintln!(
        "vmtest {test}: /init after {:.1?}, total {:.1?}",
        vm.boot_time().unwrap_or_default(),
        started.elapsed()
    );
}

fn exit_code(vm: &mut Vm) -> i32 {
    vm.wait_exit(EXIT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn smoke_sees_the_usb_disk_and_dm_crypt() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let usb = disk::sparse(&dir.path().join("usb.img"), 256 * MIB).unwrap();
    let mut vm = VmBuilder::new(GUEST)
        .usb_disk("usb1", &usb)
        .args(["smoke"])
        .start()
        .unwrap();
    let code = exit_code(&mut vm);
    report("smoke", &vm, started);
    let out = vm.serial_output();
    assert_eq!(code, 0, "{}", vm.diagnostics());
    assert!(out.contains("usb disk: sda ("), "{out}");
    assert!(out.contains("/dev/mapper/control: present"), "{out}");
}

#[test]
fn a_failing_guest_command_gives_its_exit_code() {
    let started = Instant::now();
    let mut vm = VmBuilder::new(GUEST).args(["exit", "7"]).start().unwrap();
    let code = exit_code(&mut vm);
    report("exit-code", &vm, started);
    assert_eq!(code, 7, "{}", vm.diagnostics());
}

#[test]
fn usb_hotplug_reaches_the_guest() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let usb = disk::sparse(&dir.path().join("hot.img"), 128 * MIB).unwrap();
    let mut vm = VmBuilder::new(GUEST)
        .args(["wait-usb", "1", "120"])
        .start()
        .unwrap();
    vm.wait_for_line("waiting for 1 USB disks", EXIT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let attach = Instant::now();
    vm.usb_attach("hot1", &usb)
        .unwrap_or_else(|e| panic!("{e}"));
    let found = vm
        .wait_for_line("found 1 USB disks", Duration::from_mins(2))
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "vmtest hotplug: attach to guest seeing the disk {:.1?}: {found}",
        attach.elapsed()
    );
    let code = exit_code(&mut vm);
    report("hotplug", &vm, started);
    assert_eq!(code, 0, "{}", vm.diagnostics());
}

/// Unplug and replug under the same id: `usb_detach` returns only once QEMU let go of the drive.
#[test]
fn usb_unplug_and_replug_reach_the_guest() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let usb = disk::sparse(&dir.path().join("usb.img"), 64 * MIB).unwrap();
    let mut vm = VmBuilder::new(GUEST)
        .usb_disk("usb1", &usb)
        .args(["usb-replug", "120"])
        .start()
        .unwrap();
    vm.wait_for_line("waiting for the USB disks to go", EXIT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    vm.usb_detach("usb1").unwrap_or_else(|e| panic!("{e}"));
    vm.wait_for_line("USB disks gone", Duration::from_mins(2))
        .unwrap_or_else(|e| panic!("{e}"));
    vm.usb_attach("usb1", &usb)
        .unwrap_or_else(|e| panic!("{e}"));
    let code = exit_code(&mut vm);
    report("replug", &vm, started);
    assert_eq!(code, 0, "{}", vm.diagnostics());
    assert!(
        vm.serial_output().contains("USB disk back"),
        "{}",
        vm.serial_output()
    );
}

#[test]
fn the_state_disk_survives_a_reboot() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let state = disk::ext4(&dir.path().join("state.img"), 64 * MIB).unwrap();
    let machine = VmBuilder::new(GUEST).state_disk(&state);
    let text = format!("written at {:?}", std::time::SystemTime::now());

    let mut first = machine
        .clone()
        .args(["state-write", &text])
        .start()
        .unwrap();
    assert_eq!(exit_code(&mut first), 0, "{}", first.diagnostics());
    report("state boot 1", &first, started);
    drop(first);

    let mut second = machine.args(["state-read", &text]).start().unwrap();
    let code = exit_code(&mut second);
    report("state boot 1+2", &second, started);
    assert_eq!(code, 0, "{}", second.diagnostics());
}

/// A host server on 127.0.0.1 answering "pong" to each "ping" line, for as long as the test runs.
fn pong_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut line = String::new();
                if BufReader::new(&stream).read_line(&mut line).is_ok() && line.trim() == "ping" {
                    let _ = (&stream).write_all(b"pong\n");
                }
            });
        }
    });
    port
}

#[test]
fn the_guest_reaches_only_the_forwarded_host_port() {
    let started = Instant::now();
    let open = pong_server();
    // Also answers, but is not forwarded: the guest must not reach it through QEMU's host alias.
    let closed = pong_server();
    let mut vm = VmBuilder::new(GUEST)
        .host_port(open)
        .args([
            "net-check",
            &format!("{HOST_ADDR}:{open}"),
            &format!("10.0.2.2:{closed}"),
        ])
        .start()
        .unwrap();
    let code = exit_code(&mut vm);
    report("net", &vm, started);
    assert_eq!(code, 0, "{}", vm.diagnostics());
    assert!(
        vm.serial_output().contains("reply from"),
        "{}",
        vm.serial_output()
    );
}

#[test]
fn initramfs_holds_the_guest_and_its_libraries() {
    let kernel = p2pvps_vmtest::KernelAssets::locate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("initrd.cpio");
    let config = p2pvps_vmtest::InitConfig {
        argv: vec!["/usr/local/bin/vm-guest".into()],
        ..Default::default()
    };
    p2pvps_vmtest::Initramfs::new(&kernel)
        .binary_stripped(GUEST, "/usr/local/bin/vm-guest")
        .write(&config, &out)
        .unwrap();
    let listing = std::process::Command::new("cpio")
        .args(["-t", "--quiet"])
        .stdin(std::fs::File::open(&out).unwrap())
        .output()
        .unwrap();
    let names = String::from_utf8_lossy(&listing.stdout);
    for needle in [
        "init",
        "bin/busybox",
        "sbin/modprobe",
        "usr/local/bin/vm-guest",
        "usr/sbin/mke2fs",
        "usr/sbin/mkfs.ext4",
        "etc/mke2fs.conf",
        "lib64/ld-linux-x86-64.so.2",
        "libgcc_s.so.1",
        "dm-crypt.ko",
        "usb-storage.ko",
        "modules.dep",
        "etc/vmtest/argv",
    ] {
        assert!(
            names.contains(needle),
            "{needle} missing from the initramfs"
        );
    }
    let size = std::fs::metadata(&out).unwrap().len();
    eprintln!("vmtest initramfs: {} MiB", size / MIB);
    assert!(Path::new(&out).exists());
}
