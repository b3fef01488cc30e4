//! One QEMU (TCG) virtual machine: Debian's kernel, the vmtest initramfs, USB disks behind qemu-xhci,
//! virtio disks, optional loopback-only networking, the guest's serial output read line by line, and
//! USB hotplug through the monitor. Dropping a [`Vm`] kills QEMU.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use crate::assets::{AssetsError, KernelAssets};
use crate::initramfs::{GUEST_DIR, InitConfig, Initramfs, InitramfsError};
use crate::monitor::{Monitor, MonitorError};

pub const QEMU: &str = "qemu-system-x86_64";
/// /init prints this (then the status) after the guest command returns.
pub const EXIT_MARKER: &str = "VMTEST-EXIT ";
/// /init prints this (then the guest's uptime in seconds) when it starts.
pub const INIT_MARKER: &str = "VMTEST-INIT ";
/// The guest's address on QEMU's user-mode network.
pub const GUEST_ADDR: &str = "10.0.2.15";
/// Where the guest reaches the host ports given to [`VmBuilder::host_port`] (same port number).
pub const HOST_ADDR: &str = "10.0.2.100";
/// The virtio serial of the state disk, which /init mounts at /state.
pub const STATE_SERIAL: &str = "vmtest-state";
/// Setting this environment variable keeps each VM's work directory (initramfs, logs) for debugging.
pub const KEEP_ENV: &str = "P2PVPS_VMTEST_KEEP";

const DEFAULT_MEMORY_MIB: u32 = 1024;
const DEFAULT_WAIT_SECONDS: u32 = 60;
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(30);
const DRIVE_RELEASE_TIMEOUT: Duration = Duration::from_secs(10);
const MONITOR_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const DIAG_LINES: usize = 40;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    Assets(#[from] AssetsError),
    #[error(transparent)]
    Initramfs(#[from] InitramfsError),
    #[error(transparent)]
    Monitor(#[from] MonitorError),
    #[error("cannot create the VM's work directory: {0}")]
    Workdir(io::Error),
    #[error("cannot start `{command}`: {source}")]
    Spawn { command: String, source: io::Error },
    #[error("id {0:?} must match [A-Za-z0-9_-]+ (QEMU options and monitor commands carry it)")]
    BadId(String),
    #[error("disk path {0} is not UTF-8 (QEMU options are text)")]
    BadPath(PathBuf),
    #[error("QEMU exited ({status}) while waiting for {waiting_for}\n{diagnostics}")]
    Exited {
        status: String,
        waiting_for: String,
        diagnostics: String,
    },
    #[error("no {waiting_for} within {timeout:?}\n{diagnostics}")]
    Timeout {
        waiting_for: String,
        timeout: Duration,
        diagnostics: String,
    },
    #[error(
        "the guest exited ({code}) but QEMU did not power off within {timeout:?}; killed\n{diagnostics}"
    )]
    NoPowerOff {
        code: i32,
        timeout: Duration,
        diagnostics: String,
    },
    #[error("unreadable exit marker {line:?}")]
    BadMarker { line: String },
    #[error("monitor command `{command}` failed: {output}")]
    MonitorCommand { command: String, output: String },
}

/// Something added to the initramfs besides the defaults and the guest binary.
#[derive(Debug, Clone)]
enum Extra {
    Binary(PathBuf, String),
    Library(PathBuf),
    File(PathBuf, String),
    Data(String, Vec<u8>, u32),
    Module(String),
}

/// How to boot a VM. Clone it to boot the same machine twice (a reboot test shares disk files).
#[derive(Debug, Clone)]
pub struct VmBuilder {
    guest: PathBuf,
    argv: Option<Vec<OsString>>,
    args: Vec<OsString>,
    env: Vec<(String, String)>,
    memory_mib: u32,
    cpus: u32,
    usb: Vec<(String, PathBuf)>,
    virtio: Vec<(String, PathBuf)>,
    state: Option<PathBuf>,
    host_ports: Vec<u16>,
    wait_usb: u32,
    wait_seconds: u32,
    extras: Vec<Extra>,
    kernel_args: Vec<String>,
}

