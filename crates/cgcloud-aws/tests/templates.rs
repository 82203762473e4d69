//! Launch templates against moto (through the local cloud's moto launcher): what a launch from
//! a template gets, the namespace listing, the facts for IAM, and deletion. Each instance is
//! checked by an independent boto3 client.

#![allow(clippy::unwrap_used)] // tests may unwrap
use cgcloud_aws::ec2::{LaunchSpec, TemplateFacts, TemplateSpec};
use cgcloud_core::tags::Tags;
use serde_json::Value;
use testkit::TestEnv;

mod common;
use common::connect;

const POLICY: &str =
    r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"ec2:DescribeTags","Resource":"*"}]}"#;

fn tags(pairs: &[(&str, &str)]) -> Tags {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// The image, VPC subnet, security group and key pair a template names.
fn world(e: &TestEnv) -> (String, String, String) {
    let out = e.boto3(&format!(
        "ec2 = client('ec2')\n\
         vpc = ec2.create_vpc(CidrBlock='10.9.0.0/16')['Vpc']['VpcId']\n\
         subnet = ec2.create_subnet(VpcId=vpc, CidrBlock='10.9.1.0/24', AvailabilityZone='{zone}')['Subnet']['SubnetId']\n\
         sg = ec2.create_security_group(GroupName='tpl-workers', Description='d', VpcId=vpc)['GroupId']\n\
         ec2.create_key_pair(KeyName='tpl-key')\n\
         image = ec2.describe_images(Owners=['099720109477'])['Images'][0]['ImageId']\n\
         print(json.dumps([image, subnet, sg]))",
        zone = e.zone()
    ));
    let v: Vec<String> = serde_json::from_str(out.trim()).unwrap();
    (v[0].clone(), v[1].clone(), v[2].clone())
}

/// Every instance of `ids` as boto3 sees it, with its user data and its volumes' tags and sizes.
fn observed(e: &TestEnv, ids: &[String]) -> Vec<Value> {
    let out = e.boto3(&format!(
        "ec2 = client('ec2')\n\
         out = []\n\
         for r in ec2.describe_instances(InstanceIds={ids:?})['Reservations']:\n\
         \x20   for i in r['Instances']:\n\
         \x20       ud = ec2.describe_instance_attribute(InstanceId=i['InstanceId'], Attribute='userData')['UserData'].get('Value', '')\n\
         \x20       vols = ec2.describe_volumes(Filters=[{{'Name': 'attachment.instance-id', 'Values': [i['InstanceId']]}}])['Volumes']\n\
         \x20       out.append({{'id': i['InstanceId'], 'image': i['ImageId'], 'type': i['InstanceType'], 'subnet': i.get('SubnetId'),\n\
         \x20           'groups': [g['GroupId'] for g in i['SecurityGroups']], 'key': i.get('KeyName'),\n\
         \x20           'profile': i.get('IamInstanceProfile', {{}}).get('Arn'), 'lifecycle': i.get('InstanceLifecycle'),\n\
         \x20           'tags': {{t['Key']: t['Value'] for t in i.get('Tags', [])}}, 'user_data': base64.b64decode(ud).decode(),\n\
         \x20           'volumes': [{{'size': v['Size'], 'tags': {{t['Key']: t['Value'] for t in v.get('Tags', [])}}}} for v in vols]}})\n\
         print(json.dumps(out))"
    ));
    serde_json::from_str(out.trim()).unwrap()
}

#[tokio::test]
async fn instances_launched_from_a_template_get_all_of_it() {
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    let e = TestEnv::new("/bin/true");
    let cloud = connect(&e).await;
    let (image, subnet, group) = world(&e);
    let profile = format!("tpl-worker-{}", e.region);
    cloud.ensure_instance_profile(&profile, "/cgcloud/tpl/", POLICY, &Tags::new()).await.unwrap();
    let profile_arn = cloud.instance_profile_arn(&profile).await.unwrap().unwrap();

    let instance_tags = tags(&[("cgcloud:namespace", "/tpl/"), ("cgcloud:role", "worker"), ("cgcloud:cluster", "c1")]);
    let volume_tags = tags(&[("cgcloud:namespace", "/tpl/"), ("cgcloud:cluster", "c1")]);
    let spec = TemplateSpec {
        image_id: image.clone(),
        security_group_ids: vec![group.clone()],
        key_name: Some("tpl-key".into()),
        user_data: "#cloud-config\nbootcmd: [echo worker]\n".into(),
        instance_profile_arn: Some(profile_arn.clone()),
        root_volume: Some(("/dev/sda1".into(), 12)),
        // EC2 maps these only on types that have instance stores; moto makes no volume of them.
        instance_store_devices: vec!["/dev/sdb".into()],
        instance_tags: instance_tags.clone(),
        volume_tags: volume_tags.clone(),
    };
    let template_tags = tags(&[("cgcloud:namespace", "/tpl/"), ("cgcloud:cluster", "c1")]);
    let t = cloud.create_launch_template("tpl_c1-workers", &spec, &template_tags).await.unwrap();
    assert!(t.id.starts_with("lt-"), "{t:?}");
    assert_eq!(t.version, 1);
    assert_eq!(t.arn, format!("arn:aws:ec2:{}:123456789012:launch-template/{}", e.region, t.id));
    // The template resource is tagged, and DescribeTags finds it by its lt- id.
    assert_eq!(cloud.resource_tags(&t.id).await.unwrap(), template_tags);

    let launch = LaunchSpec {
        instance_type: "m5.large".into(),
        count: 2,
        subnet_id: Some(subnet.clone()),
        spot: Some(None),
        tags: tags(&[("cgcloud:launch-call", "call-1")]),
        client_token: Some("call-1".into()),
        launch_template: Some(t.clone()),
        ..Default::default()
    };
    let ids: Vec<String> = cloud.run_instances(&launch).await.unwrap().into_iter().map(|i| i.id).collect();
    assert_eq!(ids.len(), 2);
    for i in observed(&e, &ids) {
        assert_eq!(i["image"], image.as_str(), "{i}");
        assert_eq!(i["groups"], serde_json::json!([group]), "{i}");
        assert_eq!(i["key"], "tpl-key", "{i}");
        assert_eq!(i["user_data"], spec.user_data.as_str(), "{i}");
        assert_eq!(i["profile"], profile_arn.as_str(), "{i}");
        assert_eq!(i["type"], "m5.large", "{i}");
        assert_eq!(i["subnet"], subnet.as_str(), "{i}");
        assert_eq!(i["lifecycle"], "spot", "{i}");
        for (k, v) in instance_tags.iter().chain([(&"cgcloud:launch-call".to_owned(), &"call-1".to_owned())]) {
            assert_eq!(i["tags"][k], v.as_str(), "instance tag {k}: {i}");
        }
        // One volume, the template's root (no default root beside it), with the template's
        // volume tags and the request's.
        let volumes = i["volumes"].as_array().unwrap();
        assert_eq!(volumes.len(), 1, "{i}");
        assert_eq!(volumes[0]["size"], 12, "{i}");
        for (k, v) in volume_tags.iter().chain([(&"cgcloud:launch-call".to_owned(), &"call-1".to_owned())]) {
            assert_eq!(volumes[0]["tags"][k], v.as_str(), "volume tag {k}: {i}");
        }
        let id = i["id"].as_str().unwrap();
        assert_eq!(cloud.instance_profile_of(id).await.unwrap().as_deref(), Some(profile_arn.as_str()));
    }

    let listed = cloud.namespace_launch_templates("/tpl/").await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (listed[0].id.as_str(), listed[0].name.as_str(), listed[0].version),
        (t.id.as_str(), "tpl_c1-workers", 1)
    );
    assert_eq!(listed[0].tags, template_tags);
    assert!(cloud.namespace_launch_templates("/other/").await.unwrap().is_empty());

    let facts = TemplateFacts {
        image_id: Some(image.clone()),
        security_group_ids: vec![group.clone()],
        key_name: Some("tpl-key".into()),
        instance_profile_arn: Some(profile_arn.clone()),
        instance_type: None,
        instance_tags,
        volume_tags,
        unmodelled: Vec::new(),
    };
    assert_eq!(cloud.launch_template_facts(&t.id, "1").await.unwrap().as_ref(), Some(&facts));
    assert_eq!(cloud.launch_template_facts(&t.id, "$Latest").await.unwrap().as_ref(), Some(&facts));
    let named = cloud.named_launch_template_facts("tpl_c1-workers", "$Default").await.unwrap();
    assert_eq!(named, Some((t.id.clone(), facts.clone())));
    assert_eq!(cloud.named_launch_template_facts("tpl_c2-workers", "1").await.unwrap(), None);

    cloud.terminate(&ids).await.unwrap();
    cloud.delete_launch_template(&t.id).await.unwrap();
    assert!(cloud.namespace_launch_templates("/tpl/").await.unwrap().is_empty());
    assert!(cloud.resource_tags(&t.id).await.unwrap().is_empty(), "a deleted template keeps no tags");
    assert_eq!(cloud.launch_template_facts(&t.id, "1").await.unwrap(), None);
    // Deleting again is fine (rollback and cleanup may both try), and launching from the
    // deleted template is EC2's error, not an emulator failure.
    cloud.delete_launch_template(&t.id).await.unwrap();
    let gone = cloud.run_instances(&launch).await.unwrap_err();
    assert_eq!(gone.code(), Some("InvalidLaunchTemplateId.NotFound"), "{gone}");
}
