//! `scripts/bench-wipe`: in the VM, the crypto-erase of a large sparse USB drive against a full zero
//! overwrite of the same drive (the plain mode's wipe), and the time from expiry to storage ready
//! for the next renter. Prints the guest's figures; asserts nothing about time.
//!
//! Env: `P2PVPS_BENCH_DRIVE_GIB` (default 64), `P2PVPS_BENCH_OVERWRITE_MIB` (default 1024: the
//! overwrite is timed over this much of the drive and extrapolated; writing all of a 64 GiB drive
//! under emulation would take hours).

use std::time::Duration;

use p2pvps_vmtest::VmBuilder;
use p2pvps_vmtest::disk::{self, MIB};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let gib = env_u64("P2PVPS_BENCH_DRIVE_GIB", 64);
    let overwrite_mib = env_u64("P2PVPS_BENCH_OVERWRITE_MIB", 1024);
    let dir = tempfile::tempdir().unwrap();
    let usb = disk::sparse(&dir.path().join("usb.img"), gib * 1024 * MIB).unwrap();
    let state = disk::ext4(&dir.path().join("state.img"), 64 * MIB).unwrap();
    let mut vm = VmBuilder::new(env!("CARGO_BIN_EXE_vm-storage"))
        .state_disk(&state)
        .usb_disk("usb1", &usb)
        .storage_tools()
        .env("P2PVPS_BENCH_OVERWRITE_MIB", &overwrite_mib.to_string())
        .args(["bench-wipe"])
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    let code = vm
        .wait_exit(Duration::from_hours(1))
        .unwrap_or_else(|e| panic!("{e}"));
    let out = vm.serial_output();
    assert_eq!(code, 0, "bench-wipe failed:\n{}", vm.diagnostics());
    println!("bench-wipe (QEMU TCG, usb-storage on qemu-xhci, sparse {gib} GiB image)");
    for line in out.lines().filter_map(|l| l.strip_prefix("bench: ")) {
        println!("  {line}");
    }
}
