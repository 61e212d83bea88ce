//! The world with real guests: the namespace world's client, gateway and two hosts, each
//! host running its QEMU guest on a tap inside its own namespace, for end-to-end tests of
//! `netpage migrate`.
//!
//! ```text
//!  client ── c0 ─ g0 ── gw ── ga ─ a0 ── hostA ── tap0 ── QEMU (source)
//!                        └─── gb ─ b0 ── hostB ── tap0 ── QEMU (-incoming)
//!                       hostA ── ax ─ bx ── hostB   (migration link, tbf 200 Mbit/s)
//! ```
//!
//! The guest has VA 198.19.0.10/32 and gateway 198.19.0.1, which every host's tap answers
//! by proxy ARP with the same MAC, so that the guest's neighbour entry for its gateway
//! stays valid after a move. netpage runs on the gateway (`g0` virtual, `ga`/`gb`
//! physical) and on each host (`tap0` virtual, uplink physical); every edge maps the VA to
//! RA_A (198.18.10.100) at first. The migration stream crosses the host link, which
//! netpage does not translate. [`VmWorld::over_wan`] puts the sites apart: every link
//! drawn between gw and the hosts, and the host link, runs through the world's delay line.
//! [`VmWorld::l2_stretch`] has no netpage and no routes to the VA: the guest's segment
//! spans the gateway and both hosts over VXLAN ([`stretch`]).

pub mod bench;
pub mod guest_echoes;
mod icmp;
pub mod mac_watch;
pub mod stretch;
pub mod talk;
pub mod tap_capture;

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Output},
    thread,
    time::{Duration, Instant},
};

pub use icmp::{IcmpProbe, IcmpReport};
use netpage::{
    node::Node as PinnedNode,
    qmp::{MigrationInfo, MigrationParameters, Qmp, RunState},
    table::PageTable,
};

use crate::{
    guest::{BootParams, COUNTERS_PATH, ECHO_PORT, Guest, HTTP_PORT},
    netns::output,
    qemu::{Qemu, QemuOptions},
    wan::Wan,
    world::{Host, Node, Options, V4, World, netpage_bin},
};

/// The guest's virtual address.
pub const VA: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
/// The guest's default gateway: an address no host has, answered by proxy ARP.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
/// The host side of the guest's NIC, on every host.
pub const TAP: &str = "tap0";
/// The tap's MAC, the same on every host.
pub const TAP_MAC: &str = "02:4e:50:00:00:01";
/// The guest's MAC.
pub const GUEST_MAC: &str = "52:54:00:4e:50:0a";
/// The port the destination QEMU waits on for the migration stream.
pub const MIGRATION_PORT: u16 = 4444;
/// Packets a tap holds while its guest is paused.
pub const TAP_QUEUE: &str = "10000";
/// How the migration link is shaped: `tbf` works here, `netem` does not exist.
pub const LINK_RATE: &str = "200mbit";

const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
const QEMU_TIMEOUT: Duration = Duration::from_secs(10);

/// The real address of the guest at `host`.
pub fn ra(host: Host) -> Ipv4Addr {
    let ip = match host {
        Host::A => V4.ra_a,
        Host::B => V4.ra_b,
    };
    match ip {
        IpAddr::V4(ip) => ip,
        IpAddr::V6(_) => unreachable!("V4 holds IPv4 addresses"),
    }
}

/// Why this machine cannot run guests, if it cannot.
pub fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (network namespaces, taps, bpffs)".into());
    }
    crate::qemu::binary()
        .err()
        .or_else(crate::guest::missing_prerequisites)
}

/// The guest's boot parameters: the VA, its gateway, and `dirty_mib` of memory rewritten
/// in a loop (0: none).
pub fn boot_params(dirty_mib: u32) -> BootParams {
    BootParams {
        ipv4: Some((VA, 32)),
        gw4: Some(GATEWAY),
        ipv6: None,
        gw6: None,
        dirty_mib,
    }
}

