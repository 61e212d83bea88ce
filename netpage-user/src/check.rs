//! `netpage check`: the inconsistencies of a page table, found the same way in a node's
//! kernel maps and in the directory (both are a [`PageTable`]), the safe repair of each,
//! and the reverse entries with what each is for (`map list --reverse`).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use serde::Serialize;

use crate::{
    ops::remove_reverse_of,
    table::{PageTable, TableError},
};

/// What is wrong with an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// R2V[real] = vm, but the VM is elsewhere (or gone) and the address does not drain:
    /// inbound traffic to `real` is turned into a VA nobody is at.
    OrphanReverse,
    /// V2R[vm] = real, but R2V[real] names another VM: replies come back as that VM.
    ReverseOfAnother,
    /// V2R[vm] = real without R2V[real]: replies to the VM pass untranslated.
    ForwardWithoutReverse,
    /// A drain whose deadline has passed but that is still there.
    ExpiredDrain,
    /// A drain of an address whose reverse entry is gone or names another VM.
    DrainWithoutReverse,
    /// V2R[vm] = real and a segment entry of the VM (its locator, `other`): the VA is
    /// mapped by both methods, which only a writer that predates segment entries in the
    /// directory could have done.
    BothMethods,
}

/// One inconsistency.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Finding {
    pub kind: Kind,
    /// The real address of the entry.
    pub real: IpAddr,
    /// The VM the entry names.
    pub vm: IpAddr,
    /// The other side of the inconsistency, where there is one.
    pub other: Option<IpAddr>,
}

/// Every inconsistency of `t` at `now_ms`, sorted.
pub fn check(t: &impl PageTable, now_ms: u64) -> Result<Vec<Finding>, TableError> {
    let fwd: BTreeMap<IpAddr, IpAddr> = t.forward_entries()?.into_iter().collect();
    let rev: BTreeMap<IpAddr, IpAddr> = t.reverse_entries()?.into_iter().collect();
    let drains: BTreeMap<IpAddr, _> = t.drains()?.into_iter().map(|d| (d.real, d)).collect();
    let mut out = Vec::new();
    for (&vm, &real) in &fwd {
        match rev.get(&real) {
            None => out.push(Finding {
                kind: Kind::ForwardWithoutReverse,
                real,
                vm,
                other: None,
            }),
            Some(&owner) if owner != vm => out.push(Finding {
                kind: Kind::ReverseOfAnother,
                real,
                vm,
                other: Some(owner),
            }),
            Some(_) => {}
        }
    }
    for (&real, &vm) in &rev {
        let draining = drains.get(&real).is_some_and(|d| d.virt == vm);
        if fwd.get(&vm) != Some(&real) && !draining && !fwd.values().any(|&r| r == real) {
            out.push(Finding {
                kind: Kind::OrphanReverse,
                real,
                vm,
                other: fwd.get(&vm).copied(),
            });
        }
    }
    for (vm, locator) in t.segment_entries()? {
        if let Some(&real) = fwd.get(&vm) {
            out.push(Finding {
                kind: Kind::BothMethods,
                real,
                vm,
                other: Some(locator),
            });
        }
    }
    for d in drains.values() {
        if rev.get(&d.real) != Some(&d.virt) {
            out.push(Finding {
                kind: Kind::DrainWithoutReverse,
                real: d.real,
                vm: d.virt,
                other: rev.get(&d.real).copied(),
            });
        } else if d.deadline_ms + EXPIRY_GRACE_MS < now_ms {
            out.push(Finding {
                kind: Kind::ExpiredDrain,
                real: d.real,
                vm: d.virt,
                other: None,
            });
        }
    }
    out.sort();
    Ok(out)
}

/// What `check --repair` did about a finding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Removed the reverse entry (nothing maps or drains to it).
    RemovedReverse,
    /// Set the reverse entry to the VM whose mapping it belongs to.
    SetReverse,
    /// Ended the drain as `gc` ends it (its reverse entry goes unless the VM is back).
    EndedDrain,
    /// Removed the drain record (its reverse entry was gone or another VM's).
    RemovedDrain,
    /// Nothing: an earlier repair fixed it, or it is gone.
    NoneNeeded,
    /// Left as it is: two VMs map to one real address, or one VA is mapped by both
    /// methods, and which one keeps it is a decision (`map del` or `switch` one of them).
    Left,
}

/// A finding and what was done about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Repair {
    #[serde(flatten)]
    pub finding: Finding,
    pub action: Action,
}

