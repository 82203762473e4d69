//! IAM role policies against moto: a second inline policy beside cgcloud's own is put,
//! read back and deleted, and deleting it again is no error.

#![allow(clippy::unwrap_used)] // tests may unwrap
mod common;
use cgcloud_core::tags::Tags;
use testkit::TestEnv;

const OWN: &str =
    r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"ec2:DescribeTags","Resource":"*"}]}"#;
const EXTRA: &str =
    r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"ec2:RunInstances","Resource":"*"}]}"#;

#[tokio::test]
async fn role_policies_are_put_and_deleted_once_or_twice() {
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    let e = TestEnv::new("/bin/true");
    let cloud = common::connect(&e).await;
    let role = format!("policies-{}", e.region);
    cloud.ensure_instance_profile(&role, "/cgcloud/policies/", OWN, &Tags::new()).await.unwrap();
    let parsed = |docs: Vec<String>| -> Vec<serde_json::Value> {
        docs.iter().map(|d| serde_json::from_str(d).unwrap()).collect()
    };
    let (own, extra): (serde_json::Value, serde_json::Value) =
        (serde_json::from_str(OWN).unwrap(), serde_json::from_str(EXTRA).unwrap());

    cloud.put_role_policy(&role, "scaler", EXTRA).await.unwrap();
    let docs = parsed(cloud.role_policy_documents(&role).await.unwrap());
    assert!(docs.contains(&own) && docs.contains(&extra), "{docs:?}");

    cloud.delete_role_policy(&role, "scaler").await.unwrap();
    assert_eq!(parsed(cloud.role_policy_documents(&role).await.unwrap()), vec![own]);
    cloud.delete_role_policy(&role, "scaler").await.unwrap();
    cloud.delete_role_policy("no-such-role", "scaler").await.unwrap();
}
