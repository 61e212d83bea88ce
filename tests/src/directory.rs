//! Driving netpage's directory on etcd from the tests, the demo and the benchmark: `netpage agent`
//! processes for a set of nodes (each a pin directory of this machine), and the
//! `netpage --etcd ...` commands that change the directory and read its nodes.
//!
//! The agents run in the root network namespace: they only touch their node's pinned maps.
//! Each is a child process in a process group of its own (a terminal's Ctrl-C reaches only
//! its owner), with the signals its owner may block unblocked again, and its log in a file;
//! [`Agents`] stops them all (SIGTERM, then SIGKILL) when dropped. The tests also kill,
//! restart and partition single agents, and compare each node's kernel table with the
//! directory's, entry by entry.

use std::{
    fs::File,
    net::IpAddr,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use netpage::{
    directory::{Directory, EtcdOptions},
    node::Node,
    table::PageTable,
};

use crate::{
    etcd::Members,
    netns::{assert_ok, output},
    world::netpage_bin,
};

/// How long agents may take to apply a change before [`Agents::wait_applied`] panics.
pub const APPLY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long an agent may take to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);
/// Lines of an agent's log quoted in panic messages.
const LOG_TAIL_LINES: usize = 20;

/// How the library reaches the directory under `/netpage` that `etcd` serves.
pub fn dir_options(m: &Members) -> EtcdOptions {
    let mut o = EtcdOptions::new(&m.urls(), "/netpage");
    if let Some(tls) = m.tls() {
        o.cacert = Some(tls.ca().to_owned());
        o.cert = Some(tls.client_cert().to_owned());
        o.key = Some(tls.client_key().to_owned());
    }
    if let Some((user, password)) = m.root() {
        o.user = Some(user.to_owned());
        o.password = Some(password.to_owned());
    }
    o
}

/// `netpage --etcd URLS ...` for the directory that `etcd` serves, its arguments to follow.
pub fn netpage_etcd(etcd: &Members) -> Command {
    let mut c = Command::new(netpage_bin());
    c.args(etcd.cli_args());
    c
}

/// Runs `netpage --etcd URLS --json ARGS`, which must succeed, and parses its output.
pub fn netpage_etcd_json(etcd: &Members, args: &[&str]) -> serde_json::Value {
    let mut c = netpage_etcd(etcd);
    c.arg("--json").args(args);
    let out = output(&mut c);
    assert_ok(&out, &format!("netpage --etcd {}", args.join(" ")));
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("netpage --etcd {args:?}: not JSON ({e}):\n{text}"))
}

/// Puts `va` -> `ra` in the directory; returns the revision of the write.
pub fn map_add(etcd: &Members, va: IpAddr, ra: IpAddr) -> i64 {
    let (va, ra) = (va.to_string(), ra.to_string());
    netpage_etcd_json(etcd, &["map", "add", "--vm", &va, "--real", &ra]);
    etcd.mod_revision(&format!("/netpage/v1/map/vm/{va}"))
        .expect("the mapping just added")
}

/// `netpage --etcd URLS map add --vm VA --locator LOCATOR` (method encap); returns the
/// segment key's revision.
pub fn map_add_locator(etcd: &Members, va: IpAddr, locator: IpAddr) -> i64 {
    let (va, locator) = (va.to_string(), locator.to_string());
    netpage_etcd_json(etcd, &["map", "add", "--vm", &va, "--locator", &locator]);
    etcd.mod_revision(&format!("/netpage/v1/map/seg/{va}"))
        .expect("the mapping just added")
}

/// `netpage --etcd URLS --json switch --vm VA --to RA`, as a command to run or time.
pub fn switch_command(etcd: &Members, va: IpAddr, ra: IpAddr) -> Command {
    let mut c = netpage_etcd(etcd);
    c.args([
        "--json",
        "switch",
        "--vm",
        &va.to_string(),
        "--to",
        &ra.to_string(),
    ]);
    c
}

/// One agent: its node, and its process while it runs.
struct Agent {
    node: String,
    pin_dir: PathBuf,
    child: Option<Child>,
    log: PathBuf,
}

/// A `netpage agent` per node, stopped when dropped.
pub struct Agents {
    /// `--etcd URLS` and the TLS options.
    etcd_args: Vec<String>,
    /// Further arguments of every agent (`--capacity`, `--lease-ttl`).
    args: Vec<String>,
    agents: Vec<Agent>,
    logs: PathBuf,
}

impl Agents {
    /// Starts `netpage --etcd URLS agent --node NAME --pin-dir DIR ARGS` for each (NAME,
    /// DIR) of `nodes`; an agent creates its node's tables if it has none. `args` go to
    /// every agent (such as `--capacity N`).
    pub fn start(etcd: &Members, nodes: &[(String, PathBuf)], args: &[&str]) -> Self {
        Self::start_with(etcd.cli_args(), nodes, args)
    }

    /// [`Agents::start`] with `etcd_args` to reach etcd (as another user, say).
    pub fn start_with(etcd_args: Vec<String>, nodes: &[(String, PathBuf)], args: &[&str]) -> Self {
        let logs = std::env::temp_dir().join(format!(
            "netpage-agents-{}-{}",
            std::process::id(),
            unique()
        ));
        std::fs::create_dir_all(&logs).unwrap_or_else(|e| panic!("create {}: {e}", logs.display()));
        let mut this = Self {
            etcd_args,
            args: args.iter().map(|a| a.to_string()).collect(),
            agents: Vec::new(),
            logs,
        };
        for (node, dir) in nodes {
            this.agents.push(Agent {
                node: node.clone(),
                pin_dir: dir.clone(),
                child: None,
                log: this.logs.join(format!("{node}.log")),
            });
            this.spawn(this.agents.len() - 1, None);
        }
        this
    }

