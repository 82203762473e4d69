//! Cluster benchmarks: `cluster-api` (the requests one create-cluster sends, against moto),
//! `cluster-boot`, `spark-boot` and `toil-boot` on the local cloud, with each node unit's CPU.

use crate::boot::BareBoot;
use crate::*;
use anyhow::{bail, Context as _, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// (requests, polls, retries) from create-cluster's summary line.
pub(crate) fn requests(stderr: &str) -> Option<(u64, u64, u64)> {
    let line = stderr.lines().find(|l| l.contains("API requests"))?;
    let tail = line.rsplit('(').next()?;
    let nums: Vec<u64> = tail.split(|c: char| !c.is_ascii_digit()).filter_map(|s| s.parse().ok()).collect();
    Some((*nums.first()?, *nums.get(1)?, *nums.get(2)?))
}

pub(crate) fn cluster_api(ns: &[u32]) -> Result<()> {
    let e = testkit::TestEnv::new(cgcloud_exe()?);
    e.with_key_and_node_image();
    let agents = testkit::FakeAgents::start(&e);
    let moto_pid = testkit::moto().pid.map(|p| p.to_string());
    let agents_pid = agents.pid().to_string();
    let own = |pid: &Option<String>| pid.as_deref().and_then(process_cpu_seconds).map(|c| c.0).unwrap_or(f64::NAN);
    println!("cluster-api: one create-cluster against moto with stand-in agents that tag each node configured");
    println!(
        "{:>6} {:>8} {:>9} {:>9} {:>10} {:>10} {:>8} {:>8} {:>14} {:>12}",
        "N", "wall s", "cgcloud s", "moto s", "agents s", "requests", "polls", "retries", "without both", "poll B/node"
    );
    let mut flat = Vec::new();
    for (i, n) in ns.iter().enumerate() {
        let name = format!("bench{i}");
        let (moto0, agents0) = (own(&moto_pid), own(&Some(agents_pid.clone())));
        let children0 = process_cpu_seconds("self").map(|c| c.1).unwrap_or(0.0);
        let t0 = Instant::now();
        let out = create_generic_cluster(&e, *n, &name)?;
        let wall = t0.elapsed().as_secs_f64();
        // create-cluster is the only child waited for in between: its CPU time, not moto's.
        let cgcloud_cpu = process_cpu_seconds("self").map(|c| c.1).unwrap_or(f64::NAN) - children0;
        let (moto_cpu, agents_cpu) = (own(&moto_pid) - moto0, own(&Some(agents_pid.clone())) - agents0);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        let (k, p, r) = requests(&err).with_context(|| format!("create-cluster -s {n} failed: {err}"))?;
        // What one status poll costs in bytes: the cluster's DescribeInstances answer (moto's
        // XML; EC2's is of the same form), per node.
        let poll_bytes: f64 = e
            .boto3(&format!(
                "ec2 = client('ec2')\nsizes = []\n\
                 ec2.meta.events.register('after-call.ec2.DescribeInstances', lambda http_response, **kw: sizes.append(len(http_response.content)))\n\
                 ec2.describe_instances(Filters=[{{'Name': 'tag:cgcloud:cluster', 'Values': ['{name}']}}])\n\
                 print(sum(sizes))"
            ))
            .trim()
            .parse()
            .unwrap_or(f64::NAN);
        println!(
            "{n:>6} {wall:>8.1} {cgcloud_cpu:>9.2} {moto_cpu:>9.1} {agents_cpu:>10.1} {k:>10} {p:>8} {r:>8} {:>14} {:>12.0}",
            k - p - r,
            poll_bytes / f64::from(n + 1)
        );
        flat.push(k - p - r);
        e.ok(&["terminate-cluster", "generic", "-c", &name, "-Q"]);
    }
    if let (Some(a), Some(b)) = (flat.first(), flat.last()) {
        println!(
            "requests without polls and retries: N={} {a}, N={} {b} (constant means O(1) in N)",
            ns[0],
            ns[ns.len() - 1]
        );
    }
    Ok(())
}

/// CPU a cluster node's units have used since it booted, in µs, read inside the node from its
/// cgroup tree: the whole box, systemd itself (init.scope), logins (user.slice: the
/// workstation's SSH checks and this probe), and each unit of system.slice (the cloud-init
/// stages keep theirs after they exit; cloud-final's holds the agent's first boot).
pub(crate) const NODE_CPU_PROBE: &str = "r=/sys/fs/cgroup/unified; [ -f $r/cpu.stat ] || r=/sys/fs/cgroup; \
    echo \"box $(awk '/usage_usec/{print $2}' $r/cpu.stat)\"; \
    for d in $r/system.slice/*/ $r/init.scope/ $r/user.slice/; do [ -f $d/cpu.stat ] && echo \"$(basename $d) $(awk '/usage_usec/{print $2}' $d/cpu.stat)\"; done; true";

/// Where a cluster's nodes spent CPU since they booted, by systemd unit, summed over nodes
/// (`box` is each node's whole cgroup), read after the fact over `ssh-cluster`.
/// `create-cluster generic -s N -c NAME` against the environment's moto, not waiting for SSH
/// (the stand-in agents tag nodes configured; nothing answers SSH).
pub(crate) fn create_generic_cluster(e: &testkit::TestEnv, n: u32, name: &str) -> Result<std::process::Output> {
    Ok(e.cmd()
        .args(["create-cluster", "generic", "-s", &n.to_string(), "-c", name, "--skip-ssh-check", "--timeout", "1800"])
        .output()?)
}

pub(crate) fn node_cpu(h: &Path, cluster_type: &str, name: &str) -> Result<std::collections::BTreeMap<String, f64>> {
    let probe =
        cgcloud(h, &["-q", "--output", "json", "ssh-cluster", cluster_type, "-c", name, "-P", "--", NODE_CPU_PROBE])?;
    let mut units = std::collections::BTreeMap::new();
    for node in serde_json::from_str::<serde_json::Value>(&probe)?.as_array().into_iter().flatten() {
        for line in node["stdout"].as_str().unwrap_or_default().lines() {
            if let Some((unit, usec)) = line.split_once(' ') {
                *units.entry(unit.to_owned()).or_insert(0.0) += usec.trim().parse::<f64>().unwrap_or(0.0) / 1e6;
            }
        }
    }
    Ok(units)
}

pub(crate) fn print_node_cpu(breakdown: &[(u32, std::collections::BTreeMap<String, f64>)]) {
    for (n, units) in breakdown {
        let total = units.get("box").copied().unwrap_or(f64::NAN);
        let live: f64 = units.iter().filter(|(u, _)| u.as_str() != "box").map(|(_, s)| s).sum();
        println!("nodes' CPU with {n} workers: {total:.1} s in all ({:.2} s a node)", total / (*n as f64 + 1.0));
        let mut top: Vec<(&String, &f64)> = units.iter().filter(|(u, _)| u.as_str() != "box").collect();
        top.sort_by(|a, b| b.1.total_cmp(a.1));
        for (unit, secs) in top.into_iter().take(9) {
            println!("  {unit:<32} {secs:>7.2} s");
        }
        println!("  {:<32} {:>7.2} s", "(units gone, the rest)", total - live);
    }
}

pub(crate) async fn cluster_boot(ns: &[u32]) -> Result<()> {
    let user = BenchUser::new()?;
    let h = user.home();
    cgcloud(&h, &["-q", "create", "-I", "-T", "generic-cluster-box"])?;
    let image = newest_image(&h, "generic-cluster-box")?;
    // The baking box's shutdown must not overlap the first measurement.
    wait_no_hosts(&h)?;
    let bare = BareBoot::new().await?;
    println!("cluster-boot: create-cluster from a baked image until every node is configured, against a bare boot");
    println!("of as many plain hosts until each takes an SSH login (local cloud; machine CPU is both cores)");
    println!(
        "{:>7} {:>8} {:>9} {:>10} {:>11} {:>7} {:>9}",
        "workers", "bare s", "bare CPU", "cluster s", "cluster CPU", "ratio", "CPU ratio"
    );
    let mut breakdown: Vec<(u32, std::collections::BTreeMap<String, f64>)> = Vec::new();
    for (i, n) in ns.iter().enumerate() {
        let cpu0 = machine_cpu_seconds();
        let (_, bare_s) = bare.boot(*n as i32 + 1).await?;
        let bare_cpu = machine_cpu_seconds() - cpu0;
        wait_no_hosts(&h)?;
        let name = format!("boot{i}");
        let cpu0 = machine_cpu_seconds();
        let t0 = Instant::now();
        let out =
            cgcloud_command(&h)?.args(["create-cluster", "generic", "-s", &n.to_string(), "-c", &name]).output()?;
        let total = t0.elapsed().as_secs_f64();
        let cluster_cpu = machine_cpu_seconds() - cpu0;
        if !out.status.success() {
            bail!("create-cluster -s {n} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        println!(
            "{n:>7} {bare_s:>8.2} {bare_cpu:>9.1} {total:>10.2} {cluster_cpu:>11.1} {:>7.2} {:>9.2}",
            total / bare_s,
            cluster_cpu / bare_cpu
        );
        breakdown.push((*n, node_cpu(&h, "generic", &name)?));
        cgcloud(&h, &["-q", "terminate-cluster", "generic", "-c", &name])?;
        wait_no_hosts(&h)?;
    }
    bare.finish().await?;
    print_node_cpu(&breakdown);
    cgcloud(&h, &["-q", "delete-image", "generic-cluster-box", "-i", &image])?;
    Ok(())
}

/// The release `V` in the mirror directory `dir` (see [`testkit::mirror_release`]).
pub(crate) fn release_in(dir: &Path, prefix: &str, file: impl Fn(&str) -> String) -> Result<String> {
    testkit::mirror_release(dir, prefix, file)
        .map_err(anyhow::Error::msg)?
        .with_context(|| format!("{} holds no release (run scripts/apache-mirror)", dir.display()))
}

/// Bakes spark-box: Spark from PyPI without HDFS, or with `hdfs` Spark and Hadoop from the
/// Apache-layout mirror in CGCLOUD_APACHE_MIRROR_DIR, served on the bridge while baking.
pub(crate) fn bake_spark_box(h: &Path, hdfs: bool) -> Result<()> {
    if !hdfs {
        eprintln!("baking spark-box (Spark from PyPI, no HDFS) ...");
        cgcloud(h, &["-q", "create", "-I", "-T", "spark-box", "-O", "spark_source=pypi", "-O", "hdfs=false"])?;
        return Ok(());
    }
    let dir = PathBuf::from(
        std::env::var_os("CGCLOUD_APACHE_MIRROR_DIR")
            .context("--hdfs needs CGCLOUD_APACHE_MIRROR_DIR, a directory made by scripts/apache-mirror")?,
    );
    let spark = release_in(&dir.join("spark"), "spark-", |v| format!("spark-{v}-bin-hadoop3.tgz"))?;
    let hadoop = release_in(&dir.join("hadoop/common"), "hadoop-", |v| format!("hadoop-{v}.tar.gz"))?;
    let mirror = testkit::Mirror::serve(&dir).map_err(anyhow::Error::msg)?;
    eprintln!("baking spark-box (Spark {spark}, Hadoop {hadoop} from {}) ...", dir.display());
    let opts = [
        "spark_source=apache".to_owned(),
        format!("apache_mirror={}", mirror.url),
        format!("spark_version={spark}"),
        format!("hadoop_version={hadoop}"),
    ];
    let mut args = vec!["-q", "create", "-I", "-T", "spark-box"];
    for o in &opts {
        args.extend(["-O", o.as_str()]);
    }
    cgcloud(h, &args).map(drop)
}

/// Waits on the leader of spark cluster `name` (in one SSH session: its web UIs are closed to
/// this machine, as on EC2) until the master counts `n` alive workers and, with `hdfs`, the
/// NameNode `n` live DataNodes; the Unix times (s) at which each was first seen there. The
/// hosts share this machine's clock.
pub(crate) fn wait_spark_and_hdfs(h: &Path, name: &str, n: u32, hdfs: bool) -> Result<(f64, Option<f64>)> {
    let mut script = format!(
        "ip=$(hostname -I | cut -d' ' -f1)\n\
         w() {{ i=0; while ! curl -sf -m 5 \"$2\" | tr -d ' \\n' | grep -qF \"$3\"; do \
         sleep 0.25; i=$((i+1)); [ $i -gt 2400 ] && return 1; done; echo \"$1 $(date +%s.%N)\"; }}\n\
         w spark \"http://$ip:8080/json/\" '\"aliveworkers\":{n},' &\n"
    );
    if hdfs {
        script.push_str(&format!(
            "w hdfs \"http://$ip:9870/jmx?qry=Hadoop:service=NameNode,name=FSNamesystemState\" '\"NumLiveDataNodes\":{n},' &\n"
        ));
    }
    script.push_str("wait\n");
    let out = cgcloud(h, &["-q", "ssh", "spark-leader", "-c", name, "--", &script])?;
    let at = |what: &str| -> Option<f64> { out.lines().find_map(|l| l.strip_prefix(what)?.trim().parse().ok()) };
    let spark_at = at("spark ")
        .with_context(|| format!("{n} workers did not register with the master within 10 minutes: {out}"))?;
    let hdfs_at =
        if hdfs {
            Some(at("hdfs ").with_context(|| {
                format!("{n} DataNodes did not register with the NameNode within 10 minutes: {out}")
            })?)
        } else {
            None
        };
    Ok((spark_at, hdfs_at))
}

pub(crate) async fn spark_boot(ns: &[u32], hdfs: bool) -> Result<()> {
    let user = BenchUser::new()?;
    let h = user.home();
    bake_spark_box(&h, hdfs)?;
    let image = newest_image(&h, "spark-box")?;
    // The baking box's shutdown must not overlap the first measurement.
    wait_no_hosts(&h)?;
    let bare = BareBoot::new().await?;
    let until = if hdfs { "every worker alive and the NameNode every DataNode" } else { "every worker alive" };
    println!("spark-boot{}: create-cluster spark until the master reports {until},", if hdfs { " --hdfs" } else { "" });
    println!("against a bare boot of as many plain hosts until each takes an SSH login (local cloud; machine CPU is both cores)");
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!(
        "{:>8} {:>8} {:>9} {:>10} {:>8} {:>13} {:>14} {:>7} {:>9}",
        "workers", "bare s", "bare CPU", "seconds", "Spark s", "machine CPU-s", "CPU-s / cores", "ratio", "CPU ratio"
    );
    let mut times = Vec::new();
    let mut breakdown = Vec::new();
    for (i, n) in ns.iter().enumerate() {
        let cpu0 = machine_cpu_seconds();
        let (_, bare_s) = bare.boot(*n as i32 + 1).await?;
        let bare_cpu = machine_cpu_seconds() - cpu0;
        wait_no_hosts(&h)?;
        let name = format!("spark{i}");
        let cpu0 = machine_cpu_seconds();
        let t0_unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs_f64();
        cgcloud(&h, &["-q", "create-cluster", "spark", "-s", &n.to_string(), "-c", &name])?;
        let (spark_at, hdfs_at) = wait_spark_and_hdfs(&h, &name, *n, hdfs)?;
        let since = |at: f64| at - t0_unix;
        let spark_s = since(spark_at);
        let t = hdfs_at.map_or(spark_s, |a| since(a).max(spark_s));
        let cpu = machine_cpu_seconds() - cpu0;
        // When seconds ≈ CPU-s / cores, the bring-up is bound by this machine's cores.
        println!(
            "{n:>8} {bare_s:>8.2} {bare_cpu:>9.1} {t:>10.2} {spark_s:>8.2} {cpu:>13.1} {:>14.1} {:>7.2} {:>9.2}",
            cpu / cores as f64,
            t / bare_s,
            cpu / bare_cpu
        );
        times.push(t);
        breakdown.push((*n, node_cpu(&h, "spark", &name)?));
        cgcloud(&h, &["-q", "terminate-cluster", "spark", "-c", &name])?;
        // Hosts power off after EC2 calls them terminated; the next size must not share the
        // two cores with their shutdown.
        wait_no_hosts(&h)?;
    }
    if let (Some(a), Some(b)) = (times.first(), times.last()) {
        println!("ratio t({})/t({}) = {:.2}", ns[ns.len() - 1], ns[0], b / a);
    }
    bare.finish().await?;
    print_node_cpu(&breakdown);
    cgcloud(&h, &["-q", "delete-image", "spark-box", "-i", &image])?;
    Ok(())
}

pub(crate) fn toil_sinfo_idle(h: &Path, cluster: &str) -> usize {
    cgcloud(h, &["-q", "ssh", "toil-leader", "-c", cluster, "--", "sinfo -h -N -t idle -o %N"])
        .map(|out| out.lines().filter(|l| !l.trim().is_empty()).count())
        .unwrap_or(0)
}

pub(crate) async fn toil_boot(ns: &[u32]) -> Result<()> {
    let user = BenchUser::new()?;
    let h = user.home();
    eprintln!("baking toil-box ...");
    cgcloud(&h, &["-q", "create", "-I", "-T", "toil-box"])?;
    let image = newest_image(&h, "toil-box")?;
    wait_no_hosts(&h)?;
    let bare = BareBoot::new().await?;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("toil-boot: create-cluster toil until sinfo shows every worker idle, vs a bare boot of as many hosts; then a 64-job workflow (local cloud, {cores} cores)");
    println!(
        "{:>8} {:>8} {:>9} {:>9} {:>7} {:>9} {:>10} {:>9}",
        "workers", "bare s", "bare CPU", "toil s", "ratio", "toil CPU", "64 jobs s", "jobs CPU"
    );
    let mut ratios = Vec::new();
    for (i, n) in ns.iter().enumerate() {
        let hosts = i32::try_from(*n + 1)?;
        let cpu0 = machine_cpu_seconds();
        let (_, bare_s) = bare.boot(hosts).await?;
        let bare_cpu = machine_cpu_seconds() - cpu0;
        wait_no_hosts(&h)?;
        let name = format!("toil{i}");
        let cpu0 = machine_cpu_seconds();
        let t0 = Instant::now();
        cgcloud(&h, &["-q", "create-cluster", "toil", "-s", &n.to_string(), "-c", &name])?;
        while toil_sinfo_idle(&h, &name) < *n as usize {
            if t0.elapsed() > Duration::from_secs(600) {
                bail!("{n} workers were not idle in Slurm within 10 minutes");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let up = t0.elapsed().as_secs_f64();
        let up_cpu = machine_cpu_seconds() - cpu0;
        let write = format!(
            "mkdir -p /shared/wf && cat > /shared/wf/hostnames.py <<'EOF'\n{}\nEOF",
            testkit::TOIL_HOSTNAMES_WORKFLOW
        );
        cgcloud(&h, &["-q", "ssh", "toil-leader", "-c", &name, "--", &write])?;
        let cpu0 = machine_cpu_seconds();
        let t0 = Instant::now();
        let run = "toil-run /shared/wf/hostnames.py --jobs 64 --seconds 0 --out /shared/out --logCritical";
        cgcloud(&h, &["-q", "ssh", "toil-leader", "-c", &name, "--", run])?;
        let jobs = t0.elapsed().as_secs_f64();
        let jobs_cpu = machine_cpu_seconds() - cpu0;
        let ratio = up / bare_s;
        println!(
            "{n:>8} {bare_s:>8.2} {bare_cpu:>9.1} {up:>9.2} {ratio:>7.2} {up_cpu:>9.1} {jobs:>10.2} {jobs_cpu:>9.1}"
        );
        ratios.push(ratio);
        cgcloud(&h, &["-q", "terminate-cluster", "toil", "-c", &name])?;
        wait_no_hosts(&h)?;
    }
    bare.finish().await?;
    let worst = ratios.iter().copied().fold(f64::NAN, f64::max);
    println!("worst bring-up / bare boot = {worst:.2} (target <= 1.2)");
    cgcloud(&h, &["-q", "delete-image", "toil-box", "-i", &image])?;
    Ok(())
}
