//! IAM roles and instance profiles for boxes. Each role of a namespace gets one IAM role and
//! one instance profile with the same namespaced name, under the IAM path `/cgcloud/<ns>/`, so
//! that listing a namespace's IAM resources is an exact path comparison.

use crate::{AwsError, Cloud};
use aws_sdk_iam::types::Tag;
use cgcloud_core::tags::Tags;
use std::collections::BTreeSet;

const TRUST_POLICY: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
/// The single inline policy cgcloud manages on each role.
pub const POLICY_NAME: &str = "cgcloud";

fn iam_tags(tags: &Tags) -> Vec<Tag> {
    tags.iter().filter_map(|(k, v)| Tag::builder().key(k).value(v).build().ok()).collect()
}

impl Cloud {
    /// Makes sure the IAM role `name` (with exactly `policy` as its cgcloud inline policy) and
    /// the instance profile `name` holding it exist. Returns whether anything was created.
    pub async fn ensure_instance_profile(
        &self,
        name: &str,
        path: &str,
        policy: &str,
        tags: &Tags,
    ) -> Result<bool, AwsError> {
        let mut created = false;
        match self.iam.get_role().role_name(name).send().await {
            Ok(_) => {}
            Err(e) => {
                let e = self.classify("iam:GetRole", e);
                if e.code() != Some("NoSuchEntity") {
                    return Err(e);
                }
                let res = self
                    .iam
                    .create_role()
                    .role_name(name)
                    .path(path)
                    .assume_role_policy_document(TRUST_POLICY)
                    .description("cgcloud box role")
                    .set_tags(Some(iam_tags(tags)))
                    .send()
                    .await;
                if let Err(e) = res {
                    let e = self.classify("iam:CreateRole", e);
                    if e.code() != Some("EntityAlreadyExists") {
                        return Err(e);
                    }
                }
                created = true;
            }
        }
        // Only write the policy when it differs, to stay clear of IAM's write rate limits.
        let current = self.iam.get_role_policy().role_name(name).policy_name(POLICY_NAME).send().await;
        let same = match current {
            Ok(out) => {
                let doc = percent_decode(out.policy_document());
                serde_json::from_str::<serde_json::Value>(&doc).ok()
                    == serde_json::from_str::<serde_json::Value>(policy).ok()
            }
            Err(_) => false,
        };
        if !same {
            self.iam
                .put_role_policy()
                .role_name(name)
                .policy_name(POLICY_NAME)
                .policy_document(policy)
                .send()
                .await
                .map_err(|e| self.classify("iam:PutRolePolicy", e))?;
        }
        let profile_roles = match self.iam.get_instance_profile().instance_profile_name(name).send().await {
            Ok(out) => out
                .instance_profile()
                .map(|p| p.roles().iter().map(|r| r.role_name().to_owned()).collect::<Vec<_>>())
                .unwrap_or_default(),
            Err(e) => {
                let e = self.classify("iam:GetInstanceProfile", e);
                if e.code() != Some("NoSuchEntity") {
                    return Err(e);
                }
                let res = self
                    .iam
                    .create_instance_profile()
                    .instance_profile_name(name)
                    .path(path)
                    .set_tags(Some(iam_tags(tags)))
                    .send()
                    .await;
                if let Err(e) = res {
                    let e = self.classify("iam:CreateInstanceProfile", e);
                    if e.code() != Some("EntityAlreadyExists") {
                        return Err(e);
                    }
                }
                created = true;
                Vec::new()
            }
        };
        for other in profile_roles.iter().filter(|r| r.as_str() != name) {
            self.iam
                .remove_role_from_instance_profile()
                .instance_profile_name(name)
                .role_name(other)
                .send()
                .await
                .map_err(|e| self.classify("iam:RemoveRoleFromInstanceProfile", e))?;
        }
        if !profile_roles.iter().any(|r| r == name) {
            let added = self
                .iam
                .add_role_to_instance_profile()
                .instance_profile_name(name)
                .role_name(name)
                .send()
                .await
                .map_err(|e| self.classify("iam:AddRoleToInstanceProfile", e));
            if let Err(e) = added {
                // IAM is global: a launch elsewhere (another region, another teammate) may have
                // added the role at the same moment.
                let now = self
                    .iam
                    .get_instance_profile()
                    .instance_profile_name(name)
                    .send()
                    .await
                    .map_err(|e| self.classify("iam:GetInstanceProfile", e))?;
                let has = now.instance_profile().is_some_and(|p| p.roles().iter().any(|r| r.role_name() == name));
                if !has {
                    return Err(e);
                }
            }
        }
        Ok(created)
    }

