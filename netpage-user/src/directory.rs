//! The mapping directory on etcd: the page table of every edge, kept in one replicated
//! store that an agent on each edge mirrors into its kernel tables.
//!
//! Writers read the mapping range at one revision into a [`View`], run the rules of
//! `ops` on it, and commit what they wrote as one transaction that holds only if none of
//! the keys it writes changed since (optimistic concurrency; a lost race is retried on a
//! fresh view, or, for a switch, reported as a conflict). A switch takes two transactions:
//! the new real address is reserved first and every live node confirms it before the
//! VM's entry changes, so no edge receives the new address before it can translate it.

mod connect;
pub mod schema;
mod segment;
mod switch;
mod view;
pub mod wait;

use std::{
    future::Future,
    net::IpAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use etcd_client::{
    Client, Compare, CompareOp, GetOptions, GetResponse, PutOptions, SortOrder, SortTarget, Txn,
    TxnOp, TxnOpResponse, TxnResponse,
};
use serde::Serialize;

pub use connect::{DEFAULT_REQUEST_TIMEOUT, EtcdOptions};
use schema::{Keys, MapKey, NodeRecord, SCHEMA_VERSION, SchemaValue, encode};
pub use segment::SegmentMove;
pub use switch::{Committed, DirSwitched, Method, Reservation, laggards};
#[cfg(test)]
pub(crate) use view::view_with;
pub use view::{BadValue, Read, View, Write};
pub use wait::Confirmation;

use crate::{clock::unix_ms, ops::OpError};

/// etcd's default limit of operations in one transaction (`--max-txn-ops`).
pub const MAX_TXN_OPS: usize = 128;

/// How often a write that lost a race is tried again on a fresh view.
const RETRIES: usize = 8;

/// How often a transaction whose drain lease expired before etcd applied it is tried
/// again with a fresh lease.
const LEASE_RETRIES: usize = 3;

/// A failed directory operation, with what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error("{0}")]
    Usage(String),
    #[error("reading the TLS file {}", path.display())]
    TlsFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot set up a connection to etcd at {endpoints}")]
    Connect {
        endpoints: String,
        #[source]
        source: Box<etcd_client::Error>,
    },
    #[error(
        "etcd at {endpoints} refused {what}: {}; see the README for the roles of writers and agents",
        refusal(source)
    )]
    Refused {
        what: &'static str,
        endpoints: String,
        #[source]
        source: Box<etcd_client::Error>,
    },
    #[error("etcd at {endpoints} did not answer ({what}); check that etcd runs and is reachable")]
    Etcd {
        what: &'static str,
        endpoints: String,
        #[source]
        source: Box<etcd_client::Error>,
    },
    #[error(
        "the directory under {prefix} has schema version {found}; this netpage knows version {SCHEMA_VERSION}: upgrade netpage"
    )]
    Schema { prefix: String, found: u32 },
    #[error(transparent)]
    BadValue(#[from] BadValue),
    #[error(
        "VM {vm} was changed by another writer during this switch (it is now at {now}); nothing was changed by this command"
    )]
    Conflict { vm: IpAddr, now: String },
    #[error(
        "the directory kept changing under this command ({RETRIES} tries): nothing was changed; try again"
    )]
    Busy,
    #[error(
        "the change was interrupted by another writer after {done} of {total} transactions (it needed more than etcd's {MAX_TXN_OPS} operations per transaction); run it again to finish"
    )]
    Partial { done: usize, total: usize },
    #[error(transparent)]
    Op(#[from] OpError),
}

impl DirError {
    /// A request that failed: refused for want of rights, or not answered.
    fn failed(what: &'static str, endpoints: String, source: etcd_client::Error) -> Self {
        let source = Box::new(source);
        if refusal(&source).is_empty() {
            DirError::Etcd {
                what,
                endpoints,
                source,
            }
        } else {
            DirError::Refused {
                what,
                endpoints,
                source,
            }
        }
    }

