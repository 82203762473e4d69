//! The local cloud's network: one bridge for the VPC, one network namespace per host joined
//! to it by a veth pair, NAT for egress (so apt and pip work inside hosts), and a DNS server on
//! the bridge that resolves the hosts' private DNS names and forwards everything else.

use crate::sys::{run, run_quiet};
use crate::Error;

pub const BRIDGE: &str = "cgc0";
pub const GATEWAY: &str = "10.199.0.1";
pub const VPC_CIDR: &str = "10.199.0.0/16";
pub const PREFIX_LEN: u8 = 16;
/// Marks our iptables rules so teardown finds exactly them.
const RULE_COMMENT: &str = "cgcloud-local";

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

fn nat_rules() -> Vec<(&'static str, Vec<&'static str>)> {
    vec![
        ("nat", vec!["POSTROUTING", "-s", VPC_CIDR, "!", "-d", VPC_CIDR, "-j", "MASQUERADE"]),
        ("filter", vec!["FORWARD", "-i", BRIDGE, "-j", "ACCEPT"]),
        (
            "filter",
            vec!["FORWARD", "-o", BRIDGE, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"],
        ),
    ]
}

async fn rule(table: &str, op: &str, spec: &[&str]) -> bool {
    let mut args = vec!["-w", "-t", table, op];
    args.extend_from_slice(spec);
    args.extend_from_slice(&["-m", "comment", "--comment", RULE_COMMENT]);
    run_quiet("iptables", &args).await
}

/// Enables forwarding and masquerading for the VPC. Returns the previous `ip_forward` value.
pub async fn nat_up() -> Result<String, Error> {
    let before =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_else(|_| "0".into()).trim().to_owned();
    run("sysctl", &["-q", "-w", "net.ipv4.ip_forward=1"]).await?;
    for (table, spec) in nat_rules() {
        if !rule(table, "-C", &spec).await && !rule(table, "-A", &spec).await {
            return Err(Error::Command {
                command: format!("iptables -t {table} -A {}", spec.join(" ")),
                detail: "failed".into(),
            });
        }
    }
    Ok(before)
}

/// Removes our NAT rules (every copy) and restores `ip_forward`.
pub async fn nat_down(ip_forward_before: Option<&str>) {
    for (table, spec) in nat_rules() {
        while rule(table, "-D", &spec).await {}
    }
    if let Some(v) = ip_forward_before {
        run_quiet("sysctl", &["-q", "-w", &format!("net.ipv4.ip_forward={v}")]).await;
    }
}

/// Creates the instance's namespace and veth, with `ip` as its address on the VPC.
pub async fn host_net_up(instance_id: &str, ip: &str) -> Result<(), Error> {
    let ns = netns(instance_id);
    let vh = veth(instance_id);
    host_net_down(instance_id).await;
    run("ip", &["netns", "add", &ns]).await?;
    run("ip", &["link", "add", &vh, "type", "veth", "peer", "name", "eth0", "netns", &ns]).await?;
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
    run_quiet("ip", &["netns", "del", &netns(instance_id)]).await;
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
    fn interface_names_fit() {
        let v = super::veth("i-8d2d7cf37f7f29941");
        assert_eq!(v, "cgvcf37f7f29941");
        assert_eq!(v.len(), 15);
        assert_eq!(super::netns("i-1"), "cgc-i-1");
    }
}
