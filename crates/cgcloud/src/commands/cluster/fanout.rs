//! Running a command (ssh-cluster) or rsync on every node of a cluster, all at once.

use super::*;

/// The nodes to act on: leader first, then workers by ordinal.
fn nodes(c: &Cluster, skip_leader: bool) -> Vec<BoxInfo> {
    c.nodes.iter().filter(|n| n.state == "running" && !(skip_leader && n.ordinal == Some(0))).cloned().collect()
}

/// One node's result of `ssh-cluster --output json`.
#[derive(Debug, serde::Serialize)]
struct NodeOutput {
    node: Option<u32>,
    instance_id: String,
    hostname: String,
    exit_status: i32,
    stdout: String,
    stderr: String,
}

pub async fn ssh(ctx: &Ctx, a: SshClusterArgs) -> Result<ExitCode> {
    let c = select(ctx, &a.selection).await?;
    let nodes = nodes(&c, a.skip_leader);
    if nodes.is_empty() {
        bail!("cluster {} has no running node", c.name);
    }
    let hostname =
        |b: &BoxInfo| b.private_dns.as_deref().and_then(|d| d.split('.').next()).unwrap_or(&b.instance_id).to_owned();
    // Everything per node that can be done once is done before the first ssh starts.
    let targets = ctx.ssh_targets(&nodes, Some(&a.login), None).await?;
    let width = crate::fdlimit::fanout_slots();
    let mut failures = Vec::new();
    if ctx.out.format == crate::cli::OutputFormat::Json {
        // Scripts get one object per node, each with its whole output, in node order.
        let mut set = tokio::task::JoinSet::new();
        let mut results = Vec::new();
        for (i, (b, target)) in nodes.iter().zip(targets).enumerate() {
            let args = a.args.clone();
            let mut r = NodeOutput {
                node: b.ordinal,
                instance_id: b.instance_id.clone(),
                hostname: hostname(b),
                exit_status: 255,
                stdout: String::new(),
                stderr: String::new(),
            };
            let width = width.clone();
            let run = async move {
                let _slot = width.acquire_owned().await;
                let out = target.command(true, &args).stdin(Stdio::null()).output().await;
                if let Ok(out) = out {
                    r.exit_status = out.status.code().unwrap_or(255);
                    r.stdout = String::from_utf8_lossy(&out.stdout).into_owned();
                    r.stderr = String::from_utf8_lossy(&out.stderr).into_owned();
                }
                (i, r)
            };
            if a.parallel {
                set.spawn(run);
            } else {
                results.push(run.await);
            }
        }
        while let Some(r) = set.join_next().await {
            results.push(r?);
        }
        results.sort_by_key(|(i, _)| *i);
        let results: Vec<NodeOutput> = results.into_iter().map(|(_, r)| r).collect();
        for r in results.iter().filter(|r| r.exit_status != 0) {
            failures.push(format!("{} (exit {})", r.instance_id, r.exit_status));
        }
        ctx.out.record(&results, String::new);
    } else if a.parallel {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let mut set = tokio::task::JoinSet::new();
        for (b, target) in nodes.iter().zip(targets) {
            let label = format!("[{} {}]", b.ordinal.map(|o| o.to_string()).unwrap_or_default(), hostname(b));
            let (tx, args, id, width) = (tx.clone(), a.args.clone(), b.instance_id.clone(), width.clone());
            set.spawn(async move {
                let _slot = width.acquire_owned().await;
                let mut child = target
                    .command(true, &args)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()?;
                let out = child.stdout.take();
                let err = child.stderr.take();
                let (t1, l1) = (tx.clone(), label.clone());
                let a = tokio::spawn(async move {
                    if let Some(o) = out {
                        let mut lines = tokio::io::BufReader::new(o).lines();
                        while let Ok(Some(l)) = lines.next_line().await {
                            // The printer has stopped only when the command is over.
                            let _ = t1.send(format!("{l1} {l}"));
                        }
                    }
                });
                let (t2, l2) = (tx, label);
                let b = tokio::spawn(async move {
                    if let Some(e) = err {
                        let mut lines = tokio::io::BufReader::new(e).lines();
                        while let Ok(Some(l)) = lines.next_line().await {
                            // The printer has stopped only when the command is over.
                            let _ = t2.send(format!("{l2} {l}"));
                        }
                    }
                });
                let status = child.wait().await?;
                // The readers end with the child's output; their errors would only repeat its status.
                let _ = tokio::join!(a, b);
                Ok::<_, std::io::Error>((id, status.code().unwrap_or(255)))
            });
        }
        drop(tx);
        while let Some(line) = rx.recv().await {
            ctx.out.record(&line, || line.clone());
        }
        while let Some(r) = set.join_next().await {
            let (id, code) = r??;
            if code != 0 {
                failures.push(format!("{id} (exit {code})"));
            }
        }
    } else {
        for (b, target) in nodes.iter().zip(targets) {
            ctx.out.note(format!(
                "=== node {} ({}, {})",
                b.ordinal.map(|o| o.to_string()).unwrap_or_default(),
                b.instance_id,
                target.address
            ));
            let status = target.command(false, &a.args).status().await.context("cannot run ssh")?;
            if !status.success() {
                failures.push(format!("{} (exit {})", b.instance_id, status.code().unwrap_or(255)));
            }
        }
    }
    finish(ctx, "the command", &failures, nodes.len())
}

