//! Images and their snapshots: stock images by owner and name, cgcloud's images by tag,
//! baking and deregistering.

use super::*;
use crate::error::other;
use crate::{AwsError, Cloud};
use aws_sdk_ec2::types::{BlockDeviceMapping, ResourceType};
use cgcloud_core::model::ImageInfo;
use cgcloud_core::tags::{self, Tags};

/// A stock or cgcloud image found by lookup.
#[derive(Debug, Clone)]
pub struct FoundImage {
    pub image_id: String,
    pub name: String,
    pub creation_date: String,
    pub root_device: Option<String>,
    pub owner: Option<String>,
    /// The instance it was made from, where EC2 says (cgcloud's own images).
    pub source_instance: Option<String>,
    pub tags: Tags,
}

pub(crate) fn found_image(i: &aws_sdk_ec2::types::Image) -> FoundImage {
    FoundImage {
        image_id: i.image_id().unwrap_or_default().to_owned(),
        name: i.name().unwrap_or_default().to_owned(),
        creation_date: i.creation_date().unwrap_or_default().to_owned(),
        root_device: i.root_device_name().map(str::to_owned),
        owner: i.owner_id().map(str::to_owned),
        source_instance: i.source_instance_id().map(str::to_owned),
        tags: to_tags(i.tags()),
    }
}

impl Cloud {
    /// Images by id.
    pub async fn image_by_id(&self, image_id: &str) -> Result<Option<FoundImage>, AwsError> {
        let out = self.ec2.describe_images().image_ids(image_id).send().await;
        let out = match out {
            Ok(o) => o,
            Err(e) => {
                let e = self.classify("ec2:DescribeImages", e);
                if e.code().is_some_and(|c| c.starts_with("InvalidAMIID")) {
                    return Ok(None);
                }
                return Err(e);
            }
        };
        Ok(out.images().first().map(found_image))
    }

