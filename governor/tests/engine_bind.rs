//! The engine's data root moved with real bind mounts on this host; the engine's stop and start
//! commands are stand-ins that record their calls (the image's boot test runs the real Docker).

use std::path::{Path, PathBuf};
use std::process::Command;

use p2pvps_governor::engine::{BindEngine, Engine as _};

struct Rig {
    _tmp: tempfile::TempDir,
    data_root: PathBuf,
    fallback: PathBuf,
    volume: PathBuf,
    log: PathBuf,
    engine: BindEngine,
}

impl Rig {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let path = |p: &str| tmp.path().join(p);
        let (data_root, fallback, volume, log) = (
            path("data-root"),
            path("fallback"),
            path("volume/engine"),
            path("log"),
        );
        std::fs::create_dir_all(&data_root).unwrap();
        std::fs::create_dir_all(&fallback).unwrap();
        std::fs::write(fallback.join("which"), "fallback").unwrap();
        let record = |word: &str| {
            vec![
                "sh".to_owned(),
                "-c".to_owned(),
                format!("echo {word} >> \"$0\""),
                log.display().to_string(),
            ]
        };
        let engine = BindEngine::with_commands(
            &data_root,
            &fallback,
            vec![record("stop")],
            vec![record("start")],
        );
        Self {
            _tmp: tmp,
            data_root,
            fallback,
            volume,
            log,
            engine,
        }
    }

    fn calls(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn which(&self) -> String {
        std::fs::read_to_string(self.data_root.join("which")).unwrap_or_default()
    }

    fn mounts_at_data_root(&self) -> usize {
        let target = std::fs::canonicalize(&self.data_root).unwrap();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.split(' ').nth(4).map(Path::new) == Some(target.as_path()))
            .count()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        while self.mounts_at_data_root() > 0 {
            let ok = Command::new("umount")
                .arg(&self.data_root)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                break;
            }
        }
    }
}

#[tokio::test]
async fn the_data_root_follows_the_volume_with_one_restart_per_move() {
    let rig = Rig::new();
    let e = &rig.engine;

    // A volume's root that is not there (its filesystem not mounted) is refused, not made.
    let err = e.attach(&rig.volume).await.unwrap_err().to_string();
    assert!(err.contains("use as the engine's data root"), "{err}");
    assert_eq!(rig.calls(), "", "the engine was not touched");

    // Bound at the data root, the engine stopped and started around it.
    std::fs::create_dir_all(&rig.volume).unwrap();
    assert!(e.attach(&rig.volume).await.unwrap(), "moved: restarted");
    std::fs::write(rig.volume.join("which"), "volume").unwrap();
    assert_eq!(rig.which(), "volume");
    assert_eq!(rig.calls(), "stop\nstart\n");

    // Already there: not stopped, only started in case it is not running.
    assert!(!e.attach(&rig.volume).await.unwrap());
    assert_eq!(rig.calls(), "stop\nstart\nstart\n");

    // Back to the fallback: the volume's bind is gone, not buried under another mount.
    assert!(e.detach().await.unwrap());
    assert_eq!(rig.which(), "fallback");
    assert_eq!(rig.mounts_at_data_root(), 1);
    assert_eq!(rig.calls(), "stop\nstart\nstart\nstop\nstart\n");
    assert!(!e.detach().await.unwrap());

    // And onto the volume again, still one mount deep.
    assert!(e.attach(&rig.volume).await.unwrap());
    assert_eq!(rig.which(), "volume");
    assert_eq!(rig.mounts_at_data_root(), 1);
    assert_eq!(
        std::fs::read_to_string(rig.fallback.join("which")).unwrap(),
        "fallback",
        "the fallback's files are untouched"
    );
}

#[tokio::test]
async fn a_failing_engine_stop_leaves_the_data_root_where_it_was() {
    let rig = Rig::new();
    let engine = BindEngine::with_commands(
        &rig.data_root,
        &rig.fallback,
        vec![vec!["false".to_owned()]],
        vec![],
    );
    std::fs::create_dir_all(&rig.volume).unwrap();
    let e = engine.attach(&rig.volume).await.unwrap_err().to_string();
    assert!(e.contains("`false` failed"), "{e}");
    assert_eq!(rig.mounts_at_data_root(), 0, "nothing was bound");
}

#[tokio::test]
async fn a_missing_fallback_is_made_for_root_only() {
    let rig = Rig::new();
    let fallback = rig.fallback.join("fresh");
    let engine = BindEngine::with_commands(&rig.data_root, &fallback, vec![], vec![]);
    assert!(engine.detach().await.unwrap());
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&fallback).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o710);
    assert_eq!(rig.mounts_at_data_root(), 1);
}
