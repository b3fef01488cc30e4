//! Builds the initramfs the VMs boot: busybox-static with its applet links, the kernel modules asked
//! for (dependencies resolved from modules.dep), ELF binaries with the shared libraries ldd names and the
//! dynamic loader, extra files, `/init` (init.sh) and its settings in /etc/vmtest/.
//!
//! The archive is written uncompressed: decompressing under TCG costs more than copying a few more MB.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::io::{self, BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::{fs, iter};

use crate::assets::KernelAssets;
use crate::cpio::{self, Entry};

/// The /init script; its settings live in [`CONF_DIR`].
pub const INIT_SCRIPT: &str = include_str!("init.sh");
pub const CONF_DIR: &str = "etc/vmtest";
/// Where the guest binary goes unless the caller names another path.
pub const GUEST_DIR: &str = "/usr/local/bin";

/// Modules every VM gets: dm-crypt and what LUKS2 (aes-xts-plain64, keyslots through AF_ALG) needs, USB
/// storage behind qemu-xhci, virtio disks/net/rng, ext4 with its checksums, and loop devices. Modules
/// built into Debian's kernel (aes, sha256, cbc, hmac) are skipped silently.
pub const DEFAULT_MODULES: &[&str] = &[
    "crc32c_generic",
    "crc16",
    "mbcache",
    "jbd2",
    "ext4",
    "dm_mod",
    "dm_crypt",
    "af_alg",
    "algif_skcipher",
    "algif_hash",
    "xts",
    "ecb",
    "sha512_generic",
    "loop",
    "scsi_mod",
    "sd_mod",
    "xhci_hcd",
    "xhci_pci",
    "usb_storage",
    "uas",
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_rng",
];

/// Host binaries every VM gets at the same path (with their libraries): the guest scenarios format
/// and wipe disks with them.
pub const DEFAULT_BINARIES: &[&str] = &[
    "/usr/sbin/mke2fs",
    "/usr/sbin/blkdiscard",
    "/usr/sbin/wipefs",
];
/// (link, target) pairs added by default.
pub const DEFAULT_SYMLINKS: &[(&str, &str)] = &[("/usr/sbin/mkfs.ext4", "mke2fs")];
/// Host files copied as they are.
pub const DEFAULT_FILES: &[&str] = &["/etc/mke2fs.conf"];
/// Libraries no ldd output names but that programs dlopen: glibc loads libgcc_s for thread
/// cancellation and unwinding (cryptsetup needs it).
pub const DEFAULT_LIBRARIES: &[&str] = &["/lib/x86_64-linux-gnu/libgcc_s.so.1"];
pub const BUSYBOX: &str = "/bin/busybox";

#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot run `{command}`: {source}")]
    Spawn { command: String, source: io::Error },
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("ldd {binary}: library {library} not found")]
    LibraryNotFound { binary: PathBuf, library: String },
    #[error("module {name} is neither in {modules_dir}/modules.dep nor built in")]
    UnknownModule { name: String, modules_dir: PathBuf },
    #[error("guest path {0:?} must be absolute, without `..`, and valid UTF-8")]
    BadGuestPath(PathBuf),
    #[error("argument {0:?} holds a newline or NUL: /init reads one argument per line")]
    BadArgument(OsString),
    #[error(
        "environment entry {0:?}: the key must match [A-Za-z_][A-Za-z0-9_]* and the value hold no newline"
    )]
    BadEnv(String),
    #[error("{path} is already in the initramfs as something else")]
    Conflict { path: String },
}

/// What /init does besides loading modules: the argv it runs, environment, devices to wait for,
/// network and the state disk.
#[derive(Debug, Clone, Default)]
pub struct InitConfig {
    pub argv: Vec<OsString>,
    pub env: Vec<(String, String)>,
    pub wait_usb: u32,
    pub wait_virtio: u32,
    pub wait_seconds: u32,
    pub network: bool,
    /// Serial of the virtio disk /init mounts at /state (ext4).
    pub state_serial: Option<String>,
}

