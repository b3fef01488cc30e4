//! The renter sandbox from the attacker's seat (DESIGN.md §9): root in a real renter container,
//! made by the governor binary, tries to reach the owner's LAN and the host, to find the tunnel's
//! credential, and to break the governor's socket. Beside it: a "home LAN" and an "internet" host
//! in a network namespace this test makes (10.x and 198.51.100.x on one veth), the devserver, and
//! Debian's sshd as the tunnel endpoint.

mod common;

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::fs::FileExt as _;
use std::process::{Child, Command, Output};
use std::time::Duration;

use common::tunnel::{Rig, login_works};
use common::{docker, status};
use p2pvps_governor::sandbox::NftFirewall;
use p2pvps_testkit::tunnel_password;

/// Where the "internet" host listens (TEST-NET-2, routed to the namespace by this test only).
const OUTSIDE: &str = "198.51.100.2";

/// A network namespace with one veth to the host: a LAN host at 10.X.Y.2 and an internet host at
/// 198.51.100.2, each with a TCP listener on 8080 and 25 that says hello. Removed when dropped.
struct Neighbours {
    ns: String,
    lan: String,
    listeners: Vec<Child>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Neighbours {
    fn start() -> Self {
        let tag = &common::random_device()[..6];
        let ns = format!("p2pvps-lan-{tag}");
        let (host_if, ns_if) = (format!("pl{tag}h"), format!("pl{tag}n"));
        let octet = |i: usize| u8::from_str_radix(&tag[i..i + 2], 16).unwrap();
        let lan_net = format!("10.{}.{}", octet(0), octet(2));
        let lan = format!("{lan_net}.2");
        ip(&["netns", "add", &ns]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        ip(&["link", "set", &ns_if, "netns", &ns]);
        ip(&["addr", "add", &format!("{lan_net}.1/24"), "dev", &host_if]);
        ip(&["addr", "add", "198.51.100.1/24", "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        for addr in [format!("{lan}/24"), format!("{OUTSIDE}/24")] {
            ip(&["-n", &ns, "addr", "add", &addr, "dev", &ns_if]);
        }
        ip(&["-n", &ns, "link", "set", &ns_if, "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &ns,
            "route",
            "add",
            "default",
            "via",
            &format!("{lan_net}.1"),
        ]);
        let listeners = ["8080", "25"]
            .iter()
            .map(|port| {
                Command::new("ip")
                    .args(["netns", "exec", &ns, "busybox", "nc", "-ll", "-p", port])
                    .args(["-e", "echo", &format!("hello-{port}")])
                    .spawn()
                    .expect("busybox nc listens")
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        Self { ns, lan, listeners }
    }
}

impl Drop for Neighbours {
    fn drop(&mut self) {
        for l in &mut self.listeners {
            let _ = l.kill();
            let _ = l.wait();
        }
        // Deleting the namespace deletes its veth end, and with it the host's.
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

/// A listener on all of the host's addresses that greets whoever connects.
fn host_listener() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let _ = s.write_all(b"hello-host\n");
        }
    });
    port
}

/// Root's `bash -c SCRIPT` in the container.
fn root_sh(container: &str, script: &str) -> Output {
    Command::new("docker")
        .args(["exec", container, "bash", "-c", script])
        .output()
        .expect("docker exec")
}

/// What a TCP connection from the container to `addr:port` reads within 3 s (empty: none).
fn connect_from(container: &str, addr: &str, port: u16) -> String {
    let script = format!("timeout 3 bash -c 'exec 3<>/dev/tcp/{addr}/{port}; head -c 64 <&3'");
    String::from_utf8_lossy(&root_sh(container, &script).stdout)
        .trim()
        .to_owned()
}

/// The host's first global IPv4 address on an interface other than the test's own.
fn host_address() -> String {
    let out = Command::new("ip")
        .args(["-4", "-o", "route", "get", "192.0.2.200"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut words = text.split_whitespace();
    words
        .find(|w| *w == "src")
        .and_then(|_| words.next())
        .expect("the host has a source address")
        .to_owned()
}

/// Root's scan of the container's files and every process's environment and command line for
/// `needle` (given on stdin: on grep's command line it would find itself); what it lists.
fn scan_files(container: &str, needle: &str) -> Output {
    let mut scan = Command::new("docker")
        .args(["exec", "-i", container, "bash", "-c"])
        .arg(
            "IFS= read -r needle; \
             grep -rlsF -f <(printf '%s\\n' \"$needle\") --exclude-dir=proc --exclude-dir=sys --exclude-dir=dev /; \
             grep -lsF -f <(printf '%s\\n' \"$needle\") /proc/[0-9]*/environ /proc/[0-9]*/cmdline; true",
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    scan.stdin
        .take()
        .unwrap()
        .write_all(format!("{needle}\n").as_bytes())
        .unwrap();
    scan.wait_with_output().unwrap()
}

/// The capability bounding set of the container's first process.
fn bounding_set(container: &str) -> u64 {
    let out = root_sh(container, "grep CapBnd /proc/1/status");
    let text = String::from_utf8_lossy(&out.stdout);
    u64::from_str_radix(text.split_whitespace().nth(1).unwrap(), 16).unwrap()
}

/// The host pids of every process in the container.
fn container_pids(container: &str) -> Vec<u32> {
    let out = Command::new("docker")
        .args(["top", container, "-eo", "pid"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Whether `needle` is in the readable memory, environment or command line of process `pid`
/// (read from the host, as root: more than the renter can read).
fn in_process(pid: u32, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let proc = format!("/proc/{pid}");
    for part in ["environ", "cmdline"] {
        let bytes = std::fs::read(format!("{proc}/{part}")).unwrap_or_default();
        if contains(&bytes, needle) {
            found.push(format!("{pid} {part}"));
        }
    }
    let maps = std::fs::read_to_string(format!("{proc}/maps")).unwrap_or_default();
    let Ok(mem) = std::fs::File::open(format!("{proc}/mem")) else {
        return found;
    };
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !perms.starts_with('r') {
            continue;
        }
        let (a, b) = range.split_once('-').unwrap();
        let (a, b) = (
            u64::from_str_radix(a, 16).unwrap(),
            u64::from_str_radix(b, 16).unwrap(),
        );
        let mut buf = vec![0u8; usize::try_from(b - a).unwrap().min(256 << 20)];
        if let Ok(n) = mem.read_at(&mut buf, a)
            && contains(&buf[..n], needle)
        {
            found.push(format!("{pid} memory {line}"));
        }
    }
    found
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)] // one attacker's session, step by step
async fn a_renter_root_reaches_the_internet_and_nothing_of_the_owners() {
    let neighbours = Neighbours::start();
    let host_port = host_listener();
    let rig = Rig::start(None).await;
    let (user, password, port) = rig.serving(1, Duration::from_secs(90)).await;
    login_works(port, &user, &password, Duration::from_secs(30)).await;
    let c = rig.name.as_str();

    // The test's own hosts answer the host, and a container without the rules (Docker's default
    // bridge) reaches the LAN: the rules below are what stops the renter.
    let mut s = TcpStream::connect((neighbours.lan.as_str(), 8080)).unwrap();
    let mut hello = String::new();
    s.read_to_string(&mut hello).unwrap();
    assert_eq!(hello.trim(), "hello-8080");
    let control = Command::new("docker")
        .args(["run", "--rm", "--network", "bridge", "p2pvps/renter:latest"])
        .args(["bash", "-c"])
        .arg(format!(
            "timeout 3 bash -c 'exec 3<>/dev/tcp/{}/8080; head -c 64 <&3'",
            neighbours.lan
        ))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&control.stdout).trim(),
        "hello-8080",
        "a plain container should reach the test's LAN host: {control:?}"
    );

    // From the renter's container: the internet yes (a public address, the Debian mirror by name),
    // the LAN, the host and SMTP no.
    assert_eq!(connect_from(c, OUTSIDE, 8080), "hello-8080");
    assert_eq!(connect_from(c, OUTSIDE, 25), "", "SMTP went out");
    assert_eq!(
        connect_from(c, &neighbours.lan, 8080),
        "",
        "the LAN answered"
    );
    let gateway = rig.network.gateway.to_string();
    assert_eq!(
        connect_from(c, &gateway, host_port),
        "",
        "the host answered on the bridge"
    );
    let host = host_address();
    assert_eq!(
        connect_from(c, &host, host_port),
        "",
        "the host answered on {host}"
    );
    assert_eq!(connect_from(c, "169.254.169.254", 80), "");
    let mirror = root_sh(
        c,
        "curl -sS -m 20 -o /dev/null -w '%{http_code}' http://deb.debian.org/debian/dists/bookworm/Release",
    );
    assert_eq!(
        String::from_utf8_lossy(&mirror.stdout),
        "200",
        "the Debian mirror: {mirror:?}"
    );
    let ping = root_sh(c, &format!("ping -c 1 -W 3 {OUTSIDE}"));
    assert!(ping.status.success(), "ping without NET_RAW: {ping:?}");

    // Capabilities: raw sockets, device nodes, file capabilities, capability sets gone.
    let caps = bounding_set(c);
    for (bit, name) in [
        (13, "NET_RAW"),
        (27, "MKNOD"),
        (31, "SETFCAP"),
        (8, "SETPCAP"),
    ] {
        assert_eq!(
            caps & (1 << bit),
            0,
            "{name} is in the bounding set {caps:x}"
        );
    }
    assert!(!root_sh(c, "mknod /tmp/mem c 1 1").status.success());

    // The storage: filling it stops at its size (storageSizeMb 64) with ENOSPC.
    let fill = root_sh(
        c,
        "dd if=/dev/zero of=/media/storage/fill bs=1M count=200 conv=fsync; stat -c %s /media/storage/fill",
    );
    let err = String::from_utf8_lossy(&fill.stderr);
    assert!(err.contains("No space left on device"), "{fill:?}");
    let size: u64 = String::from_utf8_lossy(&fill.stdout)
        .trim()
        .parse()
        .unwrap();
    assert!(size <= 64 << 20, "wrote {size} bytes into a 64 MB volume");
    root_sh(c, "rm -f /media/storage/fill");

    // The socket's directory: read-only to the renter; the socket still answers.
    for attack in [
        "touch /run/p2pvps/x",
        "rm -f /run/p2pvps/governor.sock",
        "mkdir /run/p2pvps/governor.sock.d",
        "mv /run/p2pvps/governor.sock /run/p2pvps/old",
    ] {
        let o = root_sh(c, attack);
        assert!(!o.status.success(), "{attack} worked");
    }
    let o = root_sh(c, "p2pvps-storage status");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no key to manage"),
        "the socket answers: {o:?}"
    );

    // The tunnel's password: in no file, environment, command line or memory the renter sees.
    let secret = tunnel_password();
    let o = scan_files(c, &secret);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "",
        "found from inside"
    );
    // The same scan finds what is there: the renter's name in /etc/passwd.
    let o = scan_files(c, &user);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("/etc/passwd"),
        "{o:?}"
    );
    let pids = container_pids(c);
    assert!(pids.len() >= 2, "the container's processes: {pids:?}");
    let found: Vec<_> = pids
        .iter()
        .flat_map(|pid| in_process(*pid, secret.as_bytes()))
        .collect();
    assert!(found.is_empty(), "the tunnel password is in {found:?}");
    let control: Vec<_> = pids
        .iter()
        .flat_map(|pid| in_process(*pid, b"/usr/sbin/sshd"))
        .collect();
    assert!(
        control.iter().any(|f| f.contains("memory")),
        "the memory scan reads nothing: {control:?}"
    );

    // status and check report the rules; they hold a restart of the container: the governor puts
    // them back before it starts the container again.
    let st = status(&rig.state);
    let rules = st["networkRules"].as_str().unwrap_or_default().to_owned();
    assert!(rules.starts_with("in place"), "{st}");
    NftFirewall::remove(&rig.network.bridge).unwrap();
    assert!(NftFirewall::verify(&rig.network.bridge).is_err());
    let (ok, _, err) = docker(&["stop", "-t", "1", c]);
    assert!(ok, "{err}");
    common::wait_for(
        "the container started again",
        Duration::from_secs(30),
        async || {
            (docker(&["inspect", "--format", "{{.State.Running}}", c]).1 == "true").then_some(())
        },
    )
    .await;
    NftFirewall::verify(&rig.network.bridge).expect("the rules are back");
    assert_eq!(
        connect_from(c, &neighbours.lan, 8080),
        "",
        "the LAN answered"
    );
    drop(neighbours);
}

/// The flood helper (testkit's `p2pvps-socket-flood`), built beside this test's binary.
fn flood_tool() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let tool = exe
        .parent()
        .and_then(std::path::Path::parent)
        .unwrap()
        .join("p2pvps-socket-flood");
    assert!(
        tool.is_file(),
        "{} is missing: run `cargo build -p p2pvps-testkit` (scripts/test runs the workspace's tests, which builds it)",
        tool.display()
    );
    tool
}

/// One request's round trip on the governor's socket, from the host; None when the governor
/// turned the connection away (the flood holds every place).
fn socket_latency(state: &std::path::Path) -> Option<Duration> {
    let started = std::time::Instant::now();
    let mut s = std::os::unix::net::UnixStream::connect(state.join("run/governor.sock")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut line = String::new();
    s.write_all(b"{\"op\":\"lease\"}\n").ok()?;
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&s), &mut line).ok()?;
    (!line.contains("too many connections")).then(|| started.elapsed())
}