/// The migration URI of the destination `host`: its address on the host link.
pub fn migration_uri(host: Host) -> String {
    let addr = match host {
        Host::A => "198.18.5.1",
        Host::B => "198.18.5.2",
    };
    format!("tcp:{addr}:{MIGRATION_PORT}")
}

/// The arguments of a `netpage migrate` that tests vary, valid or not.
#[derive(Clone, Debug)]
pub struct MigrateCall {
    pub vm: String,
    pub to: String,
    pub src_qmp: PathBuf,
    pub dst_qmp: PathBuf,
    /// Where the migration stream and the neighbour entry go.
    pub dst_host: Host,
}

impl MigrateCall {
    /// The guest from `src` to `dst` at host `to`, moving the VA to that host's RA.
    pub fn usual(src: &Qemu, dst: &Qemu, to: Host) -> Self {
        Self {
            vm: VA.to_string(),
            to: ra(to).to_string(),
            src_qmp: src.qmp_path(),
            dst_qmp: dst.qmp_path(),
            dst_host: to,
        }
    }
}

/// One edge node's page table, for before/after comparisons.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableSnapshot {
    /// `netpage --json map list`, parsed.
    pub map_list: serde_json::Value,
    /// Every R2V entry (real, virtual), sorted.
    pub reverse: Vec<(IpAddr, IpAddr)>,
    /// Every draining real address, sorted.
    pub drains: Vec<IpAddr>,
}

/// How the client's traffic reaches the guest, and follows it when it moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plumbing {
    /// netpage translates at every edge ([`VmWorld::new`]).
    Netpage,
    /// Plain routing, a host route switched by hand ([`VmWorld::plain`]).
    Routes,
    /// The guest's segment stretched over VXLAN ([`VmWorld::l2_stretch`]).
    Stretch,
    /// netpage with segmentation: the VA mapped with method encap to its host's locator
    /// ([`VmWorld::segmented`]).
    Segments,
}

/// The world, its guest, and the netpage attachments and mappings.
pub struct VmWorld {
    pub world: World,
    pub guest: Guest,
    plumbing: Plumbing,
    /// `netpage migrate --state-dir`: this world's records of migrations in flight.
    state_dir: PathBuf,
}

impl VmWorld {
    /// Builds the world, shapes the migration link, attaches netpage to the gateway and
    /// the hosts' uplinks and maps the VA to RA_A on every edge. The taps come with QEMU.
    pub fn new() -> Self {
        Self::build(Plumbing::Netpage, None)
    }

    /// The same world with its sites apart: every link between them (gateway to each
    /// host, and the migration link) runs through a delay line set as `wan` says; the
    /// client's link does not.
    pub fn over_wan(wan: Wan) -> Self {
        Self::build(Plumbing::Netpage, Some(wan))
    }

    /// The same world without netpage, routed the way operators move a VM today: the
    /// gateway routes the VA as a /32 host route to host A (and each host to its tap),
    /// until someone replaces that route.
    pub fn plain() -> Self {
        Self::plain_with(None)
    }

    /// The plain world ([`VmWorld::plain`]) with its sites apart ([`VmWorld::over_wan`]).
    pub fn plain_over_wan(wan: Wan) -> Self {
        Self::plain_with(Some(wan))
    }

    fn plain_with(wan: Option<Wan>) -> Self {
        let vw = Self::build(Plumbing::Routes, wan);
        vw.route_va(Host::A);
        vw
    }

    /// The same world without netpage nor routes to the VA: the guest's segment is
    /// stretched over VXLAN to both hosts and the gateway, its router (see [`stretch`]),
    /// and the guest's MAC moves by QEMU's announcement after a migration.
    pub fn l2_stretch() -> Self {
        let vw = Self::build(Plumbing::Stretch, None);
        stretch::build(&vw.world);
        vw
    }

    /// The same world with netpage's segmentation instead of paging: every edge has its
    /// locator (the gateway's is the default locator), and the VA is mapped with method
    /// encap to host A's. `attach --hook auto` puts segmentation at the XDP hook there,
    /// so the guest's NIC does not offload checksums or segmentation to the host (see
    /// [`VmWorld::qemu_options`]).
    pub fn segmented() -> Self {
        Self::build(Plumbing::Segments, None)
    }

