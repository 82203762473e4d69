//! Snapshot tests: the compiled plan of every built-in role on every OS it supports, and the
//! published JSON Schema of role files. A change to a role shows up here as a reviewed diff
//! (run with INSTA_UPDATE=always, or CGCLOUD_UPDATE_SCHEMA=1 for the schema, to accept).

use cgcloud_roles::compile::compile;
use cgcloud_roles::Registry;
use std::collections::BTreeMap;

#[test]
fn compiled_plans_of_builtin_roles() {
    let reg = Registry::builtin().unwrap();
    let mut count = 0;
    for summary in reg.list() {
        let role = reg.role(&summary.name).unwrap();
        for os in &role.os {
            let plan = compile(&role, os, &BTreeMap::new()).unwrap();
            // Everything a launch takes from the role: how the image is found, the admin
            // user, instance defaults, firewall rules, IAM, and the provisioning plan.
            let launch = serde_json::json!({
                "os": os,
                "instance": role.instance,
                "ports": role.ports,
                "iam": role.iam,
                "plan": plan,
                "plan_hash": plan.hash(),
            });
            insta::assert_json_snapshot!(format!("{}__{}", role.name, os.id), launch);
            count += 1;
        }
    }
    assert!(count >= 11, "only {count} role/OS pairs");
}

#[test]
fn schema_is_published() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/role.schema.json");
    let schema = cgcloud_roles::role_schema();
    if std::env::var_os("CGCLOUD_UPDATE_SCHEMA").is_some() {
        std::fs::write(&path, &schema).unwrap();
    }
    let published = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        published == schema,
        "docs/role.schema.json is out of date; regenerate it with CGCLOUD_UPDATE_SCHEMA=1 cargo test -p cgcloud-roles --test plans"
    );
    // The schema describes the fields role authors use.
    for key in ["include", "packages", "repos", "users", "steps", "options", "ports", "iam", "download", "service"] {
        assert!(schema.contains(key), "schema lacks {key}");
    }
}

#[test]
fn compiled_plans_of_the_example_role() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/examples/roles");
    let reg = Registry::load(&[dir]).unwrap();
    let role = reg.role("hello-web-box").unwrap();
    assert!(role.source.ends_with("hello-web-box.toml"));
    let mut opts = BTreeMap::new();
    opts.insert("greeting".to_owned(), "hi".to_owned());
    for os in &role.os {
        let plan = compile(&role, os, &opts).unwrap();
        // What the workstation sends is exactly what the agent reads.
        let back: cgcloud_core::plan::Plan = serde_json::from_str(&serde_json::to_string(&plan).unwrap()).unwrap();
        assert_eq!(back, plan);
        insta::assert_json_snapshot!(format!("hello-web-box__{}", os.id), plan);
    }
}

#[test]
fn spark_plans_with_and_without_hdfs() {
    let reg = Registry::builtin().unwrap();
    let role = reg.role("spark-box").unwrap();
    for os in &role.os {
        for (label, opts) in
            [("apache-hdfs", vec![]), ("pypi-no-hdfs", vec![("spark_source", "pypi"), ("hdfs", "false")])]
        {
            let opts: BTreeMap<String, String> = opts.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
            let plan = compile(&role, os, &opts).unwrap();
            let leader = plan.steps.iter().filter(|s| s.on == cgcloud_core::plan::On::Leader).count();
            let workers = plan.steps.iter().filter(|s| s.on == cgcloud_core::plan::On::Workers).count();
            assert!(leader > 0 && workers > 0, "the plan configures leader and workers");
            let has_hdfs = plan.steps.iter().any(|s| s.title.contains("hdfs-namenode"));
            assert_eq!(has_hdfs, label == "apache-hdfs");
            insta::assert_json_snapshot!(format!("spark-box__{}__{label}", os.id), plan);
        }
    }
}
