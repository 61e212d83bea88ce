//! Moving a VM through the directory in two transactions: reserve the new real address
//! (and let every live node confirm it), then switch the VM's entry (and let them confirm
//! again). `switch` does both at once; `migrate` holds the reservation for the length of
//! a live migration and commits at the moment it chooses.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use serde::Serialize;

use super::{
    DirError, Directory, Op,
    schema::{self, VmValue, encode},
    view::View,
    wait::Confirmation,
};
use crate::{clock::unix_ms, ops};

/// How a switched VM is mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// VA -> real address, in two transactions (reserve, then switch).
    Paging,
    /// VA -> locator, in one transaction.
    Encap,
}

/// What a switch through the directory did.
#[derive(Clone, Debug, Serialize)]
pub struct DirSwitched {
    pub method: Method,
    pub vm: IpAddr,
    pub from: IpAddr,
    pub to: IpAddr,
    /// The revision at which the new real address was reserved (phase 1; 0 for encap).
    pub reserve_revision: i64,
    /// The revision of the switch transaction (phase 2 of paging); 0 if nothing changed.
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

/// Phase 1 of a move, done: the new real address is reserved for the VM (R2V), and the
/// VM's entry is as it was read. Held until [`Directory::commit_move`] or
/// [`Directory::release_move`].
#[derive(Debug)]
pub struct Reservation {
    pub vm: IpAddr,
    pub from: IpAddr,
    pub to: IpAddr,
    /// The revision at which `to` was reserved (or last changed, if it already was).
    pub revision: i64,
    /// When etcd answered the reservation: the nodes' confirmations count from then.
    pub reserved_at: Instant,
    /// The old address's drain lease, granted ahead of the switch (deadline, id).
    drain_lease: Option<(u64, i64)>,
    /// Each live node's confirmation of the reservation (if waited for).
    pub confirmations: Vec<Confirmation>,
    /// The live nodes that missed the reservation: not waited for again.
    pub late: Vec<String>,
    /// What the move was decided on.
    view: View,
    vm_rev: i64,
    /// Whether this reservation wrote `to` (and its release removes it).
    created: bool,
}

/// Phase 2 of a move, done: the VM's entry names the new address.
#[derive(Clone, Copy, Debug)]
pub struct Committed {
    /// The switch transaction's revision.
    pub revision: i64,
    /// When it was sent.
    pub sent: Instant,
    /// How long etcd took to answer it, ms.
    pub txn_ms: f64,
}

impl DirSwitched {
    /// A switch of `vm` from `from` to `to` that has changed nothing yet.
    pub(super) fn new(method: Method, vm: IpAddr, from: IpAddr, to: IpAddr, waited: bool) -> Self {
        Self {
            method,
            vm,
            from,
            to,
            reserve_revision: 0,
            revision: 0,
            txn_ms: 0.0,
            drain_until_ms: None,
            waited,
            reserved: Vec::new(),
            nodes: Vec::new(),
            unconfirmed: Vec::new(),
        }
    }
}

impl Directory {
    /// Moves `vm` to `to`. A VM mapped by paging moves in two transactions: reserve `to`
    /// (R2V) and wait for every live node to apply it, then switch the VM's entry and
    /// start the old address's drain (a lease), and wait for every live node again unless
    /// `wait` is `None`. A VM mapped with method `encap` moves to the node of locator `to`
    /// in one transaction. Of two concurrent switches of one VM exactly one wins; the
    /// other changes nothing.
    pub async fn switch(
        &mut self,
        vm: IpAddr,
        to: IpAddr,
        drain: Duration,
        wait: Option<Duration>,
    ) -> Result<DirSwitched, DirError> {
        let view = self.view().await?;
        if view.read_seg(vm).is_some() {
            return self.switch_segment(view, vm, to, wait).await;
        }
        let r = self.reserve_move_on(view, vm, to, wait).await?;
        let mut out = DirSwitched::new(Method::Paging, vm, r.from, to, wait.is_some());
        out.reserve_revision = r.revision;
        out.reserved = r.confirmations.clone();
        if r.from == to {
            return Ok(out);
        }
        out.drain_until_ms = (!drain.is_zero()).then(|| unix_ms() + drain.as_millis() as u64);
        let done = self.commit_move(&r, out.drain_until_ms).await?;
        out.revision = done.revision;
        out.txn_ms = done.txn_ms;
        if let Some(timeout) = wait {
            out.nodes = self
                .wait_applied(done.revision, timeout, done.sent, &r.late)
                .await?;
            out.unconfirmed = laggards(&out.nodes);
        }
        Ok(out)
    }

