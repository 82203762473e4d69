//! Security groups, enforced as EC2 does: a packet reaches an instance only if one of the
//! ingress rules of one of its groups lets it in (protocol, port range or ICMP type, source
//! CIDR or source group), replies to what it sent always do (groups are stateful), and
//! everything else is dropped. This holds between hosts and from the machine alike: the
//! workstation reaches a box only on what its groups open, as on EC2.
//!
//! The controller turns moto's groups and the instances' memberships into one iptables chain,
//! `CGCLOUD-SG`, which the network's rules ([`crate::net`]) send every packet bound for a
//! host through (from the machine: OUTPUT; from hosts and the internet: FORWARD, which sees
//! bridged traffic where br_netfilter is loaded). It dispatches by destination address (each
//! host may send only from its own, so the address is the instance) to one chain per set of
//! groups, and the whole is replaced at once with `iptables-restore` whenever the rules or the
//! memberships change. Egress rules are not enforced (cgcloud's groups allow all egress).
//!
//! Everything here comes from the EC2 API, which anyone with the machine's credentials may
//! write: every value is checked before it becomes part of an iptables rule, and a rule that
//! does not check out is left out (and logged), never passed on.

use crate::sys::run_quiet;
use crate::Error;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

/// The chain every packet bound for a host passes.
pub const CHAIN: &str = "CGCLOUD-SG";
/// What the chains of sets of groups start with.
const SET_PREFIX: &str = "CGCLOUD-SG-";

/// One ingress permission of a group, as EC2 describes it.
pub use cgcloud_aws::ec2::IngressPermission as Permission;

/// An instance that receives traffic: its private address and groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub ip: String,
    pub groups: Vec<String>,
}

/// An IPv4 network in CIDR form, checked; None for anything else (IPv6 ranges included: the
/// VPC has no IPv6).
fn cidr(s: &str) -> Option<String> {
    let (addr, len) = s.split_once('/')?;
    let addr: Ipv4Addr = addr.parse().ok()?;
    let len: u8 = len.parse().ok().filter(|l| *l <= 32)?;
    Some(format!("{addr}/{len}"))
}

/// The match part of an iptables rule for `p`'s protocol and ports, or why it has none.
fn protocol_match(p: &Permission) -> Result<String, String> {
    let range = |from: Option<i32>, to: Option<i32>| -> Result<String, String> {
        match (from, to) {
            (None, None) | (Some(-1), _) | (Some(0), Some(65535)) => Ok(String::new()),
            (Some(a), Some(b)) if (0..=65535).contains(&a) && (a..=65535).contains(&b) => {
                Ok(if a == b { format!(" --dport {a}") } else { format!(" --dport {a}:{b}") })
            }
            _ => Err(format!("port range {from:?}-{to:?}")),
        }
    };
    match p.protocol.to_ascii_lowercase().as_str() {
        "-1" | "all" => Ok(String::new()),
        "tcp" | "6" => Ok(format!("-p tcp{}", range(p.from_port, p.to_port)?)),
        "udp" | "17" => Ok(format!("-p udp{}", range(p.from_port, p.to_port)?)),
        "icmp" | "1" => match (p.from_port, p.to_port) {
            (None | Some(-1), _) => Ok("-p icmp".into()),
            (Some(t), None | Some(-1)) if (0..=255).contains(&t) => Ok(format!("-p icmp --icmp-type {t}")),
            (Some(t), Some(c)) if (0..=255).contains(&t) && (0..=255).contains(&c) => {
                Ok(format!("-p icmp --icmp-type {t}/{c}"))
            }
            (t, c) => Err(format!("ICMP type {t:?} code {c:?}")),
        },
        n => match n.parse::<u8>() {
            Ok(n) => Ok(format!("-p {n}")),
            Err(_) => Err(format!("protocol {n:?}")),
        },
    }
}

/// The name of the chain of a set of groups (iptables allows 28 characters).
fn set_chain(groups: &BTreeSet<String>) -> String {
    use sha2::Digest as _;
    let joined: Vec<&str> = groups.iter().map(String::as_str).collect();
    let digest = sha2::Sha256::digest(joined.join(",").as_bytes());
    let hex = hex::encode(&digest[..6]);
    format!("{SET_PREFIX}{hex}")
}

