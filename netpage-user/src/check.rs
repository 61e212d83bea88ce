//! `netpage check`: the inconsistencies of a page table, found the same way in a node's
//! kernel maps and in the directory (both are a [`PageTable`]).

use std::{collections::BTreeMap, net::IpAddr};

use serde::Serialize;

use crate::table::{PageTable, TableError};

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
}

/// One inconsistency.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Finding {
    pub kind: Kind,
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
    }
}
