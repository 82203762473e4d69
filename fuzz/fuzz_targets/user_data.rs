//! The cloud-init user data cgcloud writes: whatever the keys, paths, owners and contents
//! (cluster secrets, key-pair material, device names), the document parses as YAML and gives
//! back exactly what was put in — nothing a value holds can add or change a key.
#![no_main]

use arbitrary::Arbitrary;
use cgcloud_core::userdata::{cloud_config, HostKey, SecretFile};
use libfuzzer_sys::fuzz_target;
use serde_yaml::Value;

#[derive(Debug, Arbitrary)]
struct Input {
    host_key: Option<(String, String)>,
    authorized_keys: Vec<String>,
    /// The cluster of a node that configures itself at first boot.
    first_boot: Option<String>,
    instance_store: Vec<String>,
    secrets: Vec<(String, String, Option<String>, String)>,
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v:?}"))
}

fuzz_target!(|input: Input| {
    let hk = input.host_key.as_ref().map(|(p, k)| HostKey { private_openssh: p.clone(), public: k.clone() });
    let secrets: Vec<SecretFile> = input
        .secrets
        .iter()
        .map(|(path, base64, owner, mode)| SecretFile {
            path: path.clone(),
            base64: base64.clone(),
            owner: owner.clone(),
            mode: mode.clone(),
        })
        .collect();
    let text =
        cloud_config(hk.as_ref(), &input.authorized_keys, input.first_boot.as_deref(), &input.instance_store, &secrets, None);
    let body = text.strip_prefix("#cloud-config\n").expect("the cloud-config header");
    let doc: Value = serde_yaml::from_str(body).unwrap_or_else(|e| panic!("not YAML ({e}):\n{text}"));
    if let Some(hk) = &hk {
        assert_eq!(s(&doc["ssh_keys"]["ed25519_private"]), hk.private_openssh);
        assert_eq!(s(&doc["ssh_keys"]["ed25519_public"]), format!("{}\n", hk.public));
    } else {
        assert!(doc.get("ssh_keys").is_none());
    }
    let keys: Vec<&str> = doc
        .get("ssh_authorized_keys")
        .and_then(Value::as_sequence)
        .map(|v| v.iter().map(s).collect())
        .unwrap_or_default();
    assert_eq!(keys, input.authorized_keys.iter().map(String::as_str).collect::<Vec<_>>());
    let files = doc.get("write_files").and_then(Value::as_sequence).cloned().unwrap_or_default();
    let store = usize::from(!input.instance_store.is_empty());
    assert_eq!(files.len(), store + secrets.len());
    if store == 1 {
        assert_eq!(s(&files[0]["content"]), input.instance_store.join("\n") + "\n");
    }
    for (f, want) in files[store..].iter().zip(&secrets) {
        assert_eq!(s(&f["path"]), want.path);
        assert_eq!(s(&f["content"]), want.base64);
        assert_eq!(s(&f["permissions"]), want.mode);
        assert_eq!(f.get("owner").map(s), want.owner.as_deref());
    }
    assert_eq!(doc.get("runcmd").is_some(), input.first_boot.is_some());
    if let Some(cluster) = &input.first_boot {
        // One command, as argv (no shell); the cluster's name only as the one variable, and
        // only if it is a cluster name.
        let cmd: Vec<&str> = doc["runcmd"][0].as_sequence().expect("argv").iter().map(s).collect();
        let env = format!("CGCLOUD_BOOT_CLUSTER={cluster}");
        if cgcloud_core::tags::valid_cluster_name(cluster) {
            assert_eq!(cmd, ["env", env.as_str(), "/usr/local/bin/cgcloud-agent", "boot"]);
        } else {
            assert_eq!(cmd, ["/usr/local/bin/cgcloud-agent", "boot"]);
        }
    }
});
