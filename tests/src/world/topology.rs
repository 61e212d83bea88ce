//! The wiring of the world: which veth joins which namespaces, with which addresses and
//! routes, and how a VM's host-side port is configured wherever it lives.

use super::{Host, Node, Vm, World};
use crate::netns::NetNs;

/// One end of a veth pair.
pub struct End {
    pub node: Node,
    pub ifname: &'static str,
    /// IPv4 address with prefix length.
    pub v4: &'static str,
    /// IPv6 address with prefix length.
    pub v6: &'static str,
}

const fn end(node: Node, ifname: &'static str, v4: &'static str, v6: &'static str) -> End {
    End {
        node,
        ifname,
        v4,
        v6,
    }
}

/// The links of the world without the VMs: client-gw, gw-hostA, gw-hostB.
pub const WIRES: [(End, End); 3] = [
    (
        end(Node::Client, "c0", "198.18.1.2/24", "2001:db8:1::2/64"),
        end(Node::Gw, "g0", "198.18.1.1/24", "2001:db8:1::1/64"),
    ),
    (
        end(Node::Gw, "ga", "198.18.3.1/24", "2001:db8:3::1/64"),
        end(Node::HostA, "a0", "198.18.3.2/24", "2001:db8:3::2/64"),
    ),
    (
        end(Node::Gw, "gb", "198.18.4.1/24", "2001:db8:4::1/64"),
        end(Node::HostB, "b0", "198.18.4.2/24", "2001:db8:4::2/64"),
    ),
];

/// The optional direct link between the hosts, which keeps host-to-host traffic off the
/// gateway.
pub const HOST_LINK: (End, End) = (
    end(Node::HostA, "ax", "198.18.5.1/24", "2001:db8:5::1/64"),
    end(Node::HostB, "bx", "198.18.5.2/24", "2001:db8:5::2/64"),
);

/// Routes of each node (as `ip` batch lines) beyond those of its connected networks.
pub fn routes(node: Node) -> &'static [&'static str] {
    match node {
        Node::Client => &[
            "route add default via 198.18.1.1",
            "route add ::/0 via 2001:db8:1::1",
        ],
        Node::Gw => &[
            "route add 198.18.10.0/24 via 198.18.3.2",
            "route add 2001:db8:10::/64 via 2001:db8:3::2",
            "route add 198.18.20.0/24 via 198.18.4.2",
            "route add 2001:db8:20::/64 via 2001:db8:4::2",
        ],
        Node::HostA => &[
            "route add default via 198.18.3.1",
            "route add ::/0 via 2001:db8:3::1",
        ],
        Node::HostB => &[
            "route add default via 198.18.4.1",
            "route add ::/0 via 2001:db8:4::1",
        ],
        Node::Vm | Node::Vm2 => &[],
    }
}

/// Routes that send each host's site prefix straight over the host link.
pub fn host_link_routes(host: Host) -> &'static [&'static str] {
    match host {
        Host::A => &[
            "route add 198.18.20.0/24 via 198.18.5.2",
            "route add 2001:db8:20::/64 via 2001:db8:5::2",
        ],
        Host::B => &[
            "route add 198.18.10.0/24 via 198.18.5.1",
            "route add 2001:db8:10::/64 via 2001:db8:5::1",
        ],
    }
}

/// Routes that send the other host's locators (its uplink addresses) straight over the
/// host link, for segmentation. A packet of the encapsulation that one host forwards to
/// the other then does not cross the gateway, which may have sent it (as the default
/// locator) and would drop it, coming back with its own address as source, as a martian:
/// in a data center the edges are not transit routers either. Only worlds under
/// segmentation take them: the L2 stretch's tunnel between the same addresses needs the
/// larger MTU of the uplinks.
pub fn locator_routes(host: Host) -> &'static [&'static str] {
    match host {
        Host::A => &[
            "route add 198.18.4.2/32 via 198.18.5.2",
            "route add 2001:db8:4::2/128 via 2001:db8:5::2",
        ],
        Host::B => &[
            "route add 198.18.3.2/32 via 198.18.5.1",
            "route add 2001:db8:3::2/128 via 2001:db8:5::1",
        ],
    }
}

