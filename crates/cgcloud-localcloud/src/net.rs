//! The local cloud's network: one bridge for the VPC, one network namespace per host joined
//! to it by a veth pair, NAT for egress (so apt and pip work inside hosts), and a DNS server on
//! the bridge that resolves the hosts' private DNS names and forwards everything else.
//!
//! Guests are tenants, not the machine's peers. On the machine they reach only the bridge
//! address's DNS, the API proxy and an explicit list of ports for servers that users and tests
//! run there (package mirrors); nothing else of the machine, over IPv4 or IPv6. Their traffic
//! out goes to the internet only: never to link-local addresses (the metadata service of the
//! machine's own cloud), private or loopback ranges, or the machine's own networks. Each veth
//! may send only from its instance's IP and MAC, so no guest can pose as another.

use crate::sys::{run, run_quiet};
use crate::Error;

pub const BRIDGE: &str = "cgc0";
pub const GATEWAY: &str = "10.199.0.1";
pub const VPC_CIDR: &str = "10.199.0.0/16";
pub const PREFIX_LEN: u8 = 16;
/// Marks our iptables rules so teardown finds exactly them.
const RULE_COMMENT: &str = "cgcloud-local";
/// Our iptables chains: what guests may reach on the machine, and through it.
const CHAIN_IN: &str = "CGCLOUD-GUEST-IN";
const CHAIN_FWD: &str = "CGCLOUD-GUEST-FWD";
/// Ports of the bridge address that guests reach besides DNS and the API, for servers users
/// and tests run there (`scripts/apache-mirror` serves on 8000); `CGCLOUD_LOCAL_GUEST_PORTS`
/// (e.g. `8000-8999,3142`) changes them.
pub const DEFAULT_GUEST_PORTS: &str = "8000-8999";
/// Destinations guests never reach through the machine: link-local (a cloud's metadata
/// service), loopback, private and shared ranges (the machine's LAN and its neighbours'),
/// multicast and reserved. The VPC itself is bridged, not forwarded.
const NEVER_FORWARDED: &[&str] = &[
    "169.254.0.0/16",
    "0.0.0.0/8",
    "127.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
];

/// The network namespace of an instance.
pub fn netns(instance_id: &str) -> String {
    format!("cgc-{instance_id}")
}

/// The host side of an instance's veth pair (interface names are limited to 15 bytes).
pub fn veth(instance_id: &str) -> String {
    let tail: String = instance_id.chars().rev().take(12).collect::<Vec<_>>().into_iter().rev().collect();
    format!("cgv{tail}")
}

pub async fn bridge_up() -> Result<(), Error> {
    if !run_quiet("ip", &["link", "show", BRIDGE]).await {
        run("ip", &["link", "add", BRIDGE, "type", "bridge"]).await?;
    }
    // The VPC has no IPv6: without an IPv6 address on the bridge, no guest reaches the
    // machine's services over IPv6 link-local, where the IPv4 rules below do not apply.
    // A kernel without IPv6 has nothing to turn off; one with it must turn it off here.
    let disabled = run_quiet("sysctl", &["-q", "-w", &format!("net.ipv6.conf.{BRIDGE}.disable_ipv6=1")]).await;
    if !disabled && std::path::Path::new("/proc/sys/net/ipv6").exists() {
        run("sysctl", &["-q", "-w", &format!("net.ipv6.conf.{BRIDGE}.disable_ipv6=1")]).await?;
    }
    let cidr = format!("{GATEWAY}/{PREFIX_LEN}");
    let addrs = run("ip", &["-o", "addr", "show", "dev", BRIDGE]).await?;
    if !addrs.contains(&cidr) {
        run("ip", &["addr", "add", &cidr, "dev", BRIDGE]).await?;
    }
    run("ip", &["link", "set", BRIDGE, "up"]).await?;
    Ok(())
}

pub async fn bridge_down() {
    run_quiet("ip", &["link", "del", BRIDGE]).await;
}