    /// Phase 1: checks that `vm` may move to `to` and reserves `to` (unless it already
    /// names the VM), then waits for every live node to apply it unless `wait` is `None`.
    /// A VM already at `to` gives a reservation with `from == to` that holds nothing.
    pub async fn reserve_move(
        &mut self,
        vm: IpAddr,
        to: IpAddr,
        wait: Option<Duration>,
    ) -> Result<Reservation, DirError> {
        let view = self.view().await?;
        self.reserve_move_on(view, vm, to, wait).await
    }

    /// [`Directory::reserve_move`] on the mappings as `view` read them.
    async fn reserve_move_on(
        &mut self,
        view: View,
        vm: IpAddr,
        to: IpAddr,
        wait: Option<Duration>,
    ) -> Result<Reservation, DirError> {
        let from = ops::check_switch(&view, vm, to)?;
        let vm_rev = view
            .read_vm(vm)
            .expect("check_switch found the VM")
            .mod_revision;
        let mut r = Reservation {
            vm,
            from,
            to,
            revision: 0,
            reserved_at: Instant::now(),
            drain_lease: None,
            confirmations: Vec::new(),
            late: Vec::new(),
            view,
            vm_rev,
            created: false,
        };
        if from == to {
            return Ok(r);
        }
        (r.revision, r.created) = match r.view.read_ra(to) {
            Some(held) => (held.mod_revision, false),
            None => (self.reserve_txn(vm, to, vm_rev).await?, true),
        };
        r.reserved_at = Instant::now();
        if let Some(timeout) = wait {
            let waited = self
                .wait_applied(r.revision, timeout, r.reserved_at, &[])
                .await;
            r.confirmations = match waited {
                Ok(c) => c,
                Err(e) => {
                    self.release_move(&r).await;
                    return Err(e);
                }
            };
            r.late = laggards(&r.confirmations);
        }
        Ok(r)
    }

    /// Phase 2: one transaction that switches the VM's entry to the reserved address if
    /// nothing the reservation read has changed; the old address drains until
    /// `drain_until` (a lease) or is removed. If another writer got there first, this
    /// releases the reservation (if it made it) and says so ([`DirError::Conflict`]).
    pub async fn commit_move(
        &mut self,
        r: &Reservation,
        drain_until: Option<u64>,
    ) -> Result<Committed, DirError> {
        let sent = Instant::now();
        let rev = match self.switch_txn(r, drain_until).await {
            Ok(Some(rev)) => Some(rev),
            // The answer may be what was lost (a timeout, a retry after a leader change
            // that had applied it after all): if the VM is at `to` now, it went through.
            failed => match self.switched_since(r).await {
                Some(rev) => Some(rev),
                None => match failed {
                    Err(e) => {
                        self.release_move(r).await;
                        return Err(e);
                    }
                    Ok(_) => None,
                },
            },
        };
        let txn_ms = sent.elapsed().as_secs_f64() * 1e3;
        match rev {
            Some(revision) => Ok(Committed {
                revision,
                sent,
                txn_ms,
            }),
            None => {
                self.release_move(r).await;
                let now = self.view().await?.read_vm(r.vm);
                Err(DirError::Conflict {
                    vm: r.vm,
                    now: now.map_or("deleted".into(), |v| v.value.real.to_string()),
                })
            }
        }
    }

    /// Grants the lease of the old address's drain until `until_ms` now, so that the
    /// switch transaction is the only request left when its moment comes.
    pub async fn grant_drain(
        &mut self,
        r: &mut Reservation,
        until_ms: u64,
    ) -> Result<(), DirError> {
        r.drain_lease = Some((until_ms, self.drain_lease(until_ms).await?));
        Ok(())
    }