impl VmBuilder {
    /// `guest` is the program /init runs (with [`VmBuilder::args`]), copied to /usr/local/bin/ with its
    /// libraries and debug info stripped. Tests pass `env!("CARGO_BIN_EXE_vm-guest")`.
    pub fn new(guest: impl Into<PathBuf>) -> Self {
        Self {
            guest: guest.into(),
            argv: None,
            args: Vec::new(),
            env: vec![("RUST_BACKTRACE".into(), "1".into())],
            memory_mib: DEFAULT_MEMORY_MIB,
            cpus: 1,
            usb: Vec::new(),
            virtio: Vec::new(),
            state: None,
            host_ports: Vec::new(),
            wait_usb: 0,
            wait_seconds: DEFAULT_WAIT_SECONDS,
            extras: Vec::new(),
            kernel_args: Vec::new(),
        }
    }

    /// Arguments after the guest binary's path (argv[1..]); replaces earlier ones.
    #[must_use]
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args = args.into_iter().map(Into::into).collect();
        self
    }

    /// Runs this whole argv (guest paths) instead of the guest binary, e.g. `["/bin/sh", "-c", "…"]`.
    #[must_use]
    pub fn command<I, S>(mut self, argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.argv = Some(argv.into_iter().map(Into::into).collect());
        self
    }

    /// An environment variable for the guest command.
    #[must_use]
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    #[must_use]
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    #[must_use]
    pub fn cpus(mut self, cpus: u32) -> Self {
        self.cpus = cpus.max(1);
        self
    }

    /// A USB disk present at boot (raw image; QEMU device id `id`, so [`Vm::usb_detach`] works on it).
    /// /init waits until all boot-time USB disks are there before the guest command starts.
    #[must_use]
    pub fn usb_disk(mut self, id: &str, path: impl Into<PathBuf>) -> Self {
        self.usb.push((id.to_owned(), path.into()));
        self.wait_usb += 1;
        self
    }

    /// A raw virtio disk whose `/sys/block/vdX/serial` is `id` (the guest finds it by that).
    #[must_use]
    pub fn virtio_disk(mut self, id: &str, path: impl Into<PathBuf>) -> Self {
        self.virtio.push((id.to_owned(), path.into()));
        self
    }

    /// An ext4 image (see [`crate::disk::ext4`]) that /init mounts at /state and unmounts before power-off.
    #[must_use]
    pub fn state_disk(mut self, path: impl Into<PathBuf>) -> Self {
        self.state = Some(path.into());
        self
    }

    /// Lets the guest reach `127.0.0.1:port` on the host at [`HOST_ADDR`]`:port`. Adds a virtio NIC on
    /// QEMU's user network with `restrict=on`: nothing else, the internet included, is reachable.
    #[must_use]
    pub fn host_port(mut self, port: u16) -> Self {
        self.host_ports.push(port);
        self
    }

    /// How long /init waits for the boot-time devices (default 60 s).
    #[must_use]
    pub fn wait_seconds(mut self, seconds: u32) -> Self {
        self.wait_seconds = seconds;
        self
    }

    /// An extra ELF binary (with its ldd libraries) at an absolute guest path.
    #[must_use]
    pub fn binary(mut self, host: impl Into<PathBuf>, guest: &str) -> Self {
        self.extras
            .push(Extra::Binary(host.into(), guest.to_owned()));
        self
    }

    /// What the governor's storage code runs: util-linux's mount (for `--make-shared`) and partx
    /// (busybox has neither), blockdev for re-reading partition tables, and the LUKS2 helper
    /// `p2pvps-luks` beside the guest binary, as beside the governor on a device. Cargo builds the
    /// helper into the guest binary's directory (`cargo test --workspace` does; a run of this
    /// package alone needs `cargo build -p p2pvps-luks` first).
    ///
    /// # Panics
    /// When the helper is not built.
    #[must_use]
    pub fn storage_tools(self) -> Self {
        let helper = self.guest.with_file_name("p2pvps-luks");
        assert!(
            helper.is_file(),
            "{} is missing: build it first (cargo build -p p2pvps-luks, with --release for benches), or run cargo test --workspace",
            helper.display()
        );
        self.binary("/usr/bin/mount", "/usr/bin/mount")
            .binary("/usr/bin/umount", "/usr/bin/umount")
            .binary("/usr/sbin/blockdev", "/usr/sbin/blockdev")
            .binary("/usr/bin/partx", "/usr/bin/partx")
            .binary(
                helper,
                &format!("{}/p2pvps-luks", crate::initramfs::GUEST_DIR),
            )
    }

    /// An extra shared library at its host path (for dlopen-ed ones).
    #[must_use]
    pub fn library(mut self, host: impl Into<PathBuf>) -> Self {
        self.extras.push(Extra::Library(host.into()));
        self
    }

    /// A host file copied to an absolute guest path.
    #[must_use]
    pub fn file(mut self, host: impl Into<PathBuf>, guest: &str) -> Self {
        self.extras.push(Extra::File(host.into(), guest.to_owned()));
        self
    }

    /// A guest file with these contents and mode.
    #[must_use]
    pub fn data(mut self, guest: &str, contents: impl Into<Vec<u8>>, mode: u32) -> Self {
        self.extras
            .push(Extra::Data(guest.to_owned(), contents.into(), mode));
        self
    }

    /// A kernel module besides [`crate::initramfs::DEFAULT_MODULES`].
    #[must_use]
    pub fn module(mut self, name: &str) -> Self {
        self.extras.push(Extra::Module(name.to_owned()));
        self
    }

    /// An extra kernel command-line parameter.
    #[must_use]
    pub fn kernel_arg(mut self, arg: &str) -> Self {
        self.kernel_args.push(arg.to_owned());
        self
    }

    /// Builds the initramfs in a fresh work directory and starts QEMU.
    pub fn start(self) -> Result<Vm, VmError> {
        let kernel = KernelAssets::locate()?;
        let workdir = Workdir::new()?;
        let initrd = workdir.path().join("initrd.cpio");
        let guest_name = self.guest.file_name().map_or_else(
            || "vm-guest".to_owned(),
            |n| n.to_string_lossy().into_owned(),
        );
        let guest_path = format!("{GUEST_DIR}/{guest_name}");
        let mut initramfs = Initramfs::new(&kernel).binary_stripped(&self.guest, &guest_path);
        for extra in &self.extras {
            initramfs = match extra.clone() {
                Extra::Binary(host, guest) => initramfs.binary(host, &guest),
                Extra::Library(host) => initramfs.library(host),
                Extra::File(host, guest) => initramfs.file(host, &guest),
                Extra::Data(guest, contents, mode) => initramfs.data(&guest, contents, mode),
                Extra::Module(name) => initramfs.module(&name),
            };
        }
        let argv = self.argv.clone().unwrap_or_else(|| {
            std::iter::once(OsString::from(&guest_path))
                .chain(self.args.iter().cloned())
                .collect()
        });
        let config = InitConfig {
            argv,
            env: self.env.clone(),
            wait_usb: self.wait_usb,
            wait_virtio: u32::try_from(self.virtio.len() + usize::from(self.state.is_some()))
                .unwrap_or(u32::MAX),
            wait_seconds: self.wait_seconds,
            network: !self.host_ports.is_empty(),
            state_serial: self.state.as_ref().map(|_| STATE_SERIAL.to_owned()),
        };
        initramfs.write(&config, &initrd)?;
        let qemu_args = self.qemu_args(&kernel, &initrd, workdir.path())?;
        Vm::spawn(&qemu_args, workdir)
    }

    fn qemu_args(
        &self,
        kernel: &KernelAssets,
        initrd: &Path,
        dir: &Path,
    ) -> Result<Vec<OsString>, VmError> {
        let mut cmdline = vec![
            // The kernel logs to ttyS1 (kernel.log), the guest writes to ttyS0 (read by the harness).
            "console=ttyS1,115200".to_owned(),
            "loglevel=7".to_owned(),
            // A kernel panic reboots, and -no-reboot turns that into QEMU exiting: no hang until the timeout.
            "panic=-1".to_owned(),
            "rdinit=/init".to_owned(),
        ];
        cmdline.extend(self.kernel_args.iter().cloned());
        let mut args: Vec<String> = [
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ]
        .map(str::to_owned)
        .to_vec();
        args.extend([
            "-m".into(),
            self.memory_mib.to_string(),
            "-smp".into(),
            self.cpus.to_string(),
        ]);
        args.extend([
            "-kernel".into(),
            utf8(&kernel.vmlinuz)?,
            "-initrd".into(),
            utf8(initrd)?,
        ]);
        args.extend(["-append".into(), cmdline.join(" ")]);
        args.extend([
            "-chardev".into(),
            "stdio,id=out,signal=off".into(),
            "-serial".into(),
            "chardev:out".into(),
        ]);
        args.extend([
            "-chardev".into(),
            format!("file,id=klog,path={}", opt_value(&dir.join("kernel.log"))?),
            "-serial".into(),
            "chardev:klog".into(),
        ]);
        args.extend([
            "-monitor".into(),
            format!(
                "unix:{},server=on,wait=off",
                opt_value(&dir.join("monitor.sock"))?
            ),
        ]);
        args.extend(["-device".into(), "virtio-rng-pci".into()]);
        // The xHCI controller is always there, so USB disks can be hotplugged into an empty bus.
        args.extend(["-device".into(), "qemu-xhci,id=xhci".into()]);
        for (id, path) in &self.usb {
            args.extend(drive_args(id, path)?);
            args.extend([
                "-device".into(),
                format!("usb-storage,bus=xhci.0,drive=drv-{id},id={id}"),
            ]);
        }
        let state = self
            .state
            .iter()
            .map(|p| (STATE_SERIAL.to_owned(), p.clone()));
        for (id, path) in self.virtio.iter().cloned().chain(state) {
            args.extend(drive_args(&id, &path)?);
            args.extend([
                "-device".into(),
                format!("virtio-blk-pci,drive=drv-{id},id={id},serial={id}"),
            ]);
        }
        if !self.host_ports.is_empty() {
            // restrict=on: the guest reaches only the guestfwd addresses below. Each connection runs the
            // command, which relays to the host's loopback (busybox-static, a package the VMs need anyway).
            let mut netdev = "user,id=n0,restrict=on,ipv6=off".to_owned();
            for port in &self.host_ports {
                write!(
                    netdev,
                    ",guestfwd=tcp:{HOST_ADDR}:{port}-cmd:{} nc 127.0.0.1 {port}",
                    crate::initramfs::BUSYBOX
                )
                .expect("String");
            }
            args.extend([
                "-netdev".into(),
                netdev,
                "-device".into(),
                "virtio-net-pci,netdev=n0".into(),
            ]);
        }
        Ok(args.into_iter().map(OsString::from).collect())
    }
}

