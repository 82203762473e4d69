//! A cluster's member list as its leader publishes it (`GET /v1/members` on the leader's
//! agent), so that a booting node asks EC2 only for itself and gets the other members from the
//! leader: one small answer instead of DescribeInstances of every member (about 4.7 KB of XML
//! each, docs/scale.md).
//!
//! The list is authenticated with HMAC-SHA256 under the cluster's key (`/etc/cgcloud/cluster.key`,
//! 32 random bytes every node gets in its user data) and checked field by field: what arrives
//! over the network is untrusted input to a root agent that writes /etc/hosts and the system's
//! known_hosts from it. Wire form: one line `cgcloud-members-v1 <hex MAC>`, then the JSON the
//! MAC covers.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::net::Ipv4Addr;

type HmacSha256 = Hmac<Sha256>;

/// The first word of the wire form, and part of what the MAC covers (so a MAC made under the
/// same key for another purpose cannot pass for a member list's).
const MAGIC: &str = "cgcloud-members-v1";
/// Where every node of a cluster finds the cluster's key.
pub const KEY_PATH: &str = "/etc/cgcloud/cluster.key";
/// The key's length in bytes.
pub const KEY_LEN: usize = 32;
/// The TCP port of the leader's agent that serves the list: a privileged one, so that no user's
/// job on the leader can take it first and serve the workers in the agent's stead (they would
/// refuse its list, for want of the key, and ask EC2; still, only root may answer here).
pub const PORT: u16 = 710;
/// The most members a list may hold: twice an elastic cluster's most workers
/// (`scaling::MAX_WORKERS`), for static clusters grown far.
pub const MAX_MEMBERS: usize = 2 * crate::scaling::MAX_WORKERS as usize;
/// The longest a well-formed member can be on the wire (a 253-character DNS name and a host
/// key at most), with room for JSON's punctuation.
const MAX_MEMBER_BYTES: usize = 512;
/// The most bytes a list may have: larger input is refused before it is parsed.
pub const MAX_BYTES: usize = 1024 + MAX_MEMBERS * MAX_MEMBER_BYTES;
/// Ordinals are allocated from 1 upwards (grow-cluster takes the lowest free ones), so even a
/// cluster grown and shrunk for years stays far below this.
pub const MAX_ORDINAL: u32 = 1_000_000;
/// How far ahead of the reader's clock a list may claim to be made (EC2's clocks are NTP-synced;
/// a list from far in the future would stay "fresh" for a replay long after).
pub const MAX_SKEW_SECS: u64 = 60;

/// One member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub id: String,
    /// None for an instance with the cluster's tag but no ordinal (as EC2 lists it).
    #[serde(rename = "o", default, skip_serializing_if = "Option::is_none")]
    pub ordinal: Option<u32>,
    #[serde(rename = "ip")]
    pub private_ip: String,
    #[serde(rename = "dns", default, skip_serializing_if = "String::is_empty")]
    pub private_dns: String,
    #[serde(rename = "az", default, skip_serializing_if = "String::is_empty")]
    pub zone: String,
    /// The member's `cgcloud:host-key` tag (`ssh-ed25519 <base64>`), empty until it published one.
    #[serde(rename = "hk", default, skip_serializing_if = "String::is_empty")]
    pub host_key: String,
}

/// A cluster's members at one moment, as the leader saw them in EC2. What most members share is
/// said once ([`MemberList::new`]): their DNS names are EC2's `ip-<address>.<suffix>` and they
/// are in one zone, so a member's entry is mostly its id, address and host key (~150 bytes
/// with one, ~50 without).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberList {
    pub cluster: String,
    /// When the leader read the members from EC2 (unix seconds, its clock).
    pub generated_at: u64,
    /// The DNS name of a member whose own is empty: `ip-<address, dashed>.<dns_suffix>`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub dns_suffix: String,
    /// The zone of a member whose own is empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub zone: String,
    /// Which members the list holds: all of them, or the leader and the node that asked.
    #[serde(default, skip_serializing_if = "View::is_all")]
    pub view: View,
    pub members: Vec<Member>,
}