    /// The newest available image owned by one of `owners` whose name matches `name` (a
    /// DescribeImages wildcard pattern) for `arch`.
    pub async fn newest_image(
        &self,
        owners: &[String],
        name: &str,
        arch: &str,
    ) -> Result<Option<FoundImage>, AwsError> {
        let pages: Vec<_> = self
            .ec2
            .describe_images()
            .set_owners(Some(owners.to_vec()))
            .filters(filter("name", &[name]))
            .filters(filter("architecture", &[arch]))
            .filters(filter("state", &["available"]))
            .into_paginator()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| self.classify("ec2:DescribeImages", e))?;
        Ok(pages
            .iter()
            .flat_map(|p| p.images())
            .filter(|i| !i.name().unwrap_or_default().to_lowercase().contains("beta"))
            .max_by(|a, b| (a.creation_date(), a.name()).cmp(&(b.creation_date(), b.name())))
            .map(found_image))
    }

    /// The cgcloud images of `role` in `namespace`, oldest first.
    pub async fn list_images(&self, namespace: &str, role: Option<&str>) -> Result<Vec<ImageInfo>, AwsError> {
        let mut req = self.ec2.describe_images().owners("self").filters(tag_filter(tags::NAMESPACE, namespace));
        if let Some(r) = role {
            req = req.filters(tag_filter(tags::ROLE, r));
        }
        let pages: Vec<_> = req
            .into_paginator()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| self.classify("ec2:DescribeImages", e))?;
        let mut images: Vec<ImageInfo> = pages
            .iter()
            .flat_map(|p| p.images())
            .filter_map(|i| {
                let tags = to_tags(i.tags());
                if tags.get(tags::NAMESPACE).map(String::as_str) != Some(namespace) {
                    return None;
                }
                Some(ImageInfo {
                    image_id: i.image_id()?.to_owned(),
                    name: i.name().unwrap_or_default().to_owned(),
                    role: tags.get(tags::ROLE).cloned()?,
                    state: i.state().map(|s| s.as_str().to_owned()).unwrap_or_default(),
                    creation_date: i.creation_date().unwrap_or_default().to_owned(),
                    generation: tags.get(tags::GENERATION).and_then(|g| g.parse().ok()).unwrap_or(0),
                    role_hash: tags.get(tags::ROLE_HASH).cloned(),
                    snapshot_ids: i
                        .block_device_mappings()
                        .iter()
                        .filter_map(|b| b.ebs().and_then(|e| e.snapshot_id()).map(str::to_owned))
                        .collect(),
                    source_instance: i.source_instance_id().map(str::to_owned),
                    tags,
                })
            })
            .collect();
        images.sort_by(|a, b| (&a.creation_date, &a.name).cmp(&(&b.creation_date, &b.name)));
        Ok(images)
    }

    /// Creates an image of a (stopped) instance. The tags go on the image at once and on its
    /// snapshots once they exist (see [`Cloud::tag_image_snapshots`]).
    pub async fn create_image(
        &self,
        instance_id: &str,
        name: &str,
        description: &str,
        image_tags: &Tags,
        exclude_devices: &[String],
    ) -> Result<String, AwsError> {
        // `NoDevice` keeps an attached volume (a box's persistent volume) out of the image.
        let excluded: Vec<BlockDeviceMapping> = exclude_devices
            .iter()
            .map(|d| BlockDeviceMapping::builder().device_name(d).no_device("").build())
            .collect();
        let out = self
            .ec2
            .create_image()
            .instance_id(instance_id)
            .name(name)
            .description(description)
            .set_block_device_mappings((!excluded.is_empty()).then_some(excluded))
            .tag_specifications(tag_spec(ResourceType::Image, image_tags))
            .send()
            .await
            .map_err(|e| self.classify("ec2:CreateImage", e))?;
        out.image_id().map(str::to_owned).ok_or_else(|| other("ec2:CreateImage", "no image id in the response"))
    }

    /// Tags the snapshots of an image (so that `cleanup` can scope them to a namespace).
    pub async fn tag_image_snapshots(&self, image_id: &str, snapshot_tags: &Tags) -> Result<Vec<String>, AwsError> {
        let out = self
            .ec2
            .describe_images()
            .image_ids(image_id)
            .send()
            .await
            .map_err(|e| self.classify("ec2:DescribeImages", e))?;
        let snapshots: Vec<String> = out
            .images()
            .iter()
            .flat_map(|i| i.block_device_mappings())
            .filter_map(|b| b.ebs().and_then(|e| e.snapshot_id()).map(str::to_owned))
            .collect();
        self.create_tags(&snapshots, snapshot_tags).await?;
        Ok(snapshots)
    }

    /// The state of an image, or None if it no longer exists.
    pub async fn image_state(&self, image_id: &str) -> Result<Option<String>, AwsError> {
        match self.ec2.describe_images().image_ids(image_id).send().await {
            Ok(o) => Ok(o.images().first().and_then(|i| i.state()).map(|s| s.as_str().to_owned())),
            Err(e) => {
                let e = self.classify("ec2:DescribeImages", e);
                if e.code().is_some_and(|c| c.starts_with("InvalidAMIID")) {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    pub async fn deregister_image(&self, image_id: &str) -> Result<(), AwsError> {
        self.ec2
            .deregister_image()
            .image_id(image_id)
            .send()
            .await
            .map_err(|e| self.classify("ec2:DeregisterImage", e))?;
        Ok(())
    }

    pub async fn delete_snapshot(&self, snapshot_id: &str) -> Result<(), AwsError> {
        self.ec2
            .delete_snapshot()
            .snapshot_id(snapshot_id)
            .send()
            .await
            .map_err(|e| self.classify("ec2:DeleteSnapshot", e))?;
        Ok(())
    }

    /// Snapshots owned by this account and tagged with `namespace`: (id, description, tags).
    pub async fn namespace_snapshots(&self, namespace: &str) -> Result<Vec<(String, String, Tags)>, AwsError> {
        let pages: Vec<_> = self
            .ec2
            .describe_snapshots()
            .owner_ids("self")
            .filters(tag_filter(tags::NAMESPACE, namespace))
            .into_paginator()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| self.classify("ec2:DescribeSnapshots", e))?;
        Ok(pages
            .iter()
            .flat_map(|p| p.snapshots())
            .map(|s| {
                (
                    s.snapshot_id().unwrap_or_default().to_owned(),
                    s.description().unwrap_or_default().to_owned(),
                    to_tags(s.tags()),
                )
            })
            .filter(|(_, _, t)| t.get(tags::NAMESPACE).map(String::as_str) == Some(namespace))
            .collect())
    }
}
