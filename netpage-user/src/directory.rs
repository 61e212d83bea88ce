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
use schema::{Keys, MapKey, NodeRecord, SCHEMA_VERSION, SchemaValue, VmValue, encode};
pub use view::{BadValue, Read, View, Write};
pub use wait::Confirmation;

use crate::ops::{self, OpError, now_ms};

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
pub struct Directory {
    client: Client,
    keys: Keys,
    opts: EtcdOptions,
}

/// What a switch through the directory did.
#[derive(Clone, Debug, Serialize)]
pub struct DirSwitched {
    pub vm: IpAddr,
    pub from: IpAddr,
    pub to: IpAddr,
    /// The revision at which the new real address was reserved (phase 1).
    pub reserve_revision: i64,
    /// The revision of the switch transaction (phase 2); 0 if nothing changed.
    pub revision: i64,
    /// How long the switch transaction took, ms.
    pub txn_ms: f64,
    /// Until when the old real address keeps translating, if it drains.
    pub drain_until_ms: Option<u64>,
    /// Whether the command waited for the nodes.
    pub waited: bool,
    /// Each live node's confirmation of the reservation.
    pub reserved: Vec<Confirmation>,
    /// Each live node's confirmation of the switch.
    pub nodes: Vec<Confirmation>,
    /// The live nodes that did not confirm the switch in time.
    pub unconfirmed: Vec<String>,
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
        move |source| DirError::Etcd {
            what,
            endpoints,
            source: Box::new(source),
        }
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
    /// revision of the change (the view's if nothing was written).
    pub async fn change<R>(
        &mut self,
        mut f: impl FnMut(&mut View) -> Result<R, OpError>,
    ) -> Result<(R, i64), DirError> {
        for _ in 0..RETRIES {
            let mut view = self.view().await?;
            let r = f(&mut view)?;
            if view.writes().next().is_none() {
                return Ok((r, view.revision));
            }
            if let Some(rev) = self.commit(&view).await? {
                return Ok((r, rev));
            }
        }
        Err(DirError::Busy)
    }

    /// Commits a view's writes: reverse entries first, then VM entries, then deletions of
    /// VM entries, then of reverse entries, each conditional on its key being as read.
    /// One transaction when they fit etcd's limit; `None` if another writer got there first.
    async fn commit(&mut self, view: &View) -> Result<Option<i64>, DirError> {
        let mut writes: Vec<(MapKey, Write)> = view.writes().collect();
        writes.sort_by_key(|(k, w)| commit_order(*k, *w));
        let mut ops: Vec<(Compare, Op)> = Vec::with_capacity(writes.len() + 1);
        for (key, write) in writes {
            let name = self.map_key(key);
            let cmp = Compare::mod_revision(name.clone(), CompareOp::Equal, view.mod_revision(key));
            let op = match (View::encode(write), write) {
                (Some(value), Write::Ra(v)) => Op::put(name, value, v.drain_until_ms),
                (Some(value), _) => Op::put(name, value, None),
                (None, _) => Op::Now(TxnOp::delete(name, None)),
            };
            ops.push((cmp, op));
        }
        self.commit_chunks(ops).await
    }

    fn map_key(&self, key: MapKey) -> String {
        match key {
            MapKey::Vm(va) => self.keys.vm(va),
            MapKey::Ra(ra) => self.keys.ra(ra),
        }
    }

    /// A lease that ends a drain at `until_ms` (at least etcd's one second).
    async fn drain_lease(&mut self, until_ms: u64) -> Result<i64, DirError> {
        let ttl = until_ms.saturating_sub(now_ms()).div_ceil(1000).max(1);
        let resp = self
            .retrying("granting the lease of a drain", |mut c| async move {
                c.lease_grant(ttl as i64, None).await
            })
            .await?;
        Ok(resp.id())
    }

