//! Test support shared by the crates' tests: a real OpenSSH sshd as the tunnel endpoint (the
//! example config in image/tunnel-endpoint/) on a random port, with the tunnel-only user that
//! `scripts/tunnel-endpoint setup` makes. Not shipped: a dev-dependency only.

use std::fs::File;
use std::net::{IpAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const TUNNEL_USER: &str = "p2pvps-tunnel";
/// The script's documented test-only default, unless the environment says otherwise.
pub const DEFAULT_TEST_PASSWORD: &str = "p2pvps-tunnel-test";
const SSHD: &str = "/usr/sbin/sshd";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit lives in the workspace")
        .to_path_buf()
}

pub fn tunnel_password() -> String {
    std::env::var("P2PVPS_TUNNEL_PASSWORD").unwrap_or_else(|_| DEFAULT_TEST_PASSWORD.to_owned())
}

/// Runs `scripts/tunnel-endpoint setup` once per test binary (it is idempotent), so the user and
/// its password are exactly what the script makes.
pub fn ensure_tunnel_user() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let script = repo_root().join("scripts/tunnel-endpoint");
        let out = Command::new(&script)
            .arg("setup")
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "`scripts/tunnel-endpoint setup` failed (run it as root before these tests): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

pub fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "p2pvps-test", "-f"])
        .arg(path)
        .output()
        .expect("run ssh-keygen");
    assert!(out.status.success(), "ssh-keygen: {out:?}");
}

/// What `ssh-keygen -l -E sha256` says about a public key: the value a device pins.
pub fn fingerprint(pub_key: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .args(["-l", "-E", "sha256", "-f"])
        .arg(pub_key)
        .output()
        .expect("run ssh-keygen -l");
    assert!(out.status.success(), "ssh-keygen -l: {out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .nth(1)
        .expect("ssh-keygen -l prints `bits fingerprint comment (type)`")
        .to_owned()
}

/// The sshd settings a test may change from the example config.
#[derive(Clone, Default)]
pub struct EndpointOptions {
    /// `ClientAliveInterval` and `ClientAliveCountMax`, to free a dead session's port quickly.
    pub client_alive: Option<(u32, u32)>,
    /// Addresses to listen on besides 127.0.0.1 (the gateway of a test's Docker network, so a
    /// container can reach the endpoint).
    pub listen: Vec<IpAddr>,
    /// Keep the config's `PermitListen` (the marketplace's ports 6000-6200). By default tests,
    /// whose ports are random, get `PermitListen any`.
    pub marketplace_ports: bool,
}

/// OpenSSH's sshd with `image/tunnel-endpoint/sshd_config`, on 127.0.0.1 at a random port, with
/// its host key, pid file, log and authorized_keys in a temporary directory.
pub struct Endpoint {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub fingerprint: String,
    options: EndpointOptions,
    child: Option<Child>,
}

impl Endpoint {
    pub fn start() -> Self {
        Self::start_with(EndpointOptions::default())
    }

    pub fn start_with(options: EndpointOptions) -> Self {
        ensure_tunnel_user();
        let dir = tempfile::tempdir().expect("temp dir");
        keygen(&dir.path().join("host_key"));
        let fingerprint = fingerprint(&dir.path().join("host_key.pub"));
        let mut endpoint = Self {
            dir,
            port: free_port(),
            fingerprint,
            options,
            child: None,
        };
        endpoint.spawn();
        endpoint
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn authorize_key(&self, pub_key: &Path) {
        std::fs::copy(pub_key, self.path("authorized_keys")).expect("write authorized_keys");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("sshd.log")).unwrap_or_default()
    }

    fn spawn(&mut self) {
        std::fs::create_dir_all("/run/sshd").expect("create sshd's privilege separation dir");
        let _ = std::fs::remove_file(self.path("pid"));
        let d = self.dir.path().display();
        let shipped = repo_root().join("image/tunnel-endpoint/sshd_config");
        let config = if self.options.marketplace_ports {
            shipped
        } else {
            let text = std::fs::read_to_string(&shipped).expect("read the endpoint's sshd_config");
            let text: String = text
                .lines()
                .map(|l| {
                    if l.trim_start().starts_with("PermitListen ") {
                        "    PermitListen any".to_owned()
                    } else {
                        l.to_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n");
            let copy = self.path("sshd_config");
            std::fs::write(&copy, text + "\n").expect("write the test's sshd_config");
            copy
        };
        let mut args = vec![
            "-D".to_owned(),
            "-f".to_owned(),
            config.display().to_string(),
            "-E".to_owned(),
            format!("{d}/sshd.log"),
            "-o".to_owned(),
            format!("Port={}", self.port),
            "-o".to_owned(),
            "ListenAddress=127.0.0.1".to_owned(),
            "-o".to_owned(),
            format!("HostKey={d}/host_key"),
            "-o".to_owned(),
            format!("PidFile={d}/pid"),
            // The test's keys live in a temp dir under world-writable /tmp, which StrictModes
            // (rightly) refuses; the example config keeps it on.
            "-o".to_owned(),
            format!("AuthorizedKeysFile={d}/authorized_keys"),
            "-o".to_owned(),
            "StrictModes=no".to_owned(),
        ];
        for addr in &self.options.listen {
            args.extend(["-o".to_owned(), format!("ListenAddress={addr}")]);
        }
        if let Some((interval, count)) = self.options.client_alive {
            args.extend([
                "-o".to_owned(),
                format!("ClientAliveInterval={interval}"),
                "-o".to_owned(),
                format!("ClientAliveCountMax={count}"),
            ]);
        }
        let mut child = Command::new(SSHD)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start sshd");
        // sshd writes its pid file once the listening socket is bound.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.path("pid").exists() {
            if let Some(status) = child.try_wait().expect("poll sshd") {
                panic!("sshd exited at start ({status}): {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "sshd did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }

    /// Kills sshd and every session process it forked, as a crash or reboot of the endpoint would.
    /// (Killing only the listener is not enough: OpenSSH's sessions survive it on purpose.)
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id();
            let mut victims = descendants(pid);
            victims.push(pid);
            let _ = Command::new("kill")
                .arg("-KILL")
                .args(victims.iter().map(u32::to_string))
                .stderr(Stdio::null())
                .status();
            let _ = child.wait();
        }
    }

    /// Kill, then start again on the same port with the same host key.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The processes below `pid`, found through /proc's parent links.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            // The parent pid is the second field after the command name, which is in
            // parentheses and may itself contain spaces.
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let parent = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|s| s.parse::<u32>().ok());
            if let Some(parent) = parent {
                parents.push((p, parent));
            }
        }
    }
    let mut found = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for &(child, _) in parents.iter().filter(|(_, pp)| *pp == parent) {
            found.push(child);
            frontier.push(child);
        }
    }
    found
}

