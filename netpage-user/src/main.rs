//! `netpage`: attach the network page table to a node's interfaces and manage its mappings.

mod cli;
mod libvirt_cmd;
mod migrating;
mod on_directory;
mod report;

use std::{collections::HashMap, net::IpAddr};

use anyhow::{Context, Result};
use clap::Parser;
use cli::{Cli, Command, MapCommand};
use netpage::{
    attach, check,
    clock::node_ms as now_ms,
    failure::{self, Failure, Kind, Usage},
    loader::Side,
    metrics,
    migrate::EdgeSpec,
    node::{self, Node, OpenNode, require_capabilities},
    ops::{self, Mapping, OpError},
    progress::{self, Progress},
    segment::{self, SegError},
    table::PageTable,
    tablefile::{Segment, TableFile},
    trace::{self, TraceError},
};
use report::{Output, Stats, Status};

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => usage_error(e),
    };
    let json = cli.json;
    if json {
        progress::silence();
    }
    match run(cli) {
        Ok(out) => match out.failure() {
            None => out.print(json),
            Some((kind, why)) => {
                out.print_failed(json, kind, why);
                eprintln!("netpage: error: {why}");
                std::process::exit(kind.exit_code());
            }
        },
        Err(e) => {
            let failure = Failure::of(&e);
            if json {
                println!("{}", failure.json());
            }
            eprintln!("netpage: error: {e:#}");
            std::process::exit(failure.kind.exit_code());
        }
    }
}

/// Reports a command line clap refused (help and version are not errors), as JSON too if
/// `--json` is among the arguments.
fn usage_error(e: clap::Error) -> ! {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion)
        || !std::env::args().any(|a| a == "--json")
    {
        e.exit();
    }
    let message = e.render().to_string();
    let first = message.lines().next().unwrap_or_default();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    println!(
        "{}",
        failure::error_json(Kind::BadInput, first, &[], Default::default())
    );
    eprint!("{message}");
    std::process::exit(Kind::BadInput.exit_code());
}

/// Opens the node to read: no lock and no write (the drains that are over end at the next
/// command that changes the table, or `gc`).
fn open_to_read(node: &Node) -> Result<OpenNode> {
    Ok(node.open()?)
}

/// Opens the node to write (refused while an agent manages it, waiting for any other
/// command that is changing it) and first ends the drains that are over.
fn open_for_write(node: &Node) -> Result<OpenNode> {
    let mut open = node.open_for_write()?;
    ops::gc(&mut open.table, now_ms())?;
    Ok(open)
}