/// Sysctls for a fresh namespace, set before any interface exists so that every interface
/// inherits them: no DAD, no reverse-path filter, and forwarding on edge nodes.
pub fn namespace_sysctls(node: Node) -> Vec<(String, &'static str)> {
    let mut s = vec![
        ("net.ipv6.conf.all.accept_dad".into(), "0"),
        ("net.ipv6.conf.default.accept_dad".into(), "0"),
        ("net.ipv4.conf.all.rp_filter".into(), "0"),
        ("net.ipv4.conf.default.rp_filter".into(), "0"),
    ];
    if node.is_edge() {
        s.push(("net.ipv4.ip_forward".into(), "1"));
        s.push(("net.ipv6.conf.all.forwarding".into(), "1"));
    }
    s
}

/// Per-interface sysctls: no reverse-path filter, no DAD.
pub fn iface_sysctls(ifname: &str) -> Vec<(String, &'static str)> {
    vec![
        (format!("net.ipv4.conf.{ifname}.rp_filter"), "0"),
        (format!("net.ipv6.conf.{ifname}.accept_dad"), "0"),
    ]
}

/// Batch lines that address and raise one end of a veth.
pub fn end_lines(e: &End) -> Vec<String> {
    vec![
        format!("addr add {} dev {}", e.v4, e.ifname),
        format!("addr add {} dev {} nodad", e.v6, e.ifname),
        format!("link set {} up", e.ifname),
    ]
}

/// Turns off transmit checksum offload on `ifnames`, so that receivers verify checksums.
pub fn offload_off(ns: &NetNs, ifnames: &[&str]) {
    ns.run(|| {
        for ifname in ifnames {
            crate::netns::check(
                std::process::Command::new("ethtool").args(["-K", ifname, "tx", "off"]),
            );
        }
    });
}

/// Configuration of the VM itself: its VA on eth0 and default routes through the
/// (proxy-ARP and fe80::1) host port.
pub fn vm_lines(vm: Vm, ifname: &str) -> Vec<String> {
    let mut lines = vm_addr_lines(vm, ifname);
    lines.extend(vm_route_lines(ifname));
    lines
}

/// The VM's VAs on `ifname`, and the interface up.
pub fn vm_addr_lines(vm: Vm, ifname: &str) -> Vec<String> {
    let (va4, va6) = vm.vas();
    vec![
        format!("addr add {va4}/32 dev {ifname}"),
        format!("addr add {va6}/128 dev {ifname} nodad"),
        format!("link set {ifname} up"),
    ]
}

/// The VM's default routes through `ifname` (replacing those through another interface).
pub fn vm_route_lines(ifname: &str) -> Vec<String> {
    vec![
        format!("route replace 198.19.0.1 dev {ifname}"),
        "route replace default via 198.19.0.1".into(),
        format!("route replace ::/0 via fe80::1 dev {ifname}"),
    ]
}

/// Sysctls of a VM's host-side port: proxy ARP answering at once, plus [`iface_sysctls`].
pub fn port_sysctls(port: &str) -> Vec<(String, &'static str)> {
    let mut s = iface_sysctls(port);
    s.push((format!("net.ipv4.conf.{port}.proxy_arp"), "1"));
    s.push((format!("net.ipv4.neigh.{port}.proxy_delay"), "0"));
    s
}

/// Batch lines for a VM's host-side port: up, fe80::1, and host routes to the VM's VAs.
pub fn port_lines(vm: Vm) -> Vec<String> {
    let port = vm.port();
    let (va4, va6) = vm.vas();
    vec![
        format!("link set {port} up"),
        format!("addr add fe80::1/64 dev {port} nodad"),
        format!("route add {va4}/32 dev {port}"),
        format!("route add {va6}/128 dev {port}"),
    ]
}

impl World {
    /// Creates and configures every link, route and VM of the world.
    pub(super) fn wire(&mut self) {
        let wan = self.wan_namespace();
        for (a, b) in &WIRES {
            self.veth(
                a,
                b,
                wan.as_ref().filter(|_| super::wan::between_sites(a, b)),
            );
        }
        if self.options.host_link {
            self.veth(&HOST_LINK.0, &HOST_LINK.1, wan.as_ref());
        }
        if let Some(ns) = wan {
            self.start_wan(ns);
        }
        for node in [Node::Client, Node::Gw, Node::HostA, Node::HostB] {
            self.batch(node, routes(node));
        }
        if self.options.host_link {
            self.batch(Node::HostA, host_link_routes(Host::A));
            self.batch(Node::HostB, host_link_routes(Host::B));
        }
        for vm in self.vms() {
            self.create_vm(vm);
        }
        for (_, ns) in &self.namespaces {
            ns.wait_up();
        }
    }

