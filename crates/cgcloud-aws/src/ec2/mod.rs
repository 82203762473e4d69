//! EC2 verbs: boxes (instances), images, security groups, key pairs, networks and instance
//! types. Every listing is a paginated tag query scoped to one namespace.

mod catalog;
mod images;
mod instances;
mod keypairs;
mod network;
mod volumes;

pub use catalog::*;
pub use images::*;
pub use instances::*;
pub use keypairs::*;
pub use network::*;
pub use volumes::*;

use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};
use aws_smithy_types::date_time::Format;
use cgcloud_core::tags::Tags;

pub fn filter(name: &str, values: &[&str]) -> Filter {
    Filter::builder().name(name).set_values(Some(values.iter().map(|v| (*v).to_owned()).collect())).build()
}

pub fn tag_filter(key: &str, value: &str) -> Filter {
    filter(&format!("tag:{key}"), &[value])
}

fn to_tags(tags: &[Tag]) -> Tags {
    tags.iter().filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or_default().to_owned()))).collect()
}

pub fn tag_list(tags: &Tags) -> Vec<Tag> {
    tags.iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect()
}

fn tag_spec(resource: ResourceType, tags: &Tags) -> TagSpecification {
    TagSpecification::builder().resource_type(resource).set_tags(Some(tag_list(tags))).build()
}

fn time(dt: Option<&aws_smithy_types::DateTime>) -> String {
    dt.and_then(|d| d.fmt(Format::DateTime).ok()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance_with_host_key(key: &str) -> Instance {
        let tag = |k: &str, v: &str| Tag::builder().key(k).value(v).build();
        Instance::builder()
            .instance_id("i-0evil")
            .tags(tag(tags::ROLE, "generic-cluster-box"))
            .tags(tag(tags::NAMESPACE, "/ns/"))
            .tags(tag(tags::HOST_KEY, key))
            .build()
    }

    /// The attack of a cluster node on the workstation: a host key tag that smuggles more
    /// known_hosts lines in. Such a box has no host key as far as the workstation is concerned.
    #[test]
    fn host_key_tags_are_trusted_only_as_one_bare_key() {
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPKyfQohiwzQo5mb9ynx0GAr7xoYSkYSy+eDZ8g2i9ke";
        let peer = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA".to_owned() + &"B".repeat(42);
        let good = box_from_instance(&instance_with_host_key(key)).unwrap();
        assert_eq!(good.host_key.as_deref(), Some(key));
        for bad in [format!("{key}\n@revoked * {peer}"), format!("{key}\n* {peer}"), format!("{key} comment")] {
            let b = box_from_instance(&instance_with_host_key(&bad)).unwrap();
            assert_eq!(b.host_key, None, "{bad:?}");
            // The raw tag stays readable (for the message saying why the box is not trusted).
            assert_eq!(b.tags.get(tags::HOST_KEY), Some(&bad));
        }
    }

    #[test]
    fn instance_store_is_mapped_only_on_xen_types_and_never_on_sdf() {
        assert_eq!(instance_store_device_names(2), ["/dev/sdb", "/dev/sdc"]);
        assert_eq!(instance_store_device_names(5), ["/dev/sdb", "/dev/sdc", "/dev/sdd", "/dev/sde", "/dev/sdg"]);
        assert_eq!(instance_store_device_names(24).len(), 24);
        let xen = InstanceTypeInfo { arches: vec![], instance_store_gb: vec![16, 16], nvme_instance_store: false };
        assert_eq!(xen.mapped_instance_store(), ["/dev/sdb", "/dev/sdc"]);
        let nitro = InstanceTypeInfo { nvme_instance_store: true, ..xen };
        assert!(nitro.mapped_instance_store().is_empty());
    }
}
