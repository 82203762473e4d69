//! Snapshot tests: the compiled plan of every built-in role on every OS it supports, and the
//! published JSON Schema of role files. A change to a role shows up here as a reviewed diff
//! (run with INSTA_UPDATE=always, or CGCLOUD_UPDATE_SCHEMA=1 for the schema, to accept).

use cgcloud_roles::compile::compile;
use cgcloud_roles::Registry;
use std::collections::BTreeMap;

/// Options without a default (the user must choose): example values.
fn required_options() -> BTreeMap<String, String> {
    [
        ("mesos_package_url", "https://packages.example/ubuntu/noble/aventer-mesos_1.11.0_amd64.deb"),
        ("mesos_package_sha256", "5e0d1b9bc2c6ce3cfd0b3b1a3d0b0a7e6f0e5d2c4b3a29180706050403020100"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

#[test]
fn compiled_plans_of_builtin_roles() {
    let reg = Registry::builtin().unwrap();
    let mut count = 0;
    let required = required_options();
    for summary in reg.list() {
        let role = reg.role(&summary.name).unwrap();
        let given: BTreeMap<String, String> = required
            .iter()
            .filter(|(k, _)| role.options.get(*k).is_some_and(|o| o.default.is_none()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for os in &role.os {
            let plan = compile(&role, os, &given).unwrap();
            // Everything a launch takes from the role: how the image is found, the admin
            // user, instance defaults, firewall rules, IAM, and the provisioning plan.
            let mut launch = serde_json::json!({
                "os": os,
                "instance": role.instance,
                "ports": role.ports,
                "iam": role.iam,
                "plan": plan,
                "plan_hash": plan.hash(),
            });
            // Key pairs the boxes make, and how Jenkins uses the role's images, where declared.
            if !role.key_pairs.is_empty() {
                launch["key_pairs"] = serde_json::json!(role.key_pairs);
            }
            if let Some(j) = &role.jenkins_agent {
                launch["jenkins_agent"] = serde_json::json!({"decl": j, "labels": j.labels_for(&role.name)});
            }
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

/// Option values cannot add lines, unit directives or shell commands: newlines are refused,
/// and values are quoted for the context they are pasted into.
#[test]
fn option_values_cannot_inject() {
    let reg = Registry::builtin().unwrap();
    let role = reg.role("spark-box").unwrap();
    let err = role.parse_option("daemon_java_opts=-Xmx1g\nExecStartPre=/bin/sh -c 'id'").unwrap_err().to_string();
    assert!(err.contains("control characters"), "{err}");
    assert!(role.parse_option("spark_version=4.0.1\r").is_err());
    // Options with a fixed set or a pattern refuse anything else.
    for (k, v, expected) in [
        ("spark_source", "pypi; touch /pwned; #", "one of apache, pypi"),
        ("spark_version", "4.0.1' $(touch /pwned) '", "a value matching"),
        ("apache_mirror", "http://x/ $(id)", "a value matching"),
        ("executor_memory", "1g\\", "a value matching"),
    ] {
        let err = role.parse_option(&format!("{k}={v}")).unwrap_err().to_string();
        assert!(err.contains(expected), "{k}: {err}");
    }
    assert!(role.parse_option("spark_version=4.1.0-preview1").is_ok());
    assert!(role.parse_option("apache_mirror=http://10.199.0.1:8000").is_ok());
    // Free-form options are quoted where they are pasted.
    let evil = [
        ("daemon_java_opts", r#"-Xmx1g" "LD_PRELOAD=/home/eve/evil.so"#),
        ("extra_spark_conf", r"spark.a 1\nspark.b 2"),
        ("spark_source", "pypi"),
        ("hdfs", "false"),
    ];
    let mut opts = BTreeMap::new();
    for (k, v) in evil {
        let (k, v) = role.parse_option(&format!("{k}={v}")).unwrap();
        opts.insert(k, v);
    }
    let plan = compile(&role, &role.os[0], &opts).unwrap();
    let text = serde_json::to_string(&plan).unwrap();
    // The unit's Environment= keeps the value inside its quotes.
    assert!(text.contains(r#"SPARK_DAEMON_JAVA_OPTS=-Xmx1g\\\" \\\"LD_PRELOAD=/home/eve/evil.so\""#), "{text}");
    // Shell words stay words.
    assert!(text.contains(r"pyspark=='4.0.1'"), "{text}");
    // `\n` in extra_spark_conf becomes a line break in spark-defaults.conf.
    assert!(text.contains(r"spark.a 1\nspark.b 2"), "{text}");
}

#[test]
fn legacy_mesos_roles_need_their_package_and_say_so() {
    let reg = Registry::builtin().unwrap();
    for name in ["mesos-box", "toil-mesos-box"] {
        let role = reg.role(name).unwrap();
        assert!(role.legacy.as_deref().is_some_and(|l| l.contains("Attic")), "{name} is not marked legacy");
        let listed = reg.list().into_iter().find(|r| r.name == name).unwrap();
        assert!(listed.legacy.is_some());
        let err = compile(&role, &role.os[0], &BTreeMap::new()).unwrap_err().to_string();
        assert!(err.contains("option 'mesos_package_") && err.contains("-O mesos_package_"), "{err}");
        let cluster = role.cluster.as_ref().unwrap();
        assert_eq!(cluster.secrets.len(), 2, "{name}: a Mesos secret and the shared directory's key");
    }
    assert!(reg.role("toil-box").unwrap().legacy.is_none());
    assert_eq!(reg.role("toil-box").unwrap().cluster.unwrap().secrets.len(), 2, "munge and the shared directory's key");
}

/// Mesos clusters admit only who holds the cluster's credentials: agents, frameworks (v0 and
/// HTTP, such as Toil's pymesos) and callers of the read-write HTTP endpoints of the master
/// and the agents. The credentials come from the cluster's own secret and are root's only,
/// except the frameworks' on the leader, which the admin user's group may read.
#[test]
fn mesos_clusters_authenticate_frameworks_agents_and_operators() {
    use cgcloud_core::plan::{Action, On, Plan};
    const SECRET: &str = "/etc/cgcloud/cluster/mesos.secret";
    let reg = Registry::builtin().unwrap();
    let options: BTreeMap<String, String> = [
        ("mesos_package_url", "https://packages.example/ubuntu/noble/aventer-mesos_1.11.0_amd64.deb"),
        ("mesos_package_sha256", "5e0d1b9bc2c6ce3cfd0b3b1a3d0b0a7e6f0e5d2c4b3a29180706050403020100"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let unit = |plan: &Plan, name: &str, on: On| {
        plan.steps
            .iter()
            .find_map(|s| match &s.action {
                Action::Service { name: n, unit: Some(u), .. } if n == name && s.on == on => Some(u.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no unit {name} on {on:?}"))
    };
    let exec_start = |unit: &str| -> Vec<String> {
        let line = unit.lines().find(|l| l.starts_with("ExecStart=")).unwrap();
        line.split_whitespace().map(str::to_owned).collect()
    };
    let commands = |plan: &Plan, creates: &str| -> Vec<(On, String)> {
        plan.steps
            .iter()
            .filter_map(|s| match &s.action {
                Action::Command { run, creates: Some(c), user: None, .. } if c == creates => Some((s.on, run.clone())),
                _ => None,
            })
            .collect()
    };
    for name in ["mesos-box", "toil-mesos-box"] {
        let role = reg.role(name).unwrap();
        // A per-cluster secret: random bytes that create-cluster makes for each cluster, root's.
        let cluster = role.cluster.as_ref().unwrap();
        let secret = cluster.secrets.iter().find(|s| s.path == SECRET).expect("the Mesos cluster secret");
        assert_eq!(secret.kind, cgcloud_roles::role::SecretKind::Random, "{name}");
        assert!(secret.bytes >= 32 && secret.owner.is_none() && secret.mode == "0400", "{name}: {secret:?}");
        for os in &role.os {
            let plan = compile(&role, os, &options).unwrap();
            let master = exec_start(&unit(&plan, "cgcloud-mesos-master", On::Leader));
            for flag in [
                "--authenticate_agents",
                "--authenticate_frameworks",
                "--authenticate_http_frameworks",
                "--http_framework_authenticators=basic",
                "--authenticate_http_readwrite",
                "--credentials=/etc/mesos/credentials",
            ] {
                assert!(master.iter().any(|w| w == flag), "{name}: the master lacks {flag}: {master:?}");
            }
            assert!(!master.iter().any(|w| w.starts_with("--no-authenticate")), "{name}: {master:?}");
            let agent = exec_start(&unit(&plan, "cgcloud-mesos-agent", On::Workers));
            for flag in [
                "--credential=/etc/mesos/credential",
                "--authenticate_http_readwrite",
                "--http_credentials=/etc/mesos/credentials",
            ] {
                assert!(agent.iter().any(|w| w == flag), "{name}: the agent lacks {flag}: {agent:?}");
            }
            // Written on every node at first boot, from the cluster's secret, root's only.
            let written = commands(&plan, "/etc/mesos/credentials");
            assert_eq!(written.iter().map(|(on, _)| *on).collect::<Vec<_>>(), [On::Leader, On::Workers], "{name}");
            for (_, run) in &written {
                assert!(run.contains(&format!("sha256sum {SECRET}")), "{name}: {run}");
                assert!(run.lines().any(|l| l == "umask 077"), "{name}: {run}");
                assert!(run.contains("chmod 0400 /etc/mesos/credential /etc/mesos/credentials"), "{name}: {run}");
                assert!(!run.contains("chgrp") && !run.contains("chown"), "{name}: {run}");
                // Agents and frameworks have principals (and secrets) of their own.
                assert!(
                    run.contains(r#""principal": "cgcloud""#) && run.contains(r#""principal": "cgcloud-framework""#)
                );
            }
            // The frameworks' credential: on the leader only, for root and the admin user's group.
            let framework = commands(&plan, "/etc/mesos/framework-credential.json");
            assert_eq!(framework.len(), 1, "{name}");
            let (on, run) = &framework[0];
            assert_eq!(*on, On::Leader, "{name}");
            assert!(run.contains(SECRET) && run.lines().any(|l| l == "umask 077"), "{name}: {run}");
            assert!(run.contains(&format!("chgrp \"$(id -gn {})\"", os.admin_user)), "{name}: {run}");
            assert!(run.contains("chmod 0440 "), "{name}: {run}");
            assert!(!run.contains(&format!("sha256sum {SECRET}")), "{name}: the agents' secret is not the frameworks'");
        }
    }
    // Toil registers with it: pymesos gets the credential from a module every Python of
    // /opt/toil imports at startup.
    let role = reg.role("toil-mesos-box").unwrap();
    let plan = compile(&role, &role.os[0], &options).unwrap();
    let hook = plan
        .steps
        .iter()
        .find_map(|s| match &s.action {
            Action::File { path, content, .. } if path == "/opt/toil/cgcloud/cgcloud_mesos_credential.py" => {
                Some(content.clone())
            }
            _ => None,
        })
        .expect("the pymesos credential hook");
    assert!(hook.contains("/etc/mesos/framework-credential.json") && hook.contains("MesosSchedulerDriver"));
    assert!(hook.contains(r#"framework["principal"] = principal"#), "the FrameworkInfo names the principal");
    let pth = |s: &&cgcloud_core::plan::Step| {
        matches!(&s.action, Action::Command { run, .. } if run.contains("cgcloud-mesos-credential.pth")
            && run.contains("import cgcloud_mesos_credential"))
    };
    assert!(plan.steps.iter().any(|s| pth(&s)), "the .pth file that imports the hook");
}

/// The master's base configuration as code (jenkins.yaml in its plan) is YAML with only keys
/// that Jenkins core, JCasC and the pinned plugins (credentials, ssh-credentials, matrix-auth)
/// define, and holds no secret: those come from files systemd hands to Jenkins.
#[test]
fn jenkins_master_configuration_as_code() {
    const KNOWN: &[&str] = &[
        "jenkins",
        "systemMessage",
        "numExecutors",
        "mode",
        "slaveAgentPort",
        "disableRememberMe",
        "securityRealm",
        "local",
        "allowsSignup",
        "users",
        "id",
        "name",
        "password",
        "authorizationStrategy",
        "globalMatrix",
        "entries",
        "user",
        "permissions",
        "crumbIssuer",
        "standard",
        "excludeClientIPFromCrumb",
        "credentials",
        "system",
        "domainCredentials",
        "basicSSHUserPrivateKey",
        "scope",
        "username",
        "description",
        "privateKeySource",
        "directEntry",
        "privateKey",
        "unclassified",
        "location",
        "url",
    ];
    let reg = Registry::builtin().unwrap();
    let role = reg.role("jenkins-master").unwrap();
    for os in &role.os {
        let plan = compile(&role, os, &BTreeMap::new()).unwrap();
        let file = |path: &str| {
            plan.steps
                .iter()
                .find_map(|s| match &s.action {
                    cgcloud_core::plan::Action::File { path: p, content, .. } if p == path => Some(content.clone()),
                    _ => None,
                })
                .unwrap_or_else(|| panic!("no {path} in the plan"))
        };
        let text = file("/etc/jenkins/casc/jenkins.yaml").replace("{{ box.namespace }}", "/hannes/");
        let v: serde_json::Value = serde_yaml::from_str(&text).unwrap();
        let mut keys = Vec::new();
        fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(m) => m.iter().for_each(|(k, i)| {
                    out.push(k.clone());
                    walk(i, out)
                }),
                serde_json::Value::Array(a) => a.iter().for_each(|i| walk(i, out)),
                _ => {}
            }
        }
        walk(&v, &mut keys);
        for k in &keys {
            assert!(KNOWN.contains(&k.as_str()), "jenkins.yaml key '{k}' is not one of JCasC's");
        }
        assert_eq!(v["jenkins"]["slaveAgentPort"], -1, "no inbound agent port");
        assert_eq!(v["jenkins"]["securityRealm"]["local"]["allowsSignup"], false);
        assert_eq!(v["jenkins"]["securityRealm"]["local"]["users"][0]["password"], "${ADMIN_PASSWORD}");
        assert_eq!(
            v["credentials"]["system"]["domainCredentials"][0]["credentials"][0]["basicSSHUserPrivateKey"]["id"],
            cgcloud_core::jenkins::AGENT_KEY_CREDENTIAL
        );
        // The drop-in: 127.0.0.1 only, no wizard, JCasC and its secrets; plugins.txt pinned.
        let dropin = file("/etc/systemd/system/jenkins.service.d/override.conf");
        for line in [
            "Environment=\"JENKINS_LISTEN_ADDRESS=127.0.0.1\"",
            "Environment=\"JENKINS_HOME=/mnt/persistent/jenkins\"",
            "Environment=\"CASC_JENKINS_CONFIG=/etc/jenkins/casc\"",
            "Environment=\"SECRETS=%d\"",
            "AssertPathIsMountPoint=/mnt/persistent",
        ] {
            assert!(dropin.lines().any(|l| l == line), "the drop-in lacks {line}:\n{dropin}");
        }
        assert!(dropin.contains("-Djenkins.install.runSetupWizard=false"));
        let plugins = file("/etc/jenkins/plugins.txt");
        let ids: Vec<&str> = plugins.lines().map(|l| l.split(':').next().unwrap()).collect();
        for want in [
            "configuration-as-code",
            "ec2",
            "credentials",
            "ssh-credentials",
            "matrix-auth",
            "workflow-aggregator",
            "git",
        ] {
            assert!(ids.contains(&want), "plugins.txt lacks {want}");
        }
        assert!(
            plugins.lines().all(|l| l.split(':').nth(1).is_some_and(|v| !v.is_empty() && v != "latest")),
            "unpinned: {plugins}"
        );
    }
}

/// Every built-in role closes IMDS to all users but root and its named service users, with a rule
/// that loads before any other service of the plan starts (and, in an image, before the network
/// at every boot).
#[test]
fn imds_is_for_root_and_named_service_users_only() {
    use cgcloud_core::plan::Action;
    let reg = Registry::builtin().unwrap();
    let required = required_options();
    for summary in reg.list() {
        let role = reg.role(&summary.name).unwrap();
        for os in &role.os {
            let plan = compile(&role, os, &required).unwrap();
            let what = format!("{} on {}", role.name, os.id);
            let rule = plan.steps.iter().find_map(|s| match &s.action {
                Action::File { path, content, .. } if path == "/etc/cgcloud/imds-guard.nft" => Some(content.clone()),
                _ => None,
            });
            let rule = rule.unwrap_or_else(|| panic!("{what}: no IMDS rule"));
            let users = if role.name == "jenkins-master" { "root, jenkins" } else { "root" };
            assert!(
                rule.contains(&format!("ip daddr 169.254.169.254 meta skuid {{ {users} }} accept")),
                "{what}:\n{rule}"
            );
            assert!(rule.contains("ip daddr 169.254.169.254 meta l4proto tcp reject"), "{what}");
            let packages = plan
                .steps
                .iter()
                .position(|s| matches!(&s.action, Action::Packages { names } if names.iter().any(|n| n == "nftables")));
            let services: Vec<&str> = plan
                .steps
                .iter()
                .filter_map(|s| match &s.action {
                    Action::Service { name, .. } => Some(name.as_str()),
                    _ => None,
                })
                .collect();
            assert_eq!(services.first(), Some(&"cgcloud-imds-guard"), "{what}: {services:?}");
            assert!(packages.is_some(), "{what}: nftables is not installed");
        }
    }
}
