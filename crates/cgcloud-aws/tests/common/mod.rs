//! What the crate's tests against moto share: a client of the test environment's moto.

use cgcloud_aws::{Cloud, ConnectSettings};
use testkit::TestEnv;

/// A `Cloud` on `e`'s moto, with its dummy credentials and no retries.
pub async fn connect(e: &TestEnv) -> Cloud {
    Cloud::connect(&ConnectSettings {
        region: Some(e.region.clone()),
        endpoint: Some(e.moto_endpoint.clone()),
        access_key_id: Some("testing".into()),
        secret_access_key: Some("testing".into()),
        max_attempts: Some(1),
        ..Default::default()
    })
    .await
    .expect("connect to moto")
}
