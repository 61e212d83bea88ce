//! The page tables the libvirt hook and follower change: this machine's nodes (pin
//! directories) or the directory on etcd, with the three steps they take: reserve the
//! destination's real address, find where a VM is and what is reserved for it, switch.
//!
//! These are the steps `netpage migrate` and `netpage switch` take, cut where libvirt's
//! hook and events fall: the reservation (R2V[to] = VM) when the destination prepares,
//! the V2R update when the follower hears the chosen event.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use serde::Serialize;

use crate::{
    clock,
    directory::{DirError, Directory, EtcdOptions},
    node::{self, Node, NodeError, OpenNode},
    ops::{self, OpError},
    table::{PageTable, TableError},
};

/// Where the page tables are.
#[derive(Clone, Debug)]
pub enum TableSpec {
    /// Nodes of this machine, switched together in the order given.
    Nodes(Vec<Node>),
    /// The directory; every node's agent applies it. `confirm` bounds the wait for the
    /// live nodes' confirmation of a reservation.
    Directory {
        etcd: EtcdOptions,
        confirm: Duration,
    },
}

/// Why a step on the page tables failed.
#[derive(Debug, thiserror::Error)]
pub enum TablesError {
    #[error("node {}", dir.display())]
    Node {
        dir: PathBuf,
        #[source]
        source: NodeError,
    },
    #[error(transparent)]
    Op(#[from] OpError),
    #[error("node {}", dir.display())]
    Table {
        dir: PathBuf,
        #[source]
        source: TableError,
    },
    #[error("the directory")]
    Directory(#[from] DirError),
    #[error("starting the directory's client")]
    Runtime(#[from] std::io::Error),
}

/// A reservation made (or found already made).
#[derive(Clone, Debug, Serialize)]
pub struct Reserved {
    pub vm: IpAddr,
    /// Where the VM is now.
    pub from: IpAddr,
    pub to: IpAddr,
    /// Whether the VM is already at `to` (nothing to reserve).
    pub already_there: bool,
}

/// Where a VM is, and which of some real addresses are reserved for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmState {
    pub at: IpAddr,
    /// The candidates, other than `at`, whose reverse entry names the VM.
    pub reserved: Vec<IpAddr>,
}

/// What a switch did.
#[derive(Clone, Debug, Serialize)]
pub struct SwitchDone {
    pub vm: IpAddr,
    pub from: IpAddr,
    pub to: IpAddr,
    /// The slowest node's V2R update, or the directory's switch transaction, µs.
    pub update_us: f64,
}

/// The page tables, open for the hook's or the follower's steps: nodes are opened at
/// each step (and locked for its length), the directory is connected once.
pub struct Tables {
    inner: Inner,
}

enum Inner {
    Nodes(Vec<Node>),
    Directory {
        runtime: tokio::runtime::Runtime,
        dir: Box<Directory>,
        confirm: Duration,
    },
}

impl Tables {
    /// Checks the nodes' capabilities or connects to the directory.
    pub fn open(spec: &TableSpec) -> Result<Self, TablesError> {
        let inner = match spec {
            TableSpec::Nodes(nodes) => Inner::Nodes(nodes.clone()),
            TableSpec::Directory { etcd, confirm } => {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let dir = runtime.block_on(Directory::connect(etcd))?;
                Inner::Directory {
                    runtime,
                    dir: Box::new(dir),
                    confirm: *confirm,
                }
            }
        };
        Ok(Self { inner })
    }

    /// R2V[to] = vm on every node (on all or none), or in the directory once every live
    /// node confirmed it (or `confirm` passed: the reservation stays, as `migrate`'s
    /// does). Idempotent: a reservation already made is found and kept.
    pub fn reserve(&mut self, vm: IpAddr, to: IpAddr) -> Result<Reserved, TablesError> {
        match &mut self.inner {
            Inner::Nodes(nodes) => {
                let mut open = open_nodes(nodes)?;
                let from = ops::locate(named(nodes, &open), vm, to)?;
                if from != to {
                    for i in 0..open.len() {
                        if let Err(source) = open[i].table.set_reverse(to, vm) {
                            for n in &mut open[..i] {
                                let _ = ops::remove_reverse_of(&mut n.table, to, vm);
                            }
                            return Err(TablesError::Table {
                                dir: nodes[i].dir().to_owned(),
                                source,
                            });
                        }
                    }
                }
                Ok(Reserved {
                    vm,
                    from,
                    to,
                    already_there: from == to,
                })
            }
            Inner::Directory {
                runtime,
                dir,
                confirm,
            } => {
                let r = runtime.block_on(dir.reserve_move(vm, to, Some(*confirm)))?;
                if !r.late.is_empty() {
                    eprintln!(
                        "netpage: warning: {} did not confirm the reservation of {to} within {confirm:?}",
                        r.late.join(", ")
                    );
                }
                Ok(Reserved {
                    vm,
                    from: r.from,
                    to,
                    already_there: r.from == to,
                })
            }
        }
    }

    /// Where `vm` is (every node must agree), and which of `candidates` are reserved
    /// for it.
    pub fn state(&mut self, vm: IpAddr, candidates: &[IpAddr]) -> Result<VmState, TablesError> {
        match &mut self.inner {
            Inner::Nodes(nodes) => {
                let mut state: Option<VmState> = None;
                for node in nodes.iter() {
                    let n = node.open().map_err(|source| TablesError::Node {
                        dir: node.dir().to_owned(),
                        source,
                    })?;
                    let here = state_of(&n.table, vm, candidates).map_err(|e| match e {
                        TablesError::Op(e) => TablesError::Op(OpError::OnNode {
                            node: node.dir().display().to_string(),
                            source: Box::new(e),
                        }),
                        e => e,
                    })?;
                    match &state {
                        Some(s) if s.at != here.at => {
                            return Err(OpError::Disagree {
                                vm,
                                here: here.at,
                                elsewhere: s.at,
                            }
                            .into());
                        }
                        // A candidate counts as reserved if every node has it.
                        Some(s) => {
                            let both = s
                                .reserved
                                .iter()
                                .copied()
                                .filter(|r| here.reserved.contains(r))
                                .collect();
                            state = Some(VmState {
                                at: s.at,
                                reserved: both,
                            });
                        }
                        None => state = Some(here),
                    }
                }
                Ok(state.ok_or(OpError::NoNode)?)
            }
            Inner::Directory { runtime, dir, .. } => {
                let view = runtime.block_on(dir.view())?;
                state_of(&view, vm, candidates)
            }
        }
    }

    /// V2R[vm] = to on every node (reserving `to` first where it is not), the old
    /// address draining for `drain`; or the directory's switch, not waiting for the
    /// nodes' confirmations (the guest is paused or resuming: nothing waits).
    pub fn switch(
        &mut self,
        vm: IpAddr,
        to: IpAddr,
        drain: Duration,
    ) -> Result<SwitchDone, TablesError> {
        match &mut self.inner {
            Inner::Nodes(nodes) => {
                let mut open = open_nodes(nodes)?;
                for (n, node) in open.iter_mut().zip(nodes.iter()) {
                    ops::gc(&mut n.table, clock::node_ms()).map_err(|source| {
                        TablesError::Table {
                            dir: node.dir().to_owned(),
                            source,
                        }
                    })?;
                }
                let mut tables: Vec<(String, &mut crate::table::BpfTable)> = open
                    .iter_mut()
                    .zip(nodes.iter())
                    .map(|(n, node)| (node.dir().display().to_string(), &mut n.table))
                    .collect();
                let s = ops::switch_many(&mut tables, vm, to, drain, clock::node_ms())?;
                Ok(SwitchDone {
                    vm,
                    from: s.from,
                    to,
                    update_us: s.update.as_nanos() as f64 / 1000.0,
                })
            }
            Inner::Directory { runtime, dir, .. } => {
                let s = runtime.block_on(dir.switch(vm, to, drain, None))?;
                Ok(SwitchDone {
                    vm,
                    from: s.from,
                    to,
                    update_us: s.txn_ms * 1000.0,
                })
            }
        }
    }
}

fn open_nodes(nodes: &[Node]) -> Result<Vec<OpenNode>, TablesError> {
    node::open_many_for_write(nodes).map_err(|(i, source)| TablesError::Node {
        dir: nodes[i].dir().to_owned(),
        source,
    })
}

fn named<'a>(
    nodes: &'a [Node],
    open: &'a [OpenNode],
) -> impl Iterator<Item = (&'a str, &'a crate::table::BpfTable)> {
    nodes
        .iter()
        .zip(open)
        .map(|(node, n)| (node.dir().to_str().unwrap_or("?"), &n.table))
}

/// Where `vm` is on `t`, and which of `candidates` (other than there, and not draining)
/// name it in R2V.
pub fn state_of(
    t: &impl PageTable,
    vm: IpAddr,
    candidates: &[IpAddr],
) -> Result<VmState, TablesError> {
    let at = t
        .forward(vm)
        .map_err(OpError::from)?
        .ok_or(OpError::UnknownVm { vm })?;
    // An old address draining after an earlier move names the VM too, but is no target.
    let draining: Vec<IpAddr> = t
        .drains()
        .map_err(OpError::from)?
        .into_iter()
        .filter(|d| d.virt == vm)
        .map(|d| d.real)
        .collect();
    let mut reserved = Vec::new();
    for &ra in candidates {
        if ra != at && !draining.contains(&ra) && t.reverse(ra).map_err(OpError::from)? == Some(vm)
        {
            reserved.push(ra);
        }
    }
    Ok(VmState { at, reserved })
}
