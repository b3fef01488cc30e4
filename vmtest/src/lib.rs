//! Host side of the VM tests: boots QEMU (TCG) with Debian's kernel and an initramfs holding the
//! `vm-guest` binary, attaches USB disks through qemu-xhci, and drives hotplug through the monitor.
//!
//! ```no_run
//! use std::time::Duration;
//! use p2pvps_vmtest::{VmBuilder, disk};
//! let dir = tempfile::tempdir().unwrap();
//! let usb = disk::sparse(&dir.path().join("usb.img"), 256 * disk::MIB).unwrap();
//! let mut vm = VmBuilder::new("target/debug/vm-guest")
//!     .usb_disk("usb1", &usb)
//!     .args(["smoke"])
//!     .start()
//!     .unwrap();
//! assert_eq!(vm.wait_exit(Duration::from_secs(180)).unwrap(), 0);
//! ```

pub mod assets;
pub mod cpio;
pub mod disk;
pub mod initramfs;
pub mod monitor;
pub mod vm;

pub use assets::{AssetsError, KernelAssets};
pub use disk::DiskError;
pub use initramfs::{InitConfig, Initramfs, InitramfsError};
pub use monitor::{Monitor, MonitorError};
pub use vm::{GUEST_ADDR, HOST_ADDR, STATE_SERIAL, Vm, VmBuilder, VmError};