/// The rules for `groups` (id → ingress permissions) and `members`, as `iptables-restore`
/// input for the filter table, and the set chains it defines. Rules that do not check out are
/// returned as warnings.
pub fn ruleset(
    groups: &BTreeMap<String, Vec<Permission>>,
    members: &[Member],
) -> (String, BTreeSet<String>, Vec<String>) {
    let mut warnings = Vec::new();
    // Who is in each group: the sources of group-referencing rules.
    let mut in_group: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let mut sets: BTreeMap<BTreeSet<String>, Vec<String>> = BTreeMap::new();
    for m in members {
        let Ok(ip) = m.ip.parse::<Ipv4Addr>() else {
            warnings.push(format!("instance address {:?} is not IPv4", m.ip));
            continue;
        };
        for g in &m.groups {
            in_group.entry(g.as_str()).or_default().insert(format!("{ip}/32"));
        }
        sets.entry(m.groups.iter().cloned().collect()).or_default().push(ip.to_string());
    }
    let mut lines = vec!["*filter".to_owned(), format!(":{CHAIN} - [0:0]")];
    let chains: BTreeSet<String> = sets.keys().map(set_chain).collect();
    lines.extend(chains.iter().map(|c| format!(":{c} - [0:0]")));
    lines.push(format!("-A {CHAIN} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"));
    for (set, ips) in &sets {
        let chain = set_chain(set);
        for ip in ips {
            lines.push(format!("-A {CHAIN} -d {ip}/32 -j {chain}"));
        }
    }
    lines.push(format!("-A {CHAIN} -j DROP"));
    for set in sets.keys() {
        let chain = set_chain(set);
        let mut rules = BTreeSet::new();
        for g in set {
            for p in groups.get(g).map(Vec::as_slice).unwrap_or_default() {
                let proto = match protocol_match(p) {
                    Ok(m) => m,
                    Err(why) => {
                        warnings.push(format!("{g}: a rule with {why} is not enforced as written: left out"));
                        continue;
                    }
                };
                let mut sources: BTreeSet<String> = BTreeSet::new();
                for c in &p.cidrs {
                    match cidr(c) {
                        Some(c) => {
                            sources.insert(c);
                        }
                        None => warnings.push(format!("{g}: source {c:?} is not an IPv4 CIDR: left out")),
                    }
                }
                for src in &p.groups {
                    sources.extend(in_group.get(src.as_str()).cloned().unwrap_or_default());
                }
                for s in sources {
                    rules.insert(format!("-A {chain} -s {s} {proto} -j ACCEPT").replace("  ", " "));
                }
            }
        }
        lines.extend(rules);
        lines.push(format!("-A {chain} -j DROP"));
    }
    lines.push("COMMIT".into());
    (lines.join("\n") + "\n", chains, warnings)
}

/// Replaces the rules with `text` (from [`ruleset`]) and removes the set chains no longer in
/// `chains`.
pub async fn apply(text: &str, chains: &BTreeSet<String>) -> Result<(), Error> {
    crate::sys::run_with_input("iptables-restore", &["-w", "--noflush"], text.as_bytes()).await?;
    for stale in set_chains().await.iter().filter(|c| !chains.contains(*c)) {
        run_quiet("iptables", &["-w", "-F", stale]).await;
        run_quiet("iptables", &["-w", "-X", stale]).await;
    }
    Ok(())
}

/// The set chains that exist now.
async fn set_chains() -> Vec<String> {
    let listing = crate::sys::run("iptables", &["-w", "-S"]).await.unwrap_or_default();
    listing
        .lines()
        .filter_map(|l| l.strip_prefix("-N "))
        .filter(|c| c.starts_with(SET_PREFIX))
        .map(str::to_owned)
        .collect()
}

/// Removes the chain and every set chain (once nothing jumps to them).
pub async fn remove() {
    run_quiet("iptables", &["-w", "-F", CHAIN]).await;
    let sets = set_chains().await;
    for c in &sets {
        run_quiet("iptables", &["-w", "-F", c]).await;
    }
    for c in &sets {
        run_quiet("iptables", &["-w", "-X", c]).await;
    }
    run_quiet("iptables", &["-w", "-X", CHAIN]).await;
}

