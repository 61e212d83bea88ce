//! The demo: a VM of the namespace world moves from host A to host B while a client probes
//! it every millisecond, and netpage switches its page-table entry on every node.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use crate::world::{Host, Node, ProbeReport, Prober, V4, Vm, World};

/// How the demo runs.
#[derive(Clone, Copy, Debug)]
pub struct DemoOptions {
    /// Time between probes.
    pub interval: Duration,
    /// Probing before the move, and again after it.
    pub settle: Duration,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(1),
            settle: Duration::from_secs(1),
        }
    }
}

/// One node's switch, as `netpage switch --json` reported it.
#[derive(Clone, Debug)]
pub struct NodeSwitch {
    pub node: String,
    pub update_us: f64,
}

/// What the demo measured.
#[derive(Clone, Debug)]
pub struct DemoReport {
    pub va: IpAddr,
    pub from: IpAddr,
    pub to: IpAddr,
    pub probes: ProbeReport,
    pub interval: Duration,
    /// The V2R update on each node, in switching order.
    pub switches: Vec<NodeSwitch>,
    /// From the first `netpage switch` starting to the last one exiting.
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
/// Returns early with [`Interrupted`] once `stop` is set; the world is removed either way.
pub fn run(opts: DemoOptions, stop: &AtomicBool) -> Result<DemoReport, Interrupted> {
    let check = || {
        if stop.load(Ordering::Relaxed) {
            Err(Interrupted)
        } else {
            Ok(())
        }
    };
    eprintln!("building the world: client, gateway, hosts A and B, a VM at host A ...");
    let world = World::new();
    world.attach_all();
    world.map_all(V4.va, V4.ra_a);
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
        "plugging the VM into host B, switching {} to {} on every node, unplugging it from host A ...",
        V4.va, V4.ra_b
    );
    let t = Instant::now();
    let plugged = world.plug(Vm::One, Host::B, |host, port| {
        world.attach(host.node(), port, true)
    });
    let move_wall = t.elapsed();
    let t = Instant::now();
    let report = world.switch_all(V4.va, V4.ra_b);
    let switch_wall = t.elapsed();
    let switches = node_switches(&report);
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
        switches,
        switch_wall,
        move_wall,
        before,
        after: [end[0] - moved[0], end[1] - moved[1]],
    })
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
        writeln!(
            f,
            "  page-table switch (V2R map update, one syscall per node):"
        )?;
        for s in &self.switches {
            writeln!(f, "    {:<8} {:>6.1} us", s.node, s.update_us)?;
        }
        writeln!(
            f,
            "  `netpage switch` over all {} nodes: {:.1} ms, start to exit (every R2V first, then every V2R)",
            self.switches.len(),
            ms(self.switch_wall)
        )?;
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