/// The address every EC2 instance reaches its metadata service at.
pub const IMDS_ADDRESS: &str = "169.254.169.254";

fn nat_rules(imds_to: &str) -> Vec<(&'static str, Vec<String>)> {
    let v = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<String>>();
    vec![
        ("nat", v(&["POSTROUTING", "-s", VPC_CIDR, "!", "-d", VPC_CIDR, "-j", "MASQUERADE"])),
        // A guest's IMDS requests are answered by the local cloud, never routed on.
        (
            "nat",
            v(&[
                "PREROUTING",
                "-i",
                BRIDGE,
                "-d",
                IMDS_ADDRESS,
                "-p",
                "tcp",
                "--dport",
                "80",
                "-j",
                "DNAT",
                "--to-destination",
                imds_to,
            ]),
        ),
        ("filter", v(&["INPUT", "-i", BRIDGE, "-j", CHAIN_IN])),
        ("filter", v(&["FORWARD", "-i", BRIDGE, "-j", CHAIN_FWD])),
        // What the machine sends a host passes its security groups, as on EC2.
        ("filter", v(&["OUTPUT", "-o", BRIDGE, "-j", crate::secgroups::CHAIN])),
        // Whatever is forwarded to a host (from another host, or replies from the internet)
        // passes its security groups, which let replies in.
        ("filter", v(&["FORWARD", "-o", BRIDGE, "-j", crate::secgroups::CHAIN])),
    ]
}

/// Parses a list of ports and ranges (`8000-8999,3142`) into iptables' `multiport` form.
pub fn parse_guest_ports(spec: &str) -> Result<Vec<String>, Error> {
    let bad = |what: &str| {
        Error::Prerequisite(format!(
            "CGCLOUD_LOCAL_GUEST_PORTS: '{what}' is not a port (1-65535) or a range of them (8000-8999)"
        ))
    };
    let port = |p: &str| p.trim().parse::<u16>().ok().filter(|p| *p > 0);
    let mut out = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        match item.split_once('-') {
            Some((a, b)) => match (port(a), port(b)) {
                (Some(a), Some(b)) if a <= b => out.push(format!("{a}:{b}")),
                _ => return Err(bad(item)),
            },
            None => out.push(port(item).ok_or_else(|| bad(item))?.to_string()),
        }
    }
    Ok(out)
}

/// What guests may reach on the machine: DNS and the API proxy on the bridge address, the
/// allowed ports there, ping; answers to connections the machine opened. Refused otherwise
/// (a reset, so a client fails at once instead of timing out).
fn guest_in_rules(proxy_port: u16, imds_port: u16, guest_ports: &[String]) -> Vec<Vec<String>> {
    let mut rules: Vec<Vec<String>> = vec![
        vec!["-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"],
        // A packet conntrack cannot place (out of window, say) is dropped, never answered with
        // a reset: the reject below would reset the guest's side of a live connection (an SSH
        // session from this machine).
        vec!["-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP"],
        vec!["-d", GATEWAY, "-p", "udp", "--dport", "53", "-j", "ACCEPT"],
        vec!["-d", GATEWAY, "-p", "tcp", "--dport", "53", "-j", "ACCEPT"],
        vec!["-d", GATEWAY, "-p", "icmp", "--icmp-type", "echo-request", "-j", "ACCEPT"],
    ]
    .into_iter()
    .map(|r| r.into_iter().map(str::to_owned).collect())
    .collect();
    for port in [proxy_port, imds_port] {
        let port = port.to_string();
        rules.push(["-d", GATEWAY, "-p", "tcp", "--dport", &port, "-j", "ACCEPT"].map(str::to_owned).to_vec());
    }
    // multiport takes at most 15 ports (a range counts as two).
    for chunk in guest_ports.chunks(7) {
        let list = chunk.join(",");
        rules.push(
            ["-d", GATEWAY, "-p", "tcp", "-m", "multiport", "--dports", &list, "-j", "ACCEPT"]
                .map(str::to_owned)
                .to_vec(),
        );
    }
    rules.push(["-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"].map(str::to_owned).to_vec());
    rules.push(["-j", "REJECT", "--reject-with", "icmp-port-unreachable"].map(str::to_owned).to_vec());
    rules
}