/// Repairs each finding with its safe action, in order, checking again before each that
/// it still holds (an earlier repair may have fixed it).
pub fn repair(
    t: &mut impl PageTable,
    findings: &[Finding],
    now_ms: u64,
) -> Result<Vec<Repair>, TableError> {
    findings
        .iter()
        .map(|f| {
            Ok(Repair {
                finding: f.clone(),
                action: repair_one(t, f, now_ms)?,
            })
        })
        .collect()
}

fn repair_one(t: &mut impl PageTable, f: &Finding, now_ms: u64) -> Result<Action, TableError> {
    let vm = f.vm;
    let real = f.real;
    let drain = t.drains()?.into_iter().find(|d| d.real == real);
    Ok(match f.kind {
        Kind::OrphanReverse => {
            let mapped = t.forward(vm)? == Some(real)
                || drain.is_some_and(|d| d.virt == vm)
                || t.forward_entries()?.iter().any(|&(_, r)| r == real);
            if mapped || t.reverse(real)? != Some(vm) {
                Action::NoneNeeded
            } else {
                remove_reverse_of(t, real, vm)?;
                Action::RemovedReverse
            }
        }
        Kind::ReverseOfAnother | Kind::ForwardWithoutReverse => {
            let owner = t.reverse(real)?;
            let shared = match owner {
                Some(o) => t.forward(o)? == Some(real),
                None => false,
            };
            if t.forward(vm)? != Some(real) || owner == Some(vm) {
                Action::NoneNeeded
            } else if shared {
                Action::Left
            } else {
                t.set_reverse(real, vm)?;
                Action::SetReverse
            }
        }
        Kind::ExpiredDrain => match drain {
            Some(d) if d.virt == vm && d.deadline_ms <= now_ms => {
                if t.forward(vm)? != Some(real) {
                    remove_reverse_of(t, real, vm)?;
                }
                t.remove_drain(real)?;
                Action::EndedDrain
            }
            _ => Action::NoneNeeded,
        },
        Kind::DrainWithoutReverse => match drain {
            Some(d) if t.reverse(real)? != Some(d.virt) => {
                t.remove_drain(real)?;
                Action::RemovedDrain
            }
            _ => Action::NoneNeeded,
        },
        // Which method the VM keeps is a decision: `map del` it, then map it again.
        Kind::BothMethods => match t.segment(vm)? {
            Some(_) if t.forward(vm)?.is_some() => Action::Left,
            _ => Action::NoneNeeded,
        },
    })
}

/// What a reverse entry is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReverseState {
    /// The VM's mapping: V2R[vm] = real.
    Mapped,
    /// The VM's old address, draining after a switch.
    Draining,
    /// Another VM maps to the address ([`Kind::ReverseOfAnother`]).
    OfAnother,
    /// Nothing: neither mapped nor draining ([`Kind::OrphanReverse`]).
    Orphan,
}

/// One reverse entry (R2V) and what it is for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReverseEntry {
    pub real: IpAddr,
    pub vm: IpAddr,
    pub state: ReverseState,
    /// When its drain ends (ms since the Unix epoch), if it drains.
    pub drain_until_ms: Option<u64>,
}

/// Every reverse entry of `t`, sorted by real address, with what it is for.
pub fn reverse_entries(t: &impl PageTable) -> Result<Vec<ReverseEntry>, TableError> {
    let fwd: BTreeMap<IpAddr, IpAddr> = t.forward_entries()?.into_iter().collect();
    let used: BTreeSet<IpAddr> = fwd.values().copied().collect();
    let drains: BTreeMap<IpAddr, _> = t.drains()?.into_iter().map(|d| (d.real, d)).collect();
    let mut out: Vec<ReverseEntry> = t
        .reverse_entries()?
        .into_iter()
        .map(|(real, vm)| {
            let drain = drains.get(&real).filter(|d| d.virt == vm);
            let state = if fwd.get(&vm) == Some(&real) {
                ReverseState::Mapped
            } else if drain.is_some() {
                ReverseState::Draining
            } else if used.contains(&real) {
                ReverseState::OfAnother
            } else {
                ReverseState::Orphan
            };
            ReverseEntry {
                real,
                vm,
                state,
                drain_until_ms: drain.map(|d| d.deadline_ms),
            }
        })
        .collect();
    out.sort_by_key(|e| e.real);
    Ok(out)
}