/// Exit status 1 if `what` failed on some nodes, said on stderr (in JSON mode as the error
/// object, kind `remote-command`: stdout has the per-node results already).
fn finish(ctx: &Ctx, what: &str, failures: &[String], nodes: usize) -> Result<ExitCode> {
    if failures.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    let message = format!("{what} failed on {} of {nodes} node(s): {}", failures.len(), failures.join(", "));
    if ctx.out.format == crate::cli::OutputFormat::Json {
        eprintln!("{}", crate::output::error_json("remote-command", &message, None));
    } else {
        tracing::error!("{message}");
    }
    Ok(ExitCode::from(1))
}

pub async fn rsync(ctx: &Ctx, a: RsyncClusterArgs) -> Result<ExitCode> {
    let c = select(ctx, &a.selection).await?;
    let nodes = nodes(&c, a.skip_leader);
    let json = ctx.out.format == crate::cli::OutputFormat::Json;
    let mut results: Vec<NodeOutput> = Vec::new();
    let targets = ctx.ssh_targets(&nodes, Some(&a.login), None).await?;
    let width = crate::fdlimit::fanout_slots();
    // Leader first (others may fetch from it), then the workers in parallel.
    let lead = usize::from(nodes.first().is_some_and(|n| n.ordinal == Some(0)));
    let (first, rest) = nodes.split_at(lead);
    let (first_t, rest_t) = targets.split_at(lead);
    for (batch, batch_targets) in [(first, first_t), (rest, rest_t)] {
        let mut set = tokio::task::JoinSet::new();
        for (i, (b, target)) in batch.iter().zip(batch_targets).enumerate() {
            let args = target.rsync_args(&a.args);
            let shell = target.rsync_shell(&a.ssh_opts);
            let mut r = NodeOutput {
                node: b.ordinal,
                instance_id: b.instance_id.clone(),
                hostname: b
                    .private_dns
                    .as_deref()
                    .and_then(|d| d.split('.').next())
                    .unwrap_or(&b.instance_id)
                    .to_owned(),
                exit_status: 255,
                stdout: String::new(),
                stderr: String::new(),
            };
            let width = width.clone();
            set.spawn(async move {
                let _slot = width.acquire_owned().await;
                let mut cmd = tokio::process::Command::new("rsync");
                cmd.arg("-e").arg(shell).args(args).stdin(Stdio::null());
                if json {
                    // Scripts get rsync's output inside the node's object, not mixed on stdout.
                    if let Ok(out) = cmd.output().await {
                        r.exit_status = out.status.code().unwrap_or(255);
                        r.stdout = String::from_utf8_lossy(&out.stdout).into_owned();
                        r.stderr = String::from_utf8_lossy(&out.stderr).into_owned();
                    }
                } else if let Ok(st) = cmd.status().await {
                    r.exit_status = st.code().unwrap_or(255);
                }
                (i, r)
            });
        }
        let mut done = Vec::new();
        while let Some(r) = set.join_next().await {
            done.push(r?);
        }
        done.sort_by_key(|(i, _)| *i);
        results.extend(done.into_iter().map(|(_, r)| r));
    }
    let failures: Vec<String> = results
        .iter()
        .filter(|r| r.exit_status != 0)
        .map(|r| format!("{} (exit {})", r.instance_id, r.exit_status))
        .collect();
    if json {
        ctx.out.record(&results, String::new);
    }
    finish(ctx, "rsync", &failures, nodes.len())
}