/// Where guests' traffic may go through the machine: other guests, as their security groups
/// say (bridged traffic passes here only where br_netfilter is loaded), and the internet,
/// never `blocked`.
fn guest_fwd_rules(blocked: &[String]) -> Vec<Vec<String>> {
    let mut rules = vec![
        ["-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP"].map(str::to_owned).to_vec(),
        ["-o", BRIDGE, "-j", crate::secgroups::CHAIN].map(str::to_owned).to_vec(),
    ];
    for net in blocked {
        rules.push(
            ["-d", net.as_str(), "-j", "REJECT", "--reject-with", "icmp-net-prohibited"].map(str::to_owned).to_vec(),
        );
    }
    rules.push(["-j", "ACCEPT"].map(str::to_owned).to_vec());
    rules
}

/// The IPv4 networks of the machine's own interfaces (its LAN), but the bridge's.
async fn machine_networks() -> Vec<String> {
    run("ip", &["-4", "-o", "addr", "show"])
        .await
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let dev = f.nth(1)?;
            let cidr = f.skip_while(|w| *w != "inet").nth(1)?;
            (dev != BRIDGE && dev != "lo").then(|| cidr.to_owned())
        })
        .collect()
}

async fn iptables(args: &[&str]) -> Result<(), Error> {
    let mut all = vec!["-w"];
    all.extend_from_slice(args);
    run("iptables", &all).await.map(|_| ())
}

/// Fills our chain `name` with `rules`, creating it if need be.
async fn fill_chain(name: &str, rules: &[Vec<String>]) -> Result<(), Error> {
    if !run_quiet("iptables", &["-w", "-n", "-L", name]).await {
        iptables(&["-N", name]).await?;
    }
    iptables(&["-F", name]).await?;
    for r in rules {
        let mut args = vec!["-A", name];
        args.extend(r.iter().map(String::as_str));
        iptables(&args).await?;
    }
    Ok(())
}

/// Confines guests (see the module's header) and enables forwarding and masquerading for the
/// VPC. Returns the previous `ip_forward` value.
pub async fn nat_up(proxy_port: u16, imds_port: u16, guest_ports: &[String]) -> Result<String, Error> {
    let before =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_else(|_| "0".into()).trim().to_owned();
    fill_chain(CHAIN_IN, &guest_in_rules(proxy_port, imds_port, guest_ports)).await?;
    // Until the controller has read the groups: replies only.
    let replies_only = [
        ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"].map(str::to_owned).to_vec(),
        vec!["-j".to_owned(), "DROP".to_owned()],
    ];
    fill_chain(crate::secgroups::CHAIN, &replies_only).await?;
    let mut blocked: Vec<String> = NEVER_FORWARDED.iter().map(|s| (*s).to_owned()).collect();
    blocked.extend(machine_networks().await);
    fill_chain(CHAIN_FWD, &guest_fwd_rules(&blocked)).await?;
    run("sysctl", &["-q", "-w", "net.ipv4.ip_forward=1"]).await?;
    for (table, spec) in nat_rules(&format!("{GATEWAY}:{imds_port}")) {
        let spec: Vec<&str> = spec.iter().map(String::as_str).collect();
        // First in their chains: a rule of the machine's that accepts everything from an
        // interface must not let guests past ours.
        if !rule(table, "-C", &spec).await && !rule_at(table, &spec, 1).await {
            return Err(Error::Command {
                command: format!("iptables -t {table} -I {}", spec.join(" ")),
                detail: "failed".into(),
            });
        }
    }
    Ok(before)
}

async fn rule(table: &str, op: &str, spec: &[&str]) -> bool {
    let mut args = vec!["-w", "-t", table, op];
    args.extend_from_slice(spec);
    args.extend_from_slice(&["-m", "comment", "--comment", RULE_COMMENT]);
    run_quiet("iptables", &args).await
}

