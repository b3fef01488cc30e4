//! The real firewall: the ruleset loaded with `nft -f -` (an argument list and stdin, no shell).

use super::{Firewall, Rules, SandboxError, SandboxFuture, ruleset, table_name};
use crate::command;

/// nftables through its command-line tool.
#[derive(Debug, Clone, Default)]
pub struct NftFirewall;

impl NftFirewall {
    /// Whether the table for `bridge` is in the kernel with its drops (for `check` and `status`).
    pub fn verify(bridge: &str) -> Result<(), SandboxError> {
        let table = table_name(bridge);
        let listed = command::run("nft", ["list", "table", "inet", &table]).map_err(|source| {
            SandboxError::Nft {
                bridge: bridge.to_owned(),
                source,
            }
        })?;
        let from = format!("iifname \"{bridge}\"");
        let wanted = [
            format!("{from} ip daddr @blocked4 drop"),
            format!("{from} ip6 daddr @blocked6 drop"),
            format!("{from} drop"),
        ];
        match wanted.iter().find(|rule| !listed.contains(rule.as_str())) {
            None => Ok(()),
            Some(rule) => Err(SandboxError::Missing {
                bridge: bridge.to_owned(),
                problem: format!("table inet {table} lacks `{rule}`"),
            }),
        }
    }

    /// Delete the table for `bridge` (the package's purge does the same with `nft`).
    pub fn remove(bridge: &str) -> Result<(), SandboxError> {
        let table = table_name(bridge);
        match command::run("nft", ["delete", "table", "inet", &table]) {
            Err(e) if !e.detail.contains("No such file") => Err(SandboxError::Nft {
                bridge: bridge.to_owned(),
                source: e,
            }),
            _ => Ok(()),
        }
    }
}

impl Firewall for NftFirewall {
    fn apply<'a>(&'a self, rules: &'a Rules) -> SandboxFuture<'a> {
        let text = ruleset(rules);
        let bridge = rules.bridge.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                command::run_with_input("nft", ["-f", "-"], Some(text.as_bytes()))
            })
            .await
            .expect("nft runner does not panic")
            .map(drop)
            .map_err(|source| SandboxError::Nft { bridge, source })
        })
    }
}
