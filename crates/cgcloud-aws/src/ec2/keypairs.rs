//! EC2 key pairs: the team's SSH keys as EC2 holds them.

use super::*;
use crate::{AwsError, Cloud};
use aws_sdk_ec2::types::ResourceType;
use cgcloud_core::tags::{self, Tags};

/// A key pair as EC2 reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyPairInfo {
    pub name: String,
    pub fingerprint: String,
    pub key_type: String,
    pub public_key: Option<String>,
    /// The `cgcloud:owner` tag: the user who registered it (see `cgcloud_core::keypairs`).
    pub owner: Option<String>,
}

fn key_info(k: &aws_sdk_ec2::types::KeyPairInfo) -> KeyPairInfo {
    KeyPairInfo {
        name: k.key_name().unwrap_or_default().to_owned(),
        fingerprint: k.key_fingerprint().unwrap_or_default().to_owned(),
        key_type: k.key_type().map(|t| t.as_str().to_owned()).unwrap_or_default(),
        public_key: k.public_key().map(str::to_owned),
        owner: k.tags().iter().find(|t| t.key() == Some(tags::OWNER)).and_then(|t| t.value()).map(str::to_owned),
    }
}

impl Cloud {
    /// A key pair with its public key, or None.
    pub async fn key_pair(&self, name: &str) -> Result<Option<KeyPairInfo>, AwsError> {
        match self.ec2.describe_key_pairs().key_names(name).include_public_key(true).send().await {
            Ok(out) => Ok(out.key_pairs().first().map(key_info)),
            Err(e) => {
                let e = self.classify("ec2:DescribeKeyPairs", e);
                if e.code() == Some("InvalidKeyPair.NotFound") {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Every key pair in the region, with public keys.
    pub async fn key_pairs(&self) -> Result<Vec<KeyPairInfo>, AwsError> {
        let out = self
            .ec2
            .describe_key_pairs()
            .include_public_key(true)
            .send()
            .await
            .map_err(|e| self.classify("ec2:DescribeKeyPairs", e))?;
        Ok(out.key_pairs().iter().map(key_info).collect())
    }

    pub async fn import_key_pair(
        &self,
        name: &str,
        public_key: &str,
        key_tags: &Tags,
    ) -> Result<KeyPairInfo, AwsError> {
        let out = self
            .ec2
            .import_key_pair()
            .key_name(name)
            .public_key_material(aws_smithy_types::Blob::new(public_key.as_bytes()))
            .set_tag_specifications((!key_tags.is_empty()).then(|| vec![tag_spec(ResourceType::KeyPair, key_tags)]))
            .send()
            .await
            .map_err(|e| self.classify("ec2:ImportKeyPair", e))?;
        Ok(KeyPairInfo {
            name: out.key_name().unwrap_or(name).to_owned(),
            fingerprint: out.key_fingerprint().unwrap_or_default().to_owned(),
            key_type: String::new(),
            public_key: Some(public_key.to_owned()),
            owner: key_tags.get(tags::OWNER).cloned(),
        })
    }

    pub async fn delete_key_pair(&self, name: &str) -> Result<(), AwsError> {
        self.ec2.delete_key_pair().key_name(name).send().await.map_err(|e| self.classify("ec2:DeleteKeyPair", e))?;
        Ok(())
    }
}
