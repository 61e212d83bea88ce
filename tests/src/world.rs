//! A small data center in network namespaces ("the world") for integration tests and demos.
//!
//! ```text
//!  client ── c0 ─ g0 ── gw ── ga ─ a0 ── hostA ── vm1 ─ eth0 ── vm   (VA 198.19.0.10)
//!                        └─── gb ─ b0 ── hostB [── vm2 ─ eth0 ── vm2 (VA 198.19.0.20)]
//!                                 [hostA ── ax ─ bx ── hostB]  (optional host link)
//! ```
//!
//! With [`Options::wan`] the links between sites (gateway to each host, host to host) run
//! through a delay line ([`crate::wan`]) in a namespace of its own; the client's link and
//! every interface of the nodes stay as they are.
//!
//! The client is 198.18.1.2 / 2001:db8:1::2. Host A's site is 198.18.10.0/24 and
//! 2001:db8:10::/64, host B's 198.18.20.0/24 and 2001:db8:20::/64; the gateway routes each to
//! its host. A VM reaches its default gateway 198.19.0.1 through proxy ARP on its host-side
//! port, and fe80::1 on that port for IPv6; the host routes the VM's VAs to the port. Every
//! name (namespaces, pin directories) carries a prefix unique to the world, interfaces live
//! only inside the world's namespaces, and everything is removed on drop, after a panic too.
//! Each edge node (gw, hostA, hostB) has its own bpffs pin directory for netpage.

mod addrs;
mod cli;
mod probe;
mod replug;
mod tools;
mod topology;
mod wan;

use std::{
    net::IpAddr,
    path::PathBuf,
    process::{Command, Output},
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
};

pub use addrs::{Addrs, BOTH, V4, V6};
pub use cli::{netpage_at, netpage_bin, paused_at};
pub use probe::{Answer, ProbeHandle, ProbeReport, Prober};
pub use replug::Plugged;
pub use tools::{Server, tcp_echo, tcp_lines, udp_echo};

use crate::{
    netns::{NetNs, check, output},
    wan::{DelayLine, Wan},
};

/// A namespace of the world.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Node {
    Client,
    Gw,
    HostA,
    HostB,
    /// The first VM.
    Vm,
    /// The second VM (only with [`Options::second_vm`]).
    Vm2,
}

impl Node {
    /// Every node, in creation order.
    pub const ALL: [Node; 6] = [
        Node::Client,
        Node::Gw,
        Node::HostA,
        Node::HostB,
        Node::Vm,
        Node::Vm2,
    ];
    /// The nodes that run netpage.
    pub const EDGES: [Node; 3] = [Node::Gw, Node::HostA, Node::HostB];

    /// The short name, used in namespace and directory names.
    pub fn name(self) -> &'static str {
        match self {
            Node::Client => "client",
            Node::Gw => "gw",
            Node::HostA => "hostA",
            Node::HostB => "hostB",
            Node::Vm => "vm",
            Node::Vm2 => "vm2",
        }
    }

    /// Whether the node is an edge that forwards and runs netpage.
    pub fn is_edge(self) -> bool {
        Self::EDGES.contains(&self)
    }

    /// The edge's locator under segmentation, in `family`'s family: a host's uplink
    /// address, the gateway's address on host A's link (which every host routes to it).
    pub fn locator(self, family: &Addrs) -> IpAddr {
        match self {
            Node::HostA => Host::A.uplink_addr(family),
            Node::HostB => Host::B.uplink_addr(family),
            Node::Gw if family.client.is_ipv4() => "198.18.3.1".parse().unwrap(),
            Node::Gw => "2001:db8:3::1".parse().unwrap(),
            _ => panic!("{self:?} is no edge"),
        }
    }
}

/// A hypervisor host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    A,
    B,
}

impl Host {
    /// The host's namespace.
    pub fn node(self) -> Node {
        match self {
            Host::A => Node::HostA,
            Host::B => Node::HostB,
        }
    }

