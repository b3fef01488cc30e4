//! One request per run (see `p2pvps_common::luks` for the wire): parse the arguments, read the keys
//! from stdin, do the operation, print the answer.

use std::io::{Read, Write};
use std::path::Path;

use p2pvps_common::luks::{ERRNO_PREFIX, EXIT_FAILED, EXIT_USAGE, PassphraseKdf, yes_no};

use crate::ops::{self, LuksError};

/// A request that cannot be carried out as asked.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UsageError {
    #[error("usage: p2pvps-luks OPERATION ARGS… (see p2pvps_common::luks); got {0:?}")]
    Arguments(Vec<String>),
    #[error("stdin: expected {expected} key line(s) in hex, got {got}")]
    KeyCount { expected: usize, got: usize },
    #[error("stdin: a key line is not hex")]
    NotHex,
    #[error("stdin: not readable: {0}")]
    Read(String),
    #[error("unknown KDF {0:?} (benchmarked or fast)")]
    Kdf(String),
    #[error("slot {0:?} is not a keyslot number")]
    Slot(String),
}

/// What a run ends with.
enum Outcome {
    Answer(String),
    Failed(LuksError),
}

/// Run the request `args`; keys from `stdin`, the answer (or the errno line) on `stdout`, the reason
/// of a failure on stderr. Returns the exit status.
pub fn run(args: &[String], stdin: &mut dyn Read, stdout: &mut dyn Write) -> u8 {
    let outcome = match request(args, stdin) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("p2pvps-luks: {e}");
            return status(EXIT_USAGE);
        }
    };
    match outcome {
        Outcome::Answer(text) => {
            if writeln!(stdout, "{text}")
                .and_then(|()| stdout.flush())
                .is_err()
            {
                return status(EXIT_FAILED);
            }
            0
        }
        Outcome::Failed(e) => {
            // The caller names the device.
            eprintln!("p2pvps-luks: {}: {}", e.action, e.source);
            // The errno lets the governor tell a wrong key or a busy device from other failures.
            let _ = writeln!(stdout, "{ERRNO_PREFIX}{}", e.errno().unwrap_or(0));
            status(EXIT_FAILED)
        }
    }
}

fn status(code: i32) -> u8 {
    u8::try_from(code).expect("exit statuses are small")
}

fn request(args: &[String], stdin: &mut dyn Read) -> Result<Outcome, UsageError> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let usage = || UsageError::Arguments(args.iter().map(|s| (*s).to_owned()).collect());
    let done = |r: Result<String, LuksError>| match r {
        Ok(answer) => Outcome::Answer(answer),
        Err(e) => Outcome::Failed(e),
    };
    let outcome = match args.as_slice() {
        ["has-header", dev] => Outcome::Answer(yes_no(ops::has_header(Path::new(dev))).to_owned()),
        ["format", dev] => {
            let [key] = keys(stdin)?;
            done(ops::format(Path::new(dev), &key).map(|()| String::new()))
        }
        ["activate", dev, name] => {
            let [key] = keys(stdin)?;
            done(ops::activate(Path::new(dev), name, &key).map(|s| s.to_string()))
        }
        ["check-key", dev] => {
            let [key] = keys(stdin)?;
            done(ops::check_key(Path::new(dev), &key).map(|s| s.to_string()))
        }
        ["deactivate", name] => done(ops::deactivate(name).map(|()| String::new())),
        ["set-passphrase", dev, kdf] => {
            let kdf = PassphraseKdf::from_arg(kdf).ok_or_else(|| UsageError::Kdf((*kdf).into()))?;
            let [existing, new] = keys(stdin)?;
            done(
                ops::set_renter_passphrase(Path::new(dev), &existing, &new, kdf)
                    .map(|()| String::new()),
            )
        }
        ["destroy-slot", dev, slot] => {
            let slot = slot.parse().map_err(|_| UsageError::Slot((*slot).into()))?;
            done(ops::destroy_slot(Path::new(dev), slot).map(|()| String::new()))
        }
        ["active-slots", dev] => done(ops::active_slots(Path::new(dev)).map(|slots| {
            slots
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        })),
        ["erase", dev] => done(
            ops::erase(Path::new(dev))
                .map(|size| size.map_or_else(|| "none".to_owned(), |s| s.to_string())),
        ),
        _ => return Err(usage()),
    };
    Ok(outcome)
}

/// Exactly `N` hex lines from `stdin`, decoded.
fn keys<const N: usize>(stdin: &mut dyn Read) -> Result<[Vec<u8>; N], UsageError> {
    let mut text = String::new();
    stdin
        .read_to_string(&mut text)
        .map_err(|e| UsageError::Read(e.to_string()))?;
    let lines: Vec<&str> = text.lines().collect();
    let got = lines.len();
    let decoded = lines
        .into_iter()
        .map(|l| hex::decode(l).map_err(|_| UsageError::NotHex))
        .collect::<Result<Vec<_>, _>>()?;
    decoded
        .try_into()
        .map_err(|_| UsageError::KeyCount { expected: N, got })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_str(args: &[&str], stdin: &str) -> (u8, String) {
        let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        let mut out = Vec::new();
        let code = run(&args, &mut stdin.as_bytes(), &mut out);
        (code, String::from_utf8(out).unwrap())
    }

    #[test]
    fn malformed_requests_are_refused_before_anything_is_done() {
        for (args, stdin) in [
            (&["format"][..], ""),
            (&["unknown", "/dev/null"][..], ""),
            (&["format", "/dev/null", "extra"][..], "00\n"),
            (&["format", "/dev/null"][..], "not hex\n"),
            (&["format", "/dev/null"][..], "00\n00\n"),
            (&["set-passphrase", "/dev/null", "fast"][..], "00\n"),
            (&["set-passphrase", "/dev/null", "scrypt"][..], "00\n01\n"),
            (&["destroy-slot", "/dev/null", "one"][..], ""),
        ] {
            let (code, out) = run_str(args, stdin);
            assert_eq!(i32::from(code), EXIT_USAGE, "{args:?} with {stdin:?}");
            assert_eq!(out, "", "{args:?}: nothing on stdout");
        }
    }

    #[test]
    fn keys_are_hex_lines() {
        let [a, b] = keys::<2>(&mut "00ff\n0a0d\n".as_bytes()).unwrap();
        assert_eq!((a, b), (vec![0, 255], vec![10, 13]));
        assert_eq!(
            keys::<1>(&mut "".as_bytes()).unwrap_err(),
            UsageError::KeyCount {
                expected: 1,
                got: 0
            }
        );
    }

    #[test]
    fn a_device_without_a_header_fails_with_its_errno() {
        let dir = std::env::temp_dir().join(format!("p2pvps-luks-test-{}", std::process::id()));
        std::fs::write(&dir, vec![0u8; 1 << 20]).unwrap();
        let dev = dir.to_str().unwrap();
        let (code, out) = run_str(&["has-header", dev], "");
        assert_eq!((code, out.as_str()), (0, "no\n"));
        let (code, out) = run_str(&["check-key", dev], "00\n");
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(i32::from(code), EXIT_FAILED);
        assert!(out.starts_with(ERRNO_PREFIX), "{out:?}");
    }
}
