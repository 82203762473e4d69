//! Boot benchmarks on the local cloud: `local-boot` (RunInstances to a verified SSH login, per
//! host) and `idle` (what moto and the controller cost with nothing running), and the bare boot
//! the cluster benchmarks compare against.

use crate::*;
use anyhow::{bail, Context as _, Result};
use cgcloud_aws::ec2::LaunchSpec;
use cgcloud_core::tags::Tags;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub(crate) async fn local_boot(counts: &[i32]) -> Result<()> {
    let bare = BareBoot::new().await?;
    println!(
        "local-boot: time from 'running' in moto to a verified SSH login (target: <= 3 s per host; 50 hosts at once)"
    );
    println!("{:>5} {:>8} {:>8} {:>8} {:>10} {:>12}", "hosts", "p50 s", "p90 s", "max s", "all s", "+mem MiB");
    let mut summary = Vec::new();
    for &n in counts {
        let mem0 = mem_used_mib();
        let (times, all) = bare.boot(n).await?;
        let mem = mem_used_mib().saturating_sub(mem0);
        println!(
            "{n:>5} {:>8.2} {:>8.2} {:>8.2} {all:>10.2} {mem:>12}",
            percentile(&times, 0.5),
            percentile(&times, 0.9),
            percentile(&times, 1.0)
        );
        summary.push((n, percentile(&times, 0.5)));
    }
    bare.finish().await?;
    if let (Some(first), Some(last)) = (summary.first(), summary.last()) {
        println!("ratio p50({})/p50({}) = {:.2}", last.0, first.0, last.1 / first.1);
    }
    Ok(())
}

/// Bare boots on the local cloud: plain Debian hosts from one RunInstances call, timed from
/// moto reporting them running to a verified SSH login on each (the yardstick of bring-up).
pub(crate) struct BareBoot {
    lc: cgcloud_localcloud::LocalCloud,
    ep: cgcloud_localcloud::Endpoint,
    cloud: cgcloud_aws::Cloud,
    image: String,
    work: tempfile::TempDir,
    key: PathBuf,
    key_name: String,
    /// A security group that opens SSH.
    group: String,
}

