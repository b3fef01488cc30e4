//! Wi-Fi: the owner's network from `device-config.json` (`wifiSsid`, `wifiPassphrase`,
//! `wifiCountry`: flat keys, as every other), turned into a wpa_supplicant configuration for the radio (`wlan0`).
//!
//! On the image, `p2pvps-wifi@wlan0.service` runs `p2pvps-governor wifi-config` when the radio
//! appears, then wpa_supplicant with the file it wrote (in a 0700 runtime directory, mode 0600);
//! systemd-networkd does DHCP once the link is up. The passphrase is the owner's: it is never logged
//! and `check`/`check-config` say only that it is set.

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::types::{Secret, shorten};

/// The owner's Wi-Fi network.
#[derive(Debug, Clone)]
pub struct Wifi {
    /// The network's name (1-32 bytes, any bytes: written to the supplicant in hex).
    pub ssid: String,
    /// WPA2-Personal passphrase (8-63 printable ASCII characters); `None` for an open network.
    pub passphrase: Option<Secret>,
    /// ISO 3166 two-letter country code: which channels and powers the radio may use.
    pub country: String,
}

#[derive(Debug, thiserror::Error)]
pub enum WifiError {
    #[error("{path}: cannot write the Wi-Fi settings: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The config keys, in the order a reader fills them in.
pub const KEYS: [&str; 3] = ["wifiSsid", "wifiPassphrase", "wifiCountry"];

impl Wifi {
    /// Reads `wifiSsid`, `wifiPassphrase` and `wifiCountry` from the config's object: `None` when
    /// none is there; an error names the key and says what to write instead.
    pub fn from_config(map: &Map<String, Value>) -> Result<Option<Self>, (&'static str, String)> {
        let [ssid_key, pass_key, country_key] = KEYS;
        if KEYS.iter().all(|k| !map.contains_key(*k)) {
            return Ok(None);
        }
        // Taken as written: a network's name may begin or end with a space.
        let text = |key: &'static str| match map.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err((key, "must be a string in quotes".to_owned())),
        };
        let ssid = text(ssid_key)?.ok_or((
            ssid_key,
            "is missing: wifiPassphrase and wifiCountry need the network's name".to_owned(),
        ))?;
        if ssid.is_empty() || ssid.len() > 32 {
            return Err((
                ssid_key,
                format!("must be 1 to 32 bytes long, got {} bytes", ssid.len()),
            ));
        }
        let passphrase = text(pass_key)?
            .map(|p| {
                let printable = p.bytes().all(|b| (0x20..0x7f).contains(&b));
                if (8..=63).contains(&p.len()) && printable {
                    Secret::passphrase(&p).map_err(|e| (pass_key, e.0))
                } else {
                    Err((
                        pass_key,
                        "must be 8 to 63 printable ASCII characters (WPA2/WPA3-Personal); leave it \
                         out for an open network"
                            .to_owned(),
                    ))
                }
            })
            .transpose()?;
        let country = text(country_key)?.ok_or((
            country_key,
            "is missing: add the two-letter code of the country the device is in, e.g. \"GB\" (it \
             sets the radio's legal channels)"
                .to_owned(),
        ))?;
        if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err((
                country_key,
                format!(
                    "must be a two-letter code such as \"GB\" or \"DE\", got {:?}",
                    shorten(&country)
                ),
            ));
        }
        Ok(Some(Self {
            ssid,
            passphrase,
            country: country.to_ascii_uppercase(),
        }))
    }

    /// One line for `check-config` and `check`, without the passphrase.
    pub fn summary(&self) -> String {
        format!(
            "{:?}, country {}, {}",
            self.ssid,
            self.country,
            if self.passphrase.is_some() {
                "passphrase (set)"
            } else {
                "open network"
            }
        )
    }

    /// The wpa_supplicant configuration. The name goes in hex and the passphrase as the 256-bit key
    /// WPA derives from it (PBKDF2-HMAC-SHA1 over the name, 4096 rounds), also hex: nothing the owner
    /// typed is quoted (wpa_supplicant's quoted strings end at the first `"`), and the passphrase
    /// itself is in no file. WPA2 networks and WPA2/WPA3 mixed ones join; WPA3-only (SAE) needs the
    /// passphrase itself and is not offered.
    pub fn supplicant_config(&self) -> String {
        let mut out = String::from(
            "# Written by p2pvps-governor wifi-config from device-config.json: do not edit.\n\
             ctrl_interface=DIR=/run/wpa_supplicant GROUP=root\n\
             update_config=0\n",
        );
        let _ = writeln!(out, "country={}", self.country);
        out.push_str("network={\n");
        let _ = writeln!(out, "\tssid={}", hex::encode(&self.ssid));
        out.push_str("\tscan_ssid=1\n");
        match &self.passphrase {
            Some(p) => {
                out.push_str("\tkey_mgmt=WPA-PSK WPA-PSK-SHA256\n\tieee80211w=1\n");
                let _ = writeln!(
                    out,
                    "\tpsk={}",
                    hex::encode(wpa_psk(p.expose(), &self.ssid))
                );
            }
            None => out.push_str("\tkey_mgmt=NONE\n"),
        }
        out.push_str("}\n");
        out
    }

    /// Writes [`Self::supplicant_config`] to `path`, readable by root only (the file is made 0600
    /// before a byte is written, then renamed into place).
    pub fn write_supplicant_config(&self, path: &Path) -> Result<(), WifiError> {
        let err = |source| WifiError::Write {
            path: path.to_owned(),
            source,
        };
        let tmp = path.with_extension("tmp");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        file.write_all(self.supplicant_config().as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }
}

