//! The renter sandbox's network rules (DESIGN.md §9): the renter's container uses the internet and
//! nothing else of the owner's.
//!
//! The container sits on a Docker bridge network of its own; an nftables table of the governor's
//! (one per bridge, `inet p2pvps_<bridge>`) drops what enters from that bridge towards private,
//! CGNAT, link-local, multicast and broadcast addresses, outbound SMTP, and every port of the host
//! itself. It is a table of our own, not rules in Docker's chains, so Docker rewriting its own
//! rules on a restart leaves it alone; the table is replaced whole and atomically (`nft -f`), so
//! applying it again is harmless. Exceptions, each checked before the drops: DNS to the host's own
//! upstream resolvers (Docker's embedded resolver forwards from the container's network namespace,
//! and a home router's resolver is a private address), and the LAN addresses the owner allows
//! (`lanAllow`). The tunnel runs on the host (`tunnel.rs`), so no exception is needed for it.

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Mutex;

use crate::command::CommandError;

pub mod nft;
pub mod tunnel;

pub use nft::NftFirewall;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// `nft` failed (not installed, no nf_tables in the kernel, a rule it rejects).
    #[error("network rules for bridge {bridge}: {source}")]
    Nft {
        bridge: String,
        source: CommandError,
    },
    #[error("network rules for bridge {bridge}: {problem}")]
    Missing { bridge: String, problem: String },
}

/// The IPv4 destinations a renter may not reach: private (RFC 1918), CGNAT, link-local (cloud
/// metadata), multicast and the limited broadcast.
pub const BLOCKED_V4: [&str; 7] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "224.0.0.0/4",
    "255.255.255.255/32",
];
/// The IPv6 ones: unique local, link-local, multicast.
pub const BLOCKED_V6: [&str; 3] = ["fc00::/7", "fe80::/10", "ff00::/8"];

/// An address or a network (`192.168.1.20`, `192.168.1.0/24`, `fd00::/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Net {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (addr, prefix) = s.split_once('/').map_or((s, None), |(a, p)| (a, Some(p)));
        let addr: IpAddr = addr.parse().map_err(|_| {
            format!("{s:?} is not an IP address or network (e.g. 192.168.1.20 or 192.168.1.0/24)")
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("{s:?}: the prefix length must be 0 to {max}")),
            },
        };
        Ok(Self { addr, prefix })
    }
}

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// What the owner decides (device-config.json).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// LAN addresses the renter may reach after all (`lanAllow`; default none).
    pub allow: Vec<Net>,
    /// Outbound SMTP (tcp/25) allowed (`allowSmtp`; default false: spam from a renter gets the
    /// owner's address blacklisted).
    pub smtp: bool,
}

/// Everything the rules are made of, for one bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// The Linux bridge of the renter's Docker network.
    pub bridge: String,
    pub policy: Policy,
    /// The host's upstream DNS resolvers (reachable on port 53 only).
    pub resolvers: Vec<IpAddr>,
}

/// The nftables table that holds the rules for `bridge`.
pub fn table_name(bridge: &str) -> String {
    let safe: String = bridge
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("p2pvps_{safe}")
}

/// The ruleset for `nft -f -`: creates the table if absent, deletes it, and makes it again, in one
/// transaction (the kernel never sees a moment without the rules).
pub fn ruleset(rules: &Rules) -> String {
    use fmt::Write as _;
    let table = table_name(&rules.bridge);
    let from = format!("iifname \"{}\"", rules.bridge);
    let list = |nets: &mut dyn Iterator<Item = String>| nets.collect::<Vec<_>>().join(", ");
    let mut forward = String::new();
    let mut line = |s: String| {
        let _ = writeln!(forward, "    {s}");
    };
    let (dns4, dns6): (Vec<&IpAddr>, Vec<&IpAddr>) =
        rules.resolvers.iter().partition(|a| a.is_ipv4());
    for (family, addrs) in [("ip", dns4), ("ip6", dns6)] {
        if !addrs.is_empty() {
            let addrs = list(&mut addrs.iter().map(ToString::to_string));
            line(format!(
                "{from} {family} daddr {{ {addrs} }} meta l4proto {{ tcp, udp }} th dport 53 accept"
            ));
        }
    }
    let (allow4, allow6): (Vec<&Net>, Vec<&Net>) =
        rules.policy.allow.iter().partition(|n| n.addr.is_ipv4());
    for (family, nets) in [("ip", allow4), ("ip6", allow6)] {
        if !nets.is_empty() {
            let nets = list(&mut nets.iter().map(ToString::to_string));
            line(format!("{from} {family} daddr {{ {nets} }} accept"));
        }
    }
    line(format!("{from} ip daddr @blocked4 drop"));
    line(format!("{from} ip6 daddr @blocked6 drop"));
    if !rules.policy.smtp {
        line(format!("{from} tcp dport 25 drop"));
    }
    let blocked4 = list(&mut BLOCKED_V4.iter().map(|s| (*s).to_owned()));
    let blocked6 = list(&mut BLOCKED_V6.iter().map(|s| (*s).to_owned()));
    format!(
        "table inet {table}\n\
         delete table inet {table}\n\
         table inet {table} {{\n  \
           set blocked4 {{ type ipv4_addr; flags interval; elements = {{ {blocked4} }} }}\n  \
           set blocked6 {{ type ipv6_addr; flags interval; elements = {{ {blocked6} }} }}\n  \
           chain forward {{\n    \
             type filter hook forward priority filter - 10; policy accept;\n\
         {forward}  }}\n  \
           chain input {{\n    \
             type filter hook input priority filter - 10; policy accept;\n    \
             {from} ct state established,related accept\n    \
             {from} drop\n  \
           }}\n\
         }}\n"
    )
}