#[derive(Debug, Clone)]
struct Binary {
    host: PathBuf,
    guest: String,
    strip_debug: bool,
}

/// Collects what goes into the archive; [`Initramfs::write`] resolves modules and libraries.
#[derive(Debug, Clone)]
pub struct Initramfs {
    kernel: KernelAssets,
    modules: Vec<String>,
    binaries: Vec<Binary>,
    files: Vec<(PathBuf, String)>,
    libraries: Vec<PathBuf>,
    symlinks: Vec<(String, String)>,
    data: Vec<(String, Vec<u8>, u32)>,
}

impl Initramfs {
    /// Busybox, the default modules, binaries, files and libraries.
    pub fn new(kernel: &KernelAssets) -> Self {
        let mut me = Self {
            kernel: kernel.clone(),
            modules: DEFAULT_MODULES.iter().map(|m| (*m).to_owned()).collect(),
            binaries: Vec::new(),
            files: Vec::new(),
            libraries: DEFAULT_LIBRARIES.iter().map(PathBuf::from).collect(),
            symlinks: DEFAULT_SYMLINKS
                .iter()
                .map(|(l, t)| ((*l).to_owned(), (*t).to_owned()))
                .collect(),
            data: Vec::new(),
        };
        for bin in DEFAULT_BINARIES {
            me = me.binary(bin, bin);
        }
        for file in DEFAULT_FILES {
            me = me.file(file, file);
        }
        me
    }

    /// A kernel module by name (`-` and `_` are the same), loaded by /init after its dependencies.
    #[must_use]
    pub fn module(mut self, name: &str) -> Self {
        self.modules.push(name.to_owned());
        self
    }

    /// An ELF binary at `guest` (absolute), with every library ldd names and the loader.
    #[must_use]
    pub fn binary(mut self, host: impl Into<PathBuf>, guest: &str) -> Self {
        self.binaries.push(Binary {
            host: host.into(),
            guest: guest.to_owned(),
            strip_debug: false,
        });
        self
    }

    /// Like [`Initramfs::binary`], with debug info stripped on the way (`strip --strip-debug`): a debug
    /// build of a Rust binary is mostly DWARF, which would only slow the boot down.
    #[must_use]
    pub fn binary_stripped(mut self, host: impl Into<PathBuf>, guest: &str) -> Self {
        self.binaries.push(Binary {
            host: host.into(),
            guest: guest.to_owned(),
            strip_debug: true,
        });
        self
    }

    /// A shared library at its host path (for libraries loaded with dlopen, which ldd cannot see).
    #[must_use]
    pub fn library(mut self, host: impl Into<PathBuf>) -> Self {
        self.libraries.push(host.into());
        self
    }

    /// A host file copied (symlinks followed) to `guest`, keeping its permission bits.
    #[must_use]
    pub fn file(mut self, host: impl Into<PathBuf>, guest: &str) -> Self {
        self.files.push((host.into(), guest.to_owned()));
        self
    }

    /// A file with the given contents and mode.
    #[must_use]
    pub fn data(mut self, guest: &str, contents: impl Into<Vec<u8>>, mode: u32) -> Self {
        self.data.push((guest.to_owned(), contents.into(), mode));
        self
    }

    #[must_use]
    pub fn symlink(mut self, guest: &str, target: &str) -> Self {
        self.symlinks.push((guest.to_owned(), target.to_owned()));
        self
    }