fn run(cli: Cli) -> Result<Output> {
    if let Command::LibvirtHook(_) | Command::LibvirtFollow(_) = &cli.command {
        return libvirt_cmd::run(cli);
    }
    if let Some(etcd) = cli.etcd.options() {
        return on_directory::run(cli, etcd);
    }
    if let Some(name) = on_directory::only_there(&cli.command) {
        return Err(Usage(format!(
            "`netpage {name}` works on the directory: give --etcd URLS (or set NETPAGE_ETCD)"
        ))
        .into());
    }
    require_capabilities()?;
    let patience = cli.lock_wait;
    let json = cli.json;
    let node = Node::new(&cli.pin_dir).with_patience(patience);
    Ok(match cli.command {
        Command::Attach(a) => {
            let _lock = node.lock_for_attach()?;
            Output::Attached(attach::attach(
                &node,
                &a.iface,
                a.side,
                a.hook,
                a.mode,
                a.capacity,
                a.reload,
                a.fast_path(),
                &a.vms,
            )?)
        }
        Command::Detach { iface } => {
            let _lock = node.exists().then(|| node.lock_attachments()).transpose()?;
            attach::detach(&node, &iface)?;
            Output::Detached { iface }
        }
        Command::Status => Output::Status(Status::read(&node, &open_to_read(&node)?)?),
        Command::Map(m) => map(&node, m)?,
        Command::Locator(l) => locator(&node, &l)?,
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
            let nodes: Vec<Node> = dirs
                .iter()
                .map(|d| Node::new(d).with_patience(patience))
                .collect();
            let mut open_nodes = node::open_many_for_write(&nodes)
                .map_err(|(i, e)| anyhow::Error::from(e).context(node_name(&dirs[i])))?;
            for (n, dir) in open_nodes.iter_mut().zip(&dirs) {
                ops::gc(&mut n.table, now_ms()).with_context(|| node_name(dir))?;
            }
            let mut tables: Vec<_> = open_nodes
                .iter_mut()
                .zip(&dirs)
                .map(|(n, dir)| (dir.display().to_string(), &mut n.table))
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
            allow_empty,
            drain,
        } => {
            let desired = TableFile::read(&file)?;
            let mut n = if dry_run {
                open_to_read(&node)?
            } else {
                open_for_write(&node)?
            };
            let opts = ops::ApplyOptions {
                dry_run,
                drain: drain.drain,
                now_ms: now_ms(),
                allow_empty,
                capacity: Some(node.capacity()?),
            };
            let progress = Progress::bar("apply", 0);
            let plan = ops::make_equal_showing(&mut n.table, &desired.mapping, &opts, &progress)?;
            progress.finish();
            Output::Applied { plan, dry_run }
        }
        Command::Stats { vm } => Output::Stats(stats(&open_to_read(&node)?, vm)?),
        Command::Migrate(m) => {
            let nodes = if m.nodes.is_empty() {
                vec![cli.pin_dir]
            } else {
                m.nodes.clone()
            };
            let nodes = nodes
                .iter()
                .map(|d| Node::new(d).with_patience(patience))
                .collect();
            migrating::run(&m, EdgeSpec::Nodes(nodes))?
        }
        Command::Check { repair } => check(&node, repair)?,
        Command::Agent(_) | Command::Nodes => unreachable!("refused above without --etcd"),
        Command::LibvirtHook(_) | Command::LibvirtFollow(_) => unreachable!("run above"),
        Command::Metrics { listen, state_dir } => serve_metrics(node, listen, state_dir)?,
        Command::Trace { vms, ifaces, rate } => trace(&node, vms, &ifaces, rate, json)?,
        Command::Gc { now } => {
            let mut n = node.open_for_write()?;
            let at = if now { u64::MAX } else { now_ms() };
            Output::Gc(ops::gc(&mut n.table, at)?)
        }
    })
}

fn map(node: &Node, cmd: MapCommand) -> Result<Output> {
    let mut n = match cmd {
        MapCommand::List { .. } => open_to_read(node)?,
        _ => open_for_write(node)?,
    };
    Ok(match cmd {
        MapCommand::Add {
            vm,
            real: Some(real),
            ..
        } => {
            let m = Mapping { vm, real };
            ops::add(&mut n.table, m)?;
            Output::Added(m)
        }
        MapCommand::Add {
            vm,
            locator: Some(locator),
            ..
        } => {
            ops::segment::add(&mut n.table, vm, locator)?;
            Output::AddedSegment(Segment { vm, locator })
        }
        MapCommand::Add { .. } => unreachable!("clap requires --real or --locator"),
        MapCommand::Del { vm } => Output::Deleted(ops::delete(&mut n.table, vm)?),
        MapCommand::List { reverse: false } => Output::List(TableFile {
            mapping: ops::list(&n.table)?,
            segment: ops::segment::list(&n.table)?,
        }),
        MapCommand::List { reverse: true } => Output::Reverse(report::ReverseList {
            reverse: check::reverse_entries(&n.table)?,
            drains: n.table.drains()?,
            clock: "boot",
            now_ms: now_ms(),
        }),
    })
}

/// `netpage locator`: shows the node's segmentation settings, or changes them.
fn locator(node: &Node, args: &cli::LocatorArgs) -> Result<Output> {
    let Some(change) = args.change() else {
        let n = open_to_read(node)?;
        let s = n.segments.as_ref().ok_or(SegError::Missing)?;
        return Ok(Output::Locator(s.read()?));
    };
    // Settings come first on a new node: `attach --hook auto` then chooses XDP for its
    // interfaces, segmentation's quicker hook.
    if !node.exists() {
        let _lock = node.lock_for_attach()?;
        attach::prepare(node)?;
    }
    let mut n = open_for_write(node)?;
    let ifaces = n.ifaces()?;
    let settings = {
        let s = n.segments.as_mut().ok_or(SegError::Missing)?;
        let next = segment::changed(s.config()?, &change)?;
        s.store(next)?
    };
    if settings.locators.iter().any(IpAddr::is_ipv4) {
        for (iface, r) in &ifaces {
            if r.side == Side::Virtual.code() {
                segment::accept_local(iface)
                    .with_context(|| format!("setting accept_local on {iface}"))?;
            }
        }
    }
    Ok(Output::Locator(settings))
}

