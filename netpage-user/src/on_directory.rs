//! The commands run against the mapping directory on etcd (`--etcd`), and the agent.

use std::time::Duration;

use anyhow::Result;
use netpage::{
    agent::{self, AgentOptions},
    check,
    clock::unix_ms,
    directory::{Directory, EtcdOptions},
    failure::Usage,
    migrate::EdgeSpec,
    node::require_capabilities,
    ops::{self, Mapping},
    progress::Progress,
    table::PageTable,
    tablefile::{Segment, TableFile},
};

use crate::{
    cli::{Cli, Command, MapCommand},
    report::{Checked, DirStatus, Output, ReverseList},
};

/// The name of a command that only works with `--etcd`, if `cmd` is one.
pub fn only_there(cmd: &Command) -> Option<&'static str> {
    match cmd {
        Command::Agent(_) => Some("agent"),
        Command::Nodes => Some("nodes"),
        _ => None,
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Runs `cli`'s command on the directory that `etcd` names.
pub fn run(cli: Cli, etcd: EtcdOptions) -> Result<Output> {
    if let Command::Migrate(m) = &cli.command {
        if !m.nodes.is_empty() {
            return Err(Usage(NODES_WITH_ETCD.into()).into());
        }
        let confirm = m.confirm_timeout;
        return crate::migrating::run(m, EdgeSpec::Directory { etcd, confirm });
    }
    if let Command::Check { repair: true } = &cli.command {
        return Err(Usage(
            "`netpage check --repair` is not supported on the directory (--etcd): each node's agent mirrors the directory into its table; repair a node's table with `netpage check --repair --pin-dir DIR` once its agent is stopped".into(),
        )
        .into());
    }
    let rt = runtime()?;
    if let Command::Agent(a) = &cli.command {
        require_capabilities()?;
        let opts = AgentOptions {
            etcd,
            node: a.node.clone(),
            pin_dir: cli.pin_dir.clone(),
            lease_ttl: Duration::from_secs(a.lease_ttl),
            capacity: a.capacity,
            metrics: a.metrics,
            state_dir: a.state_dir.clone(),
        };
        rt.block_on(agent::run(&opts))?;
        return Ok(Output::AgentStopped {
            node: a.node.clone(),
        });
    }
    rt.block_on(command(cli.command, etcd))
}

/// Why `--node` and `--etcd` do not go together.
const NODES_WITH_ETCD: &str = "--node names pin directories of this machine; with --etcd every node's agent applies the switch: drop --node";

async fn command(cmd: Command, etcd: EtcdOptions) -> Result<Output> {
    let local_only = |name: &str| -> Result<Output> {
        Err(Usage(format!(
            "`netpage {name}` works on this machine's node (--pin-dir), not on the directory: drop --etcd"
        ))
        .into())
    };
    let mut dir = Directory::connect(&etcd).await?;
    Ok(match cmd {
        Command::Map(MapCommand::Add {
            vm,
            real: Some(real),
            ..
        }) => {
            let m = Mapping { vm, real };
            dir.change(|v| ops::add(v, m)).await?;
            Output::Added(m)
        }
        Command::Map(MapCommand::Add {
            vm,
            locator: Some(locator),
            ..
        }) => {
            dir.change(|v| ops::segment::add(v, vm, locator)).await?;
            Output::AddedSegment(Segment { vm, locator })
        }
        Command::Map(MapCommand::Add { .. }) => unreachable!("clap requires --real or --locator"),
        Command::Map(MapCommand::Del { vm }) => {
            Output::Deleted(dir.change(|v| ops::delete(v, vm)).await?.0)
        }
        Command::Map(MapCommand::List { reverse: false }) => {
            let view = dir.view().await?;
            Output::List(TableFile {
                mapping: ops::list(&view)?,
                segment: ops::segment::list(&view)?,
            })
        }
        Command::Map(MapCommand::List { reverse: true }) => {
            let view = dir.view().await?;
            Output::Reverse(ReverseList {
                reverse: check::reverse_entries(&view)?,
                drains: view.drains()?,
                clock: "unix",
                now_ms: unix_ms(),
            })
        }
        Command::Apply {
            file,
            dry_run,
            allow_empty,
            drain,
        } => {
            let desired = TableFile::read(&file)?;
            let opts = ops::ApplyOptions {
                dry_run,
                drain: drain.drain,
                now_ms: unix_ms(),
                allow_empty,
                capacity: None,
            };
            let progress = Progress::spinner("apply");
            progress.stage(format!(
                "writing {} mappings to the directory",
                desired.mapping.len()
            ));
            let (plan, _) = dir
                .change(|v| ops::make_equal(v, &desired.mapping, &opts))
                .await?;
            progress.finish();
            Output::Applied { plan, dry_run }
        }
        Command::Switch {
            vm,
            to,
            drain,
            nodes,
            timeout,
            no_wait,
        } => {
            if !nodes.is_empty() {
                return Err(Usage(NODES_WITH_ETCD.into()).into());
            }
            let wait = (!no_wait).then_some(timeout);
            Output::DirSwitched(dir.switch(vm, to, drain.drain, wait).await?)
        }
        Command::Status => {
            let view = dir.view().await?;
            let forward = view.forward_entries()?;
            let v4 = forward.iter().filter(|(va, _)| va.is_ipv4()).count();
            Output::DirStatus(DirStatus {
                endpoints: etcd.endpoints_text(),
                prefix: etcd.prefix.clone(),
                revision: view.revision,
                mappings_v4: v4,
                mappings_v6: forward.len() - v4,
                reverse_entries: view.reverse_entries()?.len(),
                draining: view.drains()?.len(),
                segments: view.segment_entries()?.len(),
                nodes: dir.nodes().await?,
            })
        }
        Command::Check { .. } => Output::Checked(Checked {
            table: format!("{} at {}", etcd.prefix, etcd.endpoints_text()),
            findings: check::check(&dir.view().await?, unix_ms())?,
            fast_port_count: None,
            repaired: None,
            remaining: None,
            slots: Vec::new(),
        }),
        Command::Nodes => Output::Nodes(dir.nodes().await?),
        Command::Attach(_) => return local_only("attach"),
        Command::Locator(_) => return local_only("locator"),
        Command::Detach { .. } => return local_only("detach"),
        Command::Stats { .. } => return local_only("stats"),
        Command::Gc { .. } => return local_only("gc"),
        Command::Metrics { .. } => return local_only("metrics"),
        Command::Trace { .. } => return local_only("trace"),
        Command::Agent(_)
        | Command::Migrate(_)
        | Command::LibvirtHook(_)
        | Command::LibvirtFollow(_) => unreachable!("run above"),
    })
}