/// What a node asks its leader for (`GET /v1/members?view=…`). A worker of an elastic cluster
/// needs its leader alone (the scheduler there tells the workers about each other, and SSH
/// between workers is not the cluster's business), and a list of every member would make its
/// first boot cost O(N): at the 1000 workers such a cluster may reach, 146 KB a worker, and as
/// much again at every refresh of every worker's agent. Its view is O(1): ~500 bytes whatever
/// N. Covered by the MAC, as the rest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum View {
    /// Every member: what nodes of a fixed-size cluster write into /etc/hosts and known_hosts.
    #[default]
    All,
    /// The leader, and the node that asked.
    Leader,
}

impl View {
    pub fn is_all(&self) -> bool {
        *self == View::All
    }

    /// The query parameter's value, as `GET /v1/members?view=` takes it.
    pub fn as_str(&self) -> &'static str {
        match self {
            View::All => "all",
            View::Leader => "leader",
        }
    }

    pub fn parse(s: &str) -> Option<View> {
        match s {
            "all" => Some(View::All),
            "leader" => Some(View::Leader),
            _ => None,
        }
    }
}

/// Why a list was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MembersError {
    #[error("the member list is {0} bytes, over the limit of {MAX_BYTES}")]
    TooLarge(usize),
    #[error("the member list is not in the expected form ({0})")]
    Form(String),
    #[error("the member list's MAC does not match the cluster's key")]
    BadMac,
    #[error("the member list is cluster {found:?}'s, not {expected:?}'s")]
    OtherCluster { found: String, expected: String },
    #[error("the member list was made at {generated_at}, before {not_older_than}: stale or replayed")]
    Stale { generated_at: u64, not_older_than: u64 },
    #[error(
        "the member list was made at {generated_at}, after {now} (the reader's clock) by more than {MAX_SKEW_SECS} s"
    )]
    FromTheFuture { generated_at: u64, now: u64 },
    #[error("the member list holds {0} members, over the limit of {MAX_MEMBERS}")]
    TooMany(usize),
    #[error("member {index} is not well-formed: {what}")]
    BadMember { index: usize, what: String },
    #[error("the cluster's key is {0} bytes, not {KEY_LEN}")]
    BadKey(usize),
}

impl Member {
    /// Whether every field has the shape EC2 gives it (see the module's header for why).
    pub fn check(&self) -> Result<(), String> {
        if !valid_instance_id(&self.id) {
            return Err(format!("id {:?} is not an instance id", self.id));
        }
        if let Some(o) = self.ordinal.filter(|o| *o > MAX_ORDINAL) {
            return Err(format!("ordinal {o} is over {MAX_ORDINAL}"));
        }
        if self.private_ip.parse::<Ipv4Addr>().is_err() {
            return Err(format!("private address {:?} is not an IPv4 address", self.private_ip));
        }
        if !self.private_dns.is_empty() && !valid_dns_name(&self.private_dns) {
            return Err(format!("private DNS name {:?} is not a DNS name", self.private_dns));
        }
        if !valid_zone(&self.zone) {
            return Err(format!("zone {:?} is not a zone name", self.zone));
        }
        if !self.host_key.is_empty() && !valid_host_key(&self.host_key) {
            return Err("host key is not one ed25519 key in plain base64".to_owned());
        }
        Ok(())
    }
}

