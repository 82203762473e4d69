//! What cgcloud knows about a box (an EC2 instance it manages) and an image, decoded from tags,
//! and how a single box is selected from a role's boxes.

use crate::tags::Tags;
use serde::Serialize;
use std::collections::BTreeMap;

/// A box as read from EC2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BoxInfo {
    pub instance_id: String,
    pub role: String,
    pub namespace: String,
    pub cluster: Option<String>,
    pub ordinal: Option<u32>,
    pub leader: Option<String>,
    pub state: String,
    pub instance_type: String,
    pub zone: Option<String>,
    pub private_ip: Option<String>,
    pub public_ip: Option<String>,
    pub private_dns: Option<String>,
    /// RFC 3339, UTC.
    pub launch_time: String,
    pub image_id: Option<String>,
    pub key_name: Option<String>,
    pub generation: u32,
    pub spot: bool,
    /// EC2's reason, when a spot interruption stopped or terminated it
    /// (`Server.SpotInstanceTermination: …`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interrupted: Option<String>,
    pub host_key: Option<String>,
    pub admin_user: Option<String>,
    /// The name of the box's IAM instance profile, if any.
    pub instance_profile: Option<String>,
    /// The persistent volume attached to a standalone box (`create -e`), if any.
    pub persistent_volume: Option<String>,
    /// Autostop, as `30m stop` or `2h terminate`, if on.
    pub autostop: Option<String>,
    pub options: BTreeMap<String, String>,
    #[serde(skip)]
    pub tags: Tags,
}

impl BoxInfo {
    /// The sort key that gives boxes their ordinals: oldest first.
    pub fn sort_key(&self) -> (String, String, String) {
        (self.launch_time.clone(), self.private_ip.clone().unwrap_or_default(), self.instance_id.clone())
    }

    pub fn is_alive(&self) -> bool {
        !matches!(self.state.as_str(), "terminated" | "shutting-down")
    }
}

/// A cgcloud image as read from EC2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageInfo {
    pub image_id: String,
    pub name: String,
    pub role: String,
    pub state: String,
    pub creation_date: String,
    pub generation: u32,
    pub role_hash: Option<String>,
    pub snapshot_ids: Vec<String>,
    pub source_instance: Option<String>,
    #[serde(skip)]
    pub tags: Tags,
}

/// How the user narrowed down the boxes of a role.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    pub cluster: Option<String>,
    pub ordinal: Option<i64>,
    pub instance_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    #[error("there is no box of role '{role}' in namespace '{namespace}'{}", cluster_suffix(.cluster))]
    NoBox { role: String, namespace: String, cluster: Option<String> },
    #[error("{} boxes of role '{role}' match; pick one with --ordinal/-o or --instance-id/-I:\n{}", .candidates.len(), list(.candidates))]
    Ambiguous { role: String, candidates: Vec<String> },
    #[error(
        "ordinal {ordinal} is out of range: role '{role}' has {count} box(es) (ordinals 0..{count} or -{count}..-1)"
    )]
    OrdinalOutOfRange { role: String, ordinal: i64, count: usize },
    #[error("instance '{instance_id}' is not a box of role '{role}' in namespace '{namespace}'{}", cluster_suffix(.cluster))]
    NotInSelection { instance_id: String, role: String, namespace: String, cluster: Option<String> },
}

fn cluster_suffix(cluster: &Option<String>) -> String {
    cluster.as_ref().map(|c| format!(" and cluster '{c}'")).unwrap_or_default()
}

fn list(candidates: &[String]) -> String {
    candidates.iter().map(|c| format!("  {c}")).collect::<Vec<_>>().join("\n")
}

/// Describes a box in one line, for candidate lists.
pub fn describe_box(ordinal: usize, b: &BoxInfo) -> String {
    format!(
        "-o {ordinal}  {}  {}  {}  launched {}{}",
        b.instance_id,
        b.state,
        b.private_ip.as_deref().unwrap_or("-"),
        b.launch_time,
        b.cluster.as_ref().map(|c| format!("  cluster {c}")).unwrap_or_default()
    )
}

/// Sorts boxes into ordinal order, dropping terminated ones.
pub fn ordered_alive(mut boxes: Vec<BoxInfo>) -> Vec<BoxInfo> {
    boxes.retain(BoxInfo::is_alive);
    boxes.sort_by_key(BoxInfo::sort_key);
    boxes
}

