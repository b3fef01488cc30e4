#!/bin/busybox sh
# /init of the vmtest initramfs (vmtest/src/initramfs.rs bakes it in). The guest's output goes to ttyS0,
# which the host harness reads line by line; the kernel logs to ttyS1 (a file on the host), so its
# messages stay out of the way but are there for debugging. Settings are files in /etc/vmtest/ written
# by the harness; their contents are read as data, never evaluated as shell code.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
CONF=/etc/vmtest

/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /root
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
exec </dev/null >/dev/ttyS0 2>&1

say() { echo "vmtest-init: $*"; }

read -r uptime _ </proc/uptime
echo "VMTEST-INIT $uptime"

# Lines "NAME PATH" in dependency order; modules the kernel already autoloaded are skipped.
load_modules() {
    kver="$(uname -r)"
    while read -r name path; do
        [ -n "$name" ] || continue
        grep -q "^$name " /proc/modules && continue
        insmod "/lib/modules/$kver/$path" || say "insmod $name failed"
    done <"$CONF/modules"
}

# A USB disk is a block device whose sysfs path runs through a USB bus (…/usb2/2-1/…/block/sda).
count_usb_disks() {
    n=0
    for dev in /sys/block/*; do
        case "$(readlink -f "$dev")" in
            */usb*) n=$((n + 1)) ;;
        esac
    done
    echo "$n"
}

count_virtio_disks() {
    n=0
    for dev in /sys/block/vd*; do
        [ -e "$dev" ] && n=$((n + 1))
    done
    echo "$n"
}

# Waits (bounded) until the counts in $CONF/wait ("usb N", "virtio N", "net N") are reached.
wait_devices() {
    want_usb=0 want_virtio=0 want_net=0 seconds=30
    [ -f "$CONF/wait" ] || return 0
    while read -r what count; do
        case "$what" in
            usb) want_usb="$count" ;;
            virtio) want_virtio="$count" ;;
            net) want_net="$count" ;;
            seconds) seconds="$count" ;;
        esac
    done <"$CONF/wait"
    tries=$((seconds * 10))
    while :; do
        have_net=0
        [ -e /sys/class/net/eth0 ] && have_net=1
        if [ "$(count_usb_disks)" -ge "$want_usb" ] && [ "$(count_virtio_disks)" -ge "$want_virtio" ] \
            && [ "$have_net" -ge "$want_net" ]; then
            return 0
        fi
        tries=$((tries - 1))
        if [ "$tries" -le 0 ]; then
            say "gave up waiting for devices: usb $(count_usb_disks)/$want_usb," \
                "virtio $(count_virtio_disks)/$want_virtio, net $have_net/$want_net"
            return 0
        fi
        usleep 100000
    done
}

# Only the slirp network QEMU emulates: 10.0.2.2 is QEMU itself, which forwards only what the host allowed.
setup_network() {
    ip link set lo up
    [ -f "$CONF/net" ] || return 0
    ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2 \
        || say "network setup failed"
}

# The state disk is the virtio disk whose serial the harness set (no udev here for /dev/disk/by-id).
mount_state() {
    [ -f "$CONF/state" ] || return 0
    read -r serial <"$CONF/state"
    for dev in /sys/block/vd*; do
        if [ "$(cat "$dev/serial" 2>/dev/null)" = "$serial" ]; then
            mkdir -p /state
            mount -t ext4 "/dev/${dev##*/}" /state || say "mounting the state disk failed"
            return 0
        fi
    done
    say "no virtio disk with serial $serial"
}

# Exports KEY=VALUE lines literally, then runs the argv (one argument per line) without word splitting.
run_guest() {
    if [ -f "$CONF/env" ]; then
        while IFS= read -r kv; do
            export "$kv"
        done <"$CONF/env"
    fi
    set --
    while IFS= read -r arg; do
        set -- "$@" "$arg"
    done <"$CONF/argv"
    cd /
    "$@"
}

load_modules
wait_devices
setup_network
mount_state
run_guest
rc=$?
printf '\nVMTEST-EXIT %s\n' "$rc"
sync
if [ -d /state ]; then
    umount /state || say "unmounting the state disk failed"
fi
# Gives the UART time to send the marker before the machine is gone.
usleep 200000
poweroff -f
