//! Driving the `netpage` command on the world's edge nodes: attach, map, switch, stats, and
//! a failing test's snapshot of the world.

use std::{
    io::{BufRead, BufReader},
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
};

use super::{Host, Node, V4, V6, Vm, World};
use crate::netns::{assert_ok, output};

/// The `netpage` binary: `$NETPAGE_BIN`, else `netpage` in the cargo target directory of
/// the running executable (`target/<profile>/` or its `deps/`).
pub fn netpage_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("NETPAGE_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("the running executable's path");
    let mut dir = exe
        .parent()
        .expect("the executable's directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("netpage");
    assert!(
        bin.is_file(),
        "no netpage binary at {}: build it first (cargo build -p netpage-user) or set NETPAGE_BIN",
        bin.display()
    );
    bin
}

/// Runs `netpage --pin-dir DIR ARGS` here (in no node's namespace), whatever its exit.
pub fn netpage_at(dir: &Path, args: &[&str]) -> Output {
    output(
        Command::new(netpage_bin())
            .arg("--pin-dir")
            .arg(dir)
            .args(args),
    )
}

/// Starts `netpage` as `cmd` says with the test hook that stops it at `step`
/// (`NETPAGE_TEST_PAUSE_AT`, honoured by debug builds), and returns once it is there,
/// holding whatever it holds at that step: kill it to see what the step leaves.
pub fn paused_at(mut cmd: Command, step: &str) -> Child {
    let mut child = cmd
        .env("NETPAGE_TEST_PAUSE_AT", step)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start netpage");
    let mut stderr = BufReader::new(child.stderr.take().expect("piped"));
    let mut line = String::new();
    stderr.read_line(&mut line).expect("read netpage's stderr");
    assert_eq!(
        line.trim(),
        format!("netpage: paused at {step}"),
        "netpage {cmd:?} did not stop at {step} (a release build of netpage?)"
    );
    child
}

impl World {
    /// Runs `netpage --pin-dir <node's dir> ARGS` inside `node`; returns the output as is.
    pub fn netpage(&self, node: Node, args: &[&str]) -> Output {
        output(&mut self.netpage_command(node, args))
    }

    /// Like [`World::netpage`], panicking with stdout and stderr unless it succeeds;
    /// returns stdout.
    pub fn netpage_ok(&self, node: Node, args: &[&str]) -> String {
        let out = self.netpage(node, args);
        assert_ok(
            &out,
            &format!("netpage {} on {}", args.join(" "), node.name()),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `netpage --json ARGS` on `node`, which must succeed, and parses its output.
    pub fn netpage_json(&self, node: Node, args: &[&str]) -> serde_json::Value {
        let json: Vec<&str> = ["--json"].iter().chain(args).copied().collect();
        let out = self.netpage_ok(node, &json);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("netpage {json:?} on {node:?}: not JSON ({e}):\n{out}"))
    }

    /// `netpage ARGS` on `node`, stopped at `step` (see [`paused_at`]).
    pub fn netpage_paused_at(&self, node: Node, args: &[&str], step: &str) -> Child {
        paused_at(self.netpage_command(node, args), step)
    }

    fn netpage_command(&self, node: Node, args: &[&str]) -> Command {
        let mut c = self.ns(node).command(netpage_bin());
        c.arg("--pin-dir").arg(self.pin_dir(node)).args(args);
        c
    }

    /// The arguments of `netpage attach` for `ifname`, on the virtual side if
    /// `virtual_side`: a VM's port also owns the VM's VAs (`--vm`), as a host attaches a
    /// VM's tap, so that the VM may send from them.
    pub fn attach_args(&self, ifname: &str, virtual_side: bool) -> Vec<String> {
        let side = if virtual_side { "virtual" } else { "physical" };
        let mut args: Vec<String> = ["attach", ifname, "--side", side].map(String::from).into();
        if virtual_side {
            for vm in self.vms().into_iter().filter(|vm| vm.port() == ifname) {
                let (v4, v6) = vm.vas();
                args.extend(["--vm".into(), v4.to_string(), "--vm".into(), v6.to_string()]);
            }
        }
        args
    }

    /// Attaches netpage to `ifname` on `node`, on the virtual side if `virtual_side` (a
    /// VM's port owning its VM, see [`World::attach_args`]).
    pub fn attach(&self, node: Node, ifname: &str, virtual_side: bool) {
        let args = self.attach_args(ifname, virtual_side);
        self.netpage_ok(node, &args.iter().map(String::as_str).collect::<Vec<_>>());
    }

    /// Detaches netpage from `ifname` on `node`.
    pub fn detach(&self, node: Node, ifname: &str) {
        self.netpage_ok(node, &["detach", ifname]);
    }

    /// Every (node, interface, virtual side?) that netpage belongs on right now.
    pub fn attachments(&self) -> Vec<(Node, &'static str, bool)> {
        let mut a = vec![
            (Node::Gw, "g0", true),
            (Node::Gw, "ga", false),
            (Node::Gw, "gb", false),
            (Node::HostA, "a0", false),
            (Node::HostB, "b0", false),
        ];
        if self.options.host_link {
            a.push((Node::HostA, "ax", false));
            a.push((Node::HostB, "bx", false));
        }
        for vm in self.vms() {
            a.push((self.vm_host(vm).node(), vm.port(), true));
        }
        a
    }

    /// Asserts that every interface attached on `node` runs at `hook` (`status`).
    pub fn assert_hook(&self, node: Node, hook: &str) {
        let status = self.netpage_json(node, &["status"]);
        let interfaces = status["interfaces"].as_array().expect("status interfaces");
        assert!(
            interfaces.iter().all(|i| i["hook"] == hook),
            "not every interface at {hook}: {status}"
        );
    }

    /// Attaches netpage to every interface of [`World::attachments`].
    pub fn attach_all(&self) {
        for (node, ifname, virtual_side) in self.attachments() {
            self.attach(node, ifname, virtual_side);
        }
    }

    /// Adds the mapping `va` -> `ra` on every edge node.
    pub fn map_all(&self, va: IpAddr, ra: IpAddr) {
        let (va, ra) = (va.to_string(), ra.to_string());
        for node in Node::EDGES {
            self.netpage_ok(node, &["map", "add", "--vm", &va, "--real", &ra]);
        }
    }

    /// Gives every edge its locators in both families (see [`Node::locator`]) and the
    /// gateway's IPv4 locator as its default locator, for segmentation, and routes the
    /// hosts' locators over the host link if there is one.
    pub fn set_locators(&self) {
        self.route_locators_over_host_link();
        let default = Node::Gw.locator(&V4).to_string();
        for node in Node::EDGES {
            let (l4, l6) = (node.locator(&V4).to_string(), node.locator(&V6).to_string());
            self.netpage_ok(
                node,
                &["locator", "--own", &l4, "--own", &l6, "--default", &default],
            );
        }
    }

    /// Adds the mapping of `va` by segmentation, at `locator`, on every edge node.
    pub fn segment_all(&self, va: IpAddr, locator: IpAddr) {
        let (va, at) = (va.to_string(), locator.to_string());
        for node in Node::EDGES {
            self.netpage_ok(node, &["map", "add", "--vm", &va, "--locator", &at]);
        }
    }

    /// Switches `va` to `ra` on every edge node with one `netpage switch --node ...`:
    /// every node's reverse entry first, then every V2R update. Returns its JSON report.
    pub fn switch_all(&self, va: IpAddr, ra: IpAddr) -> serde_json::Value {
        let (va, ra) = (va.to_string(), ra.to_string());
        let dirs: Vec<String> = Node::EDGES
            .iter()
            .map(|n| self.pin_dir(*n).display().to_string())
            .collect();
        let mut args = vec!["switch", "--vm", &va, "--to", &ra];
        for d in &dirs {
            args.extend(["--node", d.as_str()]);
        }
        self.netpage_json(Node::Gw, &args)
    }

    /// Switches `va` to `ra` on `nodes` only, with one `netpage switch --node ...` and a
    /// drain of `drain` seconds: the others are left behind, as a node whose update is late.
    /// Returns its JSON report.
    pub fn switch_on(
        &self,
        nodes: &[Node],
        va: IpAddr,
        ra: IpAddr,
        drain: u32,
    ) -> serde_json::Value {
        let (va, ra, drain) = (va.to_string(), ra.to_string(), drain.to_string());
        let dirs: Vec<String> = nodes
            .iter()
            .map(|n| self.pin_dir(*n).display().to_string())
            .collect();
        let mut args = vec!["switch", "--vm", &va, "--to", &ra, "--drain", &drain];
        for d in &dirs {
            args.extend(["--node", d.as_str()]);
        }
        self.netpage_json(Node::Gw, &args)
    }

    /// `netpage metrics --listen LISTEN` on `node` with `more` arguments, started and
    /// ready (its first line on stderr names the address it serves).
    pub fn serve_metrics(&self, node: Node, listen: &str, more: &[&std::ffi::OsStr]) -> Child {
        let mut child = self
            .ns(node)
            .command(netpage_bin())
            .arg("--pin-dir")
            .arg(self.pin_dir(node))
            .args(["metrics", "--listen", listen])
            .args(more)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start netpage metrics");
        let mut line = String::new();
        BufReader::new(child.stderr.as_mut().expect("piped"))
            .read_line(&mut line)
            .expect("read netpage metrics' first line");
        assert!(
            line.contains(&format!("at http://{listen}/metrics")),
            "{line}"
        );
        child
    }

    /// The outcome counter `name` on `node` (`netpage --json stats`).
    pub fn counter(&self, node: Node, name: &str) -> u64 {
        let stats = self.netpage_json(node, &["stats"]);
        stats["counters"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("no counter {name} in the stats of {node:?}: {stats}"))
    }

    /// Moves `vm` to `to` with netpage following its port: detached on the old host before
    /// the move, attached on the virtual side at the new one after it.
    pub fn migrate(&self, vm: Vm, to: Host) {
        self.move_vm_with(
            vm,
            to,
            |from, port| self.detach(from.node(), port),
            |to, port| self.attach(to.node(), port, true),
        );
    }

    /// The packets translated by the mapping of `va` on `node` (every `*packets*` counter
    /// of `netpage --json stats --vm VA`, summed).
    pub fn mapped_packets(&self, node: Node, va: IpAddr) -> u64 {
        let stats = self.netpage_json(node, &["stats", "--vm", &va.to_string()]);
        sum_packets(&stats, false)
    }
}

impl World {
    /// A snapshot for a failing test's message: each node's links, routes and neighbors,
    /// and each edge's netpage status and stats.
    pub fn diagnostics(&self) -> String {
        let mut d = String::new();
        for (node, ns) in &self.namespaces {
            for args in [
                &["-br", "addr"][..],
                &["route"],
                &["-6", "route"],
                &["neigh"],
            ] {
                let out = ns.exec("ip", args);
                d += &format!("== {} ip {}\n{}", node.name(), args.join(" "), text(&out));
            }
            if node.is_edge() {
                for args in [&["status"][..], &["stats"]] {
                    let out = self.netpage(*node, args);
                    d += &format!("== {} netpage {}\n{}", node.name(), args[0], text(&out));
                }
            }
        }
        d += &self.wan_diagnostics();
        d
    }
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Sums the integers under keys containing "packets", anywhere in `v`.
fn sum_packets(v: &serde_json::Value, counted: bool) -> u64 {
    match v {
        serde_json::Value::Number(n) if counted => n.as_u64().unwrap_or(0),
        serde_json::Value::Array(items) => items.iter().map(|i| sum_packets(i, counted)).sum(),
        serde_json::Value::Object(fields) => fields
            .iter()
            .map(|(k, f)| sum_packets(f, counted || k.contains("packets")))
            .sum(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::sum_packets;

    #[test]
    fn sums_packet_counters_only() {
        let v = serde_json::json!({
            "vm": "198.19.0.10",
            "stats": {"to_vm_packets": 3, "from_vm_packets": 4, "to_vm_bytes": 400},
            "mappings": [{"packets": 2}]
        });
        assert_eq!(sum_packets(&v, false), 9);
    }
}