/// Picks exactly one box of `role` from `boxes` (all boxes of the role in the namespace).
/// Without an ordinal or instance id, more than one candidate is an error that lists them.
pub fn select_box(role: &str, namespace: &str, boxes: Vec<BoxInfo>, sel: &Selector) -> Result<BoxInfo, SelectError> {
    let mut candidates = ordered_alive(boxes);
    if let Some(cluster) = &sel.cluster {
        candidates.retain(|b| b.cluster.as_deref() == Some(cluster) || b.instance_id == *cluster);
    }
    if let Some(id) = &sel.instance_id {
        return candidates.into_iter().find(|b| &b.instance_id == id).ok_or_else(|| SelectError::NotInSelection {
            instance_id: id.clone(),
            role: role.to_owned(),
            namespace: namespace.to_owned(),
            cluster: sel.cluster.clone(),
        });
    }
    if candidates.is_empty() {
        return Err(SelectError::NoBox {
            role: role.to_owned(),
            namespace: namespace.to_owned(),
            cluster: sel.cluster.clone(),
        });
    }
    match sel.ordinal {
        Some(o) => {
            let count = candidates.len();
            let index = if o < 0 { count as i64 + o } else { o };
            if index < 0 || index >= count as i64 {
                return Err(SelectError::OrdinalOutOfRange { role: role.to_owned(), ordinal: o, count });
            }
            Ok(candidates.swap_remove(index as usize))
        }
        None if candidates.len() == 1 => Ok(candidates.swap_remove(0)),
        None => Err(SelectError::Ambiguous {
            role: role.to_owned(),
            candidates: candidates.iter().enumerate().map(|(i, b)| describe_box(i, b)).collect(),
        }),
    }
}

#[cfg(test)]
pub(crate) fn test_box(id: &str, launch: &str, state: &str) -> BoxInfo {
    BoxInfo {
        instance_id: id.into(),
        role: "r".into(),
        namespace: "/ns/".into(),
        cluster: None,
        ordinal: None,
        leader: None,
        state: state.into(),
        instance_type: "t3.micro".into(),
        zone: None,
        private_ip: Some("10.0.0.1".into()),
        public_ip: None,
        private_dns: None,
        launch_time: launch.into(),
        image_id: None,
        key_name: None,
        generation: 0,
        spot: false,
        interrupted: None,
        host_key: None,
        admin_user: None,
        instance_profile: None,
        persistent_volume: None,
        autostop: None,
        options: BTreeMap::new(),
        tags: Tags::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boxes() -> Vec<BoxInfo> {
        vec![
            test_box("i-b", "2026-01-02T00:00:00Z", "running"),
            test_box("i-a", "2026-01-01T00:00:00Z", "stopped"),
            test_box("i-dead", "2026-01-01T12:00:00Z", "terminated"),
        ]
    }

    #[test]
    fn ambiguity_is_an_error_listing_candidates() {
        let err = select_box("r", "/ns/", boxes(), &Selector::default()).unwrap_err();
        let SelectError::Ambiguous { candidates, .. } = &err else { panic!("{err}") };
        assert_eq!(candidates.len(), 2);
        assert!(candidates[0].contains("i-a") && candidates[1].contains("i-b"));
        assert!(err.to_string().contains("--ordinal"));
    }

    #[test]
    fn ordinals_count_from_oldest_and_from_the_end() {
        let sel = |o| Selector { ordinal: Some(o), ..Default::default() };
        assert_eq!(select_box("r", "/ns/", boxes(), &sel(0)).unwrap().instance_id, "i-a");
        assert_eq!(select_box("r", "/ns/", boxes(), &sel(-1)).unwrap().instance_id, "i-b");
        assert!(matches!(
            select_box("r", "/ns/", boxes(), &sel(2)),
            Err(SelectError::OrdinalOutOfRange { count: 2, .. })
        ));
        assert!(matches!(select_box("r", "/ns/", boxes(), &sel(-3)), Err(SelectError::OrdinalOutOfRange { .. })));
    }

    #[test]
    fn instance_id_and_cluster() {
        let by_id = Selector { instance_id: Some("i-b".into()), ..Default::default() };
        assert_eq!(select_box("r", "/ns/", boxes(), &by_id).unwrap().instance_id, "i-b");
        let dead = Selector { instance_id: Some("i-dead".into()), ..Default::default() };
        assert!(matches!(select_box("r", "/ns/", boxes(), &dead), Err(SelectError::NotInSelection { .. })));
        let mut bs = boxes();
        bs[0].cluster = Some("c1".into());
        let by_cluster = Selector { cluster: Some("c1".into()), ..Default::default() };
        assert_eq!(select_box("r", "/ns/", bs, &by_cluster).unwrap().instance_id, "i-b");
        let none = select_box("r", "/ns/", vec![], &Selector::default()).unwrap_err();
        assert!(none.to_string().contains("no box of role 'r' in namespace '/ns/'"));
    }
}
