//! Guest side of the VM tests: the scenarios run inside the VM by the initramfs' /init, selected by
//! argv[1]. The exit code is the verdict (the host reads it from /init's marker); output lines are for
//! the host's `wait_for_line` and for people reading a failure.
//!
//! Scenarios:
//!   smoke                      kernel release, USB disks, dm-crypt: exit 0 only if a USB disk and dm are there
//!   wait-usb N SECONDS         prints "waiting for N USB disks", exit 0 once N are there, 1 on timeout
//!   usb-replug SECONDS         once a USB disk is there, prints "waiting for the USB disks to go",
//!                              then "USB disks gone" when none is left; exit 0 once one is back, 1 on timeout
//!   state-write TEXT           writes TEXT to /state/vmtest.txt (the state disk) and syncs it
//!   state-read TEXT            exit 0 if /state/vmtest.txt holds TEXT
//!   exit CODE                  exits with CODE (proves the harness reports failures)
//!   net-check ADDR:PORT [ADDR:PORT]   sends "ping" to the first address and expects "pong"; the second
//!                                     (optional) must refuse or time out

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

const STATE_FILE: &str = "/state/vmtest.txt";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["smoke"] => smoke(),
        ["wait-usb", count, seconds] => wait_usb(count, seconds),
        ["usb-replug", seconds] => usb_replug(seconds),
        ["state-write", text] => state_write(text),
        ["state-read", text] => state_read(text),
        ["exit", code] => return ExitCode::from(code.parse::<u8>().unwrap_or(255)),
        ["net-check", open] => net_check(open, None),
        ["net-check", open, blocked] => net_check(open, Some(blocked)),
        _ => Err(format!("unknown scenario {args:?}")),
    };
    match result {
        Ok(()) => {
            println!("vm-guest: ok");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("vm-guest: FAILED: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Block devices whose sysfs device path runs through a USB bus, with that path.
fn usb_disks() -> Vec<(String, PathBuf)> {
    let Ok(entries) = fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut disks: Vec<(String, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let target = fs::read_link(e.path()).ok()?;
            target
                .to_string_lossy()
                .contains("/usb")
                .then(|| (e.file_name().to_string_lossy().into_owned(), target))
        })
        .collect();
    disks.sort();
    disks
}

fn smoke() -> Result<(), String> {
    let release =
        fs::read_to_string("/proc/sys/kernel/osrelease").map_err(|e| format!("osrelease: {e}"))?;
    println!("kernel: {}", release.trim());
    let disks = usb_disks();
    for (name, target) in &disks {
        println!("usb disk: {name} ({})", target.display());
    }
    let checks = [
        ("a USB disk", !disks.is_empty()),
        (
            "/sys/module/dm_crypt",
            Path::new("/sys/module/dm_crypt").exists(),
        ),
        (
            "/dev/mapper/control",
            Path::new("/dev/mapper/control").exists(),
        ),
        ("/sys/module/xts", Path::new("/sys/module/xts").exists()),
        (
            "/sys/module/algif_skcipher",
            Path::new("/sys/module/algif_skcipher").exists(),
        ),
    ];
    let mut missing = Vec::new();
    for (what, present) in checks {
        println!("{what}: {}", if present { "present" } else { "MISSING" });
        if !present {
            missing.push(what);
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("missing: {}", missing.join(", ")))
    }
}

fn wait_usb(count: &str, seconds: &str) -> Result<(), String> {
    let count: usize = count.parse().map_err(|_| format!("bad count {count:?}"))?;
    let seconds: u64 = seconds
        .parse()
        .map_err(|_| format!("bad seconds {seconds:?}"))?;
    println!("waiting for {count} USB disks");
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        let disks = usb_disks();
        if disks.len() >= count {
            let names: Vec<&str> = disks.iter().map(|(n, _)| n.as_str()).collect();
            println!("found {} USB disks: {}", disks.len(), names.join(" "));
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{} of {count} USB disks after {seconds} s",
                disks.len()
            ));
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Waits for a USB disk, for none, then for one again: what unplugging and replugging a drive does.
fn usb_replug(seconds: &str) -> Result<(), String> {
    let seconds: u64 = seconds
        .parse()
        .map_err(|_| format!("bad seconds {seconds:?}"))?;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let wait = |present: bool, what: &str| loop {
        if usb_disks().is_empty() != present {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out after {seconds} s waiting for {what}"));
        }
        thread::sleep(Duration::from_millis(100));
    };
    wait(true, "a USB disk")?;
    println!("waiting for the USB disks to go");
    wait(false, "no USB disk")?;
    println!("USB disks gone");
    wait(true, "the USB disk to come back")?;
    println!(
        "USB disk back: {:?}",
        usb_disks().first().map(|(name, _)| name)
    );
    Ok(())
}

fn state_write(text: &str) -> Result<(), String> {
    let mut file = fs::File::create(STATE_FILE).map_err(|e| format!("create {STATE_FILE}: {e}"))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("write {STATE_FILE}: {e}"))?;
    println!("wrote {STATE_FILE}");
    Ok(())
}

fn state_read(text: &str) -> Result<(), String> {
    let found = fs::read_to_string(STATE_FILE).map_err(|e| format!("read {STATE_FILE}: {e}"))?;
    println!("read {STATE_FILE}: {found:?}");
    if found == text {
        Ok(())
    } else {
        Err(format!("expected {text:?}"))
    }
}

fn net_check(open: &str, blocked: Option<&str>) -> Result<(), String> {
    let addr: SocketAddr = open.parse().map_err(|_| format!("bad address {open:?}"))?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"ping\n")
        .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut reply = String::new();
    BufReader::new(&stream)
        .read_line(&mut reply)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    println!("reply from {addr}: {:?}", reply.trim());
    if reply.trim() != "pong" {
        return Err(format!("{addr} replied {reply:?}"));
    }
    if let Some(blocked) = blocked {
        let addr: SocketAddr = blocked
            .parse()
            .map_err(|_| format!("bad address {blocked:?}"))?;
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            // A restricted slirp may accept the SYN and then drop: a connection that carries nothing
            // is as blocked as a refused one.
            Ok(mut s) => {
                s.set_read_timeout(Some(Duration::from_secs(3)))
                    .map_err(|e| e.to_string())?;
                let _ = s.write_all(b"ping\n");
                let mut line = String::new();
                if BufReader::new(&s).read_line(&mut line).is_ok_and(|n| n > 0) {
                    return Err(format!(
                        "{addr} answered {line:?} but should be unreachable"
                    ));
                }
                println!("blocked {addr}: connection carried nothing");
            }
            Err(e) => println!("blocked {addr}: {e}"),
        }
    }
    Ok(())
}
