//! Counter slots of one address family: which mapping's traffic each index of the
//! per-mapping stats array holds.
//!
//! The kernel keeps no record of its own: a slot is in use while a table entry (V2R or
//! R2V) carries it, or while this process has claimed it for a mapping whose entries are
//! about to be written. Every entry of a mapping carries the same slot, a draining reverse
//! entry included, so a switch keeps it, and it is free again once the mapping's last
//! entry is gone. The index is built from the table's entries when a slot must be found.

use std::{collections::HashMap, net::IpAddr};

/// A slot claimed for a VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    pub slot: u32,
    /// The slot was free: its counters hold an earlier mapping's traffic and must be
    /// zeroed before the mapping's entries name it.
    pub fresh: bool,
}

/// Every slot is in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full;

/// One family's slots: owner and users of each.
#[derive(Debug)]
pub struct Slots {
    /// Per slot: the VM it counts for and how many table entries carry it, or `None`.
    users: Vec<Option<Use>>,
    /// The slot of each VM that has one.
    by_vm: HashMap<IpAddr, u32>,
    /// Where the search for a free slot starts: slots below are likely taken.
    hint: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Use {
    vm: IpAddr,
    entries: u32,
    /// Claimed by this process for entries not written yet.
    claimed: bool,
}

/// Something wrong with a slot, as the table's entries show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum SlotProblem {
    /// Entries of two VMs carry the same slot: their traffic is counted together.
    Shared {
        slot: u32,
        vm: IpAddr,
        other: IpAddr,
    },
    /// Entries of one VM carry different slots: part of its traffic is counted elsewhere.
    Split { vm: IpAddr, slot: u32, other: u32 },
    /// An entry carries a slot beyond the stats array: its traffic is not counted.
    OutOfRange { vm: IpAddr, slot: u32 },
}

impl Slots {
    /// The slots of a table of `capacity` slots whose entries name `(vm, slot)` (one pair
    /// per V2R or R2V entry), with what is wrong with them.
    pub fn from_entries(
        capacity: u32,
        entries: impl IntoIterator<Item = (IpAddr, u32)>,
    ) -> (Self, Vec<SlotProblem>) {
        let mut s = Self {
            users: vec![None; capacity as usize],
            by_vm: HashMap::new(),
            hint: 0,
        };
        let mut problems = Vec::new();
        for (vm, slot) in entries {
            let Some(u) = s.users.get_mut(slot as usize) else {
                problems.push(SlotProblem::OutOfRange { vm, slot });
                continue;
            };
            match u {
                None => {
                    *u = Some(Use {
                        vm,
                        entries: 1,
                        claimed: false,
                    })
                }
                Some(u) if u.vm == vm => u.entries += 1,
                Some(u) => problems.push(SlotProblem::Shared {
                    slot,
                    vm: u.vm,
                    other: vm,
                }),
            }
            match s.by_vm.get(&vm) {
                None => {
                    s.by_vm.insert(vm, slot);
                }
                Some(&other) if other != slot => problems.push(SlotProblem::Split {
                    vm,
                    slot: other,
                    other: slot,
                }),
                Some(_) => {}
            }
        }
        problems.sort();
        problems.dedup();
        (s, problems)
    }

    /// The slot of `vm`, if it has one.
    pub fn slot_of(&self, vm: IpAddr) -> Option<u32> {
        self.by_vm.get(&vm).copied()
    }

    /// The slot of `vm`: the one it has, or a free one, claimed for it until its entries
    /// are written or [`Slots::unclaim`] gives it back.
    pub fn claim(&mut self, vm: IpAddr) -> Result<Claim, Full> {
        if let Some(slot) = self.slot_of(vm) {
            if let Some(u) = &mut self.users[slot as usize] {
                u.claimed = true;
            }
            return Ok(Claim { slot, fresh: false });
        }
        let n = self.users.len();
        let start = self.hint as usize;
        let free = (start..n)
            .chain(0..start.min(n))
            .find(|&i| self.users[i].is_none())
            .ok_or(Full)?;
        self.users[free] = Some(Use {
            vm,
            entries: 0,
            claimed: true,
        });
        self.by_vm.insert(vm, free as u32);
        self.hint = (free + 1) as u32;
        Ok(Claim {
            slot: free as u32,
            fresh: true,
        })
    }

    /// An entry of `vm` that carries `slot` was written.
    pub fn entry_added(&mut self, vm: IpAddr, slot: u32) {
        if let Some(u) = self.users.get_mut(slot as usize) {
            match u {
                Some(u) if u.vm == vm => u.entries += 1,
                Some(_) => {}
                None => {
                    *u = Some(Use {
                        vm,
                        entries: 1,
                        claimed: false,
                    });
                    self.by_vm.entry(vm).or_insert(slot);
                }
            }
        }
    }