/// One mebibyte.
pub const MIB: u64 = 1 << 20;

/// A loop device over a sparse file; detached (after unmounting whatever is mounted from it) when
/// dropped, also when a test panics.
pub struct Loop {
    /// The loop device, `/dev/loopN`.
    pub dev: PathBuf,
    /// The sparse file behind it.
    pub image: PathBuf,
}

impl Loop {
    pub fn new(image: &Path, mib: u64) -> Self {
        File::create(image).unwrap().set_len(mib * MIB).unwrap();
        Self::attach(image)
    }

    pub fn attach(image: &Path) -> Self {
        let mut last = String::new();
        // `--find` can race with other users of loop devices: try again.
        for _ in 0..5 {
            let out = Command::new("losetup")
                .args(["--find", "--show", "--partscan"])
                .arg(image)
                .output()
                .expect("run losetup (util-linux)");
            if out.status.success() {
                let dev = String::from_utf8(out.stdout).unwrap().trim().to_owned();
                return Self {
                    dev: PathBuf::from(dev),
                    image: image.to_owned(),
                };
            }
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        panic!(
            "losetup --find --show --partscan failed (these tests need root and loop devices): {last}"
        );
    }

    pub fn name(&self) -> String {
        self.dev.file_name().unwrap().to_string_lossy().into_owned()
    }

    pub fn partition(&self, n: u32) -> PathBuf {
        PathBuf::from(format!("{}p{n}", self.dev.display()))
    }

    pub fn kernel_partitions(&self) -> Vec<String> {
        let mut parts: Vec<String> = std::fs::read_dir(format!("/sys/block/{}", self.name()))
            .unwrap()
            .filter_map(|e| {
                let e = e.ok()?;
                e.path()
                    .join("partition")
                    .exists()
                    .then(|| e.file_name().to_string_lossy().into_owned())
            })
            .collect();
        parts.sort();
        parts
    }

    /// Detach, leaving the image (a replug or reboot).
    pub fn detach(self) -> PathBuf {
        let image = self.image.clone();
        drop(self);
        image
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let prefix = format!("{}p", self.dev.display());
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| {
                let (left, right) = l.split_once(" - ")?;
                let source = right.split(' ').nth(1)?;
                (source.starts_with(&prefix) || source == self.dev.to_str()?)
                    .then(|| left.split(' ').nth(4))?
            })
            .collect();
        points.reverse();
        for p in points {
            // Busy for a moment while another test's child process holds an inherited descriptor.
            for _ in 0..20 {
                let out = Command::new("umount").arg(p).output();
                if out.is_ok_and(|o| o.status.success()) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// Whether `needle` occurs anywhere in the bytes of `path` (`grep -a -F`).
pub fn grep(path: &Path, needle: &str) -> bool {
    let out = Command::new("grep")
        .args(["-q", "-a", "-F", needle])
        .arg(path)
        .output()
        .unwrap();
    match out.status.code() {
        Some(0) => true,
        Some(1) => false,
        _ => panic!("grep {}: {out:?}", path.display()),
    }
}