    /// Runs the transaction of `ops` under `cmps`, granting the drains' leases (one per
    /// deadline) just before it. If one expired before etcd applied the transaction (a
    /// slow commit: etcd then applies none of it), it is tried again with fresh leases.
    async fn txn_with_drains(
        &mut self,
        what: &'static str,
        cmps: Vec<Compare>,
        ops: &[Op],
    ) -> Result<TxnResponse, DirError> {
        let mut tries = 0;
        loop {
            let mut leases: Vec<(u64, i64)> = Vec::new();
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
        mut ops: Vec<(Compare, Op)>,
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
                    Compare::create_revision(key.clone(), CompareOp::Equal, 0),
                    Op::put(key, value, None),
                ),
            );
        }
        let chunks: Vec<Vec<(Compare, Op)>> = ops
            .chunks(MAX_TXN_OPS)
            .map(<[(Compare, Op)]>::to_vec)
            .collect();
        let total = chunks.len();
        let mut revision = 0;
        for (done, chunk) in chunks.into_iter().enumerate() {
            let (cmps, ops): (Vec<_>, Vec<_>) = chunk.into_iter().unzip();
            let resp = self
                .txn_with_drains("writing the mappings", cmps, &ops)
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

    /// Moves `vm` to `to` in two transactions: reserve `to` (R2V) and wait for every live
    /// node to apply it, then switch the VM's entry and start the old address's drain
    /// (a lease), and wait for every live node again unless `wait` is `None`. Of two
    /// concurrent switches of one VM exactly one wins; the other changes nothing.
    pub async fn switch(
        &mut self,
        vm: IpAddr,
        to: IpAddr,
        drain: Duration,
        wait: Option<Duration>,
    ) -> Result<DirSwitched, DirError> {
        let view = self.view().await?;
        let from = ops::check_switch(&view, vm, to)?;
        let at = view.read_vm(vm).expect("check_switch found the VM");
        let mut out = DirSwitched {
            vm,
            from,
            to,
            reserve_revision: 0,
            revision: 0,
            txn_ms: 0.0,
            drain_until_ms: None,
            waited: wait.is_some(),
            reserved: Vec::new(),
            nodes: Vec::new(),
            unconfirmed: Vec::new(),
        };
        if from == to {
            return Ok(out);
        }
        let held = view.read_ra(to);
        let (reserve_rev, created) = match held {
            Some(r) => (r.mod_revision, false),
            None => (self.reserve(vm, to, at.mod_revision).await?, true),
        };
        out.reserve_revision = reserve_rev;
        let switched = self
            .confirm_and_switch(&view, &mut out, at.mod_revision, drain, wait)
            .await;
        let (rev, sent, late) = match switched {
            Ok(Some(done)) => done,
            Ok(None) => {
                if created {
                    self.release(vm, to, reserve_rev).await?;
                }
                let now = self.view().await?.read_vm(vm);
                return Err(DirError::Conflict {
                    vm,
                    now: now.map_or("deleted".into(), |r| r.value.real.to_string()),
                });
            }
            Err(e) => {
                // Nothing switched (or, if the answer was lost, the release sees that
                // the VM is at `to` and keeps the reservation).
                if created {
                    let _ = self.release(vm, to, reserve_rev).await;
                }
                return Err(e);
            }
        };
        out.revision = rev;
        if let Some(timeout) = wait {
            out.nodes = self.wait_applied(rev, timeout, sent, &late).await?;
            out.unconfirmed = laggards(&out.nodes);
        }
        Ok(out)
    }

    /// Waits for the reservation (unless `wait` is `None`), then makes the switch
    /// transaction. Returns its revision, when it was sent and the nodes that missed the
    /// reservation; `None` if another writer changed the VM first.
    async fn confirm_and_switch(
        &mut self,
        view: &View,
        out: &mut DirSwitched,
        vm_rev: i64,
        drain: Duration,
        wait: Option<Duration>,
    ) -> Result<Option<(i64, Instant, Vec<String>)>, DirError> {
        let mut late = Vec::new();
        if let Some(timeout) = wait {
            out.reserved = self
                .wait_applied(out.reserve_revision, timeout, Instant::now(), &[])
                .await?;
            late = laggards(&out.reserved);
        }
        out.drain_until_ms = (!drain.is_zero()).then(|| now_ms() + drain.as_millis() as u64);
        let sent = Instant::now();
        let (vm, from, to) = (out.vm, out.from, out.to);
        let rev = match self
            .switch_txn(
                view,
                vm,
                from,
                to,
                vm_rev,
                out.reserve_revision,
                out.drain_until_ms,
            )
            .await
        {
            Ok(Some(rev)) => Some(rev),
            // The answer may be what was lost (a timeout, a retry after a leader change
            // that had applied it after all): if the VM is at `to` now, it went through.
            failed => match self.switched_since(vm, to, vm_rev).await {
                Some(rev) => Some(rev),
                None => failed?,
            },
        };
        out.txn_ms = sent.elapsed().as_secs_f64() * 1e3;
        Ok(rev.map(|r| (r, sent, late)))
    }

    /// The revision at which `vm` moved to `to` after revision `vm_rev`, if it did (and
    /// the directory can be read to tell).
    async fn switched_since(&mut self, vm: IpAddr, to: IpAddr, vm_rev: i64) -> Option<i64> {
        let now = self.view().await.ok()?.read_vm(vm)?;
        (now.value.real == to && now.mod_revision > vm_rev).then_some(now.mod_revision)
    }

    /// Phase 1: R2V[to] = vm, if `to` is still free and the VM still where it was read.
    async fn reserve(&mut self, vm: IpAddr, to: IpAddr, vm_rev: i64) -> Result<i64, DirError> {
        let ra = self.keys.ra(to);
        let value = encode(&schema::RaValue {
            vm,
            drain_until_ms: None,
        });
        let txn = Txn::new()
            .when([
                Compare::mod_revision(self.keys.vm(vm), CompareOp::Equal, vm_rev),
                Compare::create_revision(ra.clone(), CompareOp::Equal, 0),
            ])
            .and_then([TxnOp::put(ra, value, None)]);
        let resp = self.txn("reserving the new real address", txn).await?;
        if resp.succeeded() {
            return Ok(resp.header().map_or(0, |h| h.revision()));
        }
        // Lost a race: say why, from what is there now.
        let view = self.view().await?;
        ops::check_switch(&view, vm, to)?;
        Err(DirError::Conflict {
            vm,
            now: view
                .read_vm(vm)
                .map_or("deleted".into(), |r| r.value.real.to_string()),
        })
    }

    /// Phase 2: V2R[vm] = to, the old address draining (or removed), if nothing that the
    /// switch read has changed. `None` if something has.
    #[expect(clippy::too_many_arguments, reason = "the revisions the switch read")]
    async fn switch_txn(
        &mut self,
        view: &View,
        vm: IpAddr,
        from: IpAddr,
        to: IpAddr,
        vm_rev: i64,
        reserve_rev: i64,
        drain_until: Option<u64>,
    ) -> Result<Option<i64>, DirError> {
        let mut cmps = vec![
            Compare::mod_revision(self.keys.vm(vm), CompareOp::Equal, vm_rev),
            Compare::mod_revision(self.keys.ra(to), CompareOp::Equal, reserve_rev),
        ];
        let mut ops = vec![Op::put(
            self.keys.vm(vm),
            encode(&VmValue { real: to }),
            None,
        )];
        // A drain of this VM at `to` ends: the address is its own again.
        if view.read_ra(to).is_some_and(|r| r.lease != 0) {
            let value = encode(&schema::RaValue {
                vm,
                drain_until_ms: None,
            });
            ops.push(Op::put(self.keys.ra(to), value, None));
        }
        if let Some(old) = view.read_ra(from).filter(|r| r.value.vm == vm) {
            cmps.push(Compare::mod_revision(
                self.keys.ra(from),
                CompareOp::Equal,
                old.mod_revision,
            ));
            ops.push(match drain_until {
                Some(until) => {
                    let value = encode(&schema::RaValue {
                        vm,
                        drain_until_ms: Some(until),
                    });
                    Op::put(self.keys.ra(from), value, Some(until))
                }
                None => Op::Now(TxnOp::delete(self.keys.ra(from), None)),
            });
        }
        let resp = self
            .txn_with_drains("switching the VM's entry", cmps, &ops)
            .await?;
        Ok(resp
            .succeeded()
            .then(|| resp.header().map_or(0, |h| h.revision())))
    }

    /// Takes back a reservation that a lost switch made, unless the VM went there after all.
    async fn release(&mut self, vm: IpAddr, to: IpAddr, reserve_rev: i64) -> Result<(), DirError> {
        let txn = Txn::new()
            .when([
                Compare::mod_revision(self.keys.ra(to), CompareOp::Equal, reserve_rev),
                Compare::value(
                    self.keys.vm(vm),
                    CompareOp::NotEqual,
                    encode(&VmValue { real: to }),
                ),
            ])
            .and_then([TxnOp::delete(self.keys.ra(to), None)]);
        self.txn("releasing the reservation of a lost switch", txn)
            .await?;
        Ok(())
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
/// entries that use them, and VM entries removed before their reverse entries.
fn commit_order(key: MapKey, write: Write) -> u8 {
    match (key, write) {
        (MapKey::Ra(_), Write::Ra(_)) => 0,
        (MapKey::Vm(_), Write::Vm(_)) => 1,
        (MapKey::Vm(_), _) => 2,
        (MapKey::Ra(_), _) => 3,
    }
}

/// The nodes that did not confirm.
fn laggards(confirmations: &[Confirmation]) -> Vec<String> {
    confirmations
        .iter()
        .filter(|c| !c.confirmed && !c.left)
        .map(|c| c.node.clone())
        .collect()
}
