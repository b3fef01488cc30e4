# shellcheck shell=bash
# Partitions of a disk image file.

# partition_bytes DISK N: prints "START SIZE" of partition N (from 1), in bytes.
partition_bytes() {
    sfdisk -J "$1" | jq -r --argjson n "$2" '.partitiontable as $t | ($t.sectorsize // 512) as $s |
        $t.partitions[$n - 1] | "\(.start * $s) \(.size * $s)"'
}

# extract_partition IMAGE_XZ N OUT: partition N of a compressed image (.img.xz) as the file OUT
# (sparse); the unpacked disk is made beside OUT and removed.
extract_partition() {
    local disk="$3.disk" start size
    xz -dc "$1" | dd of="$disk" bs=1M iflag=fullblock conv=sparse status=none
    read -r start size < <(partition_bytes "$disk" "$2")
    dd if="$disk" of="$3" bs=1M skip=$((start / 1048576)) count=$((size / 1048576)) conv=sparse status=none
    rm -f "$disk"
}
