//! This box's SSH host key, published as its `cgcloud:host-key` tag so that cgcloud (and the
//! other nodes of a cluster) can verify the box when they connect. Boxes cgcloud launches
//! publish it at first boot; the daemon publishes it for any box whose tag is missing.

use crate::aws::{AwsError, Client, Service};
use crate::log::log;

/// This box's SSH host public key as `ssh-ed25519 AAAA…` (no comment), if sshd has one.
pub fn own() -> Option<String> {
    let text = std::fs::read_to_string("/etc/ssh/ssh_host_ed25519_key.pub").ok()?;
    let mut fields = text.split_whitespace();
    match (fields.next(), fields.next()) {
        (Some(t @ "ssh-ed25519"), Some(blob)) => Some(format!("{t} {blob}")),
        _ => {
            log("warning", "/etc/ssh/ssh_host_ed25519_key.pub is not an ed25519 public key; not publishing it");
            None
        }
    }
}

/// Tags the box with its SSH host key (a box launched by someone else than cgcloud, e.g. by
/// the Jenkins EC2 plugin, has none), so that cgcloud can verify it when it connects.
pub fn publish(aws: &Client, instance_id: &str) -> Result<(), AwsError> {
    let Some(key) = own() else { return Ok(()) };
    let tags = [
        ("ResourceId.1", instance_id.to_owned()),
        ("Tag.1.Key", cgcloud_core::tags::HOST_KEY.to_owned()),
        ("Tag.1.Value", key),
    ];
    aws.call(Service::Ec2, "CreateTags", &tags)?;
    Ok(())
}