/// The pre-shared key of a WPA2-Personal network (IEEE 802.11i, annex H.4).
fn wpa_psk(passphrase: &str, ssid: &str) -> [u8; 32] {
    let mut key = [0u8; 32];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA1,
        std::num::NonZeroU32::new(4096).expect("4096 is not zero"),
        ssid.as_bytes(),
        passphrase.as_bytes(),
        &mut key,
    );
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::os::unix::fs::PermissionsExt as _;

    fn parse(v: &Value) -> Result<Option<Wifi>, (&'static str, String)> {
        Wifi::from_config(v.as_object().unwrap())
    }

    fn home() -> Wifi {
        parse(&json!({"wifiSsid": "Home \"5G\"", "wifiPassphrase": "pa\"ss word#1", "wifiCountry": "gb"}))
            .unwrap()
            .unwrap()
    }

    #[test]
    fn a_network_reads_and_renders() {
        let w = home();
        assert_eq!(w.country, "GB");
        let conf = w.supplicant_config();
        assert!(conf.contains("\tssid=486f6d652022354722\n"), "{conf}");
        let psk = conf.lines().find_map(|l| l.strip_prefix("\tpsk=")).unwrap();
        assert!(
            psk.len() == 64 && psk.bytes().all(|b| b.is_ascii_hexdigit()),
            "{conf}"
        );
        assert!(
            !conf.contains("word"),
            "the passphrase itself is in no file: {conf}"
        );
        assert!(conf.contains("country=GB\n"));
        assert!(conf.contains("key_mgmt=WPA-PSK WPA-PSK-SHA256\n"));
        assert!(!w.summary().contains("word"), "{}", w.summary());
        assert!(!format!("{w:?}").contains("word"));
    }

    #[test]
    fn an_open_network_has_no_key_and_no_keys_no_network() {
        let w = parse(&json!({"wifiSsid": "Cafe", "wifiCountry": "DE"}))
            .unwrap()
            .unwrap();
        let conf = w.supplicant_config();
        assert!(
            conf.contains("key_mgmt=NONE") && !conf.contains("psk="),
            "{conf}"
        );
        assert_eq!(w.summary(), "\"Cafe\", country DE, open network");
        assert!(parse(&json!({"deviceId": "x"})).unwrap().is_none());
    }

    #[test]
    fn bad_values_name_the_key_and_say_what_to_write() {
        let err = |v: Value| parse(&v).unwrap_err();
        let has = |(key, reason): (&str, String), want_key: &str, want: &str| {
            assert_eq!(key, want_key, "{reason}");
            assert!(reason.contains(want), "{reason}");
        };
        has(err(json!({"wifiCountry": "GB"})), "wifiSsid", "is missing");
        has(
            err(json!({"wifiSsid": "", "wifiCountry": "GB"})),
            "wifiSsid",
            "1 to 32 bytes",
        );
        has(
            err(json!({"wifiSsid": "x".repeat(33), "wifiCountry": "GB"})),
            "wifiSsid",
            "got 33 bytes",
        );
        has(
            err(json!({"wifiSsid": 7, "wifiCountry": "GB"})),
            "wifiSsid",
            "string",
        );
        let pass =
            |p: Value| err(json!({"wifiSsid": "a", "wifiPassphrase": p, "wifiCountry": "GB"}));
        has(pass(json!("short")), "wifiPassphrase", "8 to 63");
        has(pass(json!("line\nbreak!")), "wifiPassphrase", "printable");
        has(pass(json!(12_345_678)), "wifiPassphrase", "string");
        has(err(json!({"wifiSsid": "a"})), "wifiCountry", "is missing");
        has(
            err(json!({"wifiSsid": "a", "wifiCountry": "GBR"})),
            "wifiCountry",
            "two-letter",
        );
    }

    #[test]
    fn the_psk_is_the_standard_derivation() {
        // IEEE 802.11i-2004, annex H.4.1: passphrase "password", SSID "IEEE".
        assert_eq!(
            hex::encode(wpa_psk("password", "IEEE")),
            "f42c6fc52df0ebef9ebb4b90b38a5f902e83fe1b135a70e23aed762e9710a12e"
        );
    }

    #[test]
    fn the_file_is_for_root_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wlan0.conf");
        home().write_supplicant_config(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            home().supplicant_config()
        );
    }
}
