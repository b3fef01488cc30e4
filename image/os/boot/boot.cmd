# The P2P VPS boot chooser: a U-Boot script, the same on every board (scripts/build-image fills in the
# @…@ values from board/<board>/meta and makes boot.scr of it with mkimage). U-Boot finds boot.scr on the
# boot partition (its bootflow scan) and runs it.
#
# Two root slots, A (partition 2) and B (partition 3), each holding its kernel and initramfs in /boot.
# p2pvps-boot.env on this partition says which slot comes first and how many tries each has left, in
# the names RAUC's U-Boot integration uses: BOOT_ORDER, BOOT_A_LEFT, BOOT_B_LEFT. Every boot of a slot
# costs one try, written back before the kernel starts; Linux gives the tries back once the slot is
# healthy (/usr/lib/p2pvps/boot-slots, RAUC's boot backend). A slot with no tries left, or whose kernel
# does not load, is passed over for the next: an update that never comes up healthy falls back to the
# slot it came from.
setenv kernel_addr_r @KERNEL_ADDR@
setenv ramdisk_addr_r @RAMDISK_ADDR@
setenv p2pvps_env p2pvps-boot.env
# Without the file (lost, or unreadable after a power cut while U-Boot wrote it): A first, both slots
# tried; a slot whose kernel is missing (an empty B) is passed over.
setenv BOOT_ORDER "A B"
setenv BOOT_A_LEFT 3
setenv BOOT_B_LEFT 3
if fatload ${devtype} ${devnum}:1 ${ramdisk_addr_r} ${p2pvps_env}; then
    env import -t ${ramdisk_addr_r} ${filesize} BOOT_ORDER BOOT_A_LEFT BOOT_B_LEFT
else
    echo "p2pvps: no ${p2pvps_env}: slot A first"
fi
for s in ${BOOT_ORDER}; do
    setenv left
    if test "${s}" = A; then setenv left ${BOOT_A_LEFT}; setenv part 2; fi
    if test "${s}" = B; then setenv left ${BOOT_B_LEFT}; setenv part 3; fi
    if test -n "${left}" && test ${left} -gt 0; then
        setexpr left ${left} - 1
        if test "${s}" = A; then setenv BOOT_A_LEFT ${left}; else setenv BOOT_B_LEFT ${left}; fi
        env export -t ${ramdisk_addr_r} BOOT_ORDER BOOT_A_LEFT BOOT_B_LEFT
        fatwrite ${devtype} ${devnum}:1 ${ramdisk_addr_r} ${p2pvps_env} ${filesize}
        echo "p2pvps: booting slot ${s} (partition ${part}); ${left} tries left after this one"
        if ext4load ${devtype} ${devnum}:${part} ${kernel_addr_r} /boot/Image; then
            if ext4load ${devtype} ${devnum}:${part} ${ramdisk_addr_r} /boot/initrd.img; then
                setenv bootargs "@CMDLINE@ root=PARTUUID=@DISK_ID@-0${part} rauc.slot=${s}"
                booti ${kernel_addr_r} ${ramdisk_addr_r}:${filesize} ${fdt_addr}
            fi
        fi
        echo "p2pvps: slot ${s} did not boot"
    fi
done
# No slot left: both get their tries back rather than a device that never boots again.
echo "p2pvps: no slot has tries left; both get 3 again; resetting"
setenv BOOT_A_LEFT 3
setenv BOOT_B_LEFT 3
env export -t ${ramdisk_addr_r} BOOT_ORDER BOOT_A_LEFT BOOT_B_LEFT
fatwrite ${devtype} ${devnum}:1 ${ramdisk_addr_r} ${p2pvps_env} ${filesize}
sleep 5
reset