/// How long past its deadline a drain may still be there before it counts as expired:
/// a node ends it at its next command, the directory when its lease expires (etcd checks
/// leases about every half second).
const EXPIRY_GRACE_MS: u64 = 2000;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        directory::{View, schema::Keys},
        table::Drain,
    };

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn every_kind_is_found() {
        let mut t = View::from_kvs(&Keys::new("/t"), 1, []).unwrap();
        let (a, b, c, d) = (
            ip("198.19.0.1"),
            ip("198.19.0.2"),
            ip("198.19.0.3"),
            ip("198.19.0.4"),
        );
        let r = |n: u8| IpAddr::from([198, 18, 0, n]);
        // a: consistent, with a live drain of r(9).
        t.set_reverse(r(1), a).unwrap();
        t.set_forward(a, r(1)).unwrap();
        t.set_drain(Drain {
            real: r(9),
            virt: a,
            deadline_ms: 10_000,
        })
        .unwrap();
        // b: forward without reverse.
        t.set_forward(b, r(2)).unwrap();
        // c: its reverse entry names d.
        t.set_forward(c, r(3)).unwrap();
        t.set_reverse(r(3), d).unwrap();
        // An orphan reverse entry, and an expired drain.
        t.set_reverse(r(4), d).unwrap();
        t.set_drain(Drain {
            real: r(5),
            virt: a,
            deadline_ms: 1,
        })
        .unwrap();
        let kinds: Vec<Kind> = check(&t, 5_000).unwrap().iter().map(|f| f.kind).collect();
        assert_eq!(
            kinds,
            vec![
                Kind::OrphanReverse,
                Kind::ReverseOfAnother,
                Kind::ForwardWithoutReverse,
                Kind::ExpiredDrain
            ]
        );
        assert!(
            check(&t, 5_000)
                .unwrap()
                .iter()
                .all(|f| f.real != r(1) && f.real != r(9))
        );
        let states: Vec<_> = reverse_entries(&t)
            .unwrap()
            .into_iter()
            .map(|e| (e.real, e.state))
            .collect();
        assert_eq!(
            states,
            vec![
                (r(1), ReverseState::Mapped),
                (r(3), ReverseState::OfAnother),
                (r(4), ReverseState::Orphan),
                (r(5), ReverseState::Draining),
                (r(9), ReverseState::Draining),
            ]
        );

        let findings = check(&t, 5_000).unwrap();
        let actions: Vec<Action> = repair(&mut t, &findings, 5_000)
            .unwrap()
            .iter()
            .map(|r| r.action)
            .collect();
        assert_eq!(
            actions,
            vec![
                Action::RemovedReverse,
                Action::SetReverse,
                Action::SetReverse,
                Action::EndedDrain
            ]
        );
        assert_eq!(check(&t, 5_000).unwrap(), vec![]);
        // What was consistent is kept: a's mapping and its live drain.
        assert_eq!(t.reverse(r(1)).unwrap(), Some(a));
        assert_eq!(t.drains().unwrap().len(), 1);
    }

    #[test]
    fn a_va_mapped_by_both_methods_is_left_for_a_decision() {
        let mut t = View::from_kvs(&Keys::new("/t"), 1, []).unwrap();
        let (vm, real, locator) = (ip("198.19.0.1"), ip("198.18.0.1"), ip("2001:db8:a::1"));
        t.set_reverse(real, vm).unwrap();
        t.set_forward(vm, real).unwrap();
        t.set_segment(vm, locator).unwrap();
        let findings = check(&t, 0).unwrap();
        assert_eq!(
            findings,
            vec![Finding {
                kind: Kind::BothMethods,
                real,
                vm,
                other: Some(locator),
            }]
        );
        let repairs = repair(&mut t, &findings, 0).unwrap();
        assert_eq!(repairs[0].action, Action::Left);
        assert_eq!(check(&t, 0).unwrap(), findings, "nothing changed");
    }

    #[test]
    fn two_vms_on_one_real_address_are_left_for_a_decision() {
        let mut t = View::from_kvs(&Keys::new("/t"), 1, []).unwrap();
        let (a, b, r) = (ip("198.19.0.1"), ip("198.19.0.2"), ip("198.18.0.1"));
        t.set_reverse(r, b).unwrap();
        t.set_forward(a, r).unwrap();
        t.set_forward(b, r).unwrap();
        let findings = check(&t, 0).unwrap();
        let repairs = repair(&mut t, &findings, 0).unwrap();
        assert_eq!(repairs.len(), 1);
        assert_eq!(repairs[0].action, Action::Left);
        assert_eq!(check(&t, 0).unwrap(), findings);
    }
}
