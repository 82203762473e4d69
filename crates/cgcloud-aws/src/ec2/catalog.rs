//! What a region offers: instance types, zones, spot prices and the account's attributes.

use crate::{AwsError, Cloud};
use aws_sdk_ec2::types::InstanceType;
use std::collections::BTreeMap;

/// The parts of DescribeInstanceTypes cgcloud uses.
#[derive(Debug, Clone)]
pub struct InstanceTypeInfo {
    pub arches: Vec<String>,
    /// The size (GB) of each instance-store disk, one entry per disk.
    pub instance_store_gb: Vec<u64>,
    pub nvme_instance_store: bool,
    /// Virtual CPUs, and memory in MiB (what an elastic cluster tells its scheduler a worker has).
    pub vcpus: u32,
    pub memory_mib: u64,
}

impl InstanceTypeInfo {
    /// The device names to map instance-store disks to at launch: none on Nitro types.
    pub fn mapped_instance_store(&self) -> Vec<String> {
        if self.nvme_instance_store {
            return Vec::new();
        }
        instance_store_device_names(self.instance_store_gb.len())
    }
}

/// `/dev/sdb`, `/dev/sdc`, … for `n` instance-store disks, leaving out `/dev/sdf`, where a
/// cluster node's persistent volume goes.
pub fn instance_store_device_names(n: usize) -> Vec<String> {
    ('b'..='z').filter(|c| *c != 'f').take(n).map(|c| format!("/dev/sd{c}")).collect()
}

impl Cloud {
    /// What cgcloud needs to know of an instance type; an unknown type is an error.
    pub async fn instance_type_info(&self, instance_type: &str) -> Result<InstanceTypeInfo, AwsError> {
        let out = self
            .ec2
            .describe_instance_types()
            .instance_types(InstanceType::from(instance_type))
            .send()
            .await
            .map_err(|e| self.classify("ec2:DescribeInstanceTypes", e));
        let out = match out {
            Err(e) if e.code().is_some_and(|c| c.starts_with("InvalidInstanceType")) => {
                return Err(AwsError::Invalid(format!(
                    "instance type '{instance_type}' does not exist in region {}",
                    self.region
                )))
            }
            other => other?,
        };
        let Some(info) = out.instance_types().first() else {
            return Err(AwsError::Invalid(format!(
                "instance type '{instance_type}' does not exist in region {}",
                self.region
            )));
        };
        let storage = info.instance_storage_info();
        let disks: Vec<u64> = storage
            .map(|s| s.disks())
            .unwrap_or_default()
            .iter()
            .flat_map(|d| {
                let size = u64::try_from(d.size_in_gb().unwrap_or(1)).unwrap_or(1);
                std::iter::repeat_n(size, usize::try_from(d.count().unwrap_or(0)).unwrap_or(0))
            })
            .collect();
        let nvme = storage
            .and_then(|s| s.nvme_support())
            .is_some_and(|n| *n != aws_sdk_ec2::types::EphemeralNvmeSupport::Unsupported);
        Ok(InstanceTypeInfo {
            arches: info
                .processor_info()
                .map(|p| p.supported_architectures().iter().map(|a| a.as_str().to_owned()).collect())
                .unwrap_or_else(|| vec!["x86_64".to_owned()]),
            instance_store_gb: disks,
            nvme_instance_store: nvme,
            vcpus: info.v_cpu_info().and_then(|v| v.default_v_cpus()).and_then(|v| u32::try_from(v).ok()).unwrap_or(1),
            memory_mib: info
                .memory_info()
                .and_then(|m| m.size_in_mib())
                .and_then(|m| u64::try_from(m).ok())
                .unwrap_or(0),
        })
    }

    /// The names of the region's availability zones.
    pub async fn zones(&self) -> Result<Vec<String>, AwsError> {
        let out = self
            .ec2
            .describe_availability_zones()
            .send()
            .await
            .map_err(|e| self.classify("ec2:DescribeAvailabilityZones", e))?;
        Ok(out.availability_zones().iter().filter_map(|z| z.zone_name().map(str::to_owned)).collect())
    }

    /// Spot prices of an instance type since `since` (all pages), or the latest ones if there
    /// are none in that window.
    pub async fn spot_price_history(
        &self,
        instance_type: &str,
        since: std::time::SystemTime,
    ) -> Result<Vec<cgcloud_core::spot::PricePoint>, AwsError> {
        let fetch = |start: Option<std::time::SystemTime>| async move {
            let mut req = self
                .ec2
                .describe_spot_price_history()
                .instance_types(InstanceType::from(instance_type))
                .product_descriptions("Linux/UNIX");
            if let Some(s) = start {
                req = req.start_time(aws_smithy_types::DateTime::from(s));
            }
            let pages: Vec<_> = req
                .into_paginator()
                .send()
                .collect::<Result<Vec<_>, _>>()
                .await
                .map_err(|e| self.classify("ec2:DescribeSpotPriceHistory", e))?;
            Ok::<_, AwsError>(
                pages
                    .iter()
                    .flat_map(|p| p.spot_price_history())
                    .filter_map(|h| {
                        Some(cgcloud_core::spot::PricePoint {
                            zone: h.availability_zone()?.to_owned(),
                            time: h.timestamp().map(|t| t.secs()).unwrap_or(0),
                            price: h.spot_price()?.parse().ok()?,
                        })
                    })
                    .collect::<Vec<_>>(),
            )
        };
        let recent = fetch(Some(since)).await?;
        if !recent.is_empty() {
            return Ok(recent);
        }
        fetch(None).await
    }

    /// The account's EC2 attributes (e.g. `max-instances`, `supported-platforms`), by name.
    pub async fn account_attributes(&self) -> Result<BTreeMap<String, Vec<String>>, AwsError> {
        let out = self
            .ec2
            .describe_account_attributes()
            .send()
            .await
            .map_err(|e| self.classify("ec2:DescribeAccountAttributes", e))?;
        Ok(out
            .account_attributes()
            .iter()
            .filter_map(|a| {
                let values =
                    a.attribute_values().iter().filter_map(|v| v.attribute_value().map(str::to_owned)).collect();
                Some((a.attribute_name()?.to_owned(), values))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_store_is_mapped_only_on_xen_types_and_never_on_sdf() {
        assert_eq!(instance_store_device_names(2), ["/dev/sdb", "/dev/sdc"]);
        assert_eq!(instance_store_device_names(5), ["/dev/sdb", "/dev/sdc", "/dev/sdd", "/dev/sde", "/dev/sdg"]);
        assert_eq!(instance_store_device_names(24).len(), 24);
        let xen = InstanceTypeInfo {
            arches: vec![],
            instance_store_gb: vec![16, 16],
            nvme_instance_store: false,
            vcpus: 2,
            memory_mib: 4096,
        };
        assert_eq!(xen.mapped_instance_store(), ["/dev/sdb", "/dev/sdc"]);
        let nitro = InstanceTypeInfo { nvme_instance_store: true, ..xen };
        assert!(nitro.mapped_instance_store().is_empty());
    }
}
