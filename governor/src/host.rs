//! Facts about this machine: what registration offers, and the limits the renter's container gets.

use std::path::Path;

use crate::marketplace::Specs;
use crate::runtime::Limits;

/// Measured specs. `storage` is the directory whose filesystem holds the renter's storage.
pub fn specs(storage: &Path) -> (Specs, Limits) {
    use sysinfo::System;
    let (memory, ncpus, brand) = match System::new() {
        Ok(mut sys) => {
            sys.refresh_memory();
            sys.refresh_cpu_all();
            let brand = sys.cpus().first().map(|c| c.brand().trim().to_owned());
            (sys.total_memory(), sys.cpus().len(), brand)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read memory and CPU facts");
            (0, 1, None)
        }
    };
    let brand = brand
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| std::env::consts::ARCH.to_owned());
    let disk = free_space(storage).unwrap_or(0);
    let specs = Specs {
        memory: format!("{} MB", memory / 1_000_000),
        disk_space: format!("{} GB", disk / 1_000_000_000),
        processor: format!("{brand} x{}", ncpus.max(1)),
        internet_speed: "unmeasured".into(),
    };
    (specs, Limits::for_host(memory, ncpus))
}

/// Bytes available (to an unprivileged writer) on the filesystem that holds `path`: one statvfs,
/// cheap enough to be asked several times a second.
pub fn free_space(path: &Path) -> Option<u64> {
    let fs = rustix::fs::statvfs(path).ok()?;
    Some(fs.f_bavail.saturating_mul(fs.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_is_what_df_says() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = std::process::Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(dir)
            .output()
            .unwrap();
        let df: u64 = String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let ours = free_space(dir).expect("the filesystem of the build tree is listed");
        // Other writers on the machine move it a little between the two reads.
        assert!(ours.abs_diff(df) < 64 << 20, "ours {ours}, df {df}");
    }

    #[test]
    fn specs_are_measured() {
        let (s, limits) = specs(Path::new("/"));
        let mb: u64 = s.memory.trim_end_matches(" MB").parse().unwrap();
        assert!(mb > 64, "{s:?}");
        assert!(s.disk_space.ends_with(" GB"));
        assert!(s.processor.contains(" x"), "{s:?}");
        assert!(limits.memory_bytes > 0 && limits.nano_cpus >= 500_000_000);
    }
}

/// Give this host the name `name` (until the next boot), so that its mDNS responder
/// (systemd-resolved on the image) answers as `<name>.local`. Unchanged when it already has it.
pub fn set_hostname(proc_hostname: &Path, name: &str) -> std::io::Result<bool> {
    let current = std::fs::read_to_string(proc_hostname)?;
    if current.trim() == name {
        return Ok(false);
    }
    std::fs::write(proc_hostname, name)?;
    Ok(true)
}

#[cfg(test)]
mod hostname_tests {
    #[test]
    fn the_name_is_written_only_when_it_differs() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hostname");
        std::fs::write(&file, "p2pvps\n").unwrap();
        assert!(super::set_hostname(&file, "p2pvps-5a2608").unwrap());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "p2pvps-5a2608");
        assert!(!super::set_hostname(&file, "p2pvps-5a2608").unwrap());
    }
}
