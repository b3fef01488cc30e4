//! Host side of the VM tests: boots QEMU (TCG) with Debian's kernel and an initramfs holding the
//! `vm-guest` binary, attaches USB disks through qemu-xhci, and drives hotplug through the monitor.