impl BareBoot {
    pub(crate) async fn new() -> Result<BareBoot> {
        let lc = cgcloud_localcloud::LocalCloud::new(cgcloud_localcloud::LocalCloud::default_dir());
        if !lc.is_up() {
            lc.up(cgcloud_localcloud::DEFAULT_PORT, &cgcloud_exe()?, &|l| eprintln!("{l}")).await?;
        }
        let ep = lc.endpoint()?;
        let state = lc.state().context("no state")?;
        let cloud = lc.cloud(state.port).await?;
        let image = state.images.iter().find(|i| i.os_id == "debian-12").context("no debian-12 image")?.ami_id.clone();
        let work = tempfile::tempdir()?;
        let key = work.path().join("id_ed25519");
        let st = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key)
            .status()?;
        if !st.success() {
            bail!("ssh-keygen failed");
        }
        let pubkey = std::fs::read_to_string(key.with_extension("pub"))?;
        let key_name = format!("bench-{}", std::process::id());
        cloud.import_key_pair(&key_name, pubkey.trim(), &Tags::new()).await?;
        // The local cloud enforces security groups as EC2 does: SSH must be opened.
        let ssh = cgcloud_aws::ec2::SgRule {
            protocol: "tcp".into(),
            from_port: 22,
            to_port: 22,
            source: cgcloud_aws::ec2::SgSource::Cidr("0.0.0.0/0".into()),
            description: "SSH".into(),
        };
        let vpc = state.vpc_id.clone().context("the local cloud has no VPC")?;
        let tags = Tags::from([("Name".to_owned(), "bench-ssh".to_owned())]);
        let (group, _) = cloud.ensure_security_group("bench-ssh", "bench: SSH", &vpc, &tags, &[ssh]).await?;
        Ok(BareBoot { lc, ep, cloud, image, work, key, key_name, group })
    }

    /// Boots `n` hosts, waits for SSH on each, terminates them; returns each host's time
    /// (sorted) and the time until all were ready.
    pub(crate) async fn boot(&self, n: i32) -> Result<(Vec<f64>, f64)> {
        let host_key = cgcloud_remote::hostkey::generate()?;
        let user_data = format!(
            "#cloud-config\n{}\n",
            serde_json::json!({"ssh_keys": {"ed25519_private": host_key.private_openssh, "ed25519_public": host_key.public}, "ssh_genkeytypes": []})
        );
        let spec = LaunchSpec {
            image_id: self.image.clone(),
            instance_type: "t3.micro".into(),
            count: n,
            key_name: Some(self.key_name.clone()),
            subnet_id: Some(self.ep.subnet.clone()),
            security_group_ids: vec![self.group.clone()],
            user_data,
            ..Default::default()
        };
        let instances = self.cloud.run_instances(&spec).await?;
        let t0 = Instant::now();
        let known = self.work.path().join(format!("known_hosts_{n}"));
        let mut set = tokio::task::JoinSet::new();
        for i in &instances {
            let id = i.id.clone();
            let ip = i.private_ip.clone().unwrap_or_default();
            cgcloud_remote::hostkey::record(&known, &id, &host_key.public)?;
            let target = cgcloud_remote::SshTarget {
                address: ip,
                user: "admin".into(),
                alias: id,
                known_hosts: known.clone(),
                control_dir: self.work.path().join("ctl"),
                extra: vec![
                    "-F".into(),
                    "/dev/null".into(),
                    "-i".into(),
                    self.key.display().to_string(),
                    "-o".into(),
                    "IdentitiesOnly=yes".into(),
                ],
            };
            cgcloud_remote::private_dir(&target.control_dir)?;
            set.spawn(
                async move { target.wait_ready(Duration::from_secs(600)).await.map(|_| t0.elapsed().as_secs_f64()) },
            );
        }
        let mut times = Vec::new();
        while let Some(r) = set.join_next().await {
            times.push(r??);
        }
        let all = t0.elapsed().as_secs_f64();
        times.sort_by(|a, b| a.total_cmp(b));
        let ids: Vec<String> = instances.iter().map(|i| i.id.clone()).collect();
        self.cloud.terminate(&ids).await?;
        wait_hosts_gone(&self.lc.dir, &ids).await;
        Ok((times, all))
    }

    pub(crate) async fn finish(self) -> Result<()> {
        self.cloud.delete_key_pair(&self.key_name).await?;
        Ok(())
    }
}

/// `idle [HISTORY...]`: what the running local cloud costs with no host running, over 20 s,
/// and again after each HISTORY instances have been launched and terminated (moto keeps
/// terminated instances until they age out, and every DescribeInstances walks them).
pub(crate) async fn idle(histories: &[i32]) -> Result<()> {
    let bare = BareBoot::new().await?;
    println!(
        "idle: the local cloud's own cost with no host running, over 20 s (target: moto + controller <= 1 % of a core)"
    );
    println!(
        "{:>9} {:>10} {:>12} {:>8} {:>10} {:>16}",
        "history", "moto %", "controller %", "sum %", "requests/s", "describe ms"
    );
    let mut history = 0;
    for &h in std::iter::once(&0).chain(histories) {
        if h > 0 {
            bare.boot(h).await?;
            history += h;
        }
        let state = bare.lc.state().context("the local cloud is down")?;
        // What happened just now (a launch, its teardown) is not idleness: let it settle.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let c = cgcloud_localcloud::cost::measure(&state, Duration::from_secs(20)).await;
        let t = Instant::now();
        for _ in 0..10 {
            bare.cloud.all_instances(None).await?;
        }
        let describe_ms = t.elapsed().as_secs_f64() * 100.0;
        let (m, k) = (c.moto_cpu_percent.unwrap_or(f64::NAN), c.controller_cpu_percent.unwrap_or(f64::NAN));
        println!(
            "{history:>9} {m:>10.1} {k:>12.1} {:>8.1} {:>10.2} {describe_ms:>16.1}",
            m + k,
            c.requests_per_s.unwrap_or(f64::NAN)
        );
    }
    bare.finish().await
}

pub(crate) async fn wait_hosts_gone(dir: &Path, ids: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while ids.iter().any(|id| dir.join("instances").join(id).exists()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
