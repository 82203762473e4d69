//! EC2 verbs: boxes (instances), images, security groups, key pairs, networks, instance
//! types and launch templates. Every listing is a paginated tag query scoped to one namespace.

mod catalog;
mod decode;
mod images;
mod instances;
mod keypairs;
mod network;
mod templates;
mod volumes;
mod vpc;

pub use catalog::*;
pub use decode::*;
pub use images::*;
pub use instances::*;
pub use keypairs::*;
pub use network::*;
pub use templates::*;
pub use volumes::*;
pub use vpc::*;

use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};
use aws_smithy_types::date_time::Format;
use cgcloud_core::tags::Tags;

pub(crate) fn filter(name: &str, values: &[&str]) -> Filter {
    Filter::builder().name(name).set_values(Some(values.iter().map(|v| (*v).to_owned()).collect())).build()
}

pub(crate) fn tag_filter(key: &str, value: &str) -> Filter {
    filter(&format!("tag:{key}"), &[value])
}

fn to_tags(tags: &[Tag]) -> Tags {
    tags.iter().filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or_default().to_owned()))).collect()
}

pub(crate) fn tag_list(tags: &Tags) -> Vec<Tag> {
    tags.iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect()
}

fn tag_spec(resource: ResourceType, tags: &Tags) -> TagSpecification {
    TagSpecification::builder().resource_type(resource).set_tags(Some(tag_list(tags))).build()
}

fn time(dt: Option<&aws_smithy_types::DateTime>) -> String {
    dt.and_then(|d| d.fmt(Format::DateTime).ok()).unwrap_or_default()
}
