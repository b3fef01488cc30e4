//! The update manifest: a small JSON file at the config's `updateUrl` naming the newest bundle of
//! each board. It comes from the network, so every field is checked before anything acts on it;
//! the bundle it names is trusted only once RAUC has checked its signature.
//!
//! ```json
//! { "boards": { "rpi4": { "version": "0.3.0", "url": "p2pvps-rpi4-0.3.0.raucb",
//!                         "sha256": "9f86…", "size": 176160768 } } }
//! ```
//! `url` may be relative to the manifest's own address (bundles published beside it).

use std::collections::BTreeMap;

use reqwest::Url;
use semver::Version;
use serde::Deserialize;

/// A manifest larger than this is not one (it names a bundle per board).
pub const MAX_MANIFEST_BYTES: usize = 64 * 1024;
/// No bundle of ours comes near this; a bigger claim would fill the state partition.
pub const MAX_BUNDLE_BYTES: u64 = 4 << 30;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("the update manifest is not the JSON the governor reads ({0}); check what {1} serves")]
    NotJson(String, String),
    #[error("the update manifest at {url} has a bad entry for board {board}: {reason}")]
    Entry {
        url: String,
        board: String,
        reason: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    boards: BTreeMap<String, RawEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    version: String,
    url: String,
    sha256: String,
    size: u64,
}

/// The newest bundle for this device's board, as the manifest names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub version: Version,
    pub url: Url,
    /// Lower-case hex.
    pub sha256: String,
    pub size: u64,
}

/// Read the manifest fetched from `url`; the offer for `board`, None when it names none.
pub fn offer_for(url: &Url, body: &[u8], board: &str) -> Result<Option<Offer>, ManifestError> {
    let raw: Raw = serde_json::from_slice(body)
        .map_err(|e| ManifestError::NotJson(e.to_string(), url.to_string()))?;
    let Some(entry) = raw.boards.get(board) else {
        return Ok(None);
    };
    let bad = |reason: String| ManifestError::Entry {
        url: url.to_string(),
        board: board.to_owned(),
        reason,
    };
    let version = Version::parse(&entry.version).map_err(|e| {
        bad(format!(
            "version {:?} is not a semantic version ({e})",
            crate::types::shorten(&entry.version)
        ))
    })?;
    let bundle = url
        .join(&entry.url)
        .ok()
        .filter(|u| matches!(u.scheme(), "https" | "http") && u.host().is_some())
        .ok_or_else(|| {
            bad(format!(
                "url {:?} is not an http(s) address",
                crate::types::shorten(&entry.url)
            ))
        })?;
    if entry.sha256.len() != 64 || !entry.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad("sha256 must be 64 hex digits".into()));
    }
    if entry.size == 0 || entry.size > MAX_BUNDLE_BYTES {
        return Err(bad(format!(
            "size {} is not a bundle's (1 byte to 4 GiB)",
            entry.size
        )));
    }
    Ok(Some(Offer {
        version,
        url: bundle,
        sha256: entry.sha256.to_ascii_lowercase(),
        size: entry.size,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Url {
        Url::parse("https://updates.example/p2pvps/manifest.json").unwrap()
    }

    fn manifest(entry: &str) -> String {
        format!(
            r#"{{"boards": {{"rpi4": {entry}, "rpi5": {{"version": "1.0.0", "url": "x", "sha256": "{}", "size": 1}}}}}}"#,
            "0".repeat(64)
        )
    }

    const GOOD: &str = r#"{"version": "0.3.0", "url": "p2pvps-rpi4-0.3.0.raucb", "sha256": "9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08", "size": 176160768}"#;

    #[test]
    fn reads_the_offer_for_its_board_with_a_relative_url() {
        let offer = offer_for(&base(), manifest(GOOD).as_bytes(), "rpi4")
            .unwrap()
            .unwrap();
        assert_eq!(offer.version, Version::new(0, 3, 0));
        assert_eq!(
            offer.url.as_str(),
            "https://updates.example/p2pvps/p2pvps-rpi4-0.3.0.raucb"
        );
        assert!(offer.sha256.starts_with("9f86d0"));
        assert_eq!(offer.size, 176_160_768);
        assert_eq!(
            offer_for(&base(), manifest(GOOD).as_bytes(), "rpi3").unwrap(),
            None
        );
    }

    #[test]
    fn hostile_entries_are_refused_with_the_reason() {
        let cases = [
            (GOOD.replace("0.3.0\"", "latest\""), "semantic version"),
            (
                GOOD.replace("p2pvps-rpi4-0.3.0.raucb", "file:///etc/shadow"),
                "http(s)",
            ),
            (GOOD.replace("9F86D0", "XYZ"), "64 hex"),
            (GOOD.replace("176160768", "0"), "size 0"),
            (GOOD.replace("176160768", "99999999999999"), "4 GiB"),
        ];
        for (entry, want) in cases {
            let e = offer_for(&base(), manifest(&entry).as_bytes(), "rpi4")
                .unwrap_err()
                .to_string();
            assert!(e.contains(want) && e.contains("rpi4"), "{entry}: {e}");
        }
        for body in ["<html>", r#"{"boards": {}, "extra": 1}"#, "[]"] {
            let e = offer_for(&base(), body.as_bytes(), "rpi4").unwrap_err();
            assert!(e.to_string().contains("not the JSON"), "{body}: {e}");
        }
    }
}