    /// Reads again what a reservation rests on, after the VM's entry changed by this
    /// command's own hand (a switch taken back): the VM must be at `from` and `to` still
    /// reserved for it.
    pub async fn renew(&mut self, r: &mut Reservation) -> Result<(), DirError> {
        let view = self.view().await?;
        let vm = view.read_vm(r.vm);
        let ra = view.read_ra(r.to);
        match (vm, ra) {
            (Some(at), Some(held)) if at.value.real == r.from && held.value.vm == r.vm => {
                r.vm_rev = at.mod_revision;
                r.revision = held.mod_revision;
                r.view = view;
                Ok(())
            }
            (at, _) => Err(DirError::Conflict {
                vm: r.vm,
                now: at.map_or("deleted".into(), |v| v.value.real.to_string()),
            }),
        }
    }

    /// Takes back a reservation this command made, unless the VM went there after all.
    /// A failure is reported, not returned: the reservation then stays, and `check`
    /// finds it.
    pub async fn release_move(&mut self, r: &Reservation) {
        if !r.created {
            return;
        }
        let txn = Txn::new()
            .when([
                Compare::mod_revision(self.keys.ra(r.to), CompareOp::Equal, r.revision),
                Compare::value(
                    self.keys.vm(r.vm),
                    CompareOp::NotEqual,
                    encode(&VmValue { real: r.to }),
                ),
            ])
            .and_then([TxnOp::delete(self.keys.ra(r.to), None)]);
        if let Err(e) = self.txn("releasing a reservation", txn).await {
            eprintln!(
                "netpage: warning: the reservation of {} for {} stays: {e}",
                r.to, r.vm
            );
        }
    }

    /// The revision at which the VM moved to the reserved address after the reservation
    /// read it, if it did (and the directory can be read to tell).
    async fn switched_since(&mut self, r: &Reservation) -> Option<i64> {
        let now = self.view().await.ok()?.read_vm(r.vm)?;
        (now.value.real == r.to && now.mod_revision > r.vm_rev).then_some(now.mod_revision)
    }

    /// R2V[to] = vm, if `to` is still free and the VM still where it was read.
    async fn reserve_txn(&mut self, vm: IpAddr, to: IpAddr, vm_rev: i64) -> Result<i64, DirError> {
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

    /// V2R[vm] = to, the old address draining (or removed), if nothing that the
    /// reservation read has changed. `None` if something has.
    async fn switch_txn(
        &mut self,
        r: &Reservation,
        drain_until: Option<u64>,
    ) -> Result<Option<i64>, DirError> {
        let (vm, from, to) = (r.vm, r.from, r.to);
        let mut cmps = vec![
            Compare::mod_revision(self.keys.vm(vm), CompareOp::Equal, r.vm_rev),
            Compare::mod_revision(self.keys.ra(to), CompareOp::Equal, r.revision),
        ];
        let mut ops = vec![Op::put(
            self.keys.vm(vm),
            encode(&VmValue { real: to }),
            None,
        )];
        // A drain of this VM at `to` ends: the address is its own again.
        if r.view.read_ra(to).is_some_and(|ra| ra.lease != 0) {
            let value = encode(&schema::RaValue {
                vm,
                drain_until_ms: None,
            });
            ops.push(Op::put(self.keys.ra(to), value, None));
        }
        if let Some(old) = r.view.read_ra(from).filter(|ra| ra.value.vm == vm) {
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
        let granted = r
            .drain_lease
            .filter(|&(until, _)| Some(until) == drain_until);
        let resp = self
            .txn_with_drains("switching the VM's entry", cmps, &ops, granted)
            .await?;
        Ok(resp
            .succeeded()
            .then(|| resp.header().map_or(0, |h| h.revision())))
    }
}

/// The nodes that did not confirm.
pub fn laggards(confirmations: &[Confirmation]) -> Vec<String> {
    confirmations
        .iter()
        .filter(|c| !c.confirmed && !c.left)
        .map(|c| c.node.clone())
        .collect()
}
