//! Real etcd processes for the integration tests: one member ([`Etcd`]) or three
//! ([`EtcdCluster`]) on ports no other test takes, optionally serving clients over TLS with
//! client certificates ([`TlsFiles`]) and with users limited to a key prefix, and the faults
//! the tests inject (stop, kill, restart) with what they check against (leader, revision,
//! compaction).
//!
//! Every member runs `etcd` as a plain child process with its data directory and log under
//! the system's temporary directory; it is killed and its directory removed when the
//! harness is dropped. Heartbeat and election timeout are low (50 and 500 ms) so that
//! failovers take well under a second; everything else (no auto-compaction, at most 128
//! operations per transaction, ...) is etcd's default, which is what netpage must work with.
//!
//! The methods are synchronous, so that plain `#[test]`s can use them; each runs its client
//! requests on a runtime of its own and may be called from inside another tokio runtime too.
//! The clients ([`Members::client`] and its kin) are the exception: they are `async` and
//! bound to the caller's runtime.

use std::{
    fs::{self, File, OpenOptions},
    future::Future,
    hash::{BuildHasher, RandomState},
    io::Write,
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener},
    ops::{Deref, DerefMut},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use etcd_client::{
    Certificate, Client, CompactionOptions, ConnectOptions, GetOptions, Identity, Permission,
    TlsOptions,
};

/// The etcd server binary (Debian's `etcd-server` installs it as /usr/bin/etcd).
pub const ETCD: &str = "etcd";
/// How long a member may take to answer its first request after it is started.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a member may take to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a harness operation (put, get, status, ...) retries before it panics.
const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// One attempt of a harness operation.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// Lines of a member's log quoted in panic messages.
const LOG_TAIL_LINES: usize = 40;
/// The lowest port handed out; ports are taken below the kernel's ephemeral range, so that
/// no outgoing connection can hold one.
const FIRST_PORT: u16 = 20000;

/// Why etcd cannot run here, if it cannot.
pub fn missing_prerequisites() -> Option<String> {
    let runs = |cmd: &str, arg: &str| {
        Command::new(cmd)
            .arg(arg)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !runs(ETCD, "--version") {
        return Some(format!("{ETCD} is missing (Debian package etcd-server)"));
    }
    if !runs("openssl", "version") {
        return Some("openssl is missing (Debian package openssl)".into());
    }
    None
}

/// How to start etcd: build it with the methods, then [`EtcdOptions::start`] (one member) or
/// [`EtcdOptions::start_cluster`] (three).
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// A short name for member names, directories and messages (`etcd` unless set).
    pub name: String,
    /// The address the members serve clients on (127.0.0.1 unless set). `0.0.0.0` or an
    /// address of a veth in the root namespace makes them reachable from other namespaces.
    pub listen_ip: IpAddr,
    /// The address in the client URLs the members advertise and [`Members::endpoints`]
    /// returns: `listen_ip` unless set, or 127.0.0.1 if that is unspecified.
    pub advertise_ip: Option<IpAddr>,
    /// Whether clients must use TLS with a client certificate ([`TlsFiles`]).
    pub tls: bool,
    pub heartbeat: Duration,
    pub election_timeout: Duration,
    /// Further command-line arguments for every member.
    pub extra_args: Vec<String>,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        Self {
            name: "etcd".into(),
            listen_ip: Ipv4Addr::LOCALHOST.into(),
            advertise_ip: None,
            tls: false,
            heartbeat: Duration::from_millis(50),
            election_timeout: Duration::from_millis(500),
            extra_args: Vec::new(),
        }
    }
}

impl EtcdOptions {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_owned();
        self
    }

    pub fn listen_ip(mut self, ip: IpAddr) -> Self {
        self.listen_ip = ip;
        self
    }

    pub fn advertise_ip(mut self, ip: IpAddr) -> Self {
        self.advertise_ip = Some(ip);
        self
    }

    /// Clients must connect over TLS and present a certificate of the generated CA.
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Adds a command-line argument (such as `--max-request-bytes=2097152`) to every member.
    pub fn arg(mut self, arg: &str) -> Self {
        self.extra_args.push(arg.to_owned());
        self
    }

    /// Starts one member and waits until it serves requests.
    pub fn start(self) -> Etcd {
        Etcd(Members::start(self, 1))
    }

    /// Starts three members and waits until each serves requests.
    pub fn start_cluster(self) -> EtcdCluster {
        EtcdCluster(Members::start(self, 3))
    }

    fn advertised_ip(&self) -> IpAddr {
        match self.advertise_ip {
            Some(ip) => ip,
            None if self.listen_ip.is_unspecified() => Ipv4Addr::LOCALHOST.into(),
            None => self.listen_ip,
        }
    }

    fn scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }
}