    /// The segmented world ([`VmWorld::segmented`]) with its sites apart
    /// ([`VmWorld::over_wan`]).
    pub fn segmented_over_wan(wan: Wan) -> Self {
        Self::build(Plumbing::Segments, Some(wan))
    }

    /// Where the VA is mapped while the guest is at `host`: its real address there under
    /// paging, its locator under segmentation.
    pub fn address_at(&self, host: Host) -> IpAddr {
        match self.plumbing {
            Plumbing::Segments => host.node().locator(&V4),
            _ => ra(host).into(),
        }
    }

    /// Whether the VA is mapped with method encap ([`VmWorld::segmented`]).
    pub fn by_segmentation(&self) -> bool {
        self.plumbing == Plumbing::Segments
    }

    /// The packets carried for the guest at `host` so far: translated by its mapping
    /// under paging, decapsulated under segmentation.
    pub fn carried_at(&self, host: Host) -> u64 {
        if self.by_segmentation() {
            self.world.counter(host.node(), "decapsulated")
        } else {
            self.mapped_packets(host)
        }
    }

    /// Points the gateway's host route to the VA at `host` (plain routing).
    pub fn route_va(&self, host: Host) {
        let via = host.uplink_addr(&V4).to_string();
        self.world
            .ns(Node::Gw)
            .ip(&["route", "replace", &format!("{VA}/32"), "via", &via]);
    }