    /// Whether etcd refused a transaction because a lease it named had expired (it then
    /// applied none of the transaction).
    fn is_expired_lease(&self) -> bool {
        matches!(self, DirError::Etcd { source, .. } if matches!(
            &**source,
            etcd_client::Error::GRpcStatus(s)
                if s.code() == tonic::Code::NotFound && s.message().contains("lease not found")
        ))
    }
}

/// A connection to one directory.
#[derive(Clone)]
pub struct Directory {
    client: Client,
    keys: Keys,
    opts: EtcdOptions,
}

/// A registered node and how far it is behind.
#[derive(Clone, Debug, Serialize)]
pub struct NodeStatus {
    #[serde(flatten)]
    pub record: NodeRecord,
    /// Whether its lease is alive (always, for a listed node: a dead agent's entry expires).
    pub live: bool,
    /// Revisions of the mapping range the node has not applied yet.
    pub lag: i64,
}

impl Directory {
    /// Connects to the directory that `opts` names.
    pub async fn connect(opts: &EtcdOptions) -> Result<Self, DirError> {
        Ok(Self {
            client: opts.connect().await?,
            keys: Keys::new(&opts.prefix),
            opts: opts.clone(),
        })
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    /// Wraps an etcd failure with what was being done.
    pub fn etcd_err(
        &self,
        what: &'static str,
    ) -> impl FnOnce(etcd_client::Error) -> DirError + use<> {
        let endpoints = self.opts.endpoints_text();
        move |source| DirError::failed(what, endpoints, source)
    }

    /// Runs `op` with a client, again while it fails before reaching a server (a member
    /// down: the client then tries another), up to the request timeout.
    async fn retrying<T, F>(
        &self,
        what: &'static str,
        mut op: impl FnMut(Client) -> F,
    ) -> Result<T, DirError>
    where
        F: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = Instant::now() + self.opts.request_timeout;
        loop {
            match op(self.client.clone()).await {
                Err(etcd_client::Error::GRpcStatus(s))
                    if s.code() == tonic::Code::Unavailable && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                r => return r.map_err(self.etcd_err(what)),
            }
        }
    }