    /// The host's uplink to the gateway.
    pub fn uplink(self) -> &'static str {
        match self {
            Host::A => "a0",
            Host::B => "b0",
        }
    }

    /// The host's address on its uplink, in `family`'s family.
    pub fn uplink_addr(self, family: &Addrs) -> IpAddr {
        let s = match (self, family.client.is_ipv4()) {
            (Host::A, true) => "198.18.3.2",
            (Host::A, false) => "2001:db8:3::2",
            (Host::B, true) => "198.18.4.2",
            (Host::B, false) => "2001:db8:4::2",
        };
        s.parse().unwrap()
    }
}

/// A virtual machine of the world.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Vm {
    /// VA 198.19.0.10 / 2001:db8:100::10, starts at host A.
    One,
    /// VA 198.19.0.20 / 2001:db8:100::20, starts at host B.
    Two,
}

impl Vm {
    /// The VM's namespace (its interface there is `eth0`).
    pub fn node(self) -> Node {
        match self {
            Vm::One => Node::Vm,
            Vm::Two => Node::Vm2,
        }
    }

    /// The host-side veth of the VM, the port netpage attaches to on the virtual side.
    pub fn port(self) -> &'static str {
        match self {
            Vm::One => "vm1",
            Vm::Two => "vm2",
        }
    }

    /// The VM's virtual address in `family`'s family.
    pub fn va(self, family: &Addrs) -> IpAddr {
        match self {
            Vm::One => family.va,
            Vm::Two => family.va2,
        }
    }

    fn vas(self) -> (IpAddr, IpAddr) {
        (self.va(&V4), self.va(&V6))
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What the world contains beyond the client, gateway, two hosts and one VM.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// A second VM, at host B.
    pub second_vm: bool,
    /// A direct link between the hosts (A `ax` 198.18.5.1 - B `bx` 198.18.5.2) over which
    /// each routes the other's site prefix, so that host-to-host traffic bypasses the gateway.
    pub host_link: bool,
    /// A delay line on every link between sites: gateway to host A, gateway to host B, and
    /// the host link if there is one (see [`World::wan_flow`]).
    pub wan: Option<Wan>,
}

/// The bpffs pin directories of the edge nodes, mounted in the root mount namespace.
struct Pins {
    base: PathBuf,
    mounted: Vec<PathBuf>,
}