/// The host's upstream resolvers: systemd-resolved's upstreams when it runs (its stub on
/// 127.0.0.53 is not what Docker forwards to), else /etc/resolv.conf's; loopback ones skipped.
pub fn host_resolvers() -> Vec<IpAddr> {
    ["/run/systemd/resolve/resolv.conf", "/etc/resolv.conf"]
        .iter()
        .find_map(|p| std::fs::read_to_string(Path::new(p)).ok())
        .map(|text| nameservers(&text))
        .unwrap_or_default()
}

fn nameservers(resolv_conf: &str) -> Vec<IpAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        // A scoped IPv6 address (`fe80::1%eth0`) has its zone cut off.
        .filter_map(|a| a.trim().split('%').next()?.parse::<IpAddr>().ok())
        .filter(|a| !a.is_loopback())
        .collect()
}

/// A boxed future, so that the lifecycle holds any firewall without another type parameter.
pub type SandboxFuture<'a> = Pin<Box<dyn Future<Output = Result<(), SandboxError>> + Send + 'a>>;

/// Puts the network rules in place.
pub trait Firewall: Send + Sync {
    /// Make the rules for `rules.bridge` exactly `rules` (idempotent).
    fn apply<'a>(&'a self, rules: &'a Rules) -> SandboxFuture<'a>;
}

/// Records what was applied, for the lifecycle's tests.
#[derive(Debug, Default)]
pub struct FakeFirewall {
    pub applied: Mutex<Vec<Rules>>,
}

impl Firewall for FakeFirewall {
    fn apply<'a>(&'a self, rules: &'a Rules) -> SandboxFuture<'a> {
        self.applied.lock().unwrap().push(rules.clone());
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nets_parse_and_refuse_what_is_not_one() {
        assert_eq!(
            Net::parse("192.168.1.20").unwrap().to_string(),
            "192.168.1.20/32"
        );
        assert_eq!(Net::parse("fd00::/8").unwrap().to_string(), "fd00::/8");
        assert!(
            Net::parse("192.168.1.0/33")
                .unwrap_err()
                .contains("0 to 32")
        );
        assert!(Net::parse("nas.local").unwrap_err().contains("not an IP"));
        assert!(Net::parse("1.2.3.4/x").is_err());
    }

    #[test]
    fn the_ruleset_drops_private_ranges_smtp_and_the_host_with_the_exceptions_first() {
        let rules = Rules {
            bridge: "p2pvps0".into(),
            policy: Policy {
                allow: vec![Net::parse("192.168.1.20").unwrap()],
                smtp: false,
            },
            resolvers: vec!["192.168.1.1".parse().unwrap()],
        };
        let text = ruleset(&rules);
        assert!(text.starts_with(
            "table inet p2pvps_p2pvps0\ndelete table inet p2pvps_p2pvps0\ntable inet p2pvps_p2pvps0 {"
        ));
        for range in BLOCKED_V4.iter().chain(&BLOCKED_V6) {
            assert!(text.contains(range), "{range} missing:\n{text}");
        }
        let pos = |s: &str| {
            text.find(s)
                .unwrap_or_else(|| panic!("{s:?} missing:\n{text}"))
        };
        let dns = pos(
            "iifname \"p2pvps0\" ip daddr { 192.168.1.1 } meta l4proto { tcp, udp } th dport 53 accept",
        );
        let allow = pos("iifname \"p2pvps0\" ip daddr { 192.168.1.20/32 } accept");
        let drop = pos("iifname \"p2pvps0\" ip daddr @blocked4 drop");
        assert!(dns < drop && allow < drop);
        pos("iifname \"p2pvps0\" tcp dport 25 drop");
        pos(
            "chain input {\n    type filter hook input priority filter - 10; policy accept;\n    iifname \"p2pvps0\" ct state established,related accept\n    iifname \"p2pvps0\" drop",
        );

        let open = Rules {
            policy: Policy {
                allow: vec![],
                smtp: true,
            },
            resolvers: vec![],
            ..rules
        };
        let text = ruleset(&open);
        assert!(!text.contains("dport 25"));
        assert!(!text.contains("dport 53"));
        assert!(!text.contains("} accept"));
    }

    #[test]
    fn table_names_are_nft_identifiers() {
        assert_eq!(table_name("br-1a2b3c4d5e6f"), "p2pvps_br_1a2b3c4d5e6f");
    }

    #[test]
    fn resolvers_skip_loopback_and_zones() {
        let conf = "# generated\nnameserver 127.0.0.53\nnameserver 192.168.1.1\nnameserver fe80::1%eth0\nsearch lan\n";
        assert_eq!(
            nameservers(conf),
            vec![
                "192.168.1.1".parse::<IpAddr>().unwrap(),
                "fe80::1".parse().unwrap()
            ]
        );
    }
}