fn check_id(id: &str) -> Result<(), VmError> {
    if !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        Ok(())
    } else {
        Err(VmError::BadId(id.to_owned()))
    }
}

fn utf8(path: &Path) -> Result<String, VmError> {
    path.to_str()
        .map(str::to_owned)
        .ok_or_else(|| VmError::BadPath(path.to_owned()))
}

/// A path as a value inside a QEMU `key=value,…` option: commas are doubled.
fn opt_value(path: &Path) -> Result<String, VmError> {
    Ok(utf8(path)?.replace(',', ",,"))
}

fn drive_spec(id: &str, path: &Path) -> Result<String, VmError> {
    check_id(id)?;
    Ok(format!(
        "if=none,id=drv-{id},file={},format=raw",
        opt_value(path)?
    ))
}

fn drive_args(id: &str, path: &Path) -> Result<[String; 2], VmError> {
    Ok(["-drive".into(), drive_spec(id, path)?])
}

/// The VM's files (initramfs, kernel.log, serial.log, monitor socket): removed on drop unless
/// [`KEEP_ENV`] is set.
enum Workdir {
    Temp(tempfile::TempDir),
    Kept(PathBuf),
}

impl Workdir {
    fn new() -> Result<Self, VmError> {
        let dir = tempfile::Builder::new()
            .prefix("vmtest-")
            .tempdir()
            .map_err(VmError::Workdir)?;
        if std::env::var_os(KEEP_ENV).is_some_and(|v| !v.is_empty()) {
            let path = dir.keep();
            eprintln!("vmtest: keeping {}", path.display());
            Ok(Self::Kept(path))
        } else {
            Ok(Self::Temp(dir))
        }
    }

