//! Whole-VPC views and set-up, for the local cloud's controller (which turns what EC2 says into
//! hosts, firewalls, devices and image layers) and the benchmarks: everything in one VPC at
//! once, rather than one namespace's boxes.

use super::*;
use crate::{AwsError, Cloud};
use aws_sdk_ec2::types::{AttributeBooleanValue, ResourceType, Tag, TagSpecification};
use std::collections::BTreeMap;

/// One ingress permission of a security group, as EC2 holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngressPermission {
    /// `-1` (all), `tcp`, `udp`, `icmp` or a protocol number.
    pub protocol: String,
    pub from_port: Option<i32>,
    pub to_port: Option<i32>,
    pub cidrs: Vec<String>,
    /// Source groups (their ids).
    pub groups: Vec<String>,
}

impl Cloud {
    /// Creates a VPC named `name` with one subnet per (zone, CIDR) that assigns no public IPs.
    /// Returns the VPC's id and each zone's subnet id.
    pub async fn create_private_vpc(
        &self,
        name: &str,
        cidr: &str,
        subnets: &[(&str, &str)],
    ) -> Result<(String, Vec<(String, String)>), AwsError> {
        let tag = |rt| {
            TagSpecification::builder().resource_type(rt).tags(Tag::builder().key("Name").value(name).build()).build()
        };
        let vpc = self
            .ec2
            .create_vpc()
            .cidr_block(cidr)
            .tag_specifications(tag(ResourceType::Vpc))
            .send()
            .await
            .map_err(|e| self.classify("ec2:CreateVpc", e))?;
        let vpc_id = vpc.vpc().and_then(|v| v.vpc_id()).unwrap_or_default().to_owned();
        let mut made = Vec::new();
        for (zone, cidr) in subnets {
            let s = self
                .ec2
                .create_subnet()
                .vpc_id(&vpc_id)
                .cidr_block(*cidr)
                .availability_zone(*zone)
                .tag_specifications(tag(ResourceType::Subnet))
                .send()
                .await
                .map_err(|e| self.classify("ec2:CreateSubnet", e))?;
            let id = s.subnet().and_then(|s| s.subnet_id()).unwrap_or_default().to_owned();
            self.ec2
                .modify_subnet_attribute()
                .subnet_id(&id)
                .map_public_ip_on_launch(AttributeBooleanValue::builder().value(false).build())
                .send()
                .await
                .map_err(|e| self.classify("ec2:ModifySubnetAttribute", e))?;
            made.push(((*zone).to_owned(), id));
        }
        Ok((vpc_id, made))
    }

    /// Every instance in the region (any state), or only those in one VPC.
    pub async fn all_instances(&self, vpc_id: Option<&str>) -> Result<Vec<InstanceInfo>, AwsError> {
        let pages: Vec<_> = self
            .ec2
            .describe_instances()
            .set_filters(vpc_id.map(|v| vec![filter("vpc-id", &[v])]))
            .into_paginator()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| self.classify("ec2:DescribeInstances", e))?;
        Ok(pages.iter().flat_map(|p| p.reservations()).flat_map(|r| r.instances()).map(instance_info).collect())
    }

    /// The ingress permissions of every security group in `vpc_id`, by group id.
    pub async fn ingress_by_group(&self, vpc_id: &str) -> Result<BTreeMap<String, Vec<IngressPermission>>, AwsError> {
        let groups: Vec<_> = self
            .ec2
            .describe_security_groups()
            .filters(filter("vpc-id", &[vpc_id]))
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| self.classify("ec2:DescribeSecurityGroups", e))?;
        Ok(groups
            .iter()
            .filter_map(|g| {
                let perms = g
                    .ip_permissions()
                    .iter()
                    .map(|p| IngressPermission {
                        protocol: p.ip_protocol().unwrap_or("-1").to_owned(),
                        from_port: p.from_port(),
                        to_port: p.to_port(),
                        cidrs: p.ip_ranges().iter().filter_map(|r| r.cidr_ip().map(str::to_owned)).collect(),
                        groups: p
                            .user_id_group_pairs()
                            .iter()
                            .filter_map(|u| u.group_id().map(str::to_owned))
                            .collect(),
                    })
                    .collect();
                Some((g.group_id()?.to_owned(), perms))
            })
            .collect())
    }

    /// Every volume in the region, with its attachments.
    pub async fn all_volumes(&self) -> Result<Vec<VolumeInfo>, AwsError> {
        let volumes: Vec<_> = self
            .ec2
            .describe_volumes()
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| self.classify("ec2:DescribeVolumes", e))?;
        Ok(volumes.iter().map(volume_info).collect())
    }

    /// Every image this account owns, whatever its tags.
    pub async fn own_images(&self) -> Result<Vec<FoundImage>, AwsError> {
        let out = self
            .ec2
            .describe_images()
            .owners("self")
            .send()
            .await
            .map_err(|e| self.classify("ec2:DescribeImages", e))?;
        Ok(out.images().iter().map(found_image).collect())
    }

    /// An instance's user data, decoded (empty if it has none).
    pub async fn user_data(&self, instance_id: &str) -> Result<String, AwsError> {
        use base64::Engine as _;
        let out = self
            .ec2
            .describe_instance_attribute()
            .instance_id(instance_id)
            .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
            .send()
            .await
            .map_err(|e| self.classify("ec2:DescribeInstanceAttribute", e))?;
        let b64 = out.user_data().and_then(|u| u.value()).unwrap_or_default();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|e| AwsError::Invalid(format!("the user data of {instance_id} is not base64: {e}")))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}