async fn rule_at(table: &str, spec: &[&str], position: u32) -> bool {
    let pos = position.to_string();
    let mut args = vec!["-w", "-t", table, "-I", spec[0], &pos];
    args.extend_from_slice(&spec[1..]);
    args.extend_from_slice(&["-m", "comment", "--comment", RULE_COMMENT]);
    run_quiet("iptables", &args).await
}

/// Removes our rules and chains (every copy) and restores `ip_forward`.
pub async fn nat_down(imds_port: u16, ip_forward_before: Option<&str>) {
    for (table, spec) in nat_rules(&format!("{GATEWAY}:{imds_port}")) {
        let spec: Vec<&str> = spec.iter().map(String::as_str).collect();
        while rule(table, "-D", &spec).await {}
    }
    // Whatever else carries our mark (a run whose state was lost, another port).
    for table in ["nat", "filter"] {
        let listing = run("iptables", &["-w", "-t", table, "-S"]).await.unwrap_or_default();
        for line in listing.lines().filter(|l| l.starts_with("-A ") && l.contains(&format!("--comment {RULE_COMMENT}")))
        {
            let mut args = vec!["-w", "-t", table, "-D"];
            args.extend(line.split_whitespace().skip(1));
            run_quiet("iptables", &args).await;
        }
    }
    for chain in [CHAIN_IN, CHAIN_FWD] {
        run_quiet("iptables", &["-w", "-F", chain]).await;
        run_quiet("iptables", &["-w", "-X", chain]).await;
    }
    crate::secgroups::remove().await;
    if let Some(v) = ip_forward_before {
        run_quiet("sysctl", &["-q", "-w", &format!("net.ipv4.ip_forward={v}")]).await;
    }
}

/// The MAC address of an instance's eth0, from its IP (as EC2 derives nothing from it, any
/// fixed locally administered address would do; this one is readable).
pub fn mac_of(ip: &str) -> Option<String> {
    let octets: Vec<u8> = ip.split('.').map(|o| o.parse().ok()).collect::<Option<Vec<u8>>>()?;
    let [a, b, c, d] = octets.as_slice() else { return None };
    Some(format!("02:00:{a:02x}:{b:02x}:{c:02x}:{d:02x}"))
}

/// ebtables changes are made one at a time: concurrent boots would race on the bridge table.
static EBTABLES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Lets the veth `vh` send only frames from `mac`, and of those only IPv4 from `ip` and ARP
/// claiming `ip` at `mac`, to other guests and to the machine alike. In the nat table's
/// PREROUTING: the bridge learns a frame's source MAC before its filter table sees the frame, so
/// a frame from a peer's MAC dropped only there would still teach the bridge to send that peer's
/// traffic (its IMDS answers among it) to this veth.
async fn pin_source(vh: &str, ip: &str, mac: &str) -> Result<(), Error> {
    let _one = EBTABLES.lock().await;
    unpin_source_locked(vh).await;
    // A chain that outlived its removal (a crash between the two) is filled afresh.
    if !run_quiet("ebtables", &["-t", "nat", "-N", vh]).await {
        run("ebtables", &["-t", "nat", "-F", vh]).await?;
    }
    for args in [
        // Set apart: ebtables-nft ignores a policy given with -N.
        vec!["-t", "nat", "-P", vh, "DROP"],
        vec!["-t", "nat", "-A", vh, "-s", mac, "-p", "IPv4", "--ip-src", ip, "-j", "RETURN"],
        vec!["-t", "nat", "-A", vh, "-s", mac, "-p", "ARP", "--arp-ip-src", ip, "--arp-mac-src", mac, "-j", "RETURN"],
        vec!["-t", "nat", "-A", "PREROUTING", "-i", vh, "-j", vh],
    ] {
        run("ebtables", &args).await?;
    }
    Ok(())
}