    /// Writes the archive with /init and its settings to `out`.
    pub fn write(&self, config: &InitConfig, out: &Path) -> Result<(), InitramfsError> {
        let mut tree = Tree::default();
        tree.add_dirs(&["dev", "proc", "sys", "run", "tmp", "root", "etc", "mnt"])?;
        tree.insert(
            "dev/console",
            Entry::CharDev {
                mode: 0o600,
                major: 5,
                minor: 1,
            },
        )?;
        tree.insert(
            "init",
            Entry::File {
                mode: 0o755,
                data: INIT_SCRIPT.as_bytes().to_vec(),
            },
        )?;

        let mut libraries = BTreeSet::new();
        let mut shadowed = HashSet::new();
        for bin in &self.binaries {
            let guest = guest_path(&bin.guest)?;
            let data = if bin.strip_debug {
                strip_debug(&bin.host)?
            } else {
                read(&bin.host)?
            };
            tree.insert(&guest, Entry::File { mode: 0o755, data })?;
            libraries.extend(ldd(&bin.host)?);
            if let Some(name) = Path::new(&guest).file_name() {
                shadowed.insert(name.to_owned());
            }
        }
        for lib in self.libraries.iter().chain(&libraries) {
            let guest = guest_path(&lib.to_string_lossy())?;
            tree.insert_same(
                &guest,
                Entry::File {
                    mode: 0o755,
                    data: read(lib)?,
                },
            )?;
        }
        for (host, guest) in &self.files {
            let guest = guest_path(guest)?;
            let mode = fs::metadata(host)
                .map_err(|source| InitramfsError::Read {
                    path: host.clone(),
                    source,
                })?
                .permissions()
                .mode();
            tree.insert(
                &guest,
                Entry::File {
                    mode,
                    data: read(host)?,
                },
            )?;
        }
        for (guest, contents, mode) in &self.data {
            tree.insert(
                &guest_path(guest)?,
                Entry::File {
                    mode: *mode,
                    data: contents.clone(),
                },
            )?;
        }
        for (guest, target) in &self.symlinks {
            tree.insert(
                &guest_path(guest)?,
                Entry::Symlink {
                    target: target.clone(),
                },
            )?;
        }
        self.add_modules(&mut tree)?;
        add_config(&mut tree, config)?;
        add_busybox(&mut tree, &shadowed)?;

        let file = fs::File::create(out).map_err(|source| InitramfsError::Write {
            path: out.to_owned(),
            source,
        })?;
        let mut writer = BufWriter::new(file);
        cpio::write_archive(
            &mut writer,
            tree.entries.iter().map(|(p, e)| (p.as_str(), e)),
        )
        .and_then(|()| writer.flush())
        .map_err(|source| InitramfsError::Write {
            path: out.to_owned(),
            source,
        })
    }

    fn add_modules(&self, tree: &mut Tree) -> Result<(), InitramfsError> {
        let dir = &self.kernel.modules;
        let index = ModuleIndex::load(dir)?;
        let order = index
            .resolve(&self.modules)
            .map_err(|name| InitramfsError::UnknownModule {
                name,
                modules_dir: dir.clone(),
            })?;
        let base = format!("lib/modules/{}", self.kernel.kver);
        let included: BTreeSet<&str> = order.iter().map(|m| m.name.as_str()).collect();
        let mut load_list = String::new();
        let mut dep_file = String::new();
        for module in &order {
            let data = read(&dir.join(&module.path))?;
            tree.insert(
                &format!("{base}/{}", module.path),
                Entry::File { mode: 0o644, data },
            )?;
            writeln!(load_list, "{} {}", module.name, module.path).expect("String");
            write!(dep_file, "{}:", module.path).expect("String");
            for dep in &module.deps {
                write!(dep_file, " {dep}").expect("String");
            }
            dep_file.push('\n');
        }
        // Busybox modprobe (also what the kernel runs to autoload, e.g. crypto-xts) reads these text files.
        let aliases = fs::read_to_string(dir.join("modules.alias")).map_err(|source| {
            InitramfsError::Read {
                path: dir.join("modules.alias"),
                source,
            }
        })?;
        let alias_file: String = aliases
            .lines()
            .filter(|l| l.rsplit(' ').next().is_some_and(|m| included.contains(m)))
            .flat_map(|l| [l, "\n"])
            .collect();
        tree.insert(&format!("{base}/modules.dep"), text_file(&dep_file))?;
        tree.insert(&format!("{base}/modules.alias"), text_file(&alias_file))?;
        tree.insert(
            &format!("{base}/modules.builtin"),
            Entry::File {
                mode: 0o644,
                data: read(&dir.join("modules.builtin"))?,
            },
        )?;
        tree.insert(&format!("{CONF_DIR}/modules"), text_file(&load_list))
    }
}

