//! `netpage`: attach the network page table to a node's interfaces and manage its mappings.

mod cli;
mod migrating;
mod on_directory;
mod report;

use std::net::IpAddr;

use anyhow::{Context, Result};
use clap::Parser;
use cli::{Cli, Command, MapCommand};
use netpage::{
    attach, check,
    migrate::EdgeSpec,
    node::{Node, OpenNode, require_root},
    ops::{self, Mapping, OpError, now_ms},
    table::PageTable,
    tablefile::TableFile,
};
use report::{Output, Stats, Status};

fn main() {
    let cli = Cli::parse();
    let json = cli.json;
    match run(cli) {
        Ok(out) => {
            out.print(json);
            if let Some(why) = out.failure() {
                eprintln!("netpage: error: {why}");
                std::process::exit(1);
            }
        }
        Err(e) => {
            eprintln!("netpage: error: {e:#}");
            std::process::exit(1);
        }
    }
}

/// Opens the node to read and first ends the drains that are over, unless an agent
/// manages the node (the agent is its only writer, and ends drains on time).
fn open(node: &Node) -> Result<OpenNode> {
    if node.managed() {
        return Ok(node.open()?);
    }
    open_for_write(node)
}

/// Opens the node to write (refused while an agent manages it) and first ends the drains
/// that are over.
fn open_for_write(node: &Node) -> Result<OpenNode> {
    let mut open = node.open_for_write()?;
    ops::gc(&mut open.table, now_ms())?;
    Ok(open)
}

fn run(cli: Cli) -> Result<Output> {
    if let Some(etcd) = cli.etcd.options() {
        return on_directory::run(cli, etcd);
    }
    if let Some(name) = on_directory::only_there(&cli.command) {
        anyhow::bail!(
            "`netpage {name}` works on the directory: give --etcd URLS (or set NETPAGE_ETCD)"
        );
    }
    require_root()?;
    let node = Node::new(&cli.pin_dir);
    Ok(match cli.command {
        Command::Attach(a) => Output::Attached(attach::attach(
            &node,
            &a.iface,
            a.side,
            a.hook,
            a.mode,
            a.capacity,
            a.reload,
            a.fast_path(),
        )?),
        Command::Detach { iface } => {
            attach::detach(&node, &iface)?;
            Output::Detached { iface }
        }
        Command::Status => Output::Status(Status::read(&node, &open(&node)?)?),
        Command::Map(m) => map(&node, m)?,
        Command::Switch {
            vm,
            to,
            drain,
            nodes,
            ..
        } => {
            let dirs = if nodes.is_empty() {
                vec![cli.pin_dir]
            } else {
                nodes
            };
            let mut open_nodes = Vec::new();
            for dir in &dirs {
                let n = open_for_write(&Node::new(dir))
                    .with_context(|| format!("node {}", dir.display()))?;
                open_nodes.push((dir.display().to_string(), n));
            }
            let mut tables: Vec<_> = open_nodes
                .iter_mut()
                .map(|(name, n)| (name.clone(), &mut n.table))
                .collect();
            Output::Switched(ops::switch_many(
                &mut tables,
                vm,
                to,
                drain.drain,
                now_ms(),
            )?)
        }
        Command::Apply {
            file,
            dry_run,
            drain,
        } => {
            let desired = TableFile::read(&file)?;
            let mut n = if dry_run {
                open(&node)?
            } else {
                open_for_write(&node)?
            };
            let plan = ops::make_equal(
                &mut n.table,
                &desired.mapping,
                dry_run,
                drain.drain,
                now_ms(),
            )?;
            Output::Applied { plan, dry_run }
        }
        Command::Stats { vm } => Output::Stats(stats(&open(&node)?, vm)?),
        Command::Migrate(m) => {
            let nodes = if m.nodes.is_empty() {
                vec![cli.pin_dir]
            } else {
                m.nodes.clone()
            };
            migrating::run(&m, EdgeSpec::Nodes(nodes))?
        }
        Command::Check => {
            let n = open(&node)?;
            Output::Checked(report::Checked {
                table: node.dir().display().to_string(),
                findings: check::check(&n.table, now_ms())?,
                slots: n.table.slot_problems()?,
            })
        }
        Command::Agent(_) | Command::Nodes => unreachable!("refused above without --etcd"),
        Command::Gc { now } => {
            let mut n = node.open_for_write()?;
            let at = if now { u64::MAX } else { now_ms() };
            Output::Gc(ops::gc(&mut n.table, at)?)
        }
    })
}

fn map(node: &Node, cmd: MapCommand) -> Result<Output> {
    let mut n = match cmd {
        MapCommand::List => open(node)?,
        _ => open_for_write(node)?,
    };
    Ok(match cmd {
        MapCommand::Add { vm, real } => {
            let m = Mapping { vm, real };
            ops::add(&mut n.table, m)?;
            Output::Added(m)
        }
        MapCommand::Del { vm } => Output::Deleted(ops::delete(&mut n.table, vm)?),
        MapCommand::List => Output::List(TableFile {
            mapping: ops::list(&n.table)?,
        }),
    })
}

fn stats(n: &OpenNode, vm: Option<IpAddr>) -> Result<Stats> {
    let mappings = match vm {
        Some(vm) => {
            let real = n.table.forward(vm)?.ok_or(OpError::UnknownVm { vm })?;
            vec![Mapping { vm, real }]
        }
        None => ops::list(&n.table)?,
    };
    Stats::read(n, &mappings)
}