    /// (Re)configures `vm`'s host-side port in `host`'s namespace.
    pub(super) fn setup_port(&self, vm: Vm, host: Host) {
        let ns = self.ns(host.node());
        ns.sysctls(&port_sysctls(vm.port()));
        offload_off(ns, &[vm.port()]);
        ns.ip_batch(&port_lines(vm));
        ns.wait_up();
        self.ns(vm.node()).wait_up();
    }

    /// Routes each host's locators to the other over the host link, if the world has one
    /// (see [`locator_routes`]).
    pub fn route_locators_over_host_link(&self) {
        if self.options.host_link {
            self.batch(Node::HostA, locator_routes(Host::A));
            self.batch(Node::HostB, locator_routes(Host::B));
        }
    }

    fn batch(&self, node: Node, lines: &[&str]) {
        let lines: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        self.ns(node).ip_batch(&lines);
    }

    /// A veth pair between `a` and `b`, or with `wan`, one from each to the delay line's
    /// namespace (see [`super::wan`]); either way `a` and `b` are configured alike.
    fn veth(&self, a: &End, b: &End, wan: Option<&NetNs>) {
        match wan {
            None => self
                .ns(a.node)
                .veth(a.ifname, b.ifname, Some(self.ns(b.node))),
            Some(middle) => {
                for e in [a, b] {
                    self.ns(e.node)
                        .veth(e.ifname, &super::wan::wan_end(e), Some(middle));
                }
            }
        }
        for e in [a, b] {
            let ns = self.ns(e.node);
            ns.sysctls(&iface_sysctls(e.ifname));
            offload_off(ns, &[e.ifname]);
            ns.ip_batch(&end_lines(e));
        }
        if wan.is_some() {
            self.neighbours_across(a, b);
            self.neighbours_across(b, a);
        }
    }

    /// Gives end `a` of a link through the delay line a permanent neighbour entry for each
    /// of `b`'s addresses. The delay line stands for the distance between sites, but a
    /// node's next hop is local in a real site: resolved at once, and kept resolved by
    /// the site's traffic. Resolving across the delay line would take its round trip,
    /// while the kernel holds the first packets to that next hop in a queue that drops its
    /// oldest when full (`unres_qlen_bytes`): a burst after an idle time, such as a
    /// migrated guest's answers to what was queued for it during the pause, lost its first
    /// packets there, a loss of the test world, not of the network it models.
    fn neighbours_across(&self, a: &End, b: &End) {
        let json = self.ns(b.node).ip(&["-j", "link", "show", b.ifname]);
        let link: serde_json::Value = serde_json::from_str(&json).expect("ip -j link show");
        let mac = link[0]["address"]
            .as_str()
            .unwrap_or_else(|| panic!("no address of {}: {json}", b.ifname))
            .to_owned();
        let lines: Vec<String> = [b.v4, b.v6]
            .iter()
            .map(|addr| {
                let addr = addr.split('/').next().expect("an address");
                format!(
                    "neigh replace {addr} lladdr {mac} dev {} nud permanent",
                    a.ifname
                )
            })
            .collect();
        self.ns(a.node).ip_batch(&lines);
    }

    fn create_vm(&self, vm: Vm) {
        let host = self.vm_host(vm);
        self.vm_veth(vm, host, "eth0");
        self.ns(vm.node()).ip_batch(&vm_lines(vm, "eth0"));
        self.setup_port(vm, host);
    }

    /// A veth from `vm` (its end `ifname`, with the VM's sysctls and offload off) to
    /// `host` (its end `vm.port()`, not yet configured).
    pub(super) fn vm_veth(&self, vm: Vm, host: Host, ifname: &str) {
        let vm_ns = self.ns(vm.node());
        vm_ns.veth(ifname, vm.port(), Some(self.ns(host.node())));
        vm_ns.sysctls(&iface_sysctls(ifname));
        offload_off(vm_ns, &[ifname]);
    }
}