async fn unpin_source_locked(vh: &str) {
    // The filter table held these chains before (an older controller's, after a crash).
    for (table, hooks) in [("nat", &["PREROUTING"][..]), ("filter", &["FORWARD", "INPUT"][..])] {
        for hook in hooks {
            while run_quiet("ebtables", &["-t", table, "-D", hook, "-i", vh, "-j", vh]).await {}
        }
        // ebtables-nft deletes only an empty chain.
        run_quiet("ebtables", &["-t", table, "-F", vh]).await;
        run_quiet("ebtables", &["-t", table, "-X", vh]).await;
    }
}

/// Removes every per-veth chain of ours (after a crash, the next `up` or `down` calls this).
pub async fn unpin_all() {
    let _one = EBTABLES.lock().await;
    let mut chains = std::collections::BTreeSet::new();
    for table in ["nat", "filter"] {
        let listing = run("ebtables", &["-t", table, "-L"]).await.unwrap_or_default();
        for line in listing.lines() {
            if let Some(chain) = line.strip_prefix("Bridge chain: ").and_then(|r| r.split(',').next()) {
                if chain.starts_with("cgv") {
                    chains.insert(chain.to_owned());
                }
            }
        }
    }
    for chain in chains {
        unpin_source_locked(&chain).await;
    }
}

/// Checks that `ip` may be a host's address: in one of the local cloud's zone subnets, and not
/// one of the five addresses EC2 reserves in each (network, router, DNS, future use,
/// broadcast). Anyone with instance credentials can create subnets in the VPC and launch at a
/// chosen address: a host at the gateway's address would receive its peers' traffic.
pub fn host_address_ok(ip: &str) -> Result<(), String> {
    let addr: std::net::Ipv4Addr = ip.parse().map_err(|_| format!("'{ip}' is not an IPv4 address"))?;
    let in_zone = crate::ZONES.iter().any(|(_, cidr)| {
        let (net, len) = cidr.split_once('/').unwrap_or((cidr, "32"));
        let (Ok(net), Ok(len)) = (net.parse::<std::net::Ipv4Addr>(), len.parse::<u32>()) else { return false };
        let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
        let host = u32::from(addr) & !mask;
        u32::from(addr) & mask == u32::from(net) & mask && host > 3 && host != !mask
    });
    if in_zone {
        Ok(())
    } else {
        let subnets: Vec<&str> = crate::ZONES.iter().map(|(_, c)| *c).collect();
        Err(format!(
            "the local cloud runs hosts only at addresses of its subnets ({}), not at {ip} (nor at the first four or the last address of a subnet, which EC2 reserves)",
            subnets.join(", ")
        ))
    }
}

/// Creates the instance's namespace and veth, with `ip` as its address on the VPC.
pub async fn host_net_up(instance_id: &str, ip: &str) -> Result<(), Error> {
    let ns = netns(instance_id);
    let vh = veth(instance_id);
    let mac = mac_of(ip).ok_or_else(|| Error::Controller(format!("{instance_id}: '{ip}' is not an IPv4 address")))?;
    host_net_down(instance_id).await;
    run("ip", &["netns", "add", &ns]).await?;
    run("ip", &["link", "add", &vh, "type", "veth", "peer", "name", "eth0", "address", &mac, "netns", &ns]).await?;
    // Pinned before the veth joins the bridge: no frame of the guest's passes unchecked.
    pin_source(&vh, ip, &mac).await?;
    run("ip", &["link", "set", &vh, "master", BRIDGE, "up"]).await?;
    run("ip", &["-n", &ns, "link", "set", "lo", "up"]).await?;
    run("ip", &["-n", &ns, "addr", "add", &format!("{ip}/{PREFIX_LEN}"), "dev", "eth0"]).await?;
    run("ip", &["-n", &ns, "link", "set", "eth0", "up"]).await?;
    run("ip", &["-n", &ns, "route", "add", "default", "via", GATEWAY]).await?;
    Ok(())
}

/// Removes the instance's namespace (which removes its veth pair too).
pub async fn host_net_down(instance_id: &str) {
    run_quiet("ip", &["link", "del", &veth(instance_id)]).await;
    unpin_source_locked_once(&veth(instance_id)).await;
    run_quiet("ip", &["netns", "del", &netns(instance_id)]).await;
}