    /// Starts agent `i`, inside network namespace `netns` if given, its log appended to.
    fn spawn(&mut self, i: usize, netns: Option<&str>) {
        let a = &self.agents[i];
        let file = File::options()
            .create(true)
            .append(true)
            .open(&a.log)
            .unwrap_or_else(|e| panic!("{}: {e}", a.log.display()));
        let mut c = match netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}")).arg(netpage_bin());
                c
            }
            None => Command::new(netpage_bin()),
        };
        c.args(&self.etcd_args)
            .arg("--pin-dir")
            .arg(&a.pin_dir)
            .args(["agent", "--node", &a.node])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .process_group(0);
        // SAFETY: sigprocmask is async-signal-safe, and the set is built on the stack.
        unsafe {
            c.pre_exec(|| {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigfillset(&mut set);
                libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
                Ok(())
            });
        }
        let child = c
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the agent of {}: {e}", a.node));
        self.agents[i].child = Some(child);
    }

    fn index(&self, node: &str) -> usize {
        self.agents
            .iter()
            .position(|a| a.node == node)
            .unwrap_or_else(|| panic!("no agent of {node}"))
    }

    /// The names of the agents' nodes.
    pub fn nodes(&self) -> Vec<&str> {
        self.agents.iter().map(|a| a.node.as_str()).collect()
    }

    /// Kills the agent of `node` with SIGKILL (no chance to end its registration).
    pub fn kill(&mut self, node: &str) {
        let i = self.index(node);
        if let Some(mut child) = self.agents[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the agent of `node` with SIGTERM and returns how it exited.
    pub fn terminate(&mut self, node: &str) -> ExitStatus {
        let i = self.index(node);
        let mut child = self.agents[i].child.take().expect("the agent runs");
        // SAFETY: kill has no memory preconditions; the child is not reaped yet.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        child.wait().expect("wait for the agent")
    }

    /// Starts the agent of `node` again after [`Agents::kill`], inside network namespace
    /// `netns` if given.
    pub fn restart(&mut self, node: &str, netns: Option<&str>) {
        let i = self.index(node);
        assert!(
            self.agents[i].child.is_none(),
            "the agent of {node} still runs"
        );
        self.spawn(i, netns);
    }

    /// The whole log of the agent of `node`.
    pub fn log(&self, node: &str) -> String {
        std::fs::read_to_string(&self.agents[self.index(node)].log).unwrap_or_default()
    }

    /// Waits until every running agent is live in the directory and has applied
    /// `revision` (its `applied_revision` in `netpage --etcd nodes --json`; 0: registered
    /// at all); panics after [`APPLY_TIMEOUT`] or if an agent exits.
    pub fn wait_applied(&mut self, etcd: &Members, revision: i64) {
        let deadline = Instant::now() + APPLY_TIMEOUT;
        loop {
            self.check_running();
            let nodes = netpage_etcd_json(etcd, &["nodes"]);
            let applied = |name: &str| {
                nodes["nodes"].as_array().is_some_and(|all| {
                    all.iter().any(|n| {
                        n["node"] == name
                            && n["live"].as_bool() == Some(true)
                            && n["applied_revision"].as_i64() >= Some(revision)
                    })
                })
            };
            if self
                .agents
                .iter()
                .filter(|a| a.child.is_some())
                .all(|a| applied(&a.node))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "agents did not apply revision {revision} within {APPLY_TIMEOUT:?}: {nodes}\n{}",
                self.log_tails()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Panics, with its log, if an agent has exited.
    fn check_running(&mut self) {
        for a in &mut self.agents {
            if let Some(Ok(Some(status))) = a.child.as_mut().map(Child::try_wait) {
                panic!(
                    "the agent of {} exited ({status}):\n{}",
                    a.node,
                    tail(&a.log)
                );
            }
        }
    }

    /// The last lines of every agent's log.
    pub fn log_tails(&self) -> String {
        self.agents
            .iter()
            .map(|a| format!("== agent {}\n{}", a.node, tail(&a.log)))
            .collect()
    }

    /// Stops every agent: SIGTERM (it ends its registration, the table stays), then SIGKILL
    /// for any still running after a while.
    pub fn stop(&mut self) {
        for a in &self.agents {
            if let Some(child) = &a.child {
                // SAFETY: kill has no memory preconditions; the child is not reaped yet,
                // so its pid is still its own.
                unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            }
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        for a in &mut self.agents {
            let Some(mut child) = a.child.take() else {
                continue;
            };
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        self.stop();
        if !thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.logs);
        }
    }
}

/// A node's kernel table: (V2R, R2V), each sorted.
pub type Tables = (Vec<(IpAddr, IpAddr)>, Vec<(IpAddr, IpAddr)>);

/// The kernel table of the node pinned at `dir`.
pub fn node_tables(dir: &Path) -> Tables {
    let n = Node::new(dir).open().expect("open the node");
    sorted(&n.table)
}

/// The directory's table, read with netpage's own client.
pub fn directory_tables(opts: &EtcdOptions) -> Tables {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let mut dir = Directory::connect(opts)
            .await
            .expect("connect to the directory");
        sorted(&dir.view().await.expect("read the directory"))
    })
}

fn sorted(t: &impl PageTable) -> Tables {
    let mut f = t.forward_entries().expect("V2R");
    let mut r = t.reverse_entries().expect("R2V");
    f.sort();
    r.sort();
    (f, r)
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

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n") + "\n"
}

fn unique() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}