fn text_file(text: &str) -> Entry {
    Entry::File {
        mode: 0o644,
        data: text.as_bytes().to_vec(),
    }
}

fn add_config(tree: &mut Tree, config: &InitConfig) -> Result<(), InitramfsError> {
    let mut argv = Vec::new();
    for arg in &config.argv {
        if arg.as_bytes().iter().any(|b| *b == b'\n' || *b == 0) {
            return Err(InitramfsError::BadArgument(arg.clone()));
        }
        argv.extend_from_slice(arg.as_bytes());
        argv.push(b'\n');
    }
    tree.insert(
        &format!("{CONF_DIR}/argv"),
        Entry::File {
            mode: 0o644,
            data: argv,
        },
    )?;
    let mut env = String::new();
    for (key, value) in &config.env {
        let key_ok = key
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !key_ok || value.contains(['\n', '\0']) {
            return Err(InitramfsError::BadEnv(format!("{key}={value}")));
        }
        writeln!(env, "{key}={value}").expect("String");
    }
    tree.insert(&format!("{CONF_DIR}/env"), text_file(&env))?;
    let wait = format!(
        "usb {}\nvirtio {}\nnet {}\nseconds {}\n",
        config.wait_usb,
        config.wait_virtio,
        u8::from(config.network),
        config.wait_seconds.max(1)
    );
    tree.insert(&format!("{CONF_DIR}/wait"), text_file(&wait))?;
    if config.network {
        tree.insert(&format!("{CONF_DIR}/net"), text_file(""))?;
    }
    if let Some(serial) = &config.state_serial {
        tree.insert(
            &format!("{CONF_DIR}/state"),
            text_file(&format!("{serial}\n")),
        )?;
    }
    Ok(())
}

/// Links every applet (as the host's busybox-static lists them) to /bin/busybox, except where a real
/// binary with the same name was added: mkfs and blkdiscard must be the real ones.
fn add_busybox(tree: &mut Tree, shadowed: &HashSet<OsString>) -> Result<(), InitramfsError> {
    tree.insert(
        &BUSYBOX[1..],
        Entry::File {
            mode: 0o755,
            data: read(Path::new(BUSYBOX))?,
        },
    )?;
    let listing = run(Command::new(BUSYBOX).arg("--list-full"))?;
    for applet in listing.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let name = Path::new(applet).file_name().unwrap_or_default();
        if shadowed.contains(name) || tree.entries.contains_key(applet) {
            continue;
        }
        tree.insert(
            applet,
            Entry::Symlink {
                target: BUSYBOX.to_owned(),
            },
        )?;
    }
    Ok(())
}

/// The archive's members by relative path; a BTreeMap lists parents before children.
#[derive(Default)]
struct Tree {
    entries: BTreeMap<String, Entry>,
}

impl Tree {
    fn add_dirs(&mut self, dirs: &[&str]) -> Result<(), InitramfsError> {
        for dir in dirs {
            self.insert(dir, Entry::Dir)?;
        }
        Ok(())
    }

    /// Adds `path` and its missing parent directories; a second, different entry is a conflict.
    fn insert(&mut self, path: &str, entry: Entry) -> Result<(), InitramfsError> {
        let mut parent = String::new();
        for part in path
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map_or(&[][..], |(_, p)| p)
        {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            match self.entries.get(&parent) {
                None => {
                    self.entries.insert(parent.clone(), Entry::Dir);
                }
                Some(Entry::Dir) => {}
                Some(_) => return Err(InitramfsError::Conflict { path: parent }),
            }
        }
        match self.entries.get(path) {
            Some(old) if *old != entry => Err(InitramfsError::Conflict {
                path: path.to_owned(),
            }),
            _ => {
                self.entries.insert(path.to_owned(), entry);
                Ok(())
            }
        }
    }

    /// For libraries several binaries share: the first copy wins (they are the same host file).
    fn insert_same(&mut self, path: &str, entry: Entry) -> Result<(), InitramfsError> {
        if self.entries.contains_key(path) {
            return Ok(());
        }
        self.insert(path, entry)
    }
}

