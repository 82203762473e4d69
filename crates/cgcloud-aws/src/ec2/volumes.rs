//! EBS volumes: persistent volumes by namespace, name or tag; creating and attaching.

use super::*;
use crate::error::other;
use crate::{AwsError, Cloud};
use aws_sdk_ec2::types::{ResourceType, VolumeType};
use cgcloud_core::tags::{self, Tags};

/// A volume as cgcloud sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    pub volume_id: String,
    /// `creating`, `available`, `in-use`, ...
    pub state: String,
    pub zone: String,
    pub size_gb: u32,
    /// Where it is attached (or being attached or detached).
    pub attachments: Vec<VolumeAttachment>,
    pub tags: Tags,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeAttachment {
    pub instance_id: String,
    /// The device name the attachment asked for, e.g. `/dev/sdf`.
    pub device: String,
}

impl VolumeInfo {
    /// The instances it is attached to (or being attached to or detached from).
    pub fn attached_to(&self) -> Vec<String> {
        self.attachments.iter().map(|a| a.instance_id.clone()).collect()
    }
}

pub(crate) fn volume_info(v: &aws_sdk_ec2::types::Volume) -> VolumeInfo {
    VolumeInfo {
        volume_id: v.volume_id().unwrap_or_default().to_owned(),
        state: v.state().map(|s| s.as_str().to_owned()).unwrap_or_default(),
        zone: v.availability_zone().unwrap_or_default().to_owned(),
        size_gb: v.size().and_then(|s| u32::try_from(s).ok()).unwrap_or(0),
        attachments: v
            .attachments()
            .iter()
            .filter_map(|a| {
                Some(VolumeAttachment {
                    instance_id: a.instance_id()?.to_owned(),
                    device: a.device().unwrap_or_default().to_owned(),
                })
            })
            .collect(),
        tags: to_tags(v.tags()),
    }
}

impl Cloud {
    /// Volumes tagged with `namespace`: (id, state, tags).
    pub async fn namespace_volumes(&self, namespace: &str) -> Result<Vec<(String, String, Tags)>, AwsError> {
        let pages: Vec<_> = self
            .ec2
            .describe_volumes()
            .filters(tag_filter(tags::NAMESPACE, namespace))
            .into_paginator()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| self.classify("ec2:DescribeVolumes", e))?;
        Ok(pages
            .iter()
            .flat_map(|p| p.volumes())
            .map(|v| {
                (
                    v.volume_id().unwrap_or_default().to_owned(),
                    v.state().map(|s| s.as_str().to_owned()).unwrap_or_default(),
                    to_tags(v.tags()),
                )
            })
            .filter(|(_, _, t)| t.get(tags::NAMESPACE).map(String::as_str) == Some(namespace))
            .collect())
    }

    /// The volumes of `namespace` whose `Name` tag is `name`.
    pub async fn volumes_named(&self, namespace: &str, name: &str) -> Result<Vec<VolumeInfo>, AwsError> {
        self.volumes_tagged(namespace, tags::NAME, name).await
    }

    /// The volumes of `namespace` with tag `key` = `value`.
    pub async fn volumes_tagged(&self, namespace: &str, key: &str, value: &str) -> Result<Vec<VolumeInfo>, AwsError> {
        let out = self
            .ec2
            .describe_volumes()
            .filters(tag_filter(tags::NAMESPACE, namespace))
            .filters(tag_filter(key, value))
            .send()
            .await
            .map_err(|e| self.classify("ec2:DescribeVolumes", e))?;
        Ok(out
            .volumes()
            .iter()
            .map(volume_info)
            .filter(|v| v.tags.get(tags::NAMESPACE).map(String::as_str) == Some(namespace))
            .collect())
    }

    /// One volume, or None if it does not exist (any more).
    pub async fn volume(&self, volume_id: &str) -> Result<Option<VolumeInfo>, AwsError> {
        match self.ec2.describe_volumes().volume_ids(volume_id).send().await {
            Ok(out) => Ok(out.volumes().first().map(volume_info)),
            Err(e) => {
                let e = self.classify("ec2:DescribeVolumes", e);
                if e.code() == Some("InvalidVolume.NotFound") {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Creates a gp3 volume tagged at creation; returns its id.
    pub async fn create_volume(&self, zone: &str, size_gb: u32, volume_tags: &Tags) -> Result<String, AwsError> {
        let out = self
            .ec2
            .create_volume()
            .availability_zone(zone)
            .size(i32::try_from(size_gb).unwrap_or(i32::MAX))
            .volume_type(VolumeType::Gp3)
            .tag_specifications(tag_spec(ResourceType::Volume, volume_tags))
            .send()
            .await
            .map_err(|e| self.classify("ec2:CreateVolume", e))?;
        out.volume_id().map(str::to_owned).ok_or_else(|| other("ec2:CreateVolume", "no volume id in the response"))
    }

    pub async fn attach_volume(&self, volume_id: &str, instance_id: &str, device: &str) -> Result<(), AwsError> {
        self.ec2
            .attach_volume()
            .volume_id(volume_id)
            .instance_id(instance_id)
            .device(device)
            .send()
            .await
            .map_err(|e| self.classify("ec2:AttachVolume", e))?;
        Ok(())
    }

    pub async fn delete_volume(&self, volume_id: &str) -> Result<(), AwsError> {
        self.ec2.delete_volume().volume_id(volume_id).send().await.map_err(|e| self.classify("ec2:DeleteVolume", e))?;
        Ok(())
    }
}