    fn path(&self) -> &Path {
        match self {
            Self::Temp(dir) => dir.path(),
            Self::Kept(path) => path,
        }
    }
}

#[derive(Default)]
struct SerialState {
    lines: Vec<String>,
    eof: bool,
    /// Host time from spawn to the /init marker.
    init_after: Option<Duration>,
}

#[derive(Default)]
struct Serial {
    state: Mutex<SerialState>,
    changed: Condvar,
}

impl Serial {
    fn lock(&self) -> MutexGuard<'_, SerialState> {
        // A reader thread that panicked leaves plain data behind: still usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A running VM. Its guest output is read in the background; [`Vm::wait_exit`] ends it cleanly, and
/// dropping it kills QEMU.
pub struct Vm {
    child: Child,
    workdir: Workdir,
    serial: Arc<Serial>,
    stderr: Arc<Mutex<String>>,
    cursor: usize,
    monitor: Option<Monitor>,
    started: Instant,
    command: String,
}

impl Vm {
    fn spawn(args: &[OsString], workdir: Workdir) -> Result<Self, VmError> {
        let command = std::iter::once(QEMU.to_owned())
            .chain(args.iter().map(|a| a.to_string_lossy().into_owned()))
            .collect::<Vec<_>>()
            .join(" ");
        fs::write(workdir.path().join("qemu.cmdline"), &command).map_err(VmError::Workdir)?;
        let started = Instant::now();
        let mut child = Command::new(QEMU)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| VmError::Spawn {
                command: command.clone(),
                source,
            })?;
        let serial = Arc::new(Serial::default());
        let log = fs::File::create(workdir.path().join("serial.log")).map_err(VmError::Workdir)?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let reader_serial = Arc::clone(&serial);
        thread::spawn(move || read_serial(stdout, log, &reader_serial, started));
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut qemu_stderr = child.stderr.take().expect("stderr is piped");
        let reader_stderr = Arc::clone(&stderr);
        thread::spawn(move || {
            let mut text = String::new();
            let _ = qemu_stderr.read_to_string(&mut text);
            reader_stderr
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push_str(&text);
        });
        Ok(Self {
            child,
            workdir,
            serial,
            stderr,
            cursor: 0,
            monitor: None,
            started,
            command,
        })
    }