/// The user and system CPU time of process `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces): utime and stime are the 12th and 13th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<u64> = rest
        .split(' ')
        .skip(11)
        .take(2)
        .map(|f| f.parse().unwrap())
        .collect();
    fields.iter().sum()
}

/// The governor's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_flood_from_the_container_neither_stops_the_governor_nor_delays_the_expiration() {
    let rig = Rig::start_with(None, Duration::from_secs(75), &[]).await;
    rig.serving(1, Duration::from_mins(1)).await;
    let c = rig.name.clone();
    let (_, id, _) = docker(&["inspect", "--format", "{{.Id}}", &c]);
    let lease = common::admin_device(&rig.base(), &rig.device).await["lease"].clone();
    let expiration: chrono::DateTime<chrono::Utc> =
        lease["expiration"].as_str().unwrap().parse().unwrap();
    let (ok, _, err) = docker(&[
        "cp",
        flood_tool().to_str().unwrap(),
        &format!("{c}:/tmp/flood"),
    ]);
    assert!(ok, "{err}");
    let governor = rig.pid();
    let rss_before = rss_kib(governor);
    let cpu_before = cpu_ticks(governor);

    // Root in the container: 2,000 connections at once, 10,000 requests, 50 wrong passphrases.
    let mut flood = Command::new("docker")
        .args([
            "exec",
            &c,
            "/tmp/flood",
            "/run/p2pvps/governor.sock",
            "2000",
            "10000",
            "50",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut latencies = Vec::new();
    let mut rss_peak = rss_before;
    let flooded = loop {
        latencies.push(socket_latency(&rig.state));
        rss_peak = rss_peak.max(rss_kib(governor));
        assert_eq!(status(&rig.state)["phase"], "serving", "status answers");
        if flood.try_wait().unwrap().is_some()
            || chrono::Utc::now() > expiration - chrono::Duration::seconds(3)
        {
            break flood.wait_with_output().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let figures = String::from_utf8_lossy(&flooded.stdout).trim().to_owned();
    let cpu = cpu_ticks(governor) - cpu_before;
    let answered: Vec<_> = latencies.iter().flatten().collect();
    eprintln!(
        "flood: {figures}; socket from the host: {} of {} requests answered, slowest {:?}; governor RSS {rss_before} KiB before, {rss_peak} KiB peak, CPU {cpu} ticks",
        answered.len(),
        latencies.len(),
        answered.iter().max()
    );
    assert!(figures.contains("answered=10000"), "{figures}");
    let figure = |name: &str| -> usize {
        figures
            .split_whitespace()
            .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {figures}"))
    };
    let held = figure("held");
    assert!(held <= 16, "the governor kept {held} connections open");
    assert_eq!(
        held + figure("refused"),
        2000,
        "every connection held or told: {figures}"
    );
    assert_eq!(figure("passphrase_answers"), 50, "{figures}");
    let fds = std::fs::read_dir(format!("/proc/{governor}/fd"))
        .unwrap()
        .count();
    assert!(
        fds < 100,
        "the governor holds {fds} descriptors after the flood"
    );

    // The rental still ends on time: the container is gone within 2 s of the expiration (by id:
    // the next rental's container, made before the next registration, takes the name).
    let gone = common::wait_for(
        "the container removed",
        Duration::from_mins(1),
        async || {
            let (exists, _, _) = docker(&["inspect", &id]);
            (!exists).then(chrono::Utc::now)
        },
    )
    .await;
    let late = (gone - expiration).num_milliseconds();
    eprintln!("container gone {late} ms after the expiration");
    assert!(late <= 2000, "the expiration was enforced {late} ms late");
}