/// Empty, or a zone's name (`us-west-2a`, `use1-az1`).
pub fn valid_zone(z: &str) -> bool {
    z.len() <= 32 && z.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// `i-` and 8 or 17 lower-case hexadecimal digits, as EC2 (and moto) name instances.
pub fn valid_instance_id(id: &str) -> bool {
    id.strip_prefix("i-").is_some_and(|h| {
        (h.len() == 8 || h.len() == 17) && h.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    })
}

/// A DNS name: dot-separated labels of letters, digits and `-` (not at either end), 1 to 63
/// characters each, 253 in all.
pub fn valid_dns_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|l| {
            (1..=63).contains(&l.len())
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// `ssh-ed25519 ` and the key in plain base64, as the agent publishes it in the host-key tag
/// (the same check the known_hosts block makes).
pub fn valid_host_key(key: &str) -> bool {
    let blob = key.strip_prefix("ssh-ed25519 ").unwrap_or_default();
    (60..=120).contains(&blob.len()) && blob.chars().all(|c| c.is_ascii_alphanumeric() || "+/=".contains(c))
}

fn mac(key: &[u8], json: &[u8]) -> Result<HmacSha256, MembersError> {
    if key.len() != KEY_LEN {
        return Err(MembersError::BadKey(key.len()));
    }
    let mut m = HmacSha256::new_from_slice(key).map_err(|_| MembersError::BadKey(key.len()))?;
    m.update(MAGIC.as_bytes());
    m.update(b"\n");
    m.update(json);
    Ok(m)
}

/// The longest DNS suffix: `ip-255-255-255-255.` and it make at most 253 characters.
const MAX_DNS_SUFFIX: usize = 253 - "ip-255-255-255-255.".len();

/// `ip-10-0-0-5` for 10.0.0.5: EC2's private host names.
fn ec2_host(ip: &str) -> String {
    format!("ip-{}", ip.replace('.', "-"))
}

impl MemberList {
    /// The list of `members` (each with its full DNS name and zone), with the DNS suffix and
    /// zone of the first member said once, and left out of the members that share them.
    pub fn new(cluster: &str, generated_at: u64, mut members: Vec<Member>) -> MemberList {
        let suffix = |m: &Member| {
            m.private_dns
                .strip_prefix(&ec2_host(&m.private_ip))
                .and_then(|rest| rest.strip_prefix('.'))
                .filter(|s| s.len() <= MAX_DNS_SUFFIX)
                .map(str::to_owned)
        };
        let dns_suffix = members.first().and_then(suffix).unwrap_or_default();
        let zone = members.first().map(|m| m.zone.clone()).unwrap_or_default();
        for m in &mut members {
            if !dns_suffix.is_empty() && suffix(m).as_deref() == Some(dns_suffix.as_str()) {
                m.private_dns.clear();
            }
            if m.zone == zone {
                m.zone.clear();
            }
        }
        MemberList { cluster: cluster.to_owned(), generated_at, dns_suffix, zone, view: View::All, members }
    }

    /// This list as `view` shows it to node `asking` (None: a node that did not say who it is).
    pub fn view_for(&self, view: View, asking: Option<&str>) -> MemberList {
        match view {
            View::All => self.clone(),
            // Field by field: the leader serves this at every worker's request, and cloning the
            // whole list to keep two members would make each answer O(N) again.
            View::Leader => MemberList {
                cluster: self.cluster.clone(),
                generated_at: self.generated_at,
                dns_suffix: self.dns_suffix.clone(),
                zone: self.zone.clone(),
                view,
                members: self
                    .members
                    .iter()
                    .filter(|m| m.ordinal == Some(0) || Some(m.id.as_str()) == asking)
                    .cloned()
                    .collect(),
            },
        }
    }

    /// `m`'s DNS name (its own, or EC2's form with the list's suffix; empty if neither).
    pub fn private_dns(&self, m: &Member) -> String {
        match (m.private_dns.is_empty(), self.dns_suffix.is_empty()) {
            (false, _) => m.private_dns.clone(),
            (true, false) => format!("{}.{}", ec2_host(&m.private_ip), self.dns_suffix),
            (true, true) => String::new(),
        }
    }

    /// `m`'s zone (its own, or the list's).
    pub fn zone(&self, m: &Member) -> String {
        if m.zone.is_empty() {
            self.zone.clone()
        } else {
            m.zone.clone()
        }
    }

    /// The wire form, MAC'd under `key`.
    pub fn sign(&self, key: &[u8]) -> Result<Vec<u8>, MembersError> {
        let json = serde_json::to_vec(self).map_err(|e| MembersError::Form(e.to_string()))?;
        let tag = hex::encode(mac(key, &json)?.finalize().into_bytes());
        let mut out = format!("{MAGIC} {tag}\n").into_bytes();
        out.extend_from_slice(&json);
        Ok(out)
    }

    /// The list in `bytes` if its MAC is `key`'s, it is `expected_cluster`'s, it was made no
    /// earlier than `not_older_than` and no later than `now` (plus [`MAX_SKEW_SECS`]), and each
    /// member is well-formed. The MAC is checked before anything is parsed.
    pub fn verify(
        bytes: &[u8],
        key: &[u8],
        expected_cluster: &str,
        not_older_than: u64,
        now: u64,
    ) -> Result<MemberList, MembersError> {
        if bytes.len() > MAX_BYTES {
            return Err(MembersError::TooLarge(bytes.len()));
        }
        let form = |what: &str| MembersError::Form(what.to_owned());
        let nl = bytes.iter().position(|b| *b == b'\n').ok_or_else(|| form("no header line"))?;
        let (head, json) = (&bytes[..nl], &bytes[nl + 1..]);
        let head = std::str::from_utf8(head).map_err(|_| form("header is not text"))?;
        let tag =
            head.strip_prefix(MAGIC).and_then(|t| t.strip_prefix(' ')).ok_or_else(|| form("not a member list"))?;
        let tag = hex::decode(tag).map_err(|_| form("MAC is not hexadecimal"))?;
        mac(key, json)?.verify_slice(&tag).map_err(|_| MembersError::BadMac)?;
        let list: MemberList = serde_json::from_slice(json).map_err(|e| MembersError::Form(e.to_string()))?;
        if list.cluster != expected_cluster {
            return Err(MembersError::OtherCluster { found: list.cluster, expected: expected_cluster.to_owned() });
        }
        if list.generated_at < not_older_than {
            return Err(MembersError::Stale { generated_at: list.generated_at, not_older_than });
        }
        if list.generated_at > now.saturating_add(MAX_SKEW_SECS) {
            return Err(MembersError::FromTheFuture { generated_at: list.generated_at, now });
        }
        if list.members.len() > MAX_MEMBERS {
            return Err(MembersError::TooMany(list.members.len()));
        }
        let suffix_ok = list.dns_suffix.len() <= MAX_DNS_SUFFIX && valid_dns_name(&list.dns_suffix);
        if !list.dns_suffix.is_empty() && !suffix_ok {
            return Err(MembersError::Form(format!("DNS suffix {:?} is not a DNS name", list.dns_suffix)));
        }
        if !valid_zone(&list.zone) {
            return Err(MembersError::Form(format!("zone {:?} is not a zone name", list.zone)));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (index, m) in list.members.iter().enumerate() {
            m.check().map_err(|what| MembersError::BadMember { index, what })?;
            if !seen.insert(m.id.as_str()) {
                return Err(MembersError::BadMember { index, what: format!("{} is listed twice", m.id) });
            }
        }
        Ok(list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];
    const NOW: u64 = 1_800_000_000;

    fn member(i: u32) -> Member {
        Member {
            id: format!("i-{:017x}", 0xabc000 + i),
            ordinal: Some(i),
            private_ip: format!("10.0.{}.{}", i / 256, i % 256),
            private_dns: format!("ip-10-0-{}-{}.us-west-2.compute.internal", i / 256, i % 256),
            zone: "us-west-2a".into(),
            host_key: format!("ssh-ed25519 {}", "A".repeat(68)),
        }
    }

    fn list(n: u32) -> MemberList {
        MemberList::new("c1", NOW, (0..n).map(member).collect())
    }

    fn verify(bytes: &[u8]) -> Result<MemberList, MembersError> {
        MemberList::verify(bytes, &KEY, "c1", NOW - 120, NOW)
    }

    /// Signs `l` without the checks `verify` makes, as a holder of the key could.
    fn signed(l: &MemberList) -> Vec<u8> {
        l.sign(&KEY).unwrap()
    }

    #[test]
    fn a_signed_list_comes_back_and_is_compact() {
        let l = list(1000);
        let bytes = signed(&l);
        let back = verify(&bytes).unwrap();
        assert_eq!(back, l);
        // Each member's DNS name and zone come back whole.
        for (m, full) in back.members.iter().zip((0..1000).map(member)) {
            assert_eq!((back.private_dns(m), back.zone(m)), (full.private_dns, full.zone));
        }
        // Against ~4.7 KB of DescribeInstances XML per instance.
        let per = bytes.len() / 1000;
        assert!(per < 160, "{per} bytes per member");
        let mut odd = (0..3).map(member).collect::<Vec<_>>();
        odd[1].private_dns = "node1.example.org".into();
        odd[2].zone = "us-west-2b".into();
        let odd = MemberList::new("c1", NOW, odd);
        assert_eq!(odd.private_dns(&odd.members[1]), "node1.example.org");
        assert_eq!(odd.zone(&odd.members[2]), "us-west-2b");
        assert_eq!(odd.zone(&odd.members[1]), "us-west-2a");
        let mut bare = list(1);
        bare.members[0].host_key.clear();
        bare.members[0].ordinal = None;
        assert_eq!(verify(&signed(&bare)).unwrap(), bare);
        // A member that has not published its host key yet: a few dozen bytes.
        let entry = serde_json::to_string(&bare.members[0]).unwrap();
        assert!(entry.len() < 50, "{entry}");
    }

    #[test]
    fn the_leaders_view_holds_the_leader_and_the_asker_whatever_the_size() {
        let sizes: Vec<usize> = [2u32, 100, 1000]
            .iter()
            .map(|&n| {
                let l = list(n);
                let me = l.members[(n - 1) as usize].id.clone();
                let v = l.view_for(View::Leader, Some(&me));
                let bytes = signed(&v);
                let back = verify(&bytes).unwrap();
                assert_eq!(back.view, View::Leader);
                let ids: Vec<&str> = back.members.iter().map(|m| m.id.as_str()).collect();
                assert_eq!(ids, [l.members[0].id.as_str(), me.as_str()]);
                // Names and zones still come whole from the shared suffix.
                assert_eq!(back.private_dns(&back.members[1]), member(n - 1).private_dns);
                bytes.len()
            })
            .collect();
        assert!(sizes.iter().all(|&b| b < 600 && b.abs_diff(sizes[0]) < 16), "{sizes:?}");
        // One that did not say who it is gets the leader alone; the full view is the list.
        assert_eq!(list(5).view_for(View::Leader, None).members, list(1).members);
        assert_eq!(list(5).view_for(View::All, Some("i-x")), list(5));
        // The view is under the MAC: a full list cannot be passed off as one, nor the reverse.
        let text = String::from_utf8(signed(&list(2).view_for(View::Leader, None))).unwrap();
        assert_eq!(verify(text.replacen(",\"view\":\"leader\"", "", 1).as_bytes()), Err(MembersError::BadMac));
        assert_eq!(View::parse("leader"), Some(View::Leader));
        assert_eq!(View::parse("everyone"), None);
    }

    #[test]
    fn a_wrong_mac_is_refused() {
        let bytes = signed(&list(3));
        assert_eq!(MemberList::verify(&bytes, &[8; 32], "c1", 0, NOW), Err(MembersError::BadMac));
        // One byte of the JSON changed: 10.0.0.1 becomes 10.0.0.9.
        let text = String::from_utf8(bytes.clone()).unwrap().replacen("10.0.0.1\"", "10.0.0.9\"", 1);
        assert_eq!(verify(text.as_bytes()), Err(MembersError::BadMac));
        let no_mac = String::from_utf8(bytes).unwrap().replacen(MAGIC, "cgcloud-members-v0", 1);
        assert!(matches!(verify(no_mac.as_bytes()), Err(MembersError::Form(_))));
        assert!(matches!(verify(b"{\"cluster\":\"c1\"}"), Err(MembersError::Form(_))));
        assert_eq!(MemberList::verify(&signed(&list(1)), &[7; 16], "c1", 0, NOW), Err(MembersError::BadKey(16)));
    }

    #[test]
    fn another_clusters_list_is_refused() {
        let mut l = list(2);
        l.cluster = "c2".into();
        assert!(matches!(verify(&signed(&l)), Err(MembersError::OtherCluster { .. })));
    }

    #[test]
    fn stale_and_future_lists_are_refused() {
        let mut l = list(2);
        l.generated_at = NOW - 121;
        assert!(matches!(verify(&signed(&l)), Err(MembersError::Stale { .. })));
        l.generated_at = NOW + MAX_SKEW_SECS + 1;
        assert!(matches!(verify(&signed(&l)), Err(MembersError::FromTheFuture { .. })));
        l.generated_at = NOW + MAX_SKEW_SECS;
        assert!(verify(&signed(&l)).is_ok());
    }

    #[test]
    fn oversized_input_is_refused_before_parsing() {
        let big = vec![b' '; MAX_BYTES + 1];
        assert_eq!(verify(&big), Err(MembersError::TooLarge(MAX_BYTES + 1)));
        let l = MemberList::new(
            "c1",
            NOW,
            (0..MAX_MEMBERS as u32 + 1).map(|i| Member { host_key: String::new(), ..member(i) }).collect(),
        );
        let bytes = signed(&l);
        assert!(bytes.len() <= MAX_BYTES);
        assert_eq!(verify(&bytes), Err(MembersError::TooMany(MAX_MEMBERS + 1)));
    }

    #[test]
    fn malformed_members_are_refused() {
        type Change = Box<dyn Fn(&mut Member)>;
        let bad: Vec<(&str, Change)> = vec![
            ("id", Box::new(|m| m.id = "i-../../etc".into())),
            ("id", Box::new(|m| m.id = "i-ABCDEF12".into())),
            ("ordinal", Box::new(|m| m.ordinal = Some(MAX_ORDINAL + 1))),
            ("private address", Box::new(|m| m.private_ip = "10.0.0.1 evil".into())),
            ("private address", Box::new(|m| m.private_ip = "fe80::1".into())),
            ("private address", Box::new(|m| m.private_ip = String::new())),
            ("DNS", Box::new(|m| m.private_dns = "x\n127.0.0.1 evil".into())),
            ("DNS", Box::new(|m| m.private_dns = "a..b".into())),
            ("DNS", Box::new(|m| m.private_dns = format!("{}.x", "a".repeat(64)))),
            ("zone", Box::new(|m| m.zone = "us west".into())),
            ("host key", Box::new(|m| m.host_key = format!("ssh-ed25519 {}\n* ssh-rsa X", "A".repeat(68)))),
            ("host key", Box::new(|m| m.host_key = "ssh-rsa AAAA".into())),
            ("twice", Box::new(|m| m.id = format!("i-{:017x}", 0xabc000))),
        ];
        let mut l = list(2);
        l.dns_suffix = "x\n1.2.3.4 evil".into();
        assert!(matches!(verify(&signed(&l)), Err(MembersError::Form(w)) if w.contains("DNS suffix")));
        let mut l = list(2);
        l.zone = "a b".into();
        assert!(matches!(verify(&signed(&l)), Err(MembersError::Form(w)) if w.contains("zone")));
        for (what, change) in bad {
            let mut l = list(3);
            change(&mut l.members[1]);
            let err = verify(&signed(&l)).unwrap_err();
            assert!(matches!(&err, MembersError::BadMember { index: 1, what: w } if w.contains(what)), "{what}: {err}");
        }
        // Unknown fields are not ignored (a later version would say so by its magic word).
        let json = r#"{"cluster":"c1","generated_at":1800000000,"members":[],"extra":1}"#;
        let tag = hex::encode(mac(&KEY, json.as_bytes()).unwrap().finalize().into_bytes());
        assert!(matches!(verify(format!("{MAGIC} {tag}\n{json}").as_bytes()), Err(MembersError::Form(_))));
    }

    #[test]
    fn shapes() {
        assert!(valid_instance_id("i-0123456789abcdef0") && valid_instance_id("i-12345678"));
        assert!(!valid_instance_id("i-123") && !valid_instance_id("vol-12345678"));
        assert!(valid_dns_name("ip-10-0-0-5.ec2.internal") && !valid_dns_name("-a.b") && !valid_dns_name(""));
    }
}