    /// The next guest output line (after the one the previous call returned) that contains `pattern`.
    pub fn wait_for_line(&mut self, pattern: &str, timeout: Duration) -> Result<String, VmError> {
        let deadline = Instant::now() + timeout;
        let mut state = self.serial.lock();
        loop {
            if let Some(offset) = state.lines[self.cursor..]
                .iter()
                .position(|l| l.contains(pattern))
            {
                let index = self.cursor + offset;
                self.cursor = index + 1;
                return Ok(state.lines[index].clone());
            }
            if state.eof {
                drop(state);
                return Err(self.exited(&format!("a line containing {pattern:?}")));
            }
            let now = Instant::now();
            if now >= deadline {
                drop(state);
                return Err(VmError::Timeout {
                    waiting_for: format!("line containing {pattern:?}"),
                    timeout,
                    diagnostics: self.diagnostics(),
                });
            }
            state = self
                .serial
                .changed
                .wait_timeout(state, deadline - now)
                .map_or_else(|poisoned| poisoned.into_inner().0, |(guard, _)| guard);
        }
    }

    /// Waits for the guest command's exit marker and for QEMU to power off; returns the exit code.
    /// Kills QEMU on every error (QEMU died, no marker in time, no power-off).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<i32, VmError> {
        let deadline = Instant::now() + timeout;
        let code = loop {
            let state = self.serial.lock();
            if let Some(line) = state
                .lines
                .iter()
                .rev()
                .find(|l| l.starts_with(EXIT_MARKER))
            {
                let line = line.clone();
                drop(state);
                break line[EXIT_MARKER.len()..]
                    .trim()
                    .parse::<i32>()
                    .map_err(|_| VmError::BadMarker { line })?;
            }
            if state.eof {
                drop(state);
                return Err(self.exited("the guest's exit marker"));
            }
            let now = Instant::now();
            if now >= deadline {
                drop(state);
                self.kill();
                return Err(VmError::Timeout {
                    waiting_for: "exit marker".into(),
                    timeout,
                    diagnostics: self.diagnostics(),
                });
            }
            drop(self.serial.changed.wait_timeout(state, deadline - now));
        };
        let poweroff_deadline = Instant::now() + POWEROFF_TIMEOUT;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => break,
                Ok(Some(status)) => {
                    return Err(VmError::Exited {
                        status: status.to_string(),
                        waiting_for: "power-off".into(),
                        diagnostics: self.diagnostics(),
                    });
                }
                Ok(None) if Instant::now() < poweroff_deadline => {
                    thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    self.kill();
                    return Err(VmError::NoPowerOff {
                        code,
                        timeout: POWEROFF_TIMEOUT,
                        diagnostics: self.diagnostics(),
                    });
                }
            }
        }
        self.wait_serial_eof(Duration::from_secs(2));
        Ok(code)
    }

    /// Hotplugs a raw image as a USB disk on the xHCI bus, with QEMU device id `id`.
    pub fn usb_attach(&mut self, id: &str, path: &Path) -> Result<(), VmError> {
        let drive = format!("drive_add 0 {}", drive_spec(id, path)?);
        let out = self.monitor_command(&drive)?;
        if out != "OK" {
            return Err(VmError::MonitorCommand {
                command: drive,
                output: out,
            });
        }
        self.monitor_expect_silent(&format!(
            "device_add usb-storage,bus=xhci.0,drive=drv-{id},id={id}"
        ))
    }

    /// Unplugs the USB disk with QEMU device id `id`, and returns once QEMU has released its drive
    /// (which it does a moment after the device goes), so the same id can be attached again. The
    /// guest sees the removal shortly after, not necessarily when this returns.
    pub fn usb_detach(&mut self, id: &str) -> Result<(), VmError> {
        check_id(id)?;
        self.monitor_expect_silent(&format!("device_del {id}"))?;
        let drive = format!("drv-{id} ");
        let deadline = Instant::now() + DRIVE_RELEASE_TIMEOUT;
        loop {
            let blocks = self.monitor_command("info block")?;
            if !blocks.lines().any(|l| l.starts_with(&drive)) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(VmError::MonitorCommand {
                    command: format!("device_del {id}"),
                    output: format!(
                        "drive drv-{id} still open after {DRIVE_RELEASE_TIMEOUT:?}: {blocks}"
                    ),
                });
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Pulls the plug: kills QEMU at once, without the guest syncing. Writes QEMU already passed to the
    /// image files stay (they sit in the host's page cache), so this models losing the guest's RAM and
    /// unflushed kernel buffers, not a drive losing its own write cache.
    pub fn power_cut(&mut self) {
        self.kill();
    }

    /// Runs a raw monitor (HMP) command and returns its output.
    pub fn monitor_command(&mut self, command: &str) -> Result<String, VmError> {
        let monitor = match &mut self.monitor {
            Some(monitor) => monitor,
            None => self.monitor.insert(Monitor::connect(
                &self.workdir.path().join("monitor.sock"),
                MONITOR_CONNECT_TIMEOUT,
            )?),
        };
        Ok(monitor.command(command)?)
    }

    fn monitor_expect_silent(&mut self, command: &str) -> Result<(), VmError> {
        let out = self.monitor_command(command)?;
        if out.is_empty() {
            Ok(())
        } else {
            Err(VmError::MonitorCommand {
                command: command.to_owned(),
                output: out,
            })
        }
    }

    /// All guest output so far (ttyS0), one line per line, `\r` removed.
    pub fn serial_output(&self) -> String {
        self.serial.lock().lines.join("\n")
    }

    /// The kernel's log so far (ttyS1).
    pub fn kernel_log(&self) -> String {
        fs::read_to_string(self.workdir.path().join("kernel.log")).unwrap_or_default()
    }

    /// Host time from starting QEMU to /init's first line, once /init has run.
    pub fn boot_time(&self) -> Option<Duration> {
        self.serial.lock().init_after
    }

    /// Time since QEMU was started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The work directory (initrd.cpio, kernel.log, serial.log, qemu.cmdline, monitor.sock).
    pub fn workdir(&self) -> &Path {
        self.workdir.path()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The error for QEMU having gone away early.
    fn exited(&mut self, waiting_for: &str) -> VmError {
        let status = self
            .wait_briefly()
            .map_or_else(|| "still running".to_owned(), |s| s.to_string());
        self.kill();
        VmError::Exited {
            status,
            waiting_for: waiting_for.to_owned(),
            diagnostics: self.diagnostics(),
        }
    }

    fn wait_briefly(&mut self) -> Option<ExitStatus> {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_serial_eof(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut state = self.serial.lock();
        while !state.eof {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            state = self
                .serial
                .changed
                .wait_timeout(state, deadline - now)
                .map_or_else(|poisoned| poisoned.into_inner().0, |(guard, _)| guard);
        }
    }

    /// The tails of the guest output, the kernel log and QEMU's stderr, for error messages.
    pub fn diagnostics(&self) -> String {
        let serial = self.serial_output();
        let kernel = self.kernel_log();
        let stderr = self.stderr.lock().map(|s| s.clone()).unwrap_or_default();
        format!(
            "--- guest output (last {DIAG_LINES} lines) ---\n{}\n--- kernel log (last {DIAG_LINES} lines) ---\n{}\n\
             --- QEMU stderr ---\n{}\n--- QEMU: {}\n--- work directory: {} ({})",
            tail(&serial, DIAG_LINES),
            tail(&kernel, DIAG_LINES),
            stderr.trim_end(),
            self.command,
            self.workdir.path().display(),
            match self.workdir {
                Workdir::Temp(_) =>
                    format!("removed when the Vm drops; set {KEEP_ENV}=1 to keep it"),
                Workdir::Kept(_) => "kept".to_owned(),
            }
        )
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Reads QEMU's stdout (the guest's ttyS0) line by line into `serial` and the log file.
fn read_serial(stdout: impl Read, mut log: fs::File, serial: &Serial, started: Instant) {
    let mut reader = BufReader::new(stdout);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let _ = log.write_all(&buf);
                let line = String::from_utf8_lossy(&buf)
                    .trim_end_matches(['\r', '\n'])
                    .to_owned();
                let mut state = serial.lock();
                if state.init_after.is_none() && line.starts_with(INIT_MARKER) {
                    state.init_after = Some(started.elapsed());
                }
                state.lines.push(line);
                drop(state);
                serial.changed.notify_all();
            }
        }
    }
    serial.lock().eof = true;
    serial.changed.notify_all();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_option_values() {
        assert_eq!(opt_value(Path::new("/tmp/a,b")).unwrap(), "/tmp/a,,b");
        assert!(check_id("usb-1_a").is_ok());
        for bad in ["", "a,b", "a b", "x;y"] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
        assert_eq!(
            drive_spec("d1", Path::new("/t/d.img")).unwrap(),
            "if=none,id=drv-d1,file=/t/d.img,format=raw"
        );
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