async fn unpin_source_locked_once(vh: &str) {
    let _one = EBTABLES.lock().await;
    unpin_source_locked(vh).await;
}

/// Our namespaces that exist now.
pub async fn our_netns() -> Vec<String> {
    run("ip", &["netns", "list"])
        .await
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("cgc-"))
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn guest_ports_are_parsed_and_checked() {
        assert_eq!(super::parse_guest_ports("8000-8999, 3142").unwrap(), vec!["8000:8999", "3142"]);
        assert_eq!(super::parse_guest_ports("").unwrap(), Vec::<String>::new());
        for bad in ["0", "70000", "9000-8000", "80;22", "a-b", "-1"] {
            let e = super::parse_guest_ports(bad).unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains("CGCLOUD_LOCAL_GUEST_PORTS"), "{e}");
        }
    }

    #[test]
    fn guests_reach_the_machine_on_listed_ports_only() {
        let rules = super::guest_in_rules(5401, 5403, &["8000:8999".into()]);
        let text: Vec<String> = rules.iter().map(|r| r.join(" ")).collect();
        assert!(text.iter().any(|r| r.contains("--dport 5401 -j ACCEPT") && r.contains("-d 10.199.0.1")));
        assert!(text.iter().any(|r| r.contains("--dports 8000:8999 -j ACCEPT")));
        assert!(text.iter().any(|r| r.contains("--dport 5403 -j ACCEPT")));
        assert!(text.iter().all(|r| !r.contains("ACCEPT") || r.contains("-d 10.199.0.1") || r.contains("ESTABLISHED")));
        let invalid = text.iter().position(|r| r.contains("INVALID -j DROP")).unwrap();
        assert!(invalid < text.iter().position(|r| r.contains("tcp-reset")).unwrap());
        assert_eq!(text.last().unwrap(), "-j REJECT --reject-with icmp-port-unreachable");
        let fwd = super::guest_fwd_rules(&["169.254.0.0/16".into(), "192.0.2.2/24".into()]);
        let text: Vec<String> = fwd.iter().map(|r| r.join(" ")).collect();
        let drop_imds = text.iter().position(|r| r.starts_with("-d 169.254.0.0/16 -j REJECT")).unwrap();
        let accept_all = text.iter().position(|r| r == "-j ACCEPT").unwrap();
        assert!(drop_imds < accept_all && accept_all == text.len() - 1);
        // Traffic to other guests goes through their security groups, before anything accepts.
        let groups = text.iter().position(|r| r == "-o cgc0 -j CGCLOUD-SG").unwrap();
        assert!(groups < drop_imds);
        assert!(super::NEVER_FORWARDED.contains(&"10.0.0.0/8"));
    }

    #[test]
    fn hosts_live_only_at_addresses_of_the_zone_subnets() {
        for ok in ["10.199.1.4", "10.199.2.254", "10.199.3.100"] {
            assert!(super::host_address_ok(ok).is_ok(), "{ok}");
        }
        for bad in [
            "10.199.0.1",
            "10.199.0.5",
            "10.199.1.0",
            "10.199.1.1",
            "10.199.1.3",
            "10.199.1.255",
            "10.199.4.5",
            "192.168.1.5",
            "x",
        ] {
            assert!(super::host_address_ok(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn macs_come_from_ips() {
        assert_eq!(super::mac_of("10.199.1.4").unwrap(), "02:00:0a:c7:01:04");
        assert!(super::mac_of("10.199.1").is_none());
        assert!(super::mac_of("10.199.1.400").is_none());
    }

    #[test]
    fn interface_names_fit() {
        let v = super::veth("i-8d2d7cf37f7f29941");
        assert_eq!(v, "cgvcf37f7f29941");
        assert_eq!(v.len(), 15);
        assert_eq!(super::netns("i-1"), "cgc-i-1");
    }
}