impl Drop for Pins {
    fn drop(&mut self) {
        for dir in &self.mounted {
            let _ = output(Command::new("umount").arg("-l").arg(dir));
        }
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// The whole topology. Dropping it removes every namespace and pin directory.
pub struct World {
    // First: the delay line stops, and its namespace goes, before the nodes'.
    wan: Option<DelayLine>,
    prefix: String,
    options: Options,
    // Declared before `pins`: namespaces (and their XDP programs) go first.
    namespaces: Vec<(Node, NetNs)>,
    pins: Pins,
    vm_hosts: Mutex<[Host; 2]>,
    /// Whether the VMs are namespaces (false: the hosts run real guests of their own).
    namespace_vms: bool,
}

static WORLDS: AtomicU32 = AtomicU32::new(0);

impl World {
    /// The default world: client, gateway, two hosts and one VM at host A.
    pub fn new() -> Self {
        Self::with(Options::default())
    }

    /// A world with `options`.
    pub fn with(options: Options) -> Self {
        Self::build(options, true)
    }

    /// A world with `options` but no VM namespace (nor port, nor host route to a VA): the
    /// hosts are left for real guests, such as QEMU's on taps (see [`crate::vmworld`]).
    pub fn without_vms(options: Options) -> Self {
        Self::build(options, false)
    }

    fn build(options: Options, namespace_vms: bool) -> Self {
        let n = WORLDS.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("np{}x{n}", std::process::id());
        let base = PathBuf::from(format!("/tmp/netpage-world-{prefix}"));
        let mut world = World {
            wan: None,
            prefix,
            options,
            namespaces: Vec::new(),
            pins: Pins {
                base,
                mounted: Vec::new(),
            },
            vm_hosts: Mutex::new([Host::A, Host::B]),
            namespace_vms,
        };
        world.create_namespaces();
        world.wire();
        world.mount_pins();
        world
    }

    /// The prefix of every name this world made.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The options the world was made with.
    pub fn options(&self) -> Options {
        self.options
    }

    /// The namespace of `node`.
    pub fn ns(&self, node: Node) -> &NetNs {
        self.namespaces
            .iter()
            .find(|(n, _)| *n == node)
            .map(|(_, ns)| ns)
            .unwrap_or_else(|| panic!("this world has no {}", node.name()))
    }

    /// Runs `f` on a fresh thread inside `node`'s namespace; sockets made there stay there.
    pub fn in_ns<R: Send>(&self, node: Node, f: impl FnOnce() -> R + Send) -> R {
        self.ns(node).run(f)
    }

    /// Runs `program args` inside `node`'s namespace, returning its output whatever it is.
    pub fn exec(&self, node: Node, program: &str, args: &[&str]) -> Output {
        self.ns(node).exec(program, args)
    }

    /// Runs `program args` inside `node`, panicking unless it succeeds; returns stdout.
    pub fn exec_ok(&self, node: Node, program: &str, args: &[&str]) -> String {
        check(self.ns(node).command(program).args(args))
    }

    /// Whether one ICMP echo from `node` to `dst` is answered within a second.
    pub fn ping(&self, node: Node, dst: IpAddr) -> bool {
        let dst = dst.to_string();
        let out = self.exec(node, "ping", &["-c1", "-W1", "-n", &dst]);
        out.status.success()
    }

    /// The host the VM is on now.
    pub fn vm_host(&self, vm: Vm) -> Host {
        self.vm_hosts.lock().unwrap()[vm.index()]
    }

    /// The bpffs pin directory of an edge node.
    pub fn pin_dir(&self, node: Node) -> PathBuf {
        assert!(node.is_edge(), "{} runs no netpage", node.name());
        self.pins.base.join(node.name())
    }

    /// The VMs this world has.
    pub fn vms(&self) -> Vec<Vm> {
        if !self.namespace_vms {
            vec![]
        } else if self.options.second_vm {
            vec![Vm::One, Vm::Two]
        } else {
            vec![Vm::One]
        }
    }

    /// Moves the first VM to `to` (see [`World::move_vm_with`]).
    pub fn move_vm(&self, to: Host) {
        self.move_vm_with(Vm::One, to, |_, _| {}, |_, _| {});
    }

    /// Moves `vm`'s host-side port from its current host's namespace to `to`'s and sets
    /// it up there again (up, proxy ARP, fe80::1, rp_filter, offload, host routes to the
    /// VAs). Nothing else changes: the VM keeps its sockets, and the old host keeps any
    /// other state. `before(from, port)` runs before the move, `after(to, port)` after it,
    /// e.g. to detach and attach netpage, whose program the port loses on the way.
    pub fn move_vm_with(
        &self,
        vm: Vm,
        to: Host,
        before: impl FnOnce(Host, &str),
        after: impl FnOnce(Host, &str),
    ) {
        let from = self.vm_host(vm);
        assert_ne!(from, to, "{vm:?} is already at host {to:?}");
        before(from, vm.port());
        let target = self.ns(to.node()).name().to_owned();
        self.ns(from.node())
            .ip(&["link", "set", vm.port(), "netns", &target]);
        self.setup_port(vm, to);
        self.vm_hosts.lock().unwrap()[vm.index()] = to;
        after(to, vm.port());
    }

    /// Routes `vm`'s VAs on the gateway by plain routing to `host`, with no netpage: the
    /// baseline that shows the world's plumbing works.
    pub fn route_plain(&self, vm: Vm, host: Host) {
        for family in BOTH {
            let va = vm.va(&family).to_string();
            let via = host.uplink_addr(&family).to_string();
            self.ns(Node::Gw)
                .ip(&["route", "replace", &va, "via", &via]);
        }
    }

    fn create_namespaces(&mut self) {
        for node in Node::ALL {
            if (node == Node::Vm2 && !self.options.second_vm)
                || (node == Node::Vm && !self.namespace_vms)
            {
                continue;
            }
            let ns = NetNs::create(&format!("{}-{}", self.prefix, node.name()));
            self.namespaces.push((node, ns));
            let ns = &self.namespaces.last().unwrap().1;
            ns.sysctls(&topology::namespace_sysctls(node));
        }
    }

    fn mount_pins(&mut self) {
        for node in Node::EDGES {
            let dir = self.pin_dir(node);
            std::fs::create_dir_all(&dir)
                .unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
            check(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&dir));
            self.pins.mounted.push(dir);
        }
    }
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}