/// A single etcd member, killed (and its data removed) when dropped.
#[derive(Debug)]
pub struct Etcd(Members);

impl Etcd {
    /// Starts a member with the default options.
    pub fn new() -> Self {
        EtcdOptions::new().start()
    }

    /// Starts a member that requires TLS with client certificates; see [`Members::tls`].
    pub fn start_tls() -> Self {
        EtcdOptions::new().tls().start()
    }

    /// Stops the member (SIGTERM, then SIGKILL if it does not exit in time) and waits for it.
    /// Its data directory and ports stay for [`Etcd::start`].
    pub fn stop(&mut self) {
        self.0.stop_member(0, libc::SIGTERM);
    }

    /// Kills the member with SIGKILL and waits for it; its data stays for [`Etcd::start`].
    pub fn kill(&mut self) {
        self.0.stop_member(0, libc::SIGKILL);
    }

    /// Starts the stopped member again on its data directory and ports and waits until it
    /// serves requests.
    pub fn start(&mut self) {
        self.0.start_member(0);
        self.0.wait_healthy(0);
    }
}

impl Default for Etcd {
    fn default() -> Self {
        Self::new()
    }
}

/// Three etcd members forming one cluster, killed (and their data removed) when dropped.
#[derive(Debug)]
pub struct EtcdCluster(Members);

impl EtcdCluster {
    /// Starts three members with the default options.
    pub fn new() -> Self {
        EtcdOptions::new().start_cluster()
    }

    /// Kills member `i` with SIGKILL and waits for it; its data stays for
    /// [`EtcdCluster::restart`].
    pub fn kill(&mut self, i: usize) {
        self.0.stop_member(i, libc::SIGKILL);
    }

    /// Stops member `i` with SIGTERM (SIGKILL if it does not exit in time).
    pub fn stop(&mut self, i: usize) {
        self.0.stop_member(i, libc::SIGTERM);
    }

    /// Starts the stopped member `i` again on its data directory and ports and waits until it
    /// serves a linearizable read, that is until it has caught up with the leader's commit
    /// at the time of the read.
    pub fn restart(&mut self, i: usize) {
        self.0.start_member(i);
        self.0.wait_healthy(i);
    }

    /// The index of the current leader, as a running member reports it. Panics if no
    /// running member knows a leader that is one of the members.
    pub fn leader(&self) -> usize {
        let mut reports = Vec::new();
        for i in self.0.running() {
            match self.0.leader_seen_by(i) {
                Ok(leader) => match self.0.index_of(leader) {
                    Some(l) => return l,
                    None => reports.push(format!("member {i} reports leader {leader:x}")),
                },
                Err(e) => reports.push(format!("member {i}: {e}")),
            }
        }
        panic!("etcd cluster has no leader: {}", reports.join("; "))
    }