    async fn txn(&self, what: &'static str, txn: Txn) -> Result<TxnResponse, DirError> {
        self.retrying(what, |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
    }

    async fn get(
        &self,
        what: &'static str,
        key: impl Into<Vec<u8>>,
        opts: Option<GetOptions>,
    ) -> Result<GetResponse, DirError> {
        let key = key.into();
        self.retrying(what, |mut c| {
            let (key, opts) = (key.clone(), opts.clone());
            async move { c.get(key, opts).await }
        })
        .await
    }

    /// The mapping range at one revision, with the schema checked.
    pub async fn view(&mut self) -> Result<View, DirError> {
        let txn = Txn::new().and_then([
            TxnOp::get(
                self.keys.map_prefix(),
                Some(GetOptions::new().with_prefix()),
            ),
            TxnOp::get(self.keys.schema(), None),
        ]);
        let resp = self.txn("reading the mappings", txn).await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let mut gets = resp.op_responses().into_iter().filter_map(|r| match r {
            TxnOpResponse::Get(g) => Some(g),
            _ => None,
        });
        let (map, schema) = (gets.next(), gets.next());
        if let Some(kv) = schema.as_ref().and_then(|s| s.kvs().first()) {
            let found =
                serde_json::from_slice::<SchemaValue>(kv.value()).map_or(u32::MAX, |s| s.version);
            if found != SCHEMA_VERSION {
                return Err(DirError::Schema {
                    prefix: self.opts.prefix.clone(),
                    found,
                });
            }
        }
        let kvs = map.as_ref().map_or(&[][..], |m| m.kvs());
        Ok(View::from_kvs(
            &self.keys,
            revision,
            kvs.iter()
                .map(|kv| (kv.key(), kv.value(), kv.mod_revision(), kv.lease())),
        )?)
    }

    /// Runs `f` on a fresh view and commits what it wrote, trying again on a fresh view
    /// when another writer changed a key in between. Returns `f`'s result and the
    /// revision of the change (if nothing was written, the newest revision among the
    /// entries read).
    pub async fn change<R>(
        &mut self,
        mut f: impl FnMut(&mut View) -> Result<R, OpError>,
    ) -> Result<(R, i64), DirError> {
        for _ in 0..RETRIES {
            let mut view = self.view().await?;
            let r = f(&mut view)?;
            if view.writes().next().is_none() {
                // Nothing to write: the nodes hold what was read once they applied its
                // newest entry. Not the store's revision, which the nodes' own reports
                // move on and which no node applies: a wait for it would never end.
                return Ok((r, view.newest_entry_revision()));
            }
            if let Some(rev) = self.commit(&view).await? {
                return Ok((r, rev));
            }
        }
        Err(DirError::Busy)
    }

    /// Commits a view's writes: reverse entries first, then VM and segment entries, then
    /// deletions of those, then of reverse entries, each conditional on its key being as
    /// read, and a created VA also on its other key being as read ([`View::guards`]).
    /// One transaction when they fit etcd's limit; `None` if another writer got there first.
    async fn commit(&mut self, view: &View) -> Result<Option<i64>, DirError> {
        let mut writes: Vec<(MapKey, Write)> = view.writes().collect();
        writes.sort_by_key(|(k, w)| commit_order(*k, *w));
        let guards: Vec<(MapKey, i64)> = view.guards().collect();
        let mut ops: Vec<(Vec<Compare>, Op)> = Vec::with_capacity(writes.len() + 1);
        for (key, write) in writes {
            let name = self.keys.map_key(key);
            let mut cmps = vec![Compare::mod_revision(
                name.clone(),
                CompareOp::Equal,
                view.mod_revision(key),
            )];
            cmps.extend(
                guards
                    .iter()
                    .filter(|(g, _)| Some(*g) == key.sibling())
                    .map(|(g, rev)| {
                        Compare::mod_revision(self.keys.map_key(*g), CompareOp::Equal, *rev)
                    }),
            );
            let op = match (View::encode(write), write) {
                (Some(value), Write::Ra(v)) => Op::put(name, value, v.drain_until_ms),
                (Some(value), _) => Op::put(name, value, None),
                (None, _) => Op::Now(TxnOp::delete(name, None)),
            };
            ops.push((cmps, op));
        }
        self.commit_chunks(ops).await
    }

    /// A lease that ends a drain at `until_ms` (at least etcd's one second).
    pub(crate) async fn drain_lease(&mut self, until_ms: u64) -> Result<i64, DirError> {
        let ttl = until_ms.saturating_sub(unix_ms()).div_ceil(1000).max(1);
        let resp = self
            .retrying("granting the lease of a drain", |mut c| async move {
                c.lease_grant(ttl as i64, None).await
            })
            .await?;
        Ok(resp.id())
    }

    /// Runs the transaction of `ops` under `cmps`, granting the drains' leases (one per
    /// deadline) just before it, but for a lease `granted` in advance (deadline, id). If
    /// one expired before etcd applied the transaction (a slow commit: etcd then applies
    /// none of it), it is tried again with fresh leases.
    async fn txn_with_drains(
        &mut self,
        what: &'static str,
        cmps: Vec<Compare>,
        ops: &[Op],
        granted: Option<(u64, i64)>,
    ) -> Result<TxnResponse, DirError> {
        let mut tries = 0;
        loop {
            let mut leases: Vec<(u64, i64)> = granted.filter(|_| tries == 0).into_iter().collect();
            let mut txn_ops = Vec::with_capacity(ops.len());
            for op in ops {
                txn_ops.push(match op {
                    Op::Now(op) => op.clone(),
                    Op::Drain {
                        key,
                        value,
                        until_ms,
                    } => {
                        let lease = match leases.iter().find(|(u, _)| u == until_ms) {
                            Some(&(_, lease)) => lease,
                            None => {
                                let lease = self.drain_lease(*until_ms).await?;
                                leases.push((*until_ms, lease));
                                lease
                            }
                        };
                        let opts = PutOptions::new().with_lease(lease);
                        TxnOp::put(key.clone(), value.clone(), Some(opts))
                    }
                });
            }
            let txn = Txn::new().when(cmps.clone()).and_then(txn_ops);
            match self.txn(what, txn).await {
                Err(e) if e.is_expired_lease() && tries < LEASE_RETRIES => tries += 1,
                r => return r,
            }
        }
    }

    async fn commit_chunks(
        &mut self,
        mut ops: Vec<(Vec<Compare>, Op)>,
    ) -> Result<Option<i64>, DirError> {
        // The schema key goes with the first write to a new directory.
        let schema = self
            .get("reading the schema version", self.keys.schema(), None)
            .await?;
        if schema.kvs().is_empty() {
            let key = self.keys.schema();
            let value = encode(&SchemaValue {
                version: SCHEMA_VERSION,
            });
            ops.insert(
                0,
                (
                    vec![Compare::create_revision(key.clone(), CompareOp::Equal, 0)],
                    Op::put(key, value, None),
                ),
            );
        }
        let chunks = chunked(ops);
        let total = chunks.len();
        let mut revision = 0;
        for (done, chunk) in chunks.into_iter().enumerate() {
            let (cmps, ops): (Vec<Vec<Compare>>, Vec<Op>) = chunk.into_iter().unzip();
            let cmps = cmps.into_iter().flatten().collect();
            let resp = self
                .txn_with_drains("writing the mappings", cmps, &ops, None)
                .await?;
            if !resp.succeeded() {
                return if done == 0 {
                    Ok(None)
                } else {
                    Err(DirError::Partial { done, total })
                };
            }
            revision = resp.header().map_or(0, |h| h.revision());
        }
        Ok(Some(revision))
    }

    /// The registered nodes, by name, with how far each is behind the mapping range.
    pub async fn nodes(&mut self) -> Result<Vec<NodeStatus>, DirError> {
        let latest = self
            .get(
                "reading the latest mapping change",
                self.keys.map_prefix(),
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_keys_only()
                        .with_sort(SortTarget::Mod, SortOrder::Descend)
                        .with_limit(1),
                ),
            )
            .await?;
        let latest = latest.kvs().first().map_or(0, |kv| kv.mod_revision());
        Ok(self
            .node_records()
            .await?
            .1
            .into_iter()
            .map(|record| NodeStatus {
                lag: (latest - record.applied_revision).max(0),
                live: true,
                record,
            })
            .collect())
    }

