//! `p2pvps-governor update`: what an owner (or a maintainer at the console) asks of updates, now.

use std::path::{Path, PathBuf};

use super::{Running, UpdateError, Updater};
use crate::config::DeviceConfig;

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Ask the manifest what it offers; change nothing.
    Check,
    /// Download and install what the manifest offers, now, even during a rental.
    Now,
    /// Install this bundle file.
    Bundle(PathBuf),
}

/// Run `action`; the lines to print. `reboot`: reboot into a written update.
pub async fn run(
    config: &Path,
    state_dir: &Path,
    action: Action,
    force: bool,
    reboot: bool,
) -> Result<Vec<String>, UpdateError> {
    let running = Running::detect()?.ok_or(UpdateError::NoSlots)?;
    let mut out = vec![format!(
        "running {} {} on slot {}",
        running.compatible(),
        running.version,
        running.slot
    )];
    match crate::slots::status() {
        Ok(Some(slots)) => out.push(slots.summary()),
        Ok(None) => {}
        Err(e) => out.push(format!("the slots cannot be read: {e}")),
    }
    // The manifest's address is the config's; a bundle file needs no config.
    let manifest = match (&action, DeviceConfig::load(config)) {
        (_, Ok(c)) => c.update_url,
        (Action::Bundle(_), Err(_)) => None,
        (_, Err(e)) => return Err(UpdateError::Config(e.to_string())),
    };
    let updater = Updater::new(state_dir, running, manifest.clone());
    let written = match action {
        Action::Check => {
            match updater.check().await? {
                Some(offer) => out.push(format!(
                    "the manifest offers {} ({} MB): it is installed after the current rental, or now with `p2pvps-governor update --now`",
                    offer.version,
                    offer.size / 1_000_000
                )),
                None => out.push(format!(
                    "up to date: {} offers nothing newer",
                    manifest.map(|u| u.to_string()).unwrap_or_default()
                )),
            }
            return Ok(out);
        }
        Action::Now => {
            let Some(v) = updater.update_now().await? else {
                out.push("up to date: nothing newer is offered".into());
                return Ok(out);
            };
            v
        }
        Action::Bundle(path) => updater.install(&path, None, force).await?,
    };
    out.push(format!(
        "{written} written to slot {}",
        crate::slots::other(&updater.running().slot)
    ));
    if reboot {
        out.push("rebooting into it".into());
        for line in &out {
            println!("{line}");
        }
        super::reboot_into(&written).await;
        return Ok(Vec::new());
    }
    out.push("it boots at the next restart".into());
    Ok(out)
}
