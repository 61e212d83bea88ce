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
    pub node: Node,
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
        "moving the VM to host B and switching {} to {} ...",
        V4.va, V4.ra_b
    );
    let t = Instant::now();
    world.migrate(Vm::One, Host::B);
    let move_wall = t.elapsed();
    let t = Instant::now();
    // Host B first, so that it translates the new address before traffic reaches it; then
    // the gateway, which sends new traffic there; then host A, whose old address drains.
    let switches = [Node::HostB, Node::Gw, Node::HostA]
        .into_iter()
        .map(|node| switch(&world, node))
        .collect();
    let switch_wall = t.elapsed();
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

fn switch(world: &World, node: Node) -> NodeSwitch {
    let (va, to) = (V4.va.to_string(), V4.ra_b.to_string());
    let r = world.netpage_json(node, &["switch", "--vm", &va, "--to", &to]);
    NodeSwitch {
        node,
        update_us: r["update_us"].as_f64().expect("update_us in switch output"),
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
            "VM {} moved from host A ({}) to host B ({}) while the client probed it.",
            self.va, self.from, self.to
        )?;
        writeln!(f)?;
        writeln!(f, "  map update (V2R, one syscall per node):")?;
        for s in &self.switches {
            writeln!(f, "    {:<8} {:>8.1} us", s.node.name(), s.update_us)?;
        }
        writeln!(
            f,
            "  netpage switch on all {} nodes:   {:>6.1} ms (three processes, one after another)",
            self.switches.len(),
            ms(self.switch_wall)
        )?;
        writeln!(
            f,
            "  moving the VM's port to host B:  {:>6.1} ms (detach, re-plug, attach)",
            ms(self.move_wall)
        )?;
        writeln!(
            f,
            "  probes: {} sent every {:?}, {} answered, {} lost (longest run {})",
            p.sent, self.interval, p.received, p.lost, p.longest_loss_run
        )?;
        writeln!(
            f,
            "  largest gap between replies:     {:>6.1} ms",
            ms(p.largest_gap)
        )?;
        writeln!(
            f,
            "  replies came from {} throughout ({} from any other address)",
            self.va, p.strangers
        )?;
        writeln!(
            f,
            "  before the move: via host A ({} packets translated there), host B {}",
            self.before[0], self.before[1]
        )?;
        writeln!(
            f,
            "  after the move:  via host B ({} packets translated there), host A {}",
            self.after[1], self.after[0]
        )
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