    /// Waits (up to [`HEALTH_TIMEOUT`]) until every running member reports the same leader
    /// and that leader is running; returns its index.
    pub fn wait_for_leader(&self) -> usize {
        let deadline = Instant::now() + HEALTH_TIMEOUT;
        loop {
            let reports: Vec<_> = self
                .0
                .running()
                .map(|i| (i, self.0.leader_seen_by(i)))
                .collect();
            let leaders: Vec<_> = reports
                .iter()
                .filter_map(|(_, r)| r.as_ref().ok().and_then(|l| self.0.index_of(*l)))
                .collect();
            if leaders.len() == reports.len()
                && let Some(&l) = leaders.first()
                && leaders.iter().all(|&x| x == l)
                && self.0.is_running(l)
            {
                return l;
            }
            if Instant::now() >= deadline {
                let said: Vec<_> = reports
                    .iter()
                    .map(|(i, r)| match r {
                        Ok(l) => format!("member {i}: leader {l:x}"),
                        Err(e) => format!("member {i}: {e}"),
                    })
                    .collect();
                panic!(
                    "etcd cluster agreed on no running leader within {HEALTH_TIMEOUT:?} ({})\n{}",
                    said.join("; "),
                    self.0.diagnostics()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Default for EtcdCluster {
    fn default() -> Self {
        Self::new()
    }
}

impl Deref for Etcd {
    type Target = Members;
    fn deref(&self) -> &Members {
        &self.0
    }
}

impl DerefMut for Etcd {
    fn deref_mut(&mut self) -> &mut Members {
        &mut self.0
    }
}

impl Deref for EtcdCluster {
    type Target = Members;
    fn deref(&self) -> &Members {
        &self.0
    }
}

impl DerefMut for EtcdCluster {
    fn deref_mut(&mut self) -> &mut Members {
        &mut self.0
    }
}

/// Access to a key prefix granted by [`Members::add_user`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    ReadWrite,
}

/// What a single member and a cluster have in common: their members, endpoints, TLS files,
/// clients and the operations on the data.
#[derive(Debug)]
pub struct Members {
    opts: EtcdOptions,
    members: Vec<Member>,
    tls: Option<TlsFiles>,
    /// The root user's name and password once [`Members::enable_auth`] ran.
    root: Option<(String, String)>,
    /// The `--initial-cluster-token`, unique to this cluster.
    token: String,
}

#[derive(Debug)]
struct Member {
    name: String,
    dir: PathBuf,
    client_port: Port,
    peer_port: Port,
    child: Option<Child>,
    /// Its member id, learnt when it first served a request.
    id: u64,
    /// How many times it was started.
    starts: u32,
}

impl Member {
    fn log(&self) -> PathBuf {
        self.dir.join("etcd.log")
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }
}

impl Members {
    fn start(opts: EtcdOptions, n: usize) -> Self {
        let serial = unique();
        let tls = opts.tls.then(|| {
            let mut ips = vec![IpAddr::from(Ipv4Addr::LOCALHOST), opts.advertised_ip()];
            if !opts.listen_ip.is_unspecified() {
                ips.push(opts.listen_ip);
            }
            TlsFiles::generate(&ips)
        });
        let members = (0..n)
            .map(|i| {
                let name = format!("{}{i}", opts.name);
                let dir = std::env::temp_dir().join(format!(
                    "netpage-etcd-{}-{serial}-{name}",
                    std::process::id()
                ));
                let _ = fs::remove_dir_all(&dir);
                fs::create_dir_all(&dir)
                    .unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
                Member {
                    name,
                    dir,
                    client_port: Port::reserve(opts.listen_ip),
                    peer_port: Port::reserve(Ipv4Addr::LOCALHOST.into()),
                    child: None,
                    id: 0,
                    starts: 0,
                }
            })
            .collect();
        let mut this = Self {
            opts,
            members,
            tls,
            root: None,
            token: format!("netpage-{}-{serial}", std::process::id()),
        };
        for i in 0..n {
            this.spawn(i);
        }
        for i in 0..n {
            this.wait_healthy(i);
        }
        this
    }

    /// The number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Whether member `i`'s process is running (it may not serve requests yet).
    pub fn is_running(&self, i: usize) -> bool {
        self.members[i].child.is_some()
    }

    /// The indices of the running members.
    pub fn running(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.len()).filter(|&i| self.is_running(i))
    }

    /// Member `i`'s advertised client URL.
    pub fn endpoint(&self, i: usize) -> String {
        let addr = SocketAddr::new(
            self.opts.advertised_ip(),
            self.members[i].client_port.number,
        );
        format!("{}://{addr}", self.opts.scheme())
    }

    /// Every member's client URL, stopped ones included.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.len()).map(|i| self.endpoint(i)).collect()
    }

    /// The client URLs joined with commas, for netpage's `--etcd`.
    pub fn urls(&self) -> String {
        self.endpoints().join(",")
    }

    /// Member `i`'s id in the cluster.
    pub fn member_id(&self, i: usize) -> u64 {
        self.members[i].id
    }

    /// The CA, server and client certificates, if clients must use TLS.
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// The netpage command-line arguments that reach these members: `--etcd URLS`, with
    /// TLS `--etcd-cacert`, `--etcd-cert` and `--etcd-key`, and once auth is enabled the
    /// root user's `--etcd-user` and `--etcd-password`.
    pub fn cli_args(&self) -> Vec<String> {
        match &self.root {
            Some((user, password)) => self.cli_args_as(user, password),
            None => self.cli_args_without_user(),
        }
    }

    /// [`Members::cli_args`] as `user` with `password`.
    pub fn cli_args_as(&self, user: &str, password: &str) -> Vec<String> {
        let mut args = self.cli_args_without_user();
        args.extend(["--etcd-user", user, "--etcd-password", password].map(str::to_owned));
        args
    }

    /// [`Members::cli_args`] with no user.
    pub fn cli_args_without_user(&self) -> Vec<String> {
        let mut args = vec!["--etcd".to_owned(), self.urls()];
        if let Some(tls) = &self.tls {
            args.extend(tls.cli_args());
        }
        args
    }

    /// The root user's name and password, once auth is enabled.
    pub fn root(&self) -> Option<(&str, &str)> {
        self.root.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// The directory of member `i` (its data in `data/`, its log in `etcd.log`).
    pub fn dir(&self, i: usize) -> &Path {
        &self.members[i].dir
    }

    /// The last lines of member `i`'s log.
    pub fn log_tail(&self, i: usize) -> String {
        tail(&self.members[i].log(), LOG_TAIL_LINES)
    }

    /// Options for a client of these members: the client certificate if TLS is on, no user.
    /// Only the connection has a timeout, so that watches may last.
    pub fn connect_options(&self) -> ConnectOptions {
        let opts = ConnectOptions::new().with_connect_timeout(Duration::from_secs(2));
        match &self.tls {
            Some(tls) => opts.with_tls(tls.client_tls()),
            None => opts,
        }
    }

    /// A client of the running members, on the caller's runtime, with the client certificate
    /// if TLS is on and as root once auth is enabled.
    pub async fn client(&self) -> Client {
        let endpoints: Vec<_> = self.running().map(|i| self.endpoint(i)).collect();
        self.connect(&endpoints, self.root_options(self.connect_options()))
            .await
    }

    /// A client of member `i` only (which must be running), like [`Members::client`].
    pub async fn member_client(&self, i: usize) -> Client {
        self.connect(
            &[self.endpoint(i)],
            self.root_options(self.connect_options()),
        )
        .await
    }

    /// A client of the running members that authenticates as `user`.
    pub async fn client_as(&self, user: &str, password: &str) -> Client {
        let endpoints: Vec<_> = self.running().map(|i| self.endpoint(i)).collect();
        let opts = self.connect_options().with_user(user, password);
        self.connect(&endpoints, opts).await
    }

    async fn connect(&self, endpoints: &[String], opts: ConnectOptions) -> Client {
        Client::connect(endpoints, Some(opts))
            .await
            .unwrap_or_else(|e| panic!("etcd client of {endpoints:?}: {e}"))
    }

    fn root_options(&self, opts: ConnectOptions) -> ConnectOptions {
        match &self.root {
            Some((user, password)) => opts.with_user(user.as_str(), password.as_str()),
            None => opts,
        }
    }

    /// Runs `op` with a fresh client of `endpoints` (as root once auth is on) on a runtime
    /// of its own, one attempt with [`ATTEMPT_TIMEOUT`].
    fn attempt<T, F, Fut>(&self, endpoints: &[String], op: F) -> Result<T, String>
    where
        T: Send,
        F: FnOnce(Client) -> Fut + Send,
        Fut: Future<Output = Result<T, etcd_client::Error>> + Send,
    {
        let opts = self
            .root_options(self.connect_options())
            .with_timeout(ATTEMPT_TIMEOUT);
        block_on(async move {
            let attempt = async {
                let client = Client::connect(endpoints, Some(opts)).await?;
                op(client).await
            };
            match tokio::time::timeout(ATTEMPT_TIMEOUT, attempt).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err(format!("no answer within {ATTEMPT_TIMEOUT:?}")),
            }
        })
    }

    /// Runs `op` against the running members until it succeeds, for up to [`OP_TIMEOUT`]
    /// (a leader election makes requests fail for a moment); panics with the last error.
    fn retry<T, F, Fut>(&self, what: &str, op: F) -> T
    where
        T: Send,
        F: Fn(Client) -> Fut + Send + Sync,
        Fut: Future<Output = Result<T, etcd_client::Error>> + Send,
    {
        let deadline = Instant::now() + OP_TIMEOUT;
        loop {
            let endpoints: Vec<_> = self.running().map(|i| self.endpoint(i)).collect();
            if endpoints.is_empty() {
                panic!("etcd {what}: no member is running");
            }
            match self.attempt(&endpoints, &op) {
                Ok(v) => return v,
                Err(e) if Instant::now() >= deadline => {
                    panic!("etcd {what}: {e}\n{}", self.diagnostics())
                }
                Err(_) => thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Runs `op` once against the running members; panics if it fails.
    fn once<T, F, Fut>(&self, what: &str, op: F) -> T
    where
        T: Send,
        F: FnOnce(Client) -> Fut + Send,
        Fut: Future<Output = Result<T, etcd_client::Error>> + Send,
    {
        let endpoints: Vec<_> = self.running().map(|i| self.endpoint(i)).collect();
        self.attempt(&endpoints, op)
            .unwrap_or_else(|e| panic!("etcd {what}: {e}\n{}", self.diagnostics()))
    }

    /// The id of the leader member `i` knows (0 for none), from its status.
    fn leader_seen_by(&self, i: usize) -> Result<u64, String> {
        self.attempt(&[self.endpoint(i)], |mut c| async move {
            Ok(c.status().await?.leader())
        })
    }

    fn index_of(&self, id: u64) -> Option<usize> {
        (id != 0)
            .then(|| self.members.iter().position(|m| m.id == id))
            .flatten()
    }

    /// Writes `value` at `key`; returns the revision of the write.
    pub fn put(&self, key: &str, value: &[u8]) -> i64 {
        self.retry(&format!("put {key}"), |mut c| async move {
            let r = c.put(key, value, None).await?;
            Ok(r.header().map_or(0, |h| h.revision()))
        })
    }

    /// The value at `key` (a linearizable read).
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.retry(&format!("get {key}"), |mut c| async move {
            let r = c.get(key, None).await?;
            Ok(r.kvs().first().map(|kv| kv.value().to_vec()))
        })
    }

    /// The revision at which `key` was last written, if it exists (a linearizable read).
    pub fn mod_revision(&self, key: &str) -> Option<i64> {
        self.retry(&format!("get {key}"), |mut c| async move {
            let r = c.get(key, None).await?;
            Ok(r.kvs().first().map(|kv| kv.mod_revision()))
        })
    }

    /// The value at `key` as member `i` has it now (a serializable read of its own state).
    pub fn get_local(&self, i: usize, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.attempt(&[self.endpoint(i)], |mut c| async move {
            let opts = GetOptions::new().with_serializable();
            let r = c.get(key, Some(opts)).await?;
            Ok(r.kvs().first().map(|kv| kv.value().to_vec()))
        })
    }

    /// The store's current revision.
    pub fn current_revision(&self) -> i64 {
        self.retry("current revision", |mut c| async move {
            let r = c.get("\0", None).await?;
            Ok(r.header().map_or(0, |h| h.revision()))
        })
    }

    /// Compacts the history up to `revision` and waits until the compaction is applied
    /// physically (watches and reads from older revisions then fail with "required revision
    /// has been compacted"). Panics if it fails, for instance if `revision` is compacted
    /// already or in the future.
    pub fn compact(&self, revision: i64) {
        self.once(&format!("compact {revision}"), |mut c| async move {
            c.compact(revision, Some(CompactionOptions::new().with_physical()))
                .await
                .map(drop)
        });
    }

    /// Enables authentication: adds the user `root` with `root_password` and the role
    /// `root`, then turns auth on. From then on the harness's own requests (and
    /// [`Members::client`]) authenticate as root. With several members, note that etcd's
    /// default "simple" tokens are valid only on the member that issued them.
    pub fn enable_auth(&mut self, root_password: &str) {
        self.once("enable auth", |mut c| async move {
            c.user_add("root", root_password, None).await?;
            c.user_grant_role("root", "root").await?;
            c.auth_enable().await.map(drop)
        });
        self.root = Some(("root".into(), root_password.into()));
    }

    /// Adds `user` with `password` and a role of the same name that may read (or read and
    /// write) the keys under `prefix` and nothing else.
    pub fn add_user(&self, user: &str, password: &str, prefix: &str, access: Access) {
        self.once(&format!("add user {user}"), |mut c| async move {
            c.role_add(user).await?;
            c.user_add(user, password, None).await?;
            c.user_grant_role(user, user).await.map(drop)
        });
        self.grant(user, prefix, access);
    }

    /// Lets `user`'s role (see [`Members::add_user`]) also read (or read and write) the
    /// keys under `prefix`.
    pub fn grant(&self, user: &str, prefix: &str, access: Access) {
        self.once(&format!("grant {user} {prefix}"), |mut c| async move {
            let permission = match access {
                Access::Read => Permission::read(prefix),
                Access::ReadWrite => Permission::read_write(prefix),
            };
            c.role_grant_permission(user, permission.with_prefix())
                .await
                .map(drop)
        });
    }

    /// Every member's state and the end of its log, for panic messages.
    pub fn diagnostics(&self) -> String {
        self.members
            .iter()
            .enumerate()
            .map(|(i, m)| {
                format!(
                    "--- etcd member {i} ({}, {}, {}), log {}:\n{}",
                    m.name,
                    self.endpoint(i),
                    if m.child.is_some() {
                        "running"
                    } else {
                        "stopped"
                    },
                    m.log().display(),
                    self.log_tail(i)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn spawn(&mut self, i: usize) {
        let opts = &self.opts;
        let peer_url = |m: &Member| format!("http://127.0.0.1:{}", m.peer_port.number);
        let initial_cluster = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, peer_url(m)))
            .collect::<Vec<_>>()
            .join(",");
        let listen = format!(
            "{}://{}",
            opts.scheme(),
            SocketAddr::new(opts.listen_ip, self.members[i].client_port.number)
        );
        let advertise = self.endpoint(i);
        let m = &self.members[i];
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(m.log())
            .unwrap_or_else(|e| panic!("open {}: {e}", m.log().display()));
        let _ = writeln!(log, "=== netpage test harness: start {} ===", m.starts + 1);
        let stderr = log
            .try_clone()
            .unwrap_or_else(|e| panic!("{}: {e}", m.log().display()));

        let mut cmd = Command::new(ETCD);
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(m.data_dir())
            .args(["--listen-client-urls", &listen])
            .args(["--advertise-client-urls", &advertise])
            .args(["--listen-peer-urls", &peer_url(m)])
            .args(["--initial-advertise-peer-urls", &peer_url(m)])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.token])
            .arg(format!(
                "--heartbeat-interval={}",
                opts.heartbeat.as_millis()
            ))
            .arg(format!(
                "--election-timeout={}",
                opts.election_timeout.as_millis()
            ))
            .args(["--logger", "zap", "--log-outputs", "stderr"]);
        if let Some(tls) = &self.tls {
            cmd.arg("--client-cert-auth")
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--cert-file")
                .arg(&tls.server_cert)
                .arg("--key-file")
                .arg(&tls.server_key);
        }
        // A process group of its own: a terminal's Ctrl-C reaches only the process that
        // owns the harness, which kills the member when it drops it.
        cmd.args(&opts.extra_args)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {ETCD} for member {}: {e}", m.name));
        let m = &mut self.members[i];
        m.child = Some(child);
        m.starts += 1;
    }

    fn start_member(&mut self, i: usize) {
        assert!(
            !self.is_running(i),
            "etcd member {i} is running already: stop or kill it first"
        );
        // etcd ignores the cluster flags on an existing data directory.
        self.spawn(i);
    }

    /// Sends `signal` to member `i` and waits for it to exit; SIGKILL after
    /// [`STOP_TIMEOUT`].
    fn stop_member(&mut self, i: usize, signal: libc::c_int) {
        let m = &mut self.members[i];
        let Some(mut child) = m.child.take() else {
            panic!("etcd member {i} ({}) is not running", m.name);
        };
        // SAFETY: kill(2) on the pid of a child that has not been reaped yet.
        unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
            }
        }
    }

    /// Waits until member `i` answers a linearizable read (so it has a leader and has caught
    /// up), and learns its member id. Panics with its log if it exits or does not answer
    /// within [`HEALTH_TIMEOUT`].
    fn wait_healthy(&mut self, i: usize) {
        let deadline = Instant::now() + HEALTH_TIMEOUT;
        let endpoint = [self.endpoint(i)];
        loop {
            let child = self.members[i].child.as_mut().expect("member is running");
            if let Ok(Some(status)) = child.try_wait() {
                self.members[i].child = None;
                let m = &self.members[i];
                panic!(
                    "etcd member {i} ({}) exited ({status}) before it served requests; log {}:\n{}",
                    m.name,
                    m.log().display(),
                    self.log_tail(i)
                );
            }
            let answer = self.attempt(&endpoint, |mut c| async move {
                c.get("netpage-harness-health", None).await?;
                let status = c.status().await?;
                Ok(status.header().map_or(0, |h| h.member_id()))
            });
            match answer {
                Ok(id) => {
                    self.members[i].id = id;
                    return;
                }
                Err(e) if Instant::now() >= deadline => {
                    let m = &self.members[i];
                    panic!(
                        "etcd member {i} ({}, {}) not healthy within {HEALTH_TIMEOUT:?}: {e}\n\
                         log {}:\n{}",
                        m.name,
                        endpoint[0],
                        m.log().display(),
                        self.log_tail(i)
                    );
                }
                Err(_) => thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

impl Drop for Members {
    fn drop(&mut self) {
        let panicking = thread::panicking();
        for m in &mut self.members {
            if let Some(mut child) = m.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            // After a failure the log stays for a look; the data goes in any case.
            if panicking {
                let _ = fs::remove_dir_all(m.data_dir());
            } else {
                let _ = fs::remove_dir_all(&m.dir);
            }
        }
    }
}

/// A TCP port reserved for one member for the harness's lifetime: below the kernel's
/// ephemeral range, free when reserved, and held with an exclusive lock on a file named after
/// it, which no other harness (in this process or another) can take until this one is
/// dropped or its process dies. The (empty) lock files stay in the temporary directory:
/// removing one could let two harnesses lock different files of the same name.
#[derive(Debug)]
struct Port {
    number: u16,
    _lock: File,
}

impl Port {
    fn reserve(ip: IpAddr) -> Port {
        let dir = std::env::temp_dir().join("netpage-etcd-ports");
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let (low, high) = port_range();
        let span = u64::from(high - low);
        let start = RandomState::new().hash_one(std::process::id()) % span;
        for offset in 0..span {
            let port = low + ((start + offset) % span) as u16;
            let path = dir.join(port.to_string());
            let Ok(lock) = File::create(&path) else {
                continue;
            };
            if lock.try_lock().is_err() {
                continue;
            }
            let free = [ip, Ipv4Addr::LOCALHOST.into()]
                .iter()
                .all(|&ip| TcpListener::bind((ip, port)).is_ok());
            if free {
                return Port {
                    number: port,
                    _lock: lock,
                };
            }
        }
        panic!("no free port for etcd in {low}..{high} on {ip}");
    }
}

/// The ports to take: from [`FIRST_PORT`] up to the start of the kernel's ephemeral range
/// (or, if that starts too low, above its end).
fn port_range() -> (u16, u16) {
    let ephemeral = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999));
    if ephemeral.0 >= FIRST_PORT + 1000 {
        (FIRST_PORT, ephemeral.0)
    } else if ephemeral.1 <= 64000 {
        (ephemeral.1 + 1, 65535)
    } else {
        (FIRST_PORT, 30000)
    }
}

/// A CA, a server certificate signed by it for the given addresses (and `localhost`), and a
/// client certificate with CN `netpage`, generated with the `openssl` command into a
/// temporary directory that is removed when this is dropped.
#[derive(Debug)]
pub struct TlsFiles {
    dir: PathBuf,
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

/// The client certificate's common name.
pub const CLIENT_CN: &str = "netpage";

impl TlsFiles {
    /// Generates the CA and the certificates, the server's valid for `ips`.
    pub fn generate(ips: &[IpAddr]) -> TlsFiles {
        let dir = std::env::temp_dir().join(format!(
            "netpage-etcd-tls-{}-{}",
            std::process::id(),
            unique()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let mut sans: Vec<String> = ips.iter().map(|ip| format!("IP:{ip}")).collect();
        sans.sort();
        sans.dedup();
        sans.push("DNS:localhost".into());
        let leaf = "basicConstraints = critical, CA:FALSE\n\
                    keyUsage = critical, digitalSignature, keyEncipherment\n\
                    subjectKeyIdentifier = hash\n\
                    authorityKeyIdentifier = keyid\n";
        let files = [
            (
                "ca.ext",
                "basicConstraints = critical, CA:TRUE\n\
                 keyUsage = critical, keyCertSign, cRLSign\n\
                 subjectKeyIdentifier = hash\n"
                    .to_owned(),
            ),
            (
                "server.ext",
                // etcd also presents its server certificate as a client (its gateway).
                format!(
                    "{leaf}extendedKeyUsage = serverAuth, clientAuth\nsubjectAltName = {}\n",
                    sans.join(", ")
                ),
            ),
            (
                "client.ext",
                format!("{leaf}extendedKeyUsage = clientAuth\n"),
            ),
        ];
        for (name, text) in files {
            fs::write(dir.join(name), text)
                .unwrap_or_else(|e| panic!("write {}: {e}", dir.join(name).display()));
        }
        // Each command is its words: no argument has a space.
        let openssl = |command: &str| {
            let out = Command::new("openssl")
                .args(command.split_whitespace())
                .current_dir(&dir)
                .stdin(Stdio::null())
                .output()
                .unwrap_or_else(|e| panic!("cannot run openssl: {e}"));
            assert!(
                out.status.success(),
                "openssl {command} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let request = |name: &str, cn: &str| {
            openssl(&format!(
                "req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
                 -keyout {name}.key -subj /CN={cn} -out {name}.csr"
            ))
        };
        request("ca", "netpage-test-ca");
        openssl("x509 -req -in ca.csr -signkey ca.key -days 2 -extfile ca.ext -out ca.crt");
        for (name, cn) in [("server", "etcd"), ("client", CLIENT_CN)] {
            request(name, cn);
            openssl(&format!(
                "x509 -req -in {name}.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
                 -extfile {name}.ext -out {name}.crt"
            ));
        }
        TlsFiles {
            ca: dir.join("ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
            dir,
        }
    }

    /// The CA certificate (PEM), for `--etcd-cacert`.
    pub fn ca(&self) -> &Path {
        &self.ca
    }

    /// The client certificate (PEM), for `--etcd-cert`.
    pub fn client_cert(&self) -> &Path {
        &self.client_cert
    }

    /// The client certificate's key (PEM), for `--etcd-key`.
    pub fn client_key(&self) -> &Path {
        &self.client_key
    }

    pub fn server_cert(&self) -> &Path {
        &self.server_cert
    }

    pub fn server_key(&self) -> &Path {
        &self.server_key
    }

    /// `--etcd-cacert CA --etcd-cert CERT --etcd-key KEY`.
    pub fn cli_args(&self) -> Vec<String> {
        [
            ("--etcd-cacert", &self.ca),
            ("--etcd-cert", &self.client_cert),
            ("--etcd-key", &self.client_key),
        ]
        .into_iter()
        .flat_map(|(flag, path)| [flag.to_owned(), path.display().to_string()])
        .collect()
    }

    /// TLS options trusting the CA, without a client certificate.
    pub fn ca_only_tls(&self) -> TlsOptions {
        TlsOptions::new().ca_certificate(Certificate::from_pem(read(&self.ca)))
    }

    /// TLS options trusting the CA and presenting the client certificate.
    pub fn client_tls(&self) -> TlsOptions {
        self.ca_only_tls().identity(Identity::from_pem(
            read(&self.client_cert),
            read(&self.client_key),
        ))
    }
}

impl Drop for TlsFiles {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// A number no other call in this process returns.
fn unique() -> u32 {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// The last `lines` lines of the file at `path`.
fn tail(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Runs `fut` to completion on a current-thread runtime in a thread of its own, so that it
/// works whether or not the caller is inside a runtime.
fn block_on<F>(fut: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime")
                .block_on(fut)
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}
