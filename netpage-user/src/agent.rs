//! `netpage agent`: the one writer of a node's table while it runs, mirroring the
//! directory on etcd into the node's kernel maps.
//!
//! It registers the node under a lease, syncs the whole table at one revision, then
//! applies each watched revision in order and reports the revision it applied. Without
//! etcd it is fail-static: the table stays as it is (the datapath keeps translating), and
//! it retries with backoff and syncs again when etcd returns; a watch cancelled by
//! compaction also means a fresh sync. SIGTERM or SIGINT ends the registration and leaves
//! the table in place.

mod mirror;

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use etcd_client::{Client, EventType, PutOptions, WatchOptions};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    directory::{
        DirError, Directory, EtcdOptions,
        schema::{NodeRecord, encode, valid_node_name},
        wait::now_us,
    },
    loader,
    metrics::{self, AgentMetrics},
    node::{Node, NodeError, OpenNode},
    progress::Progress,
    table::{PageTable, TableError},
};
pub use mirror::{Change, Synced, apply_revision, sync};

/// How the agent runs.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub etcd: EtcdOptions,
    /// The node's name in the directory.
    pub node: String,
    pub pin_dir: PathBuf,
    /// The lease of the node's registration: a node whose agent is silent this long is
    /// no longer waited for.
    pub lease_ttl: Duration,
    /// Entries per table if the agent creates the node's tables.
    pub capacity: Option<u32>,
    /// Where to serve the node's and the agent's metrics, if anywhere.
    pub metrics: Option<SocketAddr>,
    /// The state directory of `netpage migrate`, whose tally the metrics show.
    pub state_dir: std::path::PathBuf,
}

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("node name {0:?} is not valid: 1 to 64 of A-Z a-z 0-9 . _ - (not starting with a dot)")]
    NodeName(String),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("cannot install signal handlers")]
    Signals(#[source] std::io::Error),
    #[error("cannot serve metrics at {addr}")]
    Metrics {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What ended one connected session (the agent then retries).
#[derive(Debug, thiserror::Error)]
enum SessionEnd {
    #[error(transparent)]
    Dir(#[from] DirError),
    #[error("updating the node's table")]
    Table(#[from] TableError),
    #[error("{0}")]
    Lost(String),
}

/// The agent's state across sessions.
struct State {
    name: String,
    open: OpenNode,
    /// The current registration, to end it at shutdown.
    lease: Option<(Client, i64)>,
    metrics: AgentMetrics,
}

fn log(name: &str, msg: std::fmt::Arguments) {
    eprintln!("netpage agent {name}: {msg}");
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(opts: &AgentOptions) -> Result<(), AgentError> {
    if !valid_node_name(&opts.node) {
        return Err(AgentError::NodeName(opts.node.clone()));
    }
    let node = Node::new(&opts.pin_dir);
    if !node.exists() {
        node.load(opts.capacity)?;
        log(
            &opts.node,
            format_args!("created the tables under {}", opts.pin_dir.display()),
        );
    }
    let _lock = node.lock_for_agent(Duration::from_secs(10))?;
    let open = node.open()?;
    let mut state = State {
        name: opts.node.clone(),
        open,
        lease: None,
        metrics: AgentMetrics::default(),
    };
    let stop_metrics = std::sync::Arc::new(tokio::sync::Notify::new());
    if let Some(addr) = opts.metrics {
        let err = |source| AgentError::Metrics { addr, source };
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(err)?;
        log(
            &opts.node,
            format_args!(
                "serving metrics at http://{}/metrics",
                listener.local_addr().map_err(err)?
            ),
        );
        let scrape = metrics::scrape_of(
            node.clone(),
            Some(state.metrics.clone()),
            opts.state_dir.clone(),
        );
        let stop = stop_metrics.clone();
        tokio::spawn(async move {
            let _ = metrics::serve::serve(listener, scrape, stop.notified()).await;
        });
    }
    let mut term = signal(SignalKind::terminate()).map_err(AgentError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(AgentError::Signals)?;
    let mut backoff = Backoff::default();
    loop {
        let ended = tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            e = session(opts, &mut state, &mut backoff) => e,
        };
        let Err(ended) = ended;
        state.metrics.etcd_up.set(0);
        state.metrics.sessions_ended.inc();
        let wait = backoff.next();
        let mappings = state.open.table.forward_entries().map_or(0, |f| f.len());
        log(
            &state.name,
            format_args!(
                "{:#}; keeping the table as it is ({mappings} mappings), retrying in {:.1}s",
                anyhow::Error::from(ended),
                wait.as_secs_f64()
            ),
        );
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    stop_metrics.notify_one();
    if let Some((mut client, lease)) = state.lease.take() {
        let _ = tokio::time::timeout(Duration::from_secs(2), client.lease_revoke(lease)).await;
    }
    log(
        &state.name,
        format_args!("stopped; the table stays in place"),
    );
    Ok(())
}

/// Retry delays: 0.2 s doubling to 5 s, back to the start after a successful sync.
#[derive(Default)]
struct Backoff(u32);

impl Backoff {
    fn next(&mut self) -> Duration {
        let d = Duration::from_millis(200) * 2u32.pow(self.0.min(5));
        self.0 += 1;
        d.min(Duration::from_secs(5))
    }
}

/// One connection to etcd: register, sync, then follow the watch until something fails.
async fn session(
    opts: &AgentOptions,
    st: &mut State,
    backoff: &mut Backoff,
) -> Result<Infallible, SessionEnd> {
    let mut dir = Directory::connect(&opts.etcd).await?;
    let ttl = opts.lease_ttl.as_secs().max(1) as i64;
    let lease = dir
        .client()
        .lease_grant(ttl, None)
        .await
        .map_err(dir.etcd_err("registering the node"))?
        .id();
    st.lease = Some((dir.client().clone(), lease));
    let (mut keeper, mut alive) = dir
        .client()
        .lease_keep_alive(lease)
        .await
        .map_err(dir.etcd_err("keeping the registration alive"))?;
    let mut tick = tokio::time::interval(Duration::from_secs((ttl as u64 / 3).max(1)));
    loop {
        let started = Instant::now();
        let progress = Progress::spinner(format!("agent {}", st.name));
        progress.stage("reading the directory");
        let view = dir.view().await?;
        progress.stage(format!(
            "making the table equal to revision {}",
            view.revision
        ));
        let synced = sync(&mut st.open.table, &view)?;
        progress.finish();
        report(&mut dir, st, lease, view.revision).await?;
        st.metrics.syncs.inc();
        st.metrics.etcd_up.set(1);
        st.metrics.applied_revision.set(view.revision);
        st.metrics.lag_revisions.set(0);
        *backoff = Backoff::default();
        log(
            &st.name,
            format_args!(
                "synced at revision {}: {} mappings, {} reverse entries, {} of method encap, {} changed ({:.1} ms)",
                view.revision,
                synced.mappings,
                synced.reverse,
                synced.segments,
                synced.changed,
                started.elapsed().as_secs_f64() * 1e3
            ),
        );
        let watch_err = dir.etcd_err("watching the mappings");
        let prefix = dir.keys().map_prefix();
        let mut watch = dir
            .client()
            .watch(
                prefix,
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(view.revision + 1),
                ),
            )
            .await
            .map_err(watch_err)?;
        loop {
            tokio::select! {
                msg = watch.message() => {
                    let resp = msg
                        .map_err(dir.etcd_err("watching the mappings"))?
                        .ok_or_else(|| SessionEnd::Lost("etcd closed the watch".into()))?;
                    if resp.canceled() {
                        if resp.compact_revision() > 0 {
                            log(&st.name, format_args!(
                                "the watch fell behind a compaction (revision {}): syncing again",
                                resp.compact_revision()
                            ));
                            break;
                        }
                        return Err(SessionEnd::Lost(format!(
                            "etcd cancelled the watch: {}", resp.cancel_reason()
                        )));
                    }
                    let arrived = Instant::now();
                    if let Some(rev) = apply_events(st, dir.keys(), resp.events())? {
                        st.metrics.apply_seconds.observe(arrived.elapsed().as_secs_f64());
                        st.metrics.applied_revision.set(rev);
                        let head = resp.header().map_or(rev, |h| h.revision());
                        st.metrics.lag_revisions.set((head - rev).max(0));
                        report(&mut dir, st, lease, rev).await?;
                    }
                }
                _ = tick.tick() => {
                    keeper.keep_alive().await.map_err(dir.etcd_err("keeping the registration alive"))?;
                    let ok = alive
                        .message()
                        .await
                        .map_err(dir.etcd_err("keeping the registration alive"))?
                        .is_some_and(|r| r.ttl() > 0);
                    if !ok {
                        return Err(SessionEnd::Lost("the node's registration expired".into()));
                    }
                }
            }
        }
    }
}

/// Applies a watch response's events revision by revision; returns the last revision
/// applied, if any.
fn apply_events(
    st: &mut State,
    keys: &crate::directory::schema::Keys,
    events: &[etcd_client::Event],
) -> Result<Option<i64>, TableError> {
    let mut last = None;
    let mut batch: Vec<Change> = Vec::new();
    for ev in events {
        let Some(kv) = ev.kv() else { continue };
        let rev = kv.mod_revision();
        if last.is_some_and(|l| l != rev) {
            apply_revision(&mut st.open.table, &mut batch)?;
            batch.clear();
        }
        last = Some(rev);
        let value = (ev.event_type() == EventType::Put).then(|| kv.value());
        match Change::decode(keys, kv.key(), value) {
            Some(c) => batch.push(c),
            // A key of a newer layout, or a value nobody should have written: the node
            // keeps what it has for it, and says so.
            None => log(
                &st.name,
                format_args!(
                    "skipped {} at revision {rev}: not an entry this netpage understands",
                    String::from_utf8_lossy(kv.key())
                ),
            ),
        }
    }
    apply_revision(&mut st.open.table, &mut batch)?;
    Ok(last)
}

/// Writes the node's record (under its lease) with the revision its table now equals.
async fn report(
    dir: &mut Directory,
    st: &State,
    lease: i64,
    revision: i64,
) -> Result<(), DirError> {
    let applied_at_us = now_us();
    let mut sides: Vec<String> = st
        .open
        .ifaces()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(_, r)| loader::Side::from_code(r.side).map(|s| s.to_string()))
        .collect();
    sides.sort();
    sides.dedup();
    let record = NodeRecord {
        node: st.name.clone(),
        sides,
        build: format!("{} {:016x}", env!("CARGO_PKG_VERSION"), loader::object_id()),
        applied_revision: revision,
        applied_at_us,
        pid: std::process::id(),
    };
    let key = dir.keys().node(&st.name);
    let err = dir.etcd_err("reporting the applied revision");
    dir.client()
        .put(
            key,
            encode(&record),
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .map_err(err)?;
    Ok(())
}