    /// An entry of `vm` that carried `slot` was removed or overwritten.
    pub fn entry_removed(&mut self, vm: IpAddr, slot: u32) {
        if let Some(Some(u)) = self.users.get_mut(slot as usize)
            && u.vm == vm
        {
            u.entries = u.entries.saturating_sub(1);
            self.release_if_unused(slot);
        }
    }

    /// The mapping of `vm` is gone as far as its caller knows: its claim ends, and its
    /// slot is free once no entry carries it (a draining reverse entry may still).
    pub fn unclaim(&mut self, vm: IpAddr) {
        if let Some(slot) = self.slot_of(vm) {
            if let Some(Some(u)) = self.users.get_mut(slot as usize) {
                u.claimed = false;
            }
            self.release_if_unused(slot);
        }
    }

    fn release_if_unused(&mut self, slot: u32) {
        let i = slot as usize;
        if let Some(u) = self.users[i].filter(|u| u.entries == 0 && !u.claimed) {
            self.users[i] = None;
            self.by_vm.remove(&u.vm);
            self.hint = self.hint.min(slot);
        }
    }

    /// How many slots are in use.
    pub fn in_use(&self) -> usize {
        self.users.iter().filter(|u| u.is_some()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_new_vm_gets_the_lowest_free_slot_zeroed_and_keeps_it() {
        let (a, b, c) = (ip("10.0.0.1"), ip("10.0.0.2"), ip("10.0.0.3"));
        let (mut s, problems) = Slots::from_entries(4, [(a, 0), (a, 0), (c, 2)]);
        assert!(problems.is_empty());
        assert_eq!(
            s.claim(b),
            Ok(Claim {
                slot: 1,
                fresh: true
            })
        );
        // Claimed again (a retry, a second entry): the same slot, not zeroed again.
        assert_eq!(
            s.claim(b),
            Ok(Claim {
                slot: 1,
                fresh: false
            })
        );
        assert_eq!(
            s.claim(a),
            Ok(Claim {
                slot: 0,
                fresh: false
            })
        );
        assert_eq!(s.in_use(), 3);
    }

    #[test]
    fn a_slot_is_free_once_its_last_entry_is_gone_and_its_claim_ended() {
        let (a, b) = (ip("10.0.0.1"), ip("10.0.0.2"));
        let (mut s, _) = Slots::from_entries(2, []);
        let slot = s.claim(a).unwrap().slot;
        // R2V, then V2R, then a switch's new R2V: three entries with the slot.
        for _ in 0..3 {
            s.entry_added(a, slot);
        }
        // The mapping is deleted, but the old reverse entry still drains.
        s.entry_removed(a, slot);
        s.entry_removed(a, slot);
        s.unclaim(a);
        assert_eq!(s.slot_of(a), Some(slot), "a draining entry keeps the slot");
        assert_eq!(s.claim(b).unwrap().slot, 1);
        s.unclaim(b);
        s.entry_removed(a, slot);
        assert_eq!(s.slot_of(a), None);
        assert_eq!(s.in_use(), 0);
        assert_eq!(s.claim(b), Ok(Claim { slot, fresh: true }));
    }

    #[test]
    fn a_claim_without_entries_holds_until_given_back() {
        let (a, b) = (ip("2001:db8::1"), ip("2001:db8::2"));
        let (mut s, _) = Slots::from_entries(1, []);
        assert_eq!(s.claim(a).unwrap().slot, 0);
        assert_eq!(s.claim(b), Err(Full));
        s.unclaim(a);
        assert_eq!(s.claim(b).unwrap().slot, 0);
    }

    #[test]
    fn the_search_wraps_around() {
        let vms: Vec<IpAddr> = (1..=4).map(|i| ip(&format!("10.0.0.{i}"))).collect();
        let (mut s, _) = Slots::from_entries(3, []);
        for vm in &vms[..3] {
            let slot = s.claim(*vm).unwrap().slot;
            s.entry_added(*vm, slot);
        }
        s.entry_removed(vms[0], 0);
        s.unclaim(vms[0]);
        assert_eq!(s.claim(vms[3]).unwrap().slot, 0);
    }

    #[test]
    fn shared_split_and_out_of_range_slots_are_found() {
        let (a, b) = (ip("10.0.0.1"), ip("10.0.0.2"));
        let (_, problems) = Slots::from_entries(4, [(a, 1), (b, 1), (a, 3), (b, 9)]);
        assert_eq!(
            problems,
            vec![
                SlotProblem::Shared {
                    slot: 1,
                    vm: a,
                    other: b
                },
                SlotProblem::Split {
                    vm: a,
                    slot: 1,
                    other: 3
                },
                SlotProblem::OutOfRange { vm: b, slot: 9 },
            ]
        );
    }
}
