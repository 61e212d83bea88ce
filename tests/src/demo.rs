//! The demo: a VM of the namespace world moves from host A to host B while a client probes
//! it every millisecond, and netpage switches its page-table entry on every node: through
//! the directory on etcd, which an agent per edge node mirrors into the node's tables
//! ([`Mode::Directory`]), or on this machine's pin directories directly ([`Mode::Local`]).

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use crate::{
    directory::{self, Agents},
    etcd::Etcd,
    netns::{assert_ok, output},
    world::{Host, Node, Options, ProbeReport, Prober, V4, Vm, World},
};

/// Where the switch is made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// The directory on etcd: one etcd member, a `netpage agent` per edge node, and one
    /// `netpage --etcd URLS switch`.
    #[default]
    Directory,
    /// This machine's pin directories: one `netpage switch --node DIR ...` over every node.
    Local,
}

/// How the demo runs.
#[derive(Clone, Copy, Debug)]
pub struct DemoOptions {
    /// Time between probes.
    pub interval: Duration,
    /// Probing before the move, and again after it.
    pub settle: Duration,
    /// Where the switch is made.
    pub mode: Mode,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(1),
            settle: Duration::from_secs(1),
            mode: Mode::default(),
        }
    }
}

/// One node's switch, as `netpage switch --json` reported it.
#[derive(Clone, Debug)]
pub struct NodeSwitch {
    pub node: String,
    pub update_us: f64,
}

/// One node's confirmation of a switch through the directory, as `netpage --etcd URLS
/// switch --json` reported it.
#[derive(Clone, Debug)]
pub struct NodeConfirm {
    pub node: String,
    pub confirmed: bool,
    /// From the switch transaction to the command seeing the node's confirmation.
    pub after_ms: Option<f64>,
    /// From the switch transaction to the node's map update (the agent's clock).
    pub propagation_ms: Option<f64>,
}

/// A switch through the directory.
#[derive(Clone, Debug)]
pub struct DirectorySwitch {
    /// The revision of the transaction that reserved the new RA.
    pub reserve_revision: i64,
    /// The revision of the switch transaction.
    pub revision: i64,
    /// How long the switch transaction took.
    pub txn_ms: f64,
    /// Every node waited for, in the command's order.
    pub nodes: Vec<NodeConfirm>,
    /// The nodes that did not confirm in time.
    pub unconfirmed: Vec<String>,
}

/// How the page-table switch went.
#[derive(Clone, Debug)]
pub enum Switch {
    /// The V2R update on each node, in switching order.
    Local(Vec<NodeSwitch>),
    /// Through the directory.
    Directory(DirectorySwitch),
}

impl Switch {
    /// How many nodes were switched.
    pub fn nodes(&self) -> usize {
        match self {
            Switch::Local(nodes) => nodes.len(),
            Switch::Directory(d) => d.nodes.len(),
        }
    }
}

/// What the demo measured.
#[derive(Clone, Debug)]
pub struct DemoReport {
    pub va: IpAddr,
    pub from: IpAddr,
    pub to: IpAddr,
    pub probes: ProbeReport,
    pub interval: Duration,
    /// How the switch went.
    pub switch: Switch,
    /// From the `netpage switch` command starting to its exit.
    pub switch_wall: Duration,
    /// Moving the VM's port from host A to host B, netpage's attachment included.
    pub move_wall: Duration,
    /// Packets translated for the VM at host A and host B before the move.
    pub before: [u64; 2],
    /// The same, counted after the move (the counters of the move's moment excluded).
    pub after: [u64; 2],
}

/// Why the demo stopped early.
#[derive(Debug)]
pub struct Interrupted;