/// `netpage check [--repair]`: waits for the commands changing the node, so as to see the
/// table between two changes; repairing writes it, which an agent's node refuses.
fn check(node: &Node, repair: bool) -> Result<Output> {
    let table = node.dir().display().to_string();
    let now = now_ms();
    if !repair {
        let _lock = node.exists().then(|| node.lock_writers()).transpose()?;
        let n = open_to_read(node)?;
        return Ok(Output::Checked(report::Checked {
            table,
            findings: check::check(&n.table, now)?,
            fast_port_count: fast_port_mismatch(&n)?,
            slots: n.table.slot_problems()?,
            repaired: None,
            remaining: None,
        }));
    }
    let mut n = node.open_for_write()?;
    let _attachments = node.lock_attachments()?;
    let findings = check::check(&n.table, now)?;
    let fast_port_count = fast_port_mismatch(&n)?;
    let repaired = check::repair(&mut n.table, &findings, now)?;
    if fast_port_count.is_some() {
        n.recount_fast_ports()?;
    }
    let remaining = check::check(&n.table, now)?;
    Ok(Output::Checked(report::Checked {
        table,
        findings,
        fast_port_count,
        slots: n.table.slot_problems()?,
        repaired: Some(repaired),
        remaining: Some(remaining),
    }))
}

/// The node's stored and actual counts of fast-path ports, if they differ.
fn fast_port_mismatch(n: &OpenNode) -> Result<Option<[u32; 2]>> {
    let (stored, actual) = n.fast_ports()?;
    Ok((stored != actual).then_some([stored, actual]))
}

fn node_name(dir: &std::path::Path) -> String {
    format!("node {}", dir.display())
}

/// `netpage metrics --listen ADDR`: serves the node's metrics until SIGINT or SIGTERM.
fn serve_metrics(
    node: Node,
    listen: std::net::SocketAddr,
    state_dir: std::path::PathBuf,
) -> Result<Output> {
    use tokio::signal::unix::{SignalKind, signal};
    // Refused now rather than at the first scrape.
    node.open()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        eprintln!(
            "netpage: serving the metrics of {} at http://{}/metrics",
            node.dir().display(),
            listener.local_addr()?
        );
        let scrape = metrics::scrape_of(node, None, state_dir);
        let stop = async {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        };
        metrics::serve::serve(listener, scrape, stop).await?;
        Ok(Output::MetricsStopped { listen })
    })
}

/// `netpage trace`: resolves the selection against the node's registry, starts the trace
/// and prints its events until SIGINT or SIGTERM.
fn trace(
    node: &Node,
    vms: Vec<IpAddr>,
    ifaces: &[String],
    rate: u32,
    json: bool,
) -> Result<Output> {
    let n = open_to_read(node)?;
    let names: HashMap<u32, String> = n
        .ifaces()?
        .into_iter()
        .map(|(name, r)| (r.ifindex, name))
        .collect();
    let mut sel = trace::Selection {
        vms,
        ifaces: Vec::new(),
    };
    for iface in ifaces {
        let r = n.iface(iface)?.ok_or_else(|| TraceError::UnknownIface {
            iface: iface.clone(),
            dir: node.dir().to_owned(),
        })?;
        sel.ifaces.push(r.ifindex);
    }
    drop(n);
    let mut tracer = trace::Tracer::open(node)?;
    tracer.start(&sel, rate)?;
    Ok(Output::Traced(trace::run(tracer, &names, json)?))
}

fn stats(n: &OpenNode, vm: Option<IpAddr>) -> Result<Stats> {
    let vm = match vm {
        Some(vm) => Some((vm, n.table.forward(vm)?.ok_or(OpError::UnknownVm { vm })?)),
        None => None,
    };
    Stats::read(n, vm)
}