    /// Sets inline policy `policy_name` of role `role` to `document` (creating or replacing it).
    pub async fn put_role_policy(&self, role: &str, policy_name: &str, document: &str) -> Result<(), AwsError> {
        self.iam
            .put_role_policy()
            .role_name(role)
            .policy_name(policy_name)
            .policy_document(document)
            .send()
            .await
            .map_err(|e| self.classify("iam:PutRolePolicy", e))?;
        Ok(())
    }

    /// Deletes inline policy `policy_name` of role `role`. A policy (or role) that is already
    /// gone is not an error, so rollback and teardown can both try.
    pub async fn delete_role_policy(&self, role: &str, policy_name: &str) -> Result<(), AwsError> {
        match self.iam.delete_role_policy().role_name(role).policy_name(policy_name).send().await {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = self.classify("iam:DeleteRolePolicy", e);
                if e.code() == Some("NoSuchEntity") {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    /// The ARN of instance profile `name` (what RunInstances callers such as the Jenkins EC2
    /// plugin name a profile by), or None if it does not exist.
    pub async fn instance_profile_arn(&self, name: &str) -> Result<Option<String>, AwsError> {
        match self.iam.get_instance_profile().instance_profile_name(name).send().await {
            Ok(out) => Ok(out.instance_profile().map(|p| p.arn().to_owned())),
            Err(e) => {
                let e = self.classify("iam:GetInstanceProfile", e);
                if e.code() == Some("NoSuchEntity") {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// The (first) role of instance profile `name` and that role's ARN, or None if the profile
    /// does not exist or has no role.
    pub async fn instance_profile_role(&self, name: &str) -> Result<Option<(String, String)>, AwsError> {
        match self.iam.get_instance_profile().instance_profile_name(name).send().await {
            Ok(out) => Ok(out
                .instance_profile()
                .and_then(|p| p.roles().first())
                .map(|r| (r.role_name().to_owned(), r.arn().to_owned()))),
            Err(e) => {
                let e = self.classify("iam:GetInstanceProfile", e);
                if e.code() == Some("NoSuchEntity") {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// The user names in an IAM group.
    pub async fn group_members(&self, group: &str) -> Result<Vec<String>, AwsError> {
        // GetGroup returns at most 100 users a page: follow the marker to the end.
        let mut users = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let out = self.iam.get_group().group_name(group).set_marker(marker.take()).send().await;
            match out {
                Ok(o) => {
                    users.extend(o.users().iter().map(|u| u.user_name().to_owned()));
                    match o.marker().filter(|_| o.is_truncated()) {
                        Some(m) => marker = Some(m.to_owned()),
                        None => return Ok(users),
                    }
                }
                Err(e) => {
                    let e = self.classify("iam:GetGroup", e);
                    return if e.code() == Some("NoSuchEntity") { Ok(Vec::new()) } else { Err(e) };
                }
            }
        }
    }

    /// The IAM roles whose path starts with `prefix` (a namespace's and those below it).
    async fn roles_under(&self, prefix: &str) -> Result<Vec<aws_sdk_iam::types::Role>, AwsError> {
        self.iam
            .list_roles()
            .path_prefix(prefix)
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| self.classify("iam:ListRoles", e))
    }

    /// The instance profiles whose path starts with `prefix`.
    async fn profiles_under(&self, prefix: &str) -> Result<Vec<aws_sdk_iam::types::InstanceProfile>, AwsError> {
        self.iam
            .list_instance_profiles()
            .path_prefix(prefix)
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| self.classify("iam:ListInstanceProfiles", e))
    }

    /// The paths of the IAM roles and instance profiles under `prefix`, itself included.
    pub async fn iam_paths_under(&self, prefix: &str) -> Result<BTreeSet<String>, AwsError> {
        let mut paths: BTreeSet<String> = self.roles_under(prefix).await?.iter().map(|r| r.path().to_owned()).collect();
        paths.extend(self.profiles_under(prefix).await?.iter().map(|p| p.path().to_owned()));
        Ok(paths)
    }

    /// The IAM roles whose path is exactly `path`, with their creation time (RFC 3339) and tags.
    pub async fn roles_with_tags(&self, path: &str) -> Result<Vec<(String, String, Tags)>, AwsError> {
        let roles = self.roles_under(path).await?;
        let mut out = Vec::new();
        for r in roles.iter().filter(|r| r.path() == path) {
            let tags = self
                .iam
                .list_role_tags()
                .role_name(r.role_name())
                .send()
                .await
                .map_err(|e| self.classify("iam:ListRoleTags", e))?;
            let t: Tags = tags.tags().iter().map(|t| (t.key().to_owned(), t.value().to_owned())).collect();
            let created = r.create_date().fmt(aws_smithy_types::date_time::Format::DateTime).unwrap_or_default();
            out.push((r.role_name().to_owned(), created, t));
        }
        Ok(out)
    }

    /// Removes tag `key` from the IAM role and the instance profile named `name`.
    pub async fn untag_role_and_profile(&self, name: &str, key: &str) -> Result<(), AwsError> {
        self.iam
            .untag_role()
            .role_name(name)
            .tag_keys(key)
            .send()
            .await
            .map_err(|e| self.classify("iam:UntagRole", e))?;
        self.iam
            .untag_instance_profile()
            .instance_profile_name(name)
            .tag_keys(key)
            .send()
            .await
            .map_err(|e| self.classify("iam:UntagInstanceProfile", e))?;
        Ok(())
    }

    /// IAM roles and instance profiles whose path is exactly `path`: (roles, profiles).
    pub async fn iam_in_path(&self, path: &str) -> Result<(Vec<String>, Vec<String>), AwsError> {
        let roles = self.roles_under(path).await?;
        let profiles = self.profiles_under(path).await?;
        Ok((
            roles.iter().filter(|r| r.path() == path).map(|r| r.role_name().to_owned()).collect(),
            profiles.iter().filter(|p| p.path() == path).map(|p| p.instance_profile_name().to_owned()).collect(),
        ))
    }

    /// Deletes an instance profile (after removing its roles).
    pub async fn delete_instance_profile(&self, name: &str) -> Result<(), AwsError> {
        let out = self
            .iam
            .get_instance_profile()
            .instance_profile_name(name)
            .send()
            .await
            .map_err(|e| self.classify("iam:GetInstanceProfile", e))?;
        let roles: BTreeSet<String> = out
            .instance_profile()
            .map(|p| p.roles().iter().map(|r| r.role_name().to_owned()).collect())
            .unwrap_or_default();
        for role in roles {
            self.iam
                .remove_role_from_instance_profile()
                .instance_profile_name(name)
                .role_name(role)
                .send()
                .await
                .map_err(|e| self.classify("iam:RemoveRoleFromInstanceProfile", e))?;
        }
        self.iam
            .delete_instance_profile()
            .instance_profile_name(name)
            .send()
            .await
            .map_err(|e| self.classify("iam:DeleteInstanceProfile", e))?;
        Ok(())
    }

    /// The names of role `name`'s inline policies.
    async fn inline_policy_names(&self, name: &str) -> Result<Vec<String>, AwsError> {
        self.iam
            .list_role_policies()
            .role_name(name)
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| self.classify("iam:ListRolePolicies", e))
    }

    /// Every policy document of role `name`, decoded: its inline policies and the default
    /// version of each managed policy attached to it (what IAM evaluates for its sessions).
    pub async fn role_policy_documents(&self, name: &str) -> Result<Vec<String>, AwsError> {
        let mut docs = Vec::new();
        for p in self.inline_policy_names(name).await? {
            let out = self
                .iam
                .get_role_policy()
                .role_name(name)
                .policy_name(p)
                .send()
                .await
                .map_err(|e| self.classify("iam:GetRolePolicy", e))?;
            docs.push(percent_decode(out.policy_document()));
        }
        let attached: Vec<_> = self
            .iam
            .list_attached_role_policies()
            .role_name(name)
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| self.classify("iam:ListAttachedRolePolicies", e))?;
        for p in attached {
            let arn = p.policy_arn().unwrap_or_default();
            let policy =
                self.iam.get_policy().policy_arn(arn).send().await.map_err(|e| self.classify("iam:GetPolicy", e))?;
            let version = policy.policy().and_then(|p| p.default_version_id()).unwrap_or("v1");
            let out = self
                .iam
                .get_policy_version()
                .policy_arn(arn)
                .version_id(version)
                .send()
                .await
                .map_err(|e| self.classify("iam:GetPolicyVersion", e))?;
            docs.push(percent_decode(out.policy_version().and_then(|v| v.document()).unwrap_or_default()));
        }
        Ok(docs)
    }

    /// Deletes an IAM role after deleting its inline policies and detaching it from profiles.
    pub async fn delete_role(&self, name: &str) -> Result<(), AwsError> {
        for p in self.inline_policy_names(name).await? {
            self.iam
                .delete_role_policy()
                .role_name(name)
                .policy_name(p)
                .send()
                .await
                .map_err(|e| self.classify("iam:DeleteRolePolicy", e))?;
        }
        let profiles: Vec<_> = self
            .iam
            .list_instance_profiles_for_role()
            .role_name(name)
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| self.classify("iam:ListInstanceProfilesForRole", e))?;
        for p in profiles {
            self.iam
                .remove_role_from_instance_profile()
                .instance_profile_name(p.instance_profile_name())
                .role_name(name)
                .send()
                .await
                .map_err(|e| self.classify("iam:RemoveRoleFromInstanceProfile", e))?;
        }
        self.iam.delete_role().role_name(name).send().await.map_err(|e| self.classify("iam:DeleteRole", e))?;
        Ok(())
    }
}

/// IAM returns policy documents URL-encoded.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        if let (b'%', Some(Ok(b))) = (bytes[i], hex.map(|h| u8::from_str_radix(h, 16))) {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use crate::{Cloud, ConnectSettings};

    #[tokio::test]
    async fn groups_of_more_than_a_page_are_read_to_the_end() {
        let settings = ConnectSettings {
            region: Some("us-west-2".into()),
            endpoint: Some(testkit::fake_iam_with_big_group("big", 230)),
            access_key_id: Some("a".into()),
            secret_access_key: Some("b".into()),
            max_attempts: Some(1),
            ..Default::default()
        };
        let cloud = Cloud::connect(&settings).await.unwrap();
        let users = cloud.group_members("big").await.unwrap();
        assert_eq!(users.len(), 230);
        assert_eq!(users.last().map(String::as_str), Some("user229"));
    }

    #[test]
    fn decodes_policies() {
        assert_eq!(super::percent_decode("%7B%22a%22%3A1%7D"), r#"{"a":1}"#);
        assert_eq!(super::percent_decode(r#"{"a":1}"#), r#"{"a":1}"#);
    }
}
