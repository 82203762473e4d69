//! The cloud-init user data cgcloud gives every box: the SSH host key cgcloud generated for a box
//! it provisions over SSH (so the box's identity is known before it boots; replaced by a key
//! the box generates once provisioning has connected, see `launch::rotate_host_key`), and the
//! extra authorized keys. Cluster nodes get no host key: each generates its own at first boot and
//! publishes the public half as a tag on itself, which only it may write (`policy.rs`).
//! cloud-config is YAML, and JSON is valid YAML, so it is written with serde_json.

use serde_json::json;

/// An ed25519 host key pair in OpenSSH formats (made by `ssh-keygen` on the workstation).
#[derive(Debug, Clone)]
pub struct HostKey {
    pub private_openssh: String,
    /// `ssh-ed25519 AAAA...` (no comment).
    pub public: String,
}

/// A file cloud-init writes before anything else runs (a cluster's secrets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretFile {
    pub path: String,
    /// The content, base64-encoded.
    pub base64: String,
    pub owner: Option<String>,
    pub mode: String,
}

pub fn cloud_config(
    host_key: Option<&HostKey>,
    authorized_keys: &[String],
    first_boot: Option<&str>,
    instance_store: &[String],
    secrets: &[SecretFile],
    boot_leader: Option<std::net::Ipv4Addr>,
) -> String {
    let mut doc = json!({
        // Replace the image's host keys, and do not generate other types we would not know.
        "ssh_deletekeys": true,
        "ssh_genkeytypes": ["ed25519"],
        "manage_etc_hosts": true,
    });
    if let Some(host_key) = host_key {
        doc["ssh_keys"] = json!({
            "ed25519_private": host_key.private_openssh,
            // With its line break, as ssh-keygen writes it: cloud-init prints the file to the
            // console between markers, and the next marker must start a line of its own.
            "ed25519_public": format!("{}\n", host_key.public),
        });
    }
    if !authorized_keys.is_empty() {
        doc["ssh_authorized_keys"] = json!(authorized_keys);
    }
    let mut files = Vec::new();
    if !instance_store.is_empty() {
        // Xen instance types: the agent's storage unit formats and mounts these.
        files.push(json!({
            "path": "/etc/cgcloud/instance-store",
            "content": instance_store.join("\n") + "\n",
            "permissions": "0644",
        }));
    }
    for s in secrets {
        let mut f = json!({"path": s.path, "content": s.base64, "encoding": "b64", "permissions": s.mode});
        if let Some(o) = &s.owner {
            f["owner"] = json!(o);
        }
        files.push(f);
    }
    if !files.is_empty() {
        doc["write_files"] = json!(files);
    }
    if let Some(cluster) = first_boot {
        // Cluster nodes configure themselves from their tags with the agent in their image. The
        // cluster's name spares each node a query for itself (`cgcloud-agent boot`); it goes in
        // the environment, which an older agent in an older image ignores, as an argv element
        // (no shell), and only if it is a cluster name. A worker also learns its leader's
        // private address, to fetch the member list from it (`members.rs`) instead of asking
        // EC2 for every member; an address is an address by its type.
        let agent = "/usr/local/bin/cgcloud-agent";
        doc["runcmd"] = if crate::tags::valid_cluster_name(cluster) {
            let mut cmd = vec!["env".to_owned(), format!("CGCLOUD_BOOT_CLUSTER={cluster}")];
            if let Some(ip) = boot_leader {
                cmd.push(format!("CGCLOUD_BOOT_LEADER={ip}"));
            }
            cmd.extend([agent.to_owned(), "boot".to_owned()]);
            json!([cmd])
        } else {
            json!([[agent, "boot"]])
        };
    }
    format!("#cloud-config\n{}\n", yaml_safe(&serde_json::to_string_pretty(&doc).unwrap_or_default()))
}

