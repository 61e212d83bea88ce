//! The world's WAN variant ([`super::Options::wan`]): the links between sites pass through
//! a delay line, whose counters tests read per direction.

use super::{
    Node, World,
    topology::{End, HOST_LINK, WIRES},
};
use crate::{
    netns::NetNs,
    wan::{DelayLine, Flow},
};

/// Whether the link between `a` and `b` joins two sites (every link but the client's),
/// and so runs through the delay line.
pub fn between_sites(a: &End, b: &End) -> bool {
    a.node != Node::Client && b.node != Node::Client
}

/// The name, in the delay line's namespace, of the veth end facing `e`.
pub fn wan_end(e: &End) -> String {
    format!("w{}", e.ifname)
}

impl World {
    /// The delay line's namespace, if the world has one.
    pub(super) fn wan_namespace(&self) -> Option<NetNs> {
        self.options
            .wan
            .map(|_| DelayLine::namespace(&format!("{}-wan", self.prefix)))
    }

    /// Starts relaying between the ends in `ns` of every link between sites.
    pub(super) fn start_wan(&mut self, ns: NetNs) {
        let wan = self.options.wan.expect("a world with a delay line");
        let ends: Vec<(String, String)> = self
            .wan_links()
            .iter()
            .map(|(a, b)| (wan_end(a), wan_end(b)))
            .collect();
        let pairs: Vec<(&str, &str)> = ends.iter().map(|(a, b)| (&**a, &**b)).collect();
        let line = DelayLine::start(ns, &pairs, wan).unwrap_or_else(|e| panic!("{e:#}"));
        self.wan = Some(line);
    }

    /// The links that run through the delay line.
    fn wan_links(&self) -> Vec<&'static (End, End)> {
        let mut links: Vec<_> = WIRES.iter().filter(|(a, b)| between_sites(a, b)).collect();
        if self.options.host_link {
            links.push(&HOST_LINK);
        }
        links
    }

    /// The delay line between the sites. Panics if the world has none.
    pub fn delay_line(&self) -> &DelayLine {
        self.wan
            .as_ref()
            .expect("a world without a delay line (Options::wan)")
    }

    /// What the delay line carried and dropped from `from` toward `to`, two nodes joined by
    /// a link between sites (the gateway and a host, or the two hosts).
    pub fn wan_flow(&self, from: Node, to: Node) -> Flow {
        let end = self
            .wan_links()
            .into_iter()
            .find_map(|(a, b)| match (a.node, b.node) {
                (x, y) if (x, y) == (from, to) => Some(a),
                (x, y) if (y, x) == (from, to) => Some(b),
                _ => None,
            })
            .unwrap_or_else(|| {
                panic!(
                    "no link through the delay line joins {} and {}",
                    from.name(),
                    to.name()
                )
            });
        self.delay_line().flow(&wan_end(end))
    }

    /// The delay line's settings and counters, for [`World::diagnostics`] (empty without
    /// one).
    pub(super) fn wan_diagnostics(&self) -> String {
        let Some(line) = &self.wan else {
            return String::new();
        };
        let mut d = format!("== delay line {:?}\n", line.wan());
        if let Some(e) = line.failure() {
            return d + &format!("stopped: {e}\n");
        }
        for (a, b) in self.wan_links() {
            for (from, to) in [(a, b), (b, a)] {
                let flow = line.flow(&wan_end(from));
                d += &format!("{} -> {}: {flow:?}\n", from.node.name(), to.node.name());
            }
        }
        d
    }
}
