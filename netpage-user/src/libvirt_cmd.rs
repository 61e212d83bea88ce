//! `netpage libvirt-hook` and `netpage libvirt-follow`: their options turned into the
//! library's, the hook's exit code policy, and the follower's end.

use std::io::Read;

use anyhow::Result;
use netpage::{
    failure::Usage,
    libvirt::{
        follow::{self, FollowOptions},
        hook::{self, HookOptions},
        host_name,
        tables::TableSpec,
    },
    node::Node,
};

use crate::{
    cli::{Cli, Command, LibvirtTablesArgs},
    report::Output,
};

/// Runs the hook (which exits here) or the follower.
pub fn run(cli: Cli) -> Result<Output> {
    let etcd = cli.etcd.options();
    let spec = |t: &LibvirtTablesArgs| -> Result<TableSpec> {
        Ok(match &etcd {
            Some(etcd) if !t.nodes.is_empty() => {
                return Err(Usage(
                    "--node names pin directories of this machine; with --etcd every node's agent applies the change: drop --node".into(),
                )
                .into());
            }
            Some(etcd) => TableSpec::Directory {
                etcd: etcd.clone(),
                confirm: t.confirm_timeout,
            },
            None => {
                let dirs = if t.nodes.is_empty() {
                    vec![cli.pin_dir.clone()]
                } else {
                    t.nodes.clone()
                };
                TableSpec::Nodes(
                    dirs.iter()
                        .map(|d| Node::new(d).with_patience(cli.lock_wait))
                        .collect(),
                )
            }
        })
    };
    let host = |t: &LibvirtTablesArgs| t.host.clone().unwrap_or_else(host_name);
    match &cli.command {
        Command::LibvirtHook(h) => {
            // libvirt writes the domain XML to every hook's stdin: read it all, so that
            // its write never fails.
            let mut xml = String::new();
            let read = std::io::stdin().read_to_string(&mut xml);
            let opts = HookOptions {
                host: host(&h.tables),
                tables: spec(&h.tables)?,
                timeout: h.timeout,
                neighbour: h.neigh,
            };
            let mut out = hook::run(&h.domain, &h.operation, &h.sub_operation, &xml, &opts);
            if let (Err(e), true) = (
                read,
                hook::action(&h.operation, &h.sub_operation, h.neigh) != hook::HookAction::Nothing,
            ) {
                out.outcome = "failed";
                out.error = Some(format!("reading the domain XML on stdin: {e}"));
            }
            if let Some(log) = &h.log
                && let Err(e) = hook::log(log, &out)
            {
                eprintln!(
                    "netpage: cannot write the hook's log {}: {e}",
                    log.display()
                );
            }
            if let Some(e) = &out.error {
                eprintln!(
                    "netpage libvirt-hook: {} {} {}: {} {e}",
                    h.domain, h.operation, h.sub_operation, out.outcome
                );
            }
            // Nothing on stdout: libvirt would take it for a new domain XML.
            std::process::exit(if out.failed() && h.strict { 1 } else { 0 });
        }
        Command::LibvirtFollow(f) => {
            let opts = FollowOptions {
                host: host(&f.tables),
                connect: f.connect.clone(),
                at: f.switch_at,
                tables: spec(&f.tables)?,
                drain: f.drain.drain,
                virsh: f.virsh.clone(),
                json: cli.json,
                max_switches: f.max_switches,
            };
            let switches = follow::run(&opts)?;
            Ok(Output::FollowStopped { switches })
        }
        _ => unreachable!("only the libvirt commands come here"),
    }
}
