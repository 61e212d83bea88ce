//! `netpage agent` processes for the directory tests: one per node, each with its own pin
//! directory, started and killed on demand, and the checks that a node's kernel table
//! equals the directory entry by entry.

use std::{
    collections::BTreeMap,
    fs::File,
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use netpage::{
    directory::{Directory, EtcdOptions},
    node::Node,
    table::PageTable,
};

use crate::{netns::output, world::netpage_bin};

/// Entries per table of the agents' nodes: small, so that 16 nodes stay light.
pub const CAPACITY: &str = "4096";

/// A bpffs of the test's own, holding the pin directories of its nodes; unmounted on drop.
pub struct PinRoot {
    dir: PathBuf,
}

impl PinRoot {
    pub fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "np-dir-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let out = output(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&dir));
        assert!(
            out.status.success(),
            "mount bpffs at {}: {out:?}",
            dir.display()
        );
        Self { dir }
    }

    /// The pin directory of node `name`.
    pub fn node(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Default for PinRoot {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PinRoot {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// One agent.
struct Agent {
    name: String,
    pin_dir: PathBuf,
    child: Option<Child>,
    log: PathBuf,
}

/// Agents of a directory, killed on drop.
pub struct Agents {
    etcd_args: Vec<String>,
    agents: Vec<Agent>,
    /// Extra arguments for every agent (such as `--lease-ttl`).
    extra: Vec<String>,
}

impl Agents {
    /// Starts one agent per `(name, pin dir)`, reaching etcd with `etcd_args` (`--etcd
    /// URLS` and TLS options), and waits until every one is registered and synced.
    pub fn start(etcd_args: &[String], nodes: &[(String, PathBuf)]) -> Self {
        Self::start_with(etcd_args, nodes, &[])
    }

    pub fn start_with(etcd_args: &[String], nodes: &[(String, PathBuf)], extra: &[&str]) -> Self {
        let mut agents = Self {
            etcd_args: etcd_args.to_vec(),
            agents: Vec::new(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        for (name, dir) in nodes {
            let log = std::env::temp_dir().join(format!(
                "np-agent-{}-{name}-{}.log",
                std::process::id(),
                dir.display().to_string().replace('/', "_")
            ));
            agents.agents.push(Agent {
                name: name.clone(),
                pin_dir: dir.clone(),
                child: None,
                log,
            });
            let i = agents.agents.len() - 1;
            agents.spawn(i);
        }
        let names: Vec<&str> = nodes.iter().map(|(n, _)| n.as_str()).collect();
        agents.wait_registered(&names, Duration::from_secs(30));
        agents
    }

    fn index(&self, name: &str) -> usize {
        self.agents
            .iter()
            .position(|a| a.name == name)
            .unwrap_or_else(|| panic!("no agent {name}"))
    }

    fn spawn(&mut self, i: usize) {
        self.spawn_with(i, None)
    }

    /// Starts agent `i`, in network namespace `netns` if given.
    fn spawn_with(&mut self, i: usize, netns: Option<&str>) {
        let a = &self.agents[i];
        let log = File::options()
            .create(true)
            .append(true)
            .open(&a.log)
            .unwrap();
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}")).arg(netpage_bin());
                c
            }
            None => Command::new(netpage_bin()),
        };
        cmd.args(&self.etcd_args)
            .arg("--pin-dir")
            .arg(&a.pin_dir)
            .args(["agent", "--node", &a.name, "--capacity", CAPACITY])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = cmd.spawn().expect("start netpage agent");
        self.agents[i].child = Some(child);
    }

    /// Kills agent `name` with SIGKILL.
    pub fn kill9(&mut self, name: &str) {
        let i = self.index(name);
        if let Some(mut c) = self.agents[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops agent `name` with SIGTERM and waits for it; returns its exit status.
    pub fn terminate(&mut self, name: &str) -> std::process::ExitStatus {
        let i = self.index(name);
        let mut c = self.agents[i].child.take().expect("agent running");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        c.wait().unwrap()
    }

    /// Starts agent `name` again (after a kill), optionally inside a network namespace.
    pub fn restart(&mut self, name: &str, netns: Option<&str>) {
        let i = self.index(name);
        assert!(self.agents[i].child.is_none(), "agent {name} still runs");
        self.spawn_with(i, netns);
    }

    /// The log of agent `name`.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(&self.agents[self.index(name)].log).unwrap_or_default()
    }

    /// Every agent's name and pin directory.
    pub fn nodes(&self) -> Vec<(String, PathBuf)> {
        self.agents
            .iter()
            .map(|a| (a.name.clone(), a.pin_dir.clone()))
            .collect()
    }

    /// Waits until `names` are registered in the directory.
    pub fn wait_registered(&self, names: &[&str], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let listed = self.registered();
            if names.iter().all(|n| listed.contains_key(*n)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "agents not registered after {timeout:?}: have {:?}\n{}",
                listed.keys().collect::<Vec<_>>(),
                self.logs()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The registered nodes and their applied revisions.
    pub fn registered(&self) -> BTreeMap<String, i64> {
        let out = self.netpage(&["--json", "nodes"]);
        if !out.status.success() {
            return BTreeMap::new();
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                (
                    n["node"].as_str().unwrap().to_owned(),
                    n["applied_revision"].as_i64().unwrap(),
                )
            })
            .collect()
    }

    /// Every agent's log, for failure messages.
    pub fn logs(&self) -> String {
        self.agents
            .iter()
            .map(|a| format!("--- agent {}:\n{}", a.name, self.log(&a.name)))
            .collect()
    }

    /// Runs `netpage ETCD_ARGS ARGS`.
    pub fn netpage(&self, args: &[&str]) -> Output {
        output(Command::new(netpage_bin()).args(&self.etcd_args).args(args))
    }

    /// Runs `netpage --json ETCD_ARGS ARGS`, which must succeed, and parses its output.
    pub fn netpage_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.netpage(&[&["--json"], args].concat());
        assert!(
            out.status.success(),
            "netpage {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        for a in &mut self.agents {
            if let Some(mut c) = a.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            let _ = std::fs::remove_file(&a.log);
        }
    }
}

/// A node's kernel table: (V2R, R2V), each sorted.
pub type Tables = (Vec<(IpAddr, IpAddr)>, Vec<(IpAddr, IpAddr)>);

/// The kernel table of the node pinned at `dir`.
pub fn node_tables(dir: &Path) -> Tables {
    let n = Node::new(dir).open().expect("open the node");
    let mut f = n.table.forward_entries().unwrap();
    let mut r = n.table.reverse_entries().unwrap();
    f.sort();
    r.sort();
    (f, r)
}

/// The directory's table, read with netpage's own client.
pub fn directory_tables(opts: &EtcdOptions) -> Tables {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let view = Directory::connect(opts)
            .await
            .unwrap()
            .view()
            .await
            .unwrap();
        let mut f = view.forward_entries().unwrap();
        let mut r = view.reverse_entries().unwrap();
        f.sort();
        r.sort();
        (f, r)
    })
}

/// Waits until every node's kernel table equals the directory's, entry by entry; panics
/// naming the first node that differs.
pub fn wait_converged(opts: &EtcdOptions, nodes: &[(String, PathBuf)], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let want = directory_tables(opts);
        let differ = nodes
            .iter()
            .map(|(name, dir)| (name, node_tables(dir)))
            .find(|(_, have)| *have != want);
        let Some((name, have)) = differ else { return };
        assert!(
            Instant::now() < deadline,
            "node {name} differs from the directory after {timeout:?}:\n node: {have:?}\n directory: {want:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}