    /// Every node record and the revision they were read at.
    async fn node_records(&mut self) -> Result<(i64, Vec<NodeRecord>), DirError> {
        let resp = self
            .get(
                "reading the nodes",
                self.keys.nodes_prefix(),
                Some(GetOptions::new().with_prefix()),
            )
            .await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let mut records: Vec<NodeRecord> = resp
            .kvs()
            .iter()
            .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
            .collect();
        records.sort_by(|a, b| a.node.cmp(&b.node));
        Ok((revision, records))
    }
}

/// A write of a transaction; a drain's put gets its lease just before the transaction.
#[derive(Clone, Debug)]
enum Op {
    Now(TxnOp),
    Drain {
        key: String,
        value: Vec<u8>,
        until_ms: u64,
    },
}

impl Op {
    /// A put, under a drain's lease if it drains until `drain_until_ms`.
    fn put(key: String, value: Vec<u8>, drain_until_ms: Option<u64>) -> Self {
        match drain_until_ms {
            Some(until_ms) => Op::Drain {
                key,
                value,
                until_ms,
            },
            None => Op::Now(TxnOp::put(key, value, None)),
        }
    }
}

/// The order in which a view's writes are committed: reverse entries before the VM
/// entries that use them, and VM entries removed before their reverse entries. Segment
/// entries, which use none, go with the VM entries.
fn commit_order(key: MapKey, write: Write) -> u8 {
    match (key, write) {
        (MapKey::Ra(_), Write::Ra(_)) => 0,
        (MapKey::Vm(_) | MapKey::Seg(_), Write::Delete) => 2,
        (MapKey::Vm(_) | MapKey::Seg(_), _) => 1,
        (MapKey::Ra(_), _) => 3,
    }
}

