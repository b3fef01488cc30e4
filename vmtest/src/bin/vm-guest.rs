//! Guest side of the VM tests: the scenarios run inside the VM by the initramfs' /init.

fn main() {
    println!("vm-guest: no scenario yet");
}
