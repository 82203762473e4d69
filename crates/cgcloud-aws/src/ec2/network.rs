//! Where boxes go and who may reach them: the VPC and subnet of a launch, and security groups
//! with their rules.

use super::*;
use crate::{AwsError, Cloud};
use aws_sdk_ec2::types::{IpPermission, IpRange, ResourceType, UserIdGroupPair};
use cgcloud_core::tags::{self, Tags};
use std::collections::BTreeMap;

/// Network placement resolved for a launch.
#[derive(Debug, Clone)]
pub struct Network {
    pub vpc_id: String,
    pub subnet_id: Option<String>,
    pub zone: Option<String>,
}

/// Where a security-group rule admits traffic from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SgSource {
    Cidr(String),
    /// The group itself (cluster-internal traffic).
    OwnGroup,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SgRule {
    /// `tcp`, `udp`, `icmp` or `-1`.
    pub protocol: String,
    pub from_port: i32,
    pub to_port: i32,
    pub source: SgSource,
    pub description: String,
}

impl Cloud {
    /// Resolves where a launch goes: the given subnet, or the default VPC (and, with a zone,
    /// its default subnet there).
    pub async fn network(&self, subnet: Option<&str>, zone: Option<&str>) -> Result<Network, AwsError> {
        if let Some(subnet_id) = subnet {
            let out = self.ec2.describe_subnets().subnet_ids(subnet_id).send().await;
            let out = match out {
                Ok(o) => o,
                Err(e) => {
                    let e = self.classify("ec2:DescribeSubnets", e);
                    if e.code().is_some_and(|c| c.starts_with("InvalidSubnet")) {
                        return Err(AwsError::Invalid(format!(
                            "subnet '{subnet_id}' does not exist in region {}",
                            self.region
                        )));
                    }
                    return Err(e);
                }
            };
            let s = out.subnets().first().ok_or_else(|| {
                AwsError::Invalid(format!("subnet '{subnet_id}' does not exist in region {}", self.region))
            })?;
            let subnet_zone = s.availability_zone().map(str::to_owned);
            if let (Some(z), Some(sz)) = (zone, subnet_zone.as_deref()) {
                if z != sz {
                    return Err(AwsError::Invalid(format!("subnet '{subnet_id}' is in zone {sz}, not in {z}")));
                }
            }
            return Ok(Network {
                vpc_id: s.vpc_id().unwrap_or_default().to_owned(),
                subnet_id: Some(subnet_id.to_owned()),
                zone: subnet_zone,
            });
        }
        let vpcs = self
            .ec2
            .describe_vpcs()
            .filters(filter("is-default", &["true"]))
            .send()
            .await
            .map_err(|e| self.classify("ec2:DescribeVpcs", e))?;
        let vpc_id = vpcs.vpcs().first().and_then(|v| v.vpc_id()).map(str::to_owned).ok_or_else(|| {
            AwsError::Invalid(format!(
                "region {} has no default VPC; pass --subnet SUBNET_ID (or set `subnet` in your cgcloud profile)",
                self.region
            ))
        })?;
        Ok(Network { vpc_id, subnet_id: None, zone: zone.map(str::to_owned) })
    }

    /// Finds or creates the security group `name` in `vpc_id` and makes sure `rules` are
    /// authorized. Returns (group id, whether it was created now).
    pub async fn ensure_security_group(
        &self,
        name: &str,
        description: &str,
        vpc_id: &str,
        group_tags: &Tags,
        rules: &[SgRule],
    ) -> Result<(String, bool), AwsError> {
        let existing = self.find_security_group(name, vpc_id).await?;
        let (group_id, created) = match existing {
            Some(id) => (id, false),
            None => {
                let created = self
                    .ec2
                    .create_security_group()
                    .group_name(name)
                    .description(description)
                    .vpc_id(vpc_id)
                    .tag_specifications(tag_spec(ResourceType::SecurityGroup, group_tags))
                    .send()
                    .await;
                match created {
                    Ok(out) => (out.group_id().unwrap_or_default().to_owned(), true),
                    Err(e) => {
                        let e = self.classify("ec2:CreateSecurityGroup", e);
                        // Another launch created it at the same moment.
                        if e.code() == Some("InvalidGroup.Duplicate") {
                            let id = self.find_security_group(name, vpc_id).await?.ok_or(e)?;
                            (id, false)
                        } else {
                            return Err(e);
                        }
                    }
                }
            }
        };
        for rule in rules {
            let mut perm =
                IpPermission::builder().ip_protocol(&rule.protocol).from_port(rule.from_port).to_port(rule.to_port);
            perm = match &rule.source {
                SgSource::Cidr(c) => {
                    perm.ip_ranges(IpRange::builder().cidr_ip(c).description(&rule.description).build())
                }
                SgSource::OwnGroup => perm.user_id_group_pairs(
                    UserIdGroupPair::builder().group_id(&group_id).description(&rule.description).build(),
                ),
            };
            let res = self
                .ec2
                .authorize_security_group_ingress()
                .group_id(&group_id)
                .ip_permissions(perm.build())
                .send()
                .await;
            if let Err(e) = res {
                let e = self.classify("ec2:AuthorizeSecurityGroupIngress", e);
                if e.code() != Some("InvalidPermission.Duplicate") {
                    return Err(e);
                }
            }
        }
        Ok((group_id, created))
    }