/// JSON text that YAML parsers read back as the same JSON: serde_json writes characters like
/// DEL or C1 controls as they are, which YAML refuses outright (cloud-init would then ignore
/// the whole user data), and NEL, LS and PS, which YAML 1.1 (cloud-init's PyYAML) folds as line
/// breaks inside a string. Each becomes a `\uXXXX` escape (they occur only inside strings: the
/// JSON structure is ASCII). Found by the user_data fuzz target.
fn yaml_safe(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        match c {
            '\u{7f}'..='\u{9f}' | '\u{2028}' | '\u{2029}' | '\u{fffe}' | '\u{ffff}' => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v_runcmd(text: &str) -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_str(text.trim_start_matches("#cloud-config\n")).unwrap();
        v["runcmd"].clone()
    }

    #[test]
    fn cloud_config_carries_host_key_and_keys() {
        let hk = HostKey {
            private_openssh: "-----BEGIN OPENSSH PRIVATE KEY-----\nx\n".into(),
            public: "ssh-ed25519 AAAA".into(),
        };
        let text = cloud_config(Some(&hk), &["ssh-rsa BBBB bob".into()], Some("c1"), &[], &[], None);
        assert!(text.starts_with("#cloud-config\n"));
        let v: serde_json::Value = serde_json::from_str(text.trim_start_matches("#cloud-config\n")).unwrap();
        assert_eq!(v["ssh_keys"]["ed25519_public"], "ssh-ed25519 AAAA\n");
        assert_eq!(v["ssh_authorized_keys"][0], "ssh-rsa BBBB bob");
        assert_eq!(v["ssh_genkeytypes"][0], "ed25519");
        let none = cloud_config(Some(&hk), &[], None, &[], &[], None);
        assert!(!none.contains("runcmd"));
        assert!(text.contains("cgcloud-agent"));
        assert!(!none.contains("ssh_authorized_keys"));
        assert!(!none.contains("write_files"));
        let xen = cloud_config(Some(&hk), &[], None, &["/dev/sdb".into(), "/dev/sdc".into()], &[], None);
        let v: serde_json::Value = serde_json::from_str(xen.trim_start_matches("#cloud-config\n")).unwrap();
        assert_eq!(v["write_files"][0]["path"], "/etc/cgcloud/instance-store");
        assert_eq!(v["write_files"][0]["content"], "/dev/sdb\n/dev/sdc\n");
        // A node that makes its own key gets none, and still only ed25519.
        let secret = SecretFile {
            path: "/etc/munge/munge.key".into(),
            base64: "c2VjcmV0".into(),
            owner: Some("munge:munge".into()),
            mode: "0400".into(),
        };
        let node = cloud_config(None, &[], Some("c1"), &[], std::slice::from_ref(&secret), None);
        let v: serde_json::Value = serde_json::from_str(node.trim_start_matches("#cloud-config\n")).unwrap();
        assert_eq!(v["write_files"][0]["encoding"], "b64");
        assert_eq!(v["write_files"][0]["owner"], "munge:munge");
        assert_eq!(v["write_files"][0]["permissions"], "0400");
        let node = cloud_config(None, &[], Some("c1"), &[], &[], None);
        assert_eq!(
            v_runcmd(&node),
            serde_json::json!([["env", "CGCLOUD_BOOT_CLUSTER=c1", "/usr/local/bin/cgcloud-agent", "boot"]])
        );
        let worker = cloud_config(None, &[], Some("c1"), &[], &[], Some([10, 0, 0, 5].into()));
        assert_eq!(
            v_runcmd(&worker),
            serde_json::json!([[
                "env",
                "CGCLOUD_BOOT_CLUSTER=c1",
                "CGCLOUD_BOOT_LEADER=10.0.0.5",
                "/usr/local/bin/cgcloud-agent",
                "boot"
            ]])
        );
        // A name that is not a cluster name never reaches the command line.
        let odd = cloud_config(None, &[], Some("c1 ; rm -rf /"), &[], &[], Some([10, 0, 0, 1].into()));
        assert_eq!(v_runcmd(&odd), serde_json::json!([["/usr/local/bin/cgcloud-agent", "boot"]]));
        let v: serde_json::Value = serde_json::from_str(node.trim_start_matches("#cloud-config\n")).unwrap();
        assert!(v.get("ssh_keys").is_none() && !node.contains("PRIVATE KEY"), "{node}");
        assert_eq!(v["ssh_genkeytypes"][0], "ed25519");
        assert_eq!(v["ssh_deletekeys"], true);
    }

    /// Regression (fuzzing): characters YAML refuses or reads as line breaks, in any value,
    /// come back exactly from a YAML parser.
    #[test]
    fn yaml_parsers_read_back_every_character() {
        let odd = "a\u{7f}b\u{85}c\u{2028}d\u{9f}e\u{ffff}f\u{1f600}";
        let hk = HostKey { private_openssh: odd.into(), public: "ssh-ed25519 AAAA".into() };
        let text = cloud_config(Some(&hk), &[odd.into()], None, &[], &[], None);
        assert!(!text.contains('\u{7f}') && !text.contains('\u{2028}'), "{text:?}");
        let v: serde_yaml::Value = serde_yaml::from_str(text.trim_start_matches("#cloud-config\n")).unwrap();
        assert_eq!(v["ssh_keys"]["ed25519_private"].as_str(), Some(odd));
        assert_eq!(v["ssh_authorized_keys"][0].as_str(), Some(odd));
        let j: serde_json::Value = serde_json::from_str(text.trim_start_matches("#cloud-config\n")).unwrap();
        assert_eq!(j["ssh_authorized_keys"][0].as_str(), Some(odd));
    }
}