/// Builds the world, probes the VM, moves it mid-stream and switches every node.
/// Returns early with [`Interrupted`] once `stop` is set; the world (and in
/// [`Mode::Directory`] etcd and the agents) is removed either way.
pub fn run(opts: DemoOptions, stop: &AtomicBool) -> Result<DemoReport, Interrupted> {
    let check = || {
        if stop.load(Ordering::Relaxed) {
            Err(Interrupted)
        } else {
            Ok(())
        }
    };
    eprintln!(
        "building the world: client, gateway, hosts A and B (linked directly), a VM at host A ..."
    );
    // The hosts reach each other through the network of real addresses, not through the
    // gateway's uplinks, whose translation would turn a packet host A forwards to host B's
    // real address back into the VA (see "Packets in flight are forwarded").
    let world = World::with(Options {
        host_link: true,
        ..Options::default()
    });
    world.attach_all();
    check()?;
    // Declared after the world: etcd and the agents go first.
    let mut pager = Pager::start(opts.mode, &world);
    check()?;
    pager.map(&world, V4.va, V4.ra_a);
    check()?;
    let target = SocketAddr::new(V4.va, 7000);
    let _echo = world.udp_echo(Node::Vm, target);
    let client = world.udp_socket(Node::Client, SocketAddr::new(V4.client, 0));
    let total = opts.settle * 2 + Duration::from_millis(500);
    eprintln!(
        "probing {} from the client every {:?} for {:.1} s ...",
        V4.va,
        opts.interval,
        total.as_secs_f64()
    );
    let probes = Prober::spawn(client, target, opts.interval, total);
    thread::sleep(opts.settle);
    let before = host_counts(&world);
    check()?;

    eprintln!(
        "plugging the VM into host B, switching {} to {} {}, unplugging it from host A ...",
        V4.va,
        V4.ra_b,
        pager.how()
    );
    let t = Instant::now();
    let plugged = world.plug(Vm::One, Host::B, |host, port| {
        world.attach(host.node(), port, true)
    });
    let move_wall = t.elapsed();
    let t = Instant::now();
    let switch = pager.switch(&world, V4.va, V4.ra_b);
    let switch_wall = t.elapsed();
    world.unplug(plugged, |host, port| world.detach(host.node(), port));
    let moved = host_counts(&world);
    let probes = probes.join();
    let end = host_counts(&world);
    Ok(DemoReport {
        va: V4.va,
        from: V4.ra_a,
        to: V4.ra_b,
        probes,
        interval: opts.interval,
        switch,
        switch_wall,
        move_wall,
        before,
        after: [end[0] - moved[0], end[1] - moved[1]],
    })
}

/// What writes the page table: nothing beyond the world's pin directories, or etcd with an
/// agent per edge node.
enum Pager {
    Local,
    Directory { etcd: Box<Etcd>, agents: Agents },
}

impl Pager {
    fn start(mode: Mode, world: &World) -> Self {
        match mode {
            Mode::Local => Pager::Local,
            Mode::Directory => {
                eprintln!("starting etcd (one member) and a netpage agent per edge node ...");
                let etcd = Box::new(Etcd::new());
                let nodes: Vec<_> = Node::EDGES
                    .iter()
                    .map(|n| (n.name().to_owned(), world.pin_dir(*n)))
                    .collect();
                let agents = Agents::start(&etcd, &nodes, &[]);
                Pager::Directory { etcd, agents }
            }
        }
    }

    /// Where the switch is made, for the progress line.
    fn how(&self) -> &'static str {
        match self {
            Pager::Local => "on every node",
            Pager::Directory { .. } => "in the directory",
        }
    }

    /// Maps `va` to `ra` on every edge node; through the directory, returns once every
    /// agent has applied it.
    fn map(&mut self, world: &World, va: IpAddr, ra: IpAddr) {
        match self {
            Pager::Local => world.map_all(va, ra),
            Pager::Directory { etcd, agents } => {
                let revision = directory::map_add(etcd, va, ra);
                eprintln!(
                    "mapped {va} to {ra} in the directory at revision {revision}; waiting for the agents of {} ...",
                    agents.nodes().join(", ")
                );
                agents.wait_applied(etcd, revision);
            }
        }
    }

    /// Switches `va` to `ra` on every edge node with one `netpage switch`.
    fn switch(&self, world: &World, va: IpAddr, ra: IpAddr) -> Switch {
        match self {
            Pager::Local => Switch::Local(node_switches(&world.switch_all(va, ra))),
            Pager::Directory { etcd, agents } => {
                let out = output(&mut directory::switch_command(etcd, va, ra));
                let what = format!("netpage --etcd switch\n{}", agents.log_tails());
                assert_ok(&out, &what);
                let json: serde_json::Value = serde_json::from_slice(&out.stdout)
                    .unwrap_or_else(|e| panic!("{what}: not JSON ({e})"));
                Switch::Directory(directory_switch(&json))
            }
        }
    }
}