/// `/usr/sbin/x` → `usr/sbin/x`; refuses relative paths and `..`.
fn guest_path(path: &str) -> Result<String, InitramfsError> {
    let bad = || InitramfsError::BadGuestPath(PathBuf::from(path));
    let rel = path.strip_prefix('/').ok_or_else(bad)?;
    if rel.is_empty()
        || rel
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..")
    {
        return Err(bad());
    }
    Ok(rel.to_owned())
}

fn read(path: &Path) -> Result<Vec<u8>, InitramfsError> {
    fs::read(path).map_err(|source| InitramfsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn describe(cmd: &Command) -> String {
    iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

fn run(cmd: &mut Command) -> Result<String, InitramfsError> {
    let out = cmd.output().map_err(|source| InitramfsError::Spawn {
        command: describe(cmd),
        source,
    })?;
    if !out.status.success() {
        return Err(InitramfsError::Command {
            command: describe(cmd),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn strip_debug(host: &Path) -> Result<Vec<u8>, InitramfsError> {
    let dir = tempfile::tempdir().map_err(|source| InitramfsError::Write {
        path: std::env::temp_dir(),
        source,
    })?;
    let out = dir.path().join("stripped");
    run(Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&out)
        .arg(host))?;
    read(&out)
}

/// The libraries (and the loader) ldd names for `binary`; none for a static binary.
fn ldd(binary: &Path) -> Result<Vec<PathBuf>, InitramfsError> {
    let mut cmd = Command::new("ldd");
    cmd.arg(binary);
    let out = cmd.output().map_err(|source| InitramfsError::Spawn {
        command: describe(&cmd),
        source,
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        // ldd exits 1 for static binaries: nothing to copy.
        if stdout.contains("not a dynamic executable")
            || stderr.contains("not a dynamic executable")
        {
            return Ok(Vec::new());
        }
        return Err(InitramfsError::Command {
            command: describe(&cmd),
            stderr: stderr.into_owned(),
        });
    }
    parse_ldd(&stdout).map_err(|library| InitramfsError::LibraryNotFound {
        binary: binary.to_owned(),
        library,
    })
}

/// Lines are `name => /path (0x…)`, `/lib64/ld-linux-x86-64.so.2 (0x…)` (the loader), `linux-vdso.so.1
/// (0x…)` (the kernel's, skipped) or `name => not found` (an error naming the library).
fn parse_ldd(output: &str) -> Result<Vec<PathBuf>, String> {
    let mut libs = Vec::new();
    for line in output.lines().map(str::trim) {
        let path = match line.split_once(" => ") {
            Some((name, rest)) => {
                if rest.starts_with("not found") {
                    return Err(name.to_owned());
                }
                rest.split_whitespace().next().unwrap_or_default()
            }
            None => line.split_whitespace().next().unwrap_or_default(),
        };
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Module {
    name: String,
    /// Relative to the modules directory, as modules.dep writes it.
    path: String,
    deps: Vec<String>,
}

/// modules.dep and modules.builtin of one kernel.
struct ModuleIndex {
    by_name: HashMap<String, Module>,
    by_path: HashMap<String, String>,
    builtin: BTreeSet<String>,
}

fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

impl ModuleIndex {
    fn load(dir: &Path) -> Result<Self, InitramfsError> {
        let read_text = |name: &str| {
            fs::read_to_string(dir.join(name)).map_err(|source| InitramfsError::Read {
                path: dir.join(name),
                source,
            })
        };
        Ok(Self::parse(
            &read_text("modules.dep")?,
            &read_text("modules.builtin")?,
        ))
    }

    fn parse(dep: &str, builtin: &str) -> Self {
        let mut by_name = HashMap::new();
        let mut by_path = HashMap::new();
        for line in dep.lines() {
            let Some((path, deps)) = line.split_once(':') else {
                continue;
            };
            let module = Module {
                name: module_name(path),
                path: path.to_owned(),
                deps: deps.split_whitespace().map(str::to_owned).collect(),
            };
            by_path.insert(module.path.clone(), module.name.clone());
            by_name.insert(module.name.clone(), module);
        }
        let builtin = builtin.lines().map(module_name).collect();
        Self {
            by_name,
            by_path,
            builtin,
        }
    }

    /// The modules to load, each after its dependencies; built-in ones are dropped. Err names an
    /// unknown module.
    fn resolve(&self, wanted: &[String]) -> Result<Vec<Module>, String> {
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        for name in wanted {
            let name = name.replace('-', "_");
            if self.builtin.contains(&name) {
                continue;
            }
            self.visit(&name, &mut seen, &mut order)?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<Module>,
    ) -> Result<(), String> {
        if !seen.insert(name.to_owned()) {
            return Ok(());
        }
        let module = self.by_name.get(name).ok_or_else(|| name.to_owned())?;
        // modules.dep lists every dependency, transitive ones included; the walk still orders them.
        for dep in &module.deps {
            let dep_name = self
                .by_path
                .get(dep)
                .cloned()
                .unwrap_or_else(|| module_name(dep));
            self.visit(&dep_name, seen, order)?;
        }
        order.push(module.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibcryptsetup.so.12 => /lib/x86_64-linux-gnu/libcryptsetup.so.12 (0x00007f)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(out).unwrap(),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libcryptsetup.so.12"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
        assert_eq!(
            parse_ldd("\tlibx.so.1 => not found\n").unwrap_err(),
            "libx.so.1"
        );
    }

    #[test]
    fn modules_in_dependency_order_without_builtins() {
        let dep = "kernel/drivers/md/dm-crypt.ko: kernel/drivers/md/dm-mod.ko\n\
                   kernel/drivers/md/dm-mod.ko:\n\
                   kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/jbd2/jbd2.ko\n\
                   kernel/lib/crc16.ko:\nkernel/fs/jbd2/jbd2.ko:\n";
        let index = ModuleIndex::parse(dep, "kernel/crypto/sha256_generic.ko\n");
        let wanted: Vec<String> = ["dm-crypt", "sha256_generic", "ext4", "dm_mod"]
            .map(String::from)
            .into();
        let names: Vec<String> = index
            .resolve(&wanted)
            .unwrap()
            .into_iter()
            .map(|m| m.name)
            .collect();
        assert_eq!(names, ["dm_mod", "dm_crypt", "crc16", "jbd2", "ext4"]);
        assert_eq!(index.resolve(&["nope".to_owned()]).unwrap_err(), "nope");
    }

    #[test]
    fn tree_adds_parents_and_refuses_conflicts() {
        let mut tree = Tree::default();
        tree.insert("usr/sbin/x", text_file("a")).unwrap();
        assert_eq!(tree.entries.get("usr"), Some(&Entry::Dir));
        assert_eq!(tree.entries.get("usr/sbin"), Some(&Entry::Dir));
        tree.insert("usr/sbin/x", text_file("a")).unwrap();
        assert!(matches!(
            tree.insert("usr/sbin/x", text_file("b")),
            Err(InitramfsError::Conflict { .. })
        ));
        assert!(matches!(
            tree.insert("usr/sbin/x/y", text_file("b")),
            Err(InitramfsError::Conflict { .. })
        ));
    }

    #[test]
    fn guest_paths() {
        assert_eq!(guest_path("/bin/x").unwrap(), "bin/x");
        for bad in ["bin/x", "/", "/a/../b", "/a//b"] {
            assert!(guest_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn config_refuses_newlines() {
        let mut tree = Tree::default();
        let config = InitConfig {
            argv: vec!["a\nb".into()],
            ..InitConfig::default()
        };
        assert!(matches!(
            add_config(&mut tree, &config),
            Err(InitramfsError::BadArgument(_))
        ));
        let config = InitConfig {
            env: vec![("1A".into(), "x".into())],
            ..InitConfig::default()
        };
        assert!(matches!(
            add_config(&mut tree, &config),
            Err(InitramfsError::BadEnv(_))
        ));
    }
}