/// Whether bridged traffic between hosts passes iptables (br_netfilter): without it, groups
/// are enforced from the machine only.
pub fn between_hosts() -> bool {
    std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables").is_ok_and(|v| v.trim() == "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perm(protocol: &str, from: Option<i32>, to: Option<i32>, cidrs: &[&str], groups: &[&str]) -> Permission {
        Permission {
            protocol: protocol.into(),
            from_port: from,
            to_port: to,
            cidrs: cidrs.iter().map(|s| (*s).to_owned()).collect(),
            groups: groups.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    fn member(ip: &str, groups: &[&str]) -> Member {
        Member { ip: ip.into(), groups: groups.iter().map(|s| (*s).to_owned()).collect() }
    }

    #[test]
    fn rules_follow_the_groups() {
        let groups = BTreeMap::from([
            (
                "sg-box".to_owned(),
                vec![
                    perm("tcp", Some(22), Some(22), &["0.0.0.0/0"], &[]),
                    perm("icmp", Some(3), Some(4), &["0.0.0.0/0"], &[]),
                ],
            ),
            ("sg-cluster".to_owned(), vec![perm("-1", None, None, &[], &["sg-cluster"])]),
        ]);
        let members = [
            member("10.199.1.10", &["sg-box"]),
            member("10.199.1.11", &["sg-box", "sg-cluster"]),
            member("10.199.1.12", &["sg-cluster", "sg-box"]),
        ];
        let (text, chains, warnings) = ruleset(&groups, &members);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(chains.len(), 2, "two sets of groups: {chains:?}");
        let box_chain = set_chain(&BTreeSet::from(["sg-box".to_owned()]));
        let node_chain = set_chain(&BTreeSet::from(["sg-box".to_owned(), "sg-cluster".to_owned()]));
        for line in [
            "-A CGCLOUD-SG -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT".to_owned(),
            format!("-A CGCLOUD-SG -d 10.199.1.10/32 -j {box_chain}"),
            format!("-A CGCLOUD-SG -d 10.199.1.12/32 -j {node_chain}"),
            format!("-A {box_chain} -s 0.0.0.0/0 -p tcp --dport 22 -j ACCEPT"),
            format!("-A {box_chain} -s 0.0.0.0/0 -p icmp --icmp-type 3/4 -j ACCEPT"),
            // The self-referencing group lets its members in, and no one else.
            format!("-A {node_chain} -s 10.199.1.11/32 -j ACCEPT"),
            format!("-A {node_chain} -s 10.199.1.12/32 -j ACCEPT"),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
        assert!(!text.contains(&format!("-A {node_chain} -s 10.199.1.10/32")), "{text}");
        assert!(!text.contains(&format!("-A {box_chain} -s 10.199.1.11/32")), "{text}");
        // Default deny: each set chain and the dispatch end with a drop.
        assert!(text.contains(&format!("-A {box_chain} -j DROP\n")) && text.contains("-A CGCLOUD-SG -j DROP\n"));
        assert!(text.ends_with("COMMIT\n"));
    }

    #[test]
    fn what_does_not_check_out_is_left_out() {
        let groups = BTreeMap::from([(
            "sg-x".to_owned(),
            vec![
                perm("tcp", Some(1), Some(2), &["10.0.0.0/8 -j ACCEPT\n-A INPUT", "::/0", "10.199.0.1/33"], &[]),
                perm("tcp", Some(100), Some(20), &["0.0.0.0/0"], &[]),
                perm("gre; reboot", None, None, &["0.0.0.0/0"], &[]),
                perm("udp", Some(53), Some(53), &["10.199.0.0/16"], &[]),
                perm("47", None, None, &["10.199.0.0/16"], &[]),
            ],
        )]);
        let (text, _, warnings) = ruleset(&groups, &[member("10.199.1.10", &["sg-x"]), member("x\n-A", &["sg-x"])]);
        assert_eq!(warnings.len(), 6, "{warnings:?}");
        assert!(!text.contains("INPUT") && !text.contains("reboot") && !text.contains("::"), "{text}");
        assert!(text.contains("-s 10.199.0.0/16 -p udp --dport 53 -j ACCEPT"), "{text}");
        assert!(text.contains("-s 10.199.0.0/16 -p 47 -j ACCEPT"), "{text}");
        assert_eq!(text.lines().filter(|l| l.contains("--dport 1:2") || l.contains("--dport 100")).count(), 0);
    }

    #[test]
    fn protocols_and_ranges() {
        let m = |p: &str, f: Option<i32>, t: Option<i32>| protocol_match(&perm(p, f, t, &[], &[]));
        assert_eq!(m("tcp", Some(8000), Some(8999)).unwrap(), "-p tcp --dport 8000:8999");
        assert_eq!(m("tcp", Some(0), Some(65535)).unwrap(), "-p tcp");
        assert_eq!(m("udp", Some(-1), Some(-1)).unwrap(), "-p udp");
        assert_eq!(m("icmp", Some(8), Some(-1)).unwrap(), "-p icmp --icmp-type 8");
        assert_eq!(m("-1", None, None).unwrap(), "");
        assert!(m("tcp", Some(70000), Some(70001)).is_err());
        assert_eq!(cidr("10.199.0.1/32").as_deref(), Some("10.199.0.1/32"));
        assert!(cidr("10.199.0.1").is_none() && cidr("2001:db8::/32").is_none());
    }
}