/// Each node's V2R update from `netpage switch --json --node ...`, named by node.
fn node_switches(report: &serde_json::Value) -> Vec<NodeSwitch> {
    let nodes = report["nodes"].as_array().expect("nodes in switch output");
    nodes
        .iter()
        .map(|n| {
            let dir = n["node"].as_str().expect("node path");
            let name = std::path::Path::new(dir)
                .file_name()
                .map_or(dir.into(), |f| f.to_string_lossy().into_owned());
            NodeSwitch {
                node: name,
                update_us: n["update_us"].as_f64().expect("update_us"),
            }
        })
        .collect()
}

/// The revisions and each node's confirmation from `netpage --etcd URLS switch --json`.
fn directory_switch(report: &serde_json::Value) -> DirectorySwitch {
    let nodes = report["nodes"].as_array().expect("nodes in switch output");
    DirectorySwitch {
        reserve_revision: report["reserve_revision"]
            .as_i64()
            .expect("reserve_revision"),
        revision: report["revision"].as_i64().expect("revision"),
        txn_ms: report["txn_ms"].as_f64().expect("txn_ms"),
        nodes: nodes
            .iter()
            .map(|n| NodeConfirm {
                node: n["node"].as_str().expect("node name").to_owned(),
                confirmed: n["confirmed"].as_bool().expect("confirmed"),
                after_ms: n["after_ms"].as_f64(),
                propagation_ms: n["propagation_ms"].as_f64(),
            })
            .collect(),
        unconfirmed: report["unconfirmed"]
            .as_array()
            .map(|u| {
                u.iter()
                    .filter_map(|n| n.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// Packets translated for the VM at host A and at host B.
fn host_counts(world: &World) -> [u64; 2] {
    [Node::HostA, Node::HostB].map(|n| world.mapped_packets(n, V4.va))
}

impl fmt::Display for DemoReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.probes;
        writeln!(f)?;
        writeln!(
            f,
            "VM {} moved from host A ({}) to host B ({}) while the client probed it every {:?}.",
            self.va, self.from, self.to, self.interval
        )?;
        writeln!(f)?;
        match &self.switch {
            Switch::Local(nodes) => {
                writeln!(
                    f,
                    "  page-table switch (V2R map update, one syscall per node):"
                )?;
                for s in nodes {
                    writeln!(f, "    {:<8} {:>6.1} us", s.node, s.update_us)?;
                }
                writeln!(
                    f,
                    "  `netpage switch` over all {} nodes: {:.1} ms, start to exit (every R2V first, then every V2R)",
                    nodes.len(),
                    ms(self.switch_wall)
                )?;
            }
            Switch::Directory(d) => {
                writeln!(
                    f,
                    "  page-table switch through the directory on etcd (an agent on each node):"
                )?;
                writeln!(
                    f,
                    "    new RA reserved at revision {}, switched at revision {} (switch transaction {:.1} ms)",
                    d.reserve_revision, d.revision, d.txn_ms
                )?;
                for n in &d.nodes {
                    match (n.confirmed, n.after_ms, n.propagation_ms) {
                        (true, Some(after), Some(prop)) => writeln!(
                            f,
                            "    {:<8} confirmed {:>5.1} ms after the switch transaction (its map updated after {:.1} ms)",
                            n.node, after, prop
                        )?,
                        _ => writeln!(f, "    {:<8} NOT confirmed", n.node)?,
                    }
                }
                writeln!(
                    f,
                    "  `netpage --etcd URLS switch`: {:.1} ms, start to exit (reserve, wait for every node, switch, wait for every node)",
                    ms(self.switch_wall)
                )?;
            }
        }
        writeln!(
            f,
            "  VM plugged into host B before the switch ({:.1} ms), unplugged from host A after it",
            ms(self.move_wall)
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "  probes: {} sent, {} answered, {} lost (longest run {})",
            p.sent, p.received, p.lost, p.longest_loss_run
        )?;
        writeln!(
            f,
            "  largest gap between replies: {:.1} ms",
            ms(p.largest_gap)
        )?;
        writeln!(
            f,
            "  every reply came from {} ({} from any other address)",
            self.va, p.strangers
        )?;
        writeln!(
            f,
            "  before the switch: replies via host A ({} packets translated there; host B {})",
            self.before[0], self.before[1]
        )?;
        writeln!(
            f,
            "  after the switch:  replies via host B ({} packets translated there; host A {})",
            self.after[1], self.after[0]
        )
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