    fn build(plumbing: Plumbing, wan: Option<Wan>) -> Self {
        let guest = Guest::build();
        let world = World::without_vms(Options {
            second_vm: false,
            host_link: true,
            wan,
        });
        world.exec_ok(
            Node::HostA,
            "tc",
            &[
                "qdisc", "add", "dev", "ax", "root", "tbf", "rate", LINK_RATE, "burst", "64kb",
                "latency", "50ms",
            ],
        );
        if plumbing == Plumbing::Segments {
            world.route_locators_over_host_link();
            let default = Node::Gw.locator(&V4).to_string();
            for node in Node::EDGES {
                let own = node.locator(&V4).to_string();
                world.netpage_ok(node, &["locator", "--own", &own, "--default", &default]);
            }
        }
        if matches!(plumbing, Plumbing::Netpage | Plumbing::Segments) {
            world.attach(Node::Gw, "g0", true);
            world.attach(Node::Gw, "ga", false);
            world.attach(Node::Gw, "gb", false);
            world.attach(Node::HostA, "a0", false);
            world.attach(Node::HostB, "b0", false);
            // The host link is a physical side too: what host A forwards to host B's
            // real address after a switch arrives there, and is translated there.
            world.attach(Node::HostA, "ax", false);
            world.attach(Node::HostB, "bx", false);
        }
        if plumbing == Plumbing::Netpage {
            world.map_all(VA.into(), ra(Host::A).into());
        }
        if plumbing == Plumbing::Segments {
            let (va, at) = (VA.to_string(), Node::HostA.locator(&V4).to_string());
            for node in Node::EDGES {
                world.netpage_ok(node, &["map", "add", "--vm", &va, "--locator", &at]);
            }
        }
        static WORLDS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let state_dir = std::env::temp_dir().join(format!(
            "netpage-migrations-{}-{}",
            std::process::id(),
            WORLDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        Self {
            world,
            guest,
            plumbing,
            state_dir,
        }
    }

    /// Over a WAN, the frames the delay line lost so far on the links between the
    /// gateway and each host, both ways (its queue full, or its socket buffer when its
    /// thread could not keep up): what the clients' traffic lost to the test instrument.
    pub fn delay_line_lost(&self) -> Option<u64> {
        self.world.options().wan?;
        Some(
            [Node::HostA, Node::HostB]
                .into_iter()
                .flat_map(|h| [(Node::Gw, h), (h, Node::Gw)])
                .map(|(from, to)| {
                    let f = self.world.wan_flow(from, to);
                    f.dropped.frames + f.unread
                })
                .sum(),
        )
    }

    /// Where `netpage migrate` keeps its records here (`--state-dir`).
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Reshapes the migration link to `rate` (a `tc` rate such as `20mbit`).
    pub fn shape_link(&self, rate: &str) {
        self.world.exec_ok(
            Node::HostA,
            "tc",
            &[
                "qdisc", "replace", "dev", "ax", "root", "tbf", "rate", rate, "burst", "64kb",
                "latency", "50ms",
            ],
        );
    }

    /// The name of `host`'s namespace.
    pub fn netns(&self, host: Host) -> String {
        self.world.ns(host.node()).name().to_owned()
    }

    fn qemu_options(&self, name: &str, host: Host, params: &BootParams) -> QemuOptions {
        // virtio-net's default offloads (checksum, TSO): netpage runs on the tap at the tc
        // hook, which translates the partial checksums and GSO packets the guest sends.
        let mut opts = QemuOptions::new(
            name,
            &self.netns(host),
            TAP,
            GUEST_MAC,
            &self.guest,
            params.cmdline(),
        );
        if self.plumbing == Plumbing::Segments {
            // Segmentation runs at the XDP hook here (`--hook auto` on a node with a
            // locator), which sees neither a partial checksum nor a GSO packet for what it
            // is: the guest sends final checksums and segments.
            opts.nic_extra =
                ",csum=off,gso=off,host_tso4=off,host_tso6=off,host_ecn=off,host_ufo=off".into();
        }
        opts
    }

    /// Boots the guest at `host` and waits until it is ready.
    pub fn boot(&self, host: Host, params: &BootParams) -> Qemu {
        self.boot_with(host, self.qemu_options("src", host, params))
    }

    /// Boots the guest at `host` with a second QMP socket to follow its events.
    pub fn boot_watched(&self, host: Host, params: &BootParams) -> Qemu {
        let mut opts = self.qemu_options("src", host, params);
        opts.watch_qmp = true;
        self.boot_with(host, opts)
    }

    fn boot_with(&self, host: Host, opts: QemuOptions) -> Qemu {
        let mut qemu = Qemu::start(opts);
        qemu.wait_tap(QEMU_TIMEOUT);
        self.setup_tap(host);
        wait_socket(&mut qemu);
        let boot = qemu.wait_ready(BOOT_TIMEOUT);
        eprintln!(
            "guest: ready at host {host:?} {:.2} s after start ({:?})",
            boot.as_secs_f64(),
            qemu.accel()
        );
        qemu
    }

    /// Starts the destination QEMU at `host`, waiting for the migration on the host link.
    pub fn incoming(&self, host: Host, params: &BootParams) -> Qemu {
        let mut opts = self.qemu_options("dst", host, params);
        opts.incoming = Some(migration_uri(host));
        let mut qemu = Qemu::start(opts);
        qemu.wait_tap(QEMU_TIMEOUT);
        self.setup_tap(host);
        wait_socket(&mut qemu);
        qemu
    }

    /// A destination at `host` that cannot load the source's last state: its NIC lacks
    /// a feature (mergeable receive buffers) the guest has acknowledged at the source,
    /// and QEMU checks that when it loads the NIC's state, which comes after the RAM in
    /// the final stop-and-copy. It fails then, and exits, after the source has sent
    /// everything and reported `completed`.
    pub fn incoming_unloadable(&self, host: Host, params: &BootParams) -> Qemu {
        let mut opts = self.qemu_options("dst", host, params);
        opts.incoming = Some(migration_uri(host));
        opts.nic_extra = ",mrg_rxbuf=off".into();
        let mut qemu = Qemu::start(opts);
        qemu.wait_tap(QEMU_TIMEOUT);
        self.setup_tap(host);
        wait_socket(&mut qemu);
        qemu
    }

    /// A second guest at `host` booted without `-incoming`: a destination that does not
    /// wait for a migration.
    pub fn not_waiting(&self, host: Host, params: &BootParams) -> Qemu {
        let mut qemu = Qemu::start(self.qemu_options("busy", host, params));
        qemu.wait_tap(QEMU_TIMEOUT);
        wait_socket(&mut qemu);
        qemu
    }

    /// Creates the tap at `host` before any QEMU (a persistent one, which a hypervisor
    /// such as libvirt opens by name without creating it: `<target dev='tap0'
    /// managed='no'/>`), and prepares it as [`VmWorld::boot`] prepares QEMU's.
    pub fn prepare_tap(&self, host: Host) {
        self.world
            .ns(host.node())
            .ip(&["tuntap", "add", "dev", TAP, "mode", "tap", "vnet_hdr"]);
        self.setup_tap(host);
    }

    /// Prepares the tap QEMU created at `host`: the shared MAC, proxy ARP answering at
    /// once, no reverse-path filter, a queue long enough for what arrives while the guest is paused (a tap holds 500
    /// packets by default: half a second of the 1 ms probes, less with the TCP traffic),
    /// up, the host route to the VA, and netpage on the virtual side as the owner of the
    /// VA (if it translates). In the stretched world, a port of the host's bridge instead
    /// ([`stretch::join`]).
    fn setup_tap(&self, host: Host) {
        if self.plumbing == Plumbing::Stretch {
            stretch::join(&self.world, host);
            return;
        }
        let ns = self.world.ns(host.node());
        ns.sysctls(&[
            (format!("net.ipv4.conf.{TAP}.proxy_arp"), "1"),
            (format!("net.ipv4.neigh.{TAP}.proxy_delay"), "0"),
            (format!("net.ipv4.conf.{TAP}.rp_filter"), "0"),
        ]);
        ns.ip(&["link", "set", TAP, "address", TAP_MAC]);
        ns.ip(&["link", "set", TAP, "txqueuelen", TAP_QUEUE]);
        ns.ip(&["link", "set", TAP, "up"]);
        ns.ip(&["route", "replace", &format!("{VA}/32"), "dev", TAP]);
        if matches!(self.plumbing, Plumbing::Netpage | Plumbing::Segments) {
            // The tap owns the guest's VA before the guest sends from it: at the
            // destination of a migration, before the migration starts.
            let va = VA.to_string();
            self.world.netpage_ok(
                host.node(),
                &["attach", TAP, "--side", "virtual", "--vm", &va],
            );
        }
    }

    /// The pin directory of every edge, gateway first: the order `migrate` switches them.
    pub fn nodes(&self) -> Vec<String> {
        self.nodes_in(&Node::EDGES)
    }

    /// The pin directories of `order`'s nodes, in that order.
    pub fn nodes_in(&self, order: &[Node]) -> Vec<String> {
        order
            .iter()
            .map(|n| self.world.pin_dir(*n).display().to_string())
            .collect()
    }

    /// Runs `netpage --json migrate` as [`VmWorld::migrate_with`] does, its `--node`s in
    /// `order` (the order in which it updates their V2R entries).
    pub fn migrate_in_order(&self, call: &MigrateCall, order: &[Node], extra: &[&str]) -> Output {
        let nodes = self.nodes_in(order);
        let mut args: Vec<&str> = Vec::new();
        for node in &nodes {
            args.extend(["--node", node]);
        }
        args.extend(extra);
        self.migrate_by(Command::new(netpage_bin()), call, &args)
    }

    /// Runs `netpage --json migrate` from the root namespace with the usual arguments from
    /// `src` to `dst` (at `to`), plus `extra`; returns its output as is.
    pub fn migrate(&self, src: &Qemu, dst: &Qemu, to: Host, extra: &[&str]) -> Output {
        self.migrate_with(&MigrateCall::usual(src, dst, to), extra)
    }

    /// Runs `netpage --json migrate` as `call` says, with every edge as a node, the
    /// destination's neighbour entry and a drain of 1 s, plus `extra`.
    pub fn migrate_with(&self, call: &MigrateCall, extra: &[&str]) -> Output {
        self.migrate_in_order(call, &Node::EDGES, extra)
    }

    /// Runs `NETPAGE --json migrate` as `call` says, with the destination's neighbour
    /// entry and a drain of 1 s, plus `extra`: `netpage` is the command with the
    /// arguments that say which page tables switch (`--etcd URLS`, or `--node DIR`s).
    pub fn migrate_by(&self, cmd: Command, call: &MigrateCall, extra: &[&str]) -> Output {
        output(&mut self.migrate_command(cmd, call, extra))
    }

    /// `netpage --json migrate` as [`VmWorld::migrate_with`] runs it, not yet started
    /// (to be signalled or killed while it runs).
    pub fn migrate_nodes_command(&self, call: &MigrateCall, extra: &[&str]) -> Command {
        let mut args: Vec<&str> = Vec::new();
        let nodes = self.nodes();
        for node in &nodes {
            args.extend(["--node", node]);
        }
        args.extend(extra);
        self.migrate_command(Command::new(netpage_bin()), call, &args)
    }

    /// `cmd` with the arguments of [`VmWorld::migrate_by`], not yet started.
    pub fn migrate_command(&self, mut cmd: Command, call: &MigrateCall, extra: &[&str]) -> Command {
        cmd.args(["--json", "migrate", "--vm", &call.vm, "--to", &call.to])
            .arg("--src-qmp")
            .arg(&call.src_qmp)
            .arg("--dst-qmp")
            .arg(&call.dst_qmp)
            .args(["--uri", &migration_uri(call.dst_host)]);
        let neigh = format!("{TAP}@{}", self.netns(call.dst_host));
        cmd.args(["--dst-neigh", &neigh])
            .args(["--drain", "1"])
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(extra);
        cmd
    }

    /// Runs `netpage ARGS` from the root namespace; returns its output as is.
    pub fn netpage(&self, args: &[&str]) -> Output {
        output(Command::new(netpage_bin()).args(args))
    }

    /// Packets translated by the VA's mapping at `host` (`netpage --json stats --vm VA`).
    pub fn mapped_packets(&self, host: Host) -> u64 {
        let stats = self
            .world
            .netpage_json(host.node(), &["stats", "--vm", &VA.to_string()]);
        stats["mappings"][0]["packets"]
            .as_u64()
            .unwrap_or_else(|| panic!("no packet count in {stats}"))
    }

    /// Every edge's table: `map list --json`, the reverse entries and the drains.
    pub fn tables(&self) -> Vec<TableSnapshot> {
        Node::EDGES
            .iter()
            .map(|&node| {
                let map_list = self.world.netpage_json(node, &["map", "list"]);
                let open = PinnedNode::new(self.world.pin_dir(node))
                    .open()
                    .unwrap_or_else(|e| panic!("open the table of {node:?}: {e}"));
                let mut reverse = open.table.reverse_entries().expect("reverse entries");
                reverse.sort();
                let mut drains: Vec<IpAddr> = open
                    .table
                    .drains()
                    .expect("drains")
                    .iter()
                    .map(|d| d.real)
                    .collect();
                drains.sort();
                TableSnapshot {
                    map_list,
                    reverse,
                    drains,
                }
            })
            .collect()
    }

    /// A TCP connection from the client to the guest's echo service.
    pub fn echo_stream(&self) -> TcpStream {
        let addr = SocketAddr::new(VA.into(), ECHO_PORT);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self
                .world
                .tcp_connect(Node::Client, addr, Duration::from_secs(3))
            {
                Ok(s) => {
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
                    s.set_nodelay(true).unwrap();
                    return s;
                }
                Err(e) if Instant::now() < deadline => {
                    eprintln!("connect to {addr}: {e}; again");
                    thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("connect to {addr}: {e}\n{}", self.world.diagnostics()),
            }
        }
    }

    /// A snapshot of `host`'s tap for a failing test's message: its counters, queue,
    /// neighbours and routes, and netpage's counters there.
    pub fn tap_diagnostics(&self, host: Host) -> String {
        let ns = self.world.ns(host.node());
        let mut d = String::new();
        for args in [
            &["-s", "link", "show", TAP][..],
            &["neigh", "show", "dev", TAP],
            &["-s", "neigh", "show"],
            &["route"],
        ] {
            let out = ns.exec("ip", args);
            d += &format!(
                "== host {host:?}: ip {}\n{}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let out = ns.exec("tc", &["-s", "qdisc", "show", "dev", TAP]);
        d += &format!(
            "== host {host:?}: tc -s qdisc show dev {TAP}\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        // Packets dropped while their next hop's address was being resolved. The kernel
        // keeps these counters for all namespaces together and shows them only in the
        // first one (a namespace has no /proc/net/stat/arp_cache), where this runs.
        for table in ["arp_cache", "ndisc_cache"] {
            let path = format!("/proc/net/stat/{table}");
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| format!("{e}\n"));
            d += &format!("== {path} (all namespaces, per CPU, hexadecimal)\n{text}");
        }
        let out = self.world.netpage(host.node(), &["stats"]);
        d += &format!(
            "== host {host:?}: netpage stats\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        d
    }

    /// The guest's own network counters (device, IP, ICMP, TCP, softnet, neighbours and
    /// the end of its kernel log), fetched from its web server by the client; the error
    /// instead if they cannot be.
    pub fn guest_counters(&self) -> String {
        let addr = SocketAddr::new(VA.into(), HTTP_PORT);
        let fetch = || -> std::io::Result<String> {
            let mut stream = self
                .world
                .tcp_connect(Node::Client, addr, Duration::from_secs(3))?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            write!(
                stream,
                "GET {COUNTERS_PATH} HTTP/1.0\r\nHost: guest\r\n\r\n"
            )?;
            let mut reply = String::new();
            stream.read_to_string(&mut reply)?;
            Ok(reply)
        };
        match fetch() {
            Ok(reply) => format!("== the guest's counters\n{reply}"),
            Err(e) => format!("== the guest's counters: http://{addr}{COUNTERS_PATH}: {e}\n"),
        }
    }

    /// Whether the client can open a connection to the guest's echo service within `timeout`.
    pub fn echo_reachable(&self, timeout: Duration) -> bool {
        let addr = SocketAddr::new(VA.into(), ECHO_PORT);
        self.world.tcp_connect(Node::Client, addr, timeout).is_ok()
    }
}

impl Drop for VmWorld {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

impl Default for VmWorld {
    fn default() -> Self {
        Self::new()
    }
}

/// Writes `line` and reads back exactly as many bytes, which must be the same.
pub fn echo_line(stream: &mut TcpStream, line: &str) {
    stream
        .write_all(line.as_bytes())
        .unwrap_or_else(|e| panic!("send {line:?}: {e}"));
    let mut back = vec![0u8; line.len()];
    stream
        .read_exact(&mut back)
        .unwrap_or_else(|e| panic!("echo of {line:?}: {e}"));
    assert_eq!(String::from_utf8_lossy(&back), line, "echo differs");
}

/// Waits until QEMU has created its QMP socket.
fn wait_socket(qemu: &mut Qemu) {
    let deadline = Instant::now() + QEMU_TIMEOUT;
    while !qemu.qmp_path().exists() {
        qemu.assert_alive();
        assert!(
            Instant::now() < deadline,
            "no QMP socket from qemu after {QEMU_TIMEOUT:?}\n{}",
            qemu.diagnostics()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The run state of the QEMU whose QMP socket is `path` (connecting only for this).
pub fn run_state(path: &Path) -> RunState {
    runtime().block_on(async {
        let mut qmp = Qmp::connect(path, QEMU_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        qmp.query_status()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .status
    })
}

/// Sets the migration capability `name` of the QEMU whose QMP socket is `path`.
pub fn set_capability(path: &Path, name: &str, state: bool) {
    runtime().block_on(async {
        let mut qmp = Qmp::connect(path, QEMU_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        qmp.migrate_set_capabilities(&[(name, state)])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    })
}

/// The downtime limit (ms) of the QEMU whose QMP socket is `path`.
pub fn downtime_limit(path: &Path) -> u64 {
    runtime().block_on(async {
        let mut qmp = Qmp::connect(path, QEMU_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let params: serde_json::Value = qmp
            .execute("query-migrate-parameters", serde_json::Value::Null)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        params["downtime-limit"]
            .as_u64()
            .unwrap_or_else(|| panic!("no downtime-limit in {params}"))
    })
}

/// The last migration's status and figures, from the QEMU whose QMP socket is `path`.
pub fn query_migrate(path: &Path) -> MigrationInfo {
    runtime().block_on(async {
        let mut qmp = Qmp::connect(path, QEMU_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        qmp.query_migrate().await.unwrap_or_else(|e| panic!("{e}"))
    })
}

/// Migrates `src` to `uri` over QMP alone, without netpage, with the given downtime limit,
/// and waits (on QEMU's events, sending no command meanwhile, as `netpage migrate` does)
/// until it has ended.
pub fn migrate_by_qmp(src: &Qemu, uri: &str, downtime_limit_ms: u64) -> MigrationInfo {
    runtime().block_on(async {
        let mut qmp = Qmp::connect(src.qmp_path(), QEMU_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        qmp.enable_migration_events()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let params = MigrationParameters {
            downtime_limit: Some(downtime_limit_ms),
            ..MigrationParameters::default()
        };
        qmp.migrate_set_parameters(&params)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        qmp.migrate(uri).await.unwrap_or_else(|e| panic!("{e}"));
        let mut seen = Vec::new();
        qmp.wait_event(Duration::from_secs(60), &mut seen, |e| {
            e.migration_status().is_some_and(|s| s.is_final())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}; events: {seen:?}"));
        let mut info = qmp.query_migrate().await.unwrap_or_else(|e| panic!("{e}"));
        for _ in 0..10 {
            if info.downtime.unwrap_or(0) > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            info = qmp.query_migrate().await.unwrap_or_else(|e| panic!("{e}"));
        }
        info
    })
}

/// What [`assert_guest_alive`] says when the guest's kernel died at the destination.
pub const GUEST_CRASH: &str = "the guest's kernel panicked at the destination";

/// What a test says when every probe it lost outside the pause went in to the destination
/// guest on its tap intact, after RESUME, and was never answered (see
/// [`tap_capture::Capture::delivered_unanswered_after`]), or when the guest's own counters
/// say it took every probe and left the lost ones unanswered (see
/// [`guest_echoes::GuestEchoes::explain`]): lost past the network, in the hypervisor or
/// the guest.
pub const GUEST_LOSS: &str =
    "the destination guest lost probes that reached its tap intact after RESUME";

/// Runs `f` once more if it failed for the guest's own fault at the destination, not the
/// network's: its kernel died (QEMU 7.2's own fault under TCG, see
/// [`bench::DOWNTIME_LIMIT_MS`]) or it lost what its tap had delivered ([`GUEST_LOSS`]).
/// It prints the first failure whole, with its evidence; any other failure fails at once.
pub fn retrying_a_guest_fault<T>(f: impl Fn() -> T) -> T {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(&f)) {
        Ok(done) => done,
        Err(e) => {
            let why = e
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| e.downcast_ref::<&str>().copied())
                .unwrap_or("");
            if !why.contains(GUEST_CRASH) && !why.contains(GUEST_LOSS) {
                std::panic::resume_unwind(e);
            }
            println!("note: {why}\nnote: migrating a new guest once more");
            f()
        }
    }
}

/// Panics, saying so, if the guest's kernel died at the destination `dst` after a
/// migration of `passes` passes: the test cannot tell anything about the network then.
pub fn assert_guest_alive(dst: &Qemu, passes: &dyn std::fmt::Display) {
    let serial = dst.serial_log();
    assert!(
        !serial.contains("Kernel panic"),
        "{GUEST_CRASH} after a migration of {passes} passes \
         (guest memory arrived inconsistent; seen with QEMU 7.2 under TCG when a second live \
         pass runs, with or without netpage)\n{}",
        dst.diagnostics()
    );
}