    pub async fn find_security_group(&self, name: &str, vpc_id: &str) -> Result<Option<String>, AwsError> {
        let out = self
            .ec2
            .describe_security_groups()
            .filters(filter("group-name", &[name]))
            .filters(filter("vpc-id", &[vpc_id]))
            .send()
            .await
            .map_err(|e| self.classify("ec2:DescribeSecurityGroups", e))?;
        Ok(out.security_groups().first().and_then(|g| g.group_id()).map(str::to_owned))
    }

    /// Security groups tagged with `namespace`: (id, name, vpc).
    pub async fn namespace_security_groups(&self, namespace: &str) -> Result<Vec<(String, String, String)>, AwsError> {
        let pages: Vec<_> = self
            .ec2
            .describe_security_groups()
            .filters(tag_filter(tags::NAMESPACE, namespace))
            .into_paginator()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| self.classify("ec2:DescribeSecurityGroups", e))?;
        Ok(pages
            .iter()
            .flat_map(|p| p.security_groups())
            .filter(|g| to_tags(g.tags()).get(tags::NAMESPACE).map(String::as_str) == Some(namespace))
            .map(|g| {
                (
                    g.group_id().unwrap_or_default().to_owned(),
                    g.group_name().unwrap_or_default().to_owned(),
                    g.vpc_id().unwrap_or_default().to_owned(),
                )
            })
            .collect())
    }

    /// Security group ids used by any non-terminated instance.
    pub async fn security_groups_in_use(&self, group_ids: &[String]) -> Result<Vec<String>, AwsError> {
        Ok(self.security_group_users(group_ids).await?.into_keys().collect())
    }

    /// Of `group_ids`, the groups that instances (not terminated) use, with those instances.
    pub async fn security_group_users(&self, group_ids: &[String]) -> Result<BTreeMap<String, Vec<String>>, AwsError> {
        let mut users: BTreeMap<String, Vec<String>> = BTreeMap::new();
        if group_ids.is_empty() {
            return Ok(users);
        }
        let refs: Vec<&str> = group_ids.iter().map(String::as_str).collect();
        let pages: Vec<_> = self
            .ec2
            .describe_instances()
            .filters(filter("instance.group-id", &refs))
            .filters(filter("instance-state-name", &["pending", "running", "stopping", "stopped", "shutting-down"]))
            .into_paginator()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| self.classify("ec2:DescribeInstances", e))?;
        for i in pages.iter().flat_map(|p| p.reservations()).flat_map(|r| r.instances()) {
            let id = i.instance_id().unwrap_or_default().to_owned();
            for g in i.security_groups().iter().filter_map(|g| g.group_id()) {
                if group_ids.iter().any(|x| x == g) {
                    users.entry(g.to_owned()).or_default().push(id.clone());
                }
            }
        }
        Ok(users)
    }

    pub async fn delete_security_group(&self, group_id: &str) -> Result<(), AwsError> {
        self.ec2
            .delete_security_group()
            .group_id(group_id)
            .send()
            .await
            .map_err(|e| self.classify("ec2:DeleteSecurityGroup", e))?;
        Ok(())
    }

    /// The subnet of `vpc_id` in `zone`, if any.
    pub async fn subnet_in_zone(&self, vpc_id: &str, zone: &str) -> Result<Option<String>, AwsError> {
        let out = self
            .ec2
            .describe_subnets()
            .filters(filter("vpc-id", &[vpc_id]))
            .filters(filter("availability-zone", &[zone]))
            .send()
            .await
            .map_err(|e| self.classify("ec2:DescribeSubnets", e))?;
        Ok(out.subnets().first().and_then(|s| s.subnet_id()).map(str::to_owned))
    }

    /// The subnets of `vpc_id` as (zone, subnet id), by zone.
    pub async fn vpc_subnets(&self, vpc_id: &str) -> Result<Vec<(String, String)>, AwsError> {
        let out = self
            .ec2
            .describe_subnets()
            .filters(filter("vpc-id", &[vpc_id]))
            .send()
            .await
            .map_err(|e| self.classify("ec2:DescribeSubnets", e))?;
        let mut v: Vec<(String, String)> = out
            .subnets()
            .iter()
            .filter_map(|s| Some((s.availability_zone()?.to_owned(), s.subnet_id()?.to_owned())))
            .collect();
        v.sort();
        Ok(v)
    }
}
