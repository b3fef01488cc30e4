//! Helper programs (mount, mkfs.ext4, systemctl…), run with an argument list: never a shell.

use std::ffi::{OsStr, OsString};
use std::process::{Command, Stdio};

use tracing::debug;

/// A helper program that failed: its command line, and its exit status and stderr (or why it could
/// not start).
#[derive(Debug, thiserror::Error)]
#[error("`{command}` failed: {detail}")]
pub struct CommandError {
    pub command: String,
    pub detail: String,
}

/// Run `program` with `args` in the C locale (its messages are matched), stdin closed; its stdout.
pub fn run<I, S>(program: &str, args: I) -> Result<String, CommandError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_with_input(program, args, None)
}

/// [`run`], with `input` written to the program's stdin (e.g. a ruleset for `nft -f -`).
pub fn run_with_input<I, S>(
    program: &str,
    args: I,
    input: Option<&[u8]>,
) -> Result<String, CommandError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let command = std::iter::once(program.to_owned())
        .chain(args.iter().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ");
    debug!(%command, "running");
    let failed_to_start = |e: std::io::Error| CommandError {
        command: command.clone(),
        detail: format!("could not start it ({e}); is it installed?"),
    };
    let mut child = Command::new(program)
        .args(&args)
        .env("LC_ALL", "C")
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(failed_to_start)?;
    if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
        use std::io::Write as _;
        // A program that exits early closes its end: its status and stderr say why.
        let _ = stdin.write_all(data);
    }
    let out = child.wait_with_output().map_err(failed_to_start)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(CommandError {
            command,
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::run;

    #[test]
    fn output_and_failures_keep_what_happened() {
        assert_eq!(run("printf", ["%s", "a b"]).unwrap(), "a b");
        let e = run("sh", ["-c", "echo oops >&2; exit 3"]).unwrap_err();
        assert_eq!(e.command, "sh -c echo oops >&2; exit 3");
        assert_eq!(e.detail, "exit status: 3: oops");
        let e = run("p2pvps-no-such-program", ["x"]).unwrap_err();
        assert!(e.detail.starts_with("could not start it"), "{e}");
        assert_eq!(
            super::run_with_input("tr", ["a-z", "A-Z"], Some(b"rules")).unwrap(),
            "RULES"
        );
        let e = run("p2pvps-no-such-program", ["x"]).unwrap_err();
        assert!(e.detail.starts_with("could not start it"), "{e}");
    }
}