/// Splits writes (each with its compares) into transactions within etcd's limit, which
/// holds for the compares and for the operations of each.
fn chunked<T>(writes: Vec<(Vec<Compare>, T)>) -> Vec<Vec<(Vec<Compare>, T)>> {
    let mut chunks: Vec<Vec<(Vec<Compare>, T)>> = Vec::new();
    let mut compares = 0;
    for (cmps, op) in writes {
        let full = chunks
            .last()
            .is_none_or(|c| c.len() == MAX_TXN_OPS || compares + cmps.len() > MAX_TXN_OPS);
        if full {
            chunks.push(Vec::new());
            compares = 0;
        }
        compares += cmps.len();
        chunks.last_mut().expect("pushed above").push((cmps, op));
    }
    chunks
}

/// Why etcd turned a request away for want of rights, in words for an operator; empty if
/// it did not (a failure to reach etcd, say).
fn refusal(e: &etcd_client::Error) -> &'static str {
    let etcd_client::Error::GRpcStatus(s) = e else {
        return "";
    };
    match s.code() {
        tonic::Code::PermissionDenied => {
            "permission denied: this client's user (or certificate name) may not do that under the prefix"
        }
        tonic::Code::InvalidArgument if s.message().contains("user name is empty") => {
            "etcd requires authentication: give --etcd-user (and NETPAGE_ETCD_PASSWORD) or a client certificate"
        }
        tonic::Code::InvalidArgument if s.message().contains("authentication failed") => {
            "authentication failed: wrong user or password"
        }
        tonic::Code::Unauthenticated => "the authentication token was refused: try again",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writes(compares: &[usize]) -> Vec<(Vec<Compare>, usize)> {
        compares
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let cmp = Compare::mod_revision(format!("k{i}"), CompareOp::Equal, 0);
                (vec![cmp; n], i)
            })
            .collect()
    }

    #[test]
    fn chunks_keep_compares_and_operations_within_the_limit() {
        let sizes = |c: &[Vec<(Vec<Compare>, usize)>]| -> Vec<(usize, usize)> {
            c.iter()
                .map(|c| (c.len(), c.iter().map(|(k, _)| k.len()).sum()))
                .collect()
        };
        let plain = chunked(writes(&[1; MAX_TXN_OPS + 1]));
        assert_eq!(sizes(&plain), vec![(MAX_TXN_OPS, MAX_TXN_OPS), (1, 1)]);
        let guarded = chunked(writes(&[2; MAX_TXN_OPS]));
        assert_eq!(
            sizes(&guarded),
            vec![
                (MAX_TXN_OPS / 2, MAX_TXN_OPS),
                (MAX_TXN_OPS / 2, MAX_TXN_OPS)
            ]
        );
        let order: Vec<usize> = guarded.into_iter().flatten().map(|(_, i)| i).collect();
        assert_eq!(order, (0..MAX_TXN_OPS).collect::<Vec<_>>());
        assert!(chunked(writes(&[])).is_empty());
    }

    #[test]
    fn segment_entries_commit_with_the_vm_entries() {
        let va: IpAddr = "198.19.0.10".parse().unwrap();
        let seg = Write::Seg(schema::SegValue { locator: va });
        assert_eq!(commit_order(MapKey::Seg(va), seg), 1);
        assert_eq!(commit_order(MapKey::Seg(va), Write::Delete), 2);
    }
}
