//! The mapping rules checked against an in-memory page table that logs every operation.

use std::{cell::RefCell, collections::BTreeMap, net::IpAddr, rc::Rc};

use netpage_common::maps::MappingStats;

use super::*;

/// A page table in memory; `log` records each write in order.
#[derive(Default)]
pub(crate) struct MemTable {
    v2r: BTreeMap<IpAddr, IpAddr>,
    r2v: BTreeMap<IpAddr, IpAddr>,
    stats: BTreeMap<IpAddr, MappingStats>,
    drains: BTreeMap<IpAddr, Drain>,
    seg: BTreeMap<IpAddr, IpAddr>,
    log: Rc<RefCell<Vec<String>>>,
    /// A write whose log line starts with this fails (after it is logged).
    fail_on: Option<String>,
}

impl MemTable {
    fn note(&self, s: String) -> Result<(), TableError> {
        let fails = self
            .fail_on
            .as_ref()
            .is_some_and(|f| s.starts_with(f.as_str()));
        self.log.borrow_mut().push(s);
        if fails {
            Err(TableError::Missing {
                map: "injected failure",
            })
        } else {
            Ok(())
        }
    }

    fn snapshot(&self) -> String {
        format!(
            "{:?} {:?} {:?} {:?}",
            self.v2r,
            self.r2v,
            self.stats.keys().collect::<Vec<_>>(),
            self.drains
        )
    }
}

impl PageTable for MemTable {
    fn forward(&self, va: IpAddr) -> Result<Option<IpAddr>, TableError> {
        Ok(self.v2r.get(&va).copied())
    }
    fn reverse(&self, ra: IpAddr) -> Result<Option<IpAddr>, TableError> {
        Ok(self.r2v.get(&ra).copied())
    }
    fn set_forward(&mut self, va: IpAddr, ra: IpAddr) -> Result<(), TableError> {
        self.note(format!("v2r {va}={ra}"))?;
        self.v2r.insert(va, ra);
        Ok(())
    }
    fn set_reverse(&mut self, ra: IpAddr, va: IpAddr) -> Result<(), TableError> {
        self.note(format!("r2v {ra}={va}"))?;
        self.r2v.insert(ra, va);
        Ok(())
    }
    fn remove_forward(&mut self, va: IpAddr) -> Result<(), TableError> {
        self.note(format!("v2r -{va}"))?;
        self.v2r.remove(&va);
        Ok(())
    }
    fn remove_reverse(&mut self, ra: IpAddr) -> Result<(), TableError> {
        self.note(format!("r2v -{ra}"))?;
        self.r2v.remove(&ra);
        Ok(())
    }
    fn forward_entries(&self) -> Result<Vec<(IpAddr, IpAddr)>, TableError> {
        Ok(self.v2r.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn reverse_entries(&self) -> Result<Vec<(IpAddr, IpAddr)>, TableError> {
        Ok(self.r2v.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn create_stats(&mut self, va: IpAddr) -> Result<(), TableError> {
        self.stats.entry(va).or_default();
        Ok(())
    }
    fn remove_stats(&mut self, va: IpAddr) -> Result<(), TableError> {
        self.stats.remove(&va);
        Ok(())
    }
    fn stats(&self, va: IpAddr) -> Result<Option<MappingStats>, TableError> {
        Ok(self.stats.get(&va).copied())
    }
    fn drains(&self) -> Result<Vec<Drain>, TableError> {
        Ok(self.drains.values().copied().collect())
    }
    fn set_drain(&mut self, d: Drain) -> Result<(), TableError> {
        self.drains.insert(d.real, d);
        Ok(())
    }
    fn remove_drain(&mut self, real: IpAddr) -> Result<(), TableError> {
        self.drains.remove(&real);
        Ok(())
    }
    fn segment(&self, va: IpAddr) -> Result<Option<IpAddr>, TableError> {
        Ok(self.seg.get(&va).copied())
    }
    fn set_segment(&mut self, va: IpAddr, locator: IpAddr) -> Result<(), TableError> {
        self.note(format!("seg {va}={locator}"))?;
        self.seg.insert(va, locator);
        Ok(())
    }
    fn remove_segment(&mut self, va: IpAddr) -> Result<(), TableError> {
        self.note(format!("seg -{va}"))?;
        self.seg.remove(&va);
        Ok(())
    }
    fn segment_entries(&self) -> Result<Vec<(IpAddr, IpAddr)>, TableError> {
        Ok(self.seg.iter().map(|(k, v)| (*k, *v)).collect())
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const VM: &str = "198.19.0.10";
const RA_A: &str = "198.18.10.100";
const RA_B: &str = "198.18.20.100";
const SECOND: Duration = Duration::from_secs(1);

const VM2: &str = "198.19.0.11";
const RA2: &str = "198.18.10.101";

fn m(vm: &str, real: &str) -> Mapping {
    Mapping {
        vm: ip(vm),
        real: ip(real),
    }
}

/// Maps a second VM and forgets the writes, so that `refused!` sees only what follows.
fn add_second(t: &mut MemTable) {
    add(t, m(VM2, RA2)).unwrap();
    t.log.borrow_mut().clear();
}

fn mapped(vm: &str, real: &str) -> MemTable {
    let mut t = MemTable::default();
    add(
        &mut t,
        Mapping {
            vm: ip(vm),
            real: ip(real),
        },
    )
    .unwrap();
    t.log.borrow_mut().clear();
    t
}

/// Asserts that `op` fails with an error matching `pat` (and `guard`) and leaves the table
/// as it was.
macro_rules! refused {
    ($t:expr, $op:expr, $pat:pat $(if $guard:expr)?) => {{
        let before = $t.snapshot();
        let r = $op;
        assert!(matches!(r, Err($pat) $(if $guard)?), "unexpected result {r:?}");
        assert_eq!(
            $t.snapshot(),
            before,
            "a refused operation changed the table"
        );
        assert!($t.log.borrow().is_empty(), "writes: {:?}", $t.log.borrow());
    }};
}

#[test]
fn add_installs_both_directions_reverse_first() {
    let mut t = MemTable::default();
    add(
        &mut t,
        Mapping {
            vm: ip(VM),
            real: ip(RA_A),
        },
    )
    .unwrap();
    assert_eq!(t.v2r[&ip(VM)], ip(RA_A));
    assert_eq!(t.r2v[&ip(RA_A)], ip(VM));
    assert!(t.stats.contains_key(&ip(VM)));
    assert_eq!(
        *t.log.borrow(),
        [format!("r2v {RA_A}={VM}"), format!("v2r {VM}={RA_A}")]
    );
}

#[test]
fn add_refuses_bad_input() {
    let mut t = mapped(VM, RA_A);
    refused!(t, add(&mut t, m(VM, RA_B)), OpError::VmExists { .. });
    refused!(
        t,
        add(&mut t, m(VM2, RA_A)),
        OpError::RealInUse {
            draining: false,
            ..
        }
    );
    refused!(
        t,
        add(&mut t, m(VM2, "2001:db8::1")),
        OpError::FamilyMismatch { .. }
    );
}

/// Addresses no mapping may use, with why.
fn unusable_addresses() -> Vec<(&'static str, Unusable)> {
    vec![
        ("224.0.0.1", Unusable::Multicast),
        ("239.255.255.250", Unusable::Multicast),
        ("255.255.255.255", Unusable::Broadcast),
        ("0.0.0.0", Unusable::Unspecified),
        ("127.0.0.1", Unusable::Loopback),
        ("127.1.2.3", Unusable::Loopback),
        ("ff02::1", Unusable::Multicast),
        ("ff05::1:3", Unusable::Multicast),
        ("::", Unusable::Unspecified),
        ("::1", Unusable::Loopback),
        (
            "::ffff:198.18.10.100",
            Unusable::Ipv4Mapped("198.18.10.100".parse().unwrap()),
        ),
    ]
}

#[test]
fn special_addresses_are_unusable_and_others_are_not() {
    for (addr, why) in unusable_addresses() {
        assert_eq!(unusable(ip(addr)), Some(why), "{addr}");
    }
    for addr in [
        VM,
        RA_A,
        "10.0.0.1",
        "198.51.100.255",
        "169.254.1.1",
        "2001:db8::1",
        "fd00::10",
        "fe80::1",
        "::ffff:0:198.18.10.100",
        "64:ff9b::198.18.10.100",
    ] {
        assert_eq!(unusable(ip(addr)), None, "{addr}");
    }
}

#[test]
fn add_refuses_special_addresses_on_either_side() {
    let mut t = mapped(VM, RA_A);
    for (bad, why) in unusable_addresses() {
        let v6 = ip(bad).is_ipv6();
        let (vm, real) = if v6 {
            ("2001:db8:100::11", "2001:db8:10::101")
        } else {
            (VM2, RA2)
        };
        refused!(
            t,
            add(&mut t, m(bad, real)),
            OpError::UnusableAddress {
                role: Role::Vm,
                why: w,
                ..
            } if w == why
        );
        refused!(
            t,
            add(&mut t, m(vm, bad)),
            OpError::UnusableAddress {
                role: Role::Real,
                why: w,
                ..
            } if w == why
        );
    }
    // Before the family: the address itself is what is wrong.
    refused!(
        t,
        add(&mut t, m("::ffff:198.19.0.11", RA2)),
        OpError::UnusableAddress {
            role: Role::Vm,
            why: Unusable::Ipv4Mapped(_),
            ..
        }
    );
}

#[test]
fn the_refusal_names_the_address_and_why() {
    let mut t = MemTable::default();
    let e = add(&mut t, m(VM, "255.255.255.255")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "real address 255.255.255.255 cannot be mapped: it is the IPv4 broadcast address"
    );
    let e = add(&mut t, m("::ffff:198.19.0.10", "2001:db8::1")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "VM address ::ffff:198.19.0.10 cannot be mapped: it is an IPv4-mapped IPv6 address; \
         map 198.19.0.10 as an IPv4 address instead"
    );
    let e = add(&mut t, m("ff02::1", "2001:db8::1")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "VM address ff02::1 cannot be mapped: it is a multicast address"
    );
}

#[test]
fn switch_is_reverse_then_one_forward_update_then_drain() {
    let mut t = mapped(VM, RA_A);
    let s = switch(&mut t, ip(VM), ip(RA_B), 5 * SECOND, 1_000).unwrap();
    assert_eq!(
        (s.from, s.to, s.drain_until_ms),
        (ip(RA_A), ip(RA_B), Some(6_000))
    );
    assert_eq!(
        *t.log.borrow(),
        [format!("r2v {RA_B}={VM}"), format!("v2r {VM}={RA_B}")]
    );
    // Replies from the old location still translate during the drain...
    assert_eq!(t.r2v[&ip(RA_A)], ip(VM));
    assert!(gc(&mut t, 5_999).unwrap().is_empty());
    assert_eq!(t.r2v[&ip(RA_A)], ip(VM));
    // ...and not after it.
    assert_eq!(gc(&mut t, 6_000).unwrap().len(), 1);
    assert!(!t.r2v.contains_key(&ip(RA_A)));
    assert_eq!(t.r2v[&ip(RA_B)], ip(VM));
    assert!(t.drains.is_empty());
}

#[test]
fn switch_back_during_drain_keeps_the_address() {
    let mut t = mapped(VM, RA_A);
    switch(&mut t, ip(VM), ip(RA_B), 5 * SECOND, 0).unwrap();
    switch(&mut t, ip(VM), ip(RA_A), 5 * SECOND, 10).unwrap();
    gc(&mut t, u64::MAX).unwrap();
    assert_eq!(t.v2r[&ip(VM)], ip(RA_A));
    assert_eq!(t.r2v.get(&ip(RA_A)), Some(&ip(VM)));
    assert_eq!(t.r2v.get(&ip(RA_B)), None);
}

#[test]
fn switch_without_drain_removes_the_old_address_at_once() {
    let mut t = mapped(VM, RA_A);
    let s = switch(&mut t, ip(VM), ip(RA_B), Duration::ZERO, 0).unwrap();
    assert_eq!(s.drain_until_ms, None);
    assert_eq!(t.r2v.keys().copied().collect::<Vec<_>>(), [ip(RA_B)]);
}

#[test]
fn switch_refuses_bad_input() {
    let mut t = mapped(VM, RA_A);
    add_second(&mut t);
    refused!(
        t,
        switch(&mut t, ip("198.19.0.99"), ip(RA_B), SECOND, 0),
        OpError::UnknownVm { .. }
    );
    refused!(
        t,
        switch(&mut t, ip(VM), ip(RA2), SECOND, 0),
        OpError::RealInUse { .. }
    );
    refused!(
        t,
        switch(&mut t, ip(VM), ip("2001:db8::1"), SECOND, 0),
        OpError::FamilyMismatch { .. }
    );
    for to in ["224.0.0.5", "255.255.255.255", "0.0.0.0", "127.0.0.1"] {
        refused!(
            t,
            switch(&mut t, ip(VM), ip(to), SECOND, 0),
            OpError::UnusableAddress {
                role: Role::Real,
                ..
            }
        );
    }
    // Over several nodes, the check comes before any node changes.
    let mut other = mapped(VM, RA_A);
    other.log = t.log.clone();
    let mut nodes = [("gw".to_owned(), &mut t), ("host".to_owned(), &mut other)];
    let e = switch_many(&mut nodes, ip(VM), ip("127.0.0.1"), SECOND, 0).unwrap_err();
    assert!(e.to_string().starts_with("node gw"), "{e}");
    assert!(t.log.borrow().is_empty(), "writes: {:?}", t.log.borrow());
}

#[test]
fn an_address_draining_for_another_vm_is_refused_with_a_hint() {
    let mut t = mapped(VM, RA_A);
    switch(&mut t, ip(VM), ip(RA_B), 5 * SECOND, 0).unwrap();
    add_second(&mut t);
    let other = ip(VM2);
    refused!(
        t,
        switch(&mut t, other, ip(RA_A), SECOND, 0),
        OpError::RealInUse { draining: true, .. }
    );
}

#[test]
fn delete_removes_mapping_counters_and_drains() {
    let mut t = mapped(VM, RA_A);
    switch(&mut t, ip(VM), ip(RA_B), 5 * SECOND, 0).unwrap();
    assert_eq!(delete(&mut t, ip(VM)).unwrap().real, ip(RA_B));
    assert!(t.v2r.is_empty() && t.r2v.is_empty() && t.stats.is_empty() && t.drains.is_empty());
    t.log.borrow_mut().clear();
    refused!(t, delete(&mut t, ip(VM)), OpError::UnknownVm { .. });
}

#[test]
fn apply_reaches_the_desired_table_and_is_idempotent() {
    let mut t = mapped(VM, RA_A);
    add(&mut t, m(VM2, RA2)).unwrap();
    let desired = [
        Mapping {
            vm: ip(VM),
            real: ip(RA_B),
        },
        Mapping {
            vm: ip("2001:db8:100::10"),
            real: ip("2001:db8:10::100"),
        },
    ];
    let p = plan(&t, &desired).unwrap();
    assert_eq!(p.added, [desired[1]]);
    assert_eq!(
        p.moved,
        [Moved {
            vm: ip(VM),
            from: ip(RA_A),
            to: ip(RA_B)
        }]
    );
    assert_eq!(
        p.removed,
        [Mapping {
            vm: ip(VM2),
            real: ip(RA2)
        }]
    );
    apply(&mut t, &p, SECOND, 0).unwrap();
    gc(&mut t, u64::MAX).unwrap();
    assert_eq!(list(&t).unwrap(), desired);
    let inverse: Vec<_> = t.reverse_entries().unwrap();
    assert_eq!(
        inverse,
        [
            (ip(RA_B), ip(VM)),
            (ip("2001:db8:10::100"), ip("2001:db8:100::10"))
        ]
    );
    let again = plan(&t, &desired).unwrap();
    assert!(again.is_empty());
    assert_eq!(again.unchanged, 2);
}

#[test]
fn apply_refuses_inconsistent_files() {
    let t = mapped(VM, RA_A);
    let dup_vm = [m(VM, RA_A), m(VM, RA_B)];
    assert!(matches!(
        plan(&t, &dup_vm),
        Err(OpError::DuplicateVm { .. })
    ));
    let dup_real = [m(VM, RA_A), m(VM2, RA_A)];
    assert!(matches!(
        plan(&t, &dup_real),
        Err(OpError::DuplicateReal { .. })
    ));
    let family = [m(VM, "2001:db8::1")];
    assert!(matches!(
        plan(&t, &family),
        Err(OpError::FamilyMismatch { .. })
    ));
    for (bad, _) in unusable_addresses() {
        let (vm, real) = if ip(bad).is_ipv6() {
            ("2001:db8:100::10", "2001:db8:10::100")
        } else {
            (VM, RA_A)
        };
        for file in [[m(VM2, RA2), m(bad, real)], [m(VM2, RA2), m(vm, bad)]] {
            let r = plan(&t, &file);
            assert!(
                matches!(r, Err(OpError::UnusableAddress { addr, .. }) if addr == ip(bad)),
                "{file:?}: {r:?}"
            );
        }
    }
}

#[test]
fn apply_may_pass_a_real_address_to_another_vm() {
    let mut t = mapped(VM, RA_A);
    let desired = [m(VM, RA_B), m(VM2, RA_A)];
    let p = plan(&t, &desired).unwrap();
    apply(&mut t, &p, Duration::ZERO, 0).unwrap();
    assert_eq!(t.r2v[&ip(RA_A)], ip(VM2));
    assert_eq!(t.r2v[&ip(RA_B)], ip(VM));
}

fn opts(drain: Duration) -> ApplyOptions {
    ApplyOptions {
        drain,
        ..ApplyOptions::default()
    }
}

#[test]
fn a_real_address_passed_to_another_vm_drains_first() {
    let mut t = mapped(VM, RA_A);
    let desired = [m(VM, RA_B), m(VM2, RA_A)];
    let p = make_equal(&mut t, &desired, &opts(SECOND)).unwrap();
    assert_eq!(
        p.deferred,
        [Deferred {
            vm: ip(VM2),
            real: ip(RA_A),
            held_by: ip(VM)
        }]
    );
    // The VM moved; its old address drains for it; the other VM waits.
    assert_eq!(t.v2r[&ip(VM)], ip(RA_B));
    assert_eq!(t.r2v[&ip(RA_A)], ip(VM));
    assert!(!t.v2r.contains_key(&ip(VM2)));
    assert_eq!(crate::check::check(&t, 0).unwrap(), vec![]);
    // Once the drain is over, the same apply hands the address over.
    gc(&mut t, u64::MAX).unwrap();
    let p = make_equal(&mut t, &desired, &opts(SECOND)).unwrap();
    assert_eq!((p.added, p.deferred), (vec![m(VM2, RA_A)], vec![]));
    assert_eq!(t.r2v[&ip(RA_A)], ip(VM2));
    assert_eq!(crate::check::check(&t, 0).unwrap(), vec![]);
}

#[test]
fn an_empty_file_is_refused_unless_allowed() {
    let mut t = mapped(VM, RA_A);
    let before = t.snapshot();
    let e = make_equal(&mut t, &[], &opts(SECOND)).unwrap_err();
    assert!(matches!(e, OpError::EmptyTable { mappings: 1 }), "{e}");
    assert!(e.to_string().contains("--allow-empty"), "{e}");
    assert_eq!(t.snapshot(), before);
    let allow = ApplyOptions {
        allow_empty: true,
        ..opts(SECOND)
    };
    let p = make_equal(&mut t, &[], &allow).unwrap();
    assert_eq!(p.removed, [m(VM, RA_A)]);
    assert!(t.v2r.is_empty() && t.r2v.is_empty());
}

#[test]
fn apply_removes_first_and_checks_the_capacity_before_writing() {
    let mut t = mapped(VM, RA_A);
    add(&mut t, m(VM2, RA2)).unwrap();
    let room = |n| ApplyOptions {
        capacity: Some(n),
        ..opts(Duration::ZERO)
    };
    // Two other mappings fit in two entries: the removals go first.
    let others = [
        m("198.19.0.12", "198.18.10.102"),
        m("198.19.0.13", "198.18.10.103"),
    ];
    make_equal(&mut t, &others, &room(2)).unwrap();
    assert_eq!(list(&t).unwrap(), others);
    // Three do not, and nothing changes.
    let before = t.snapshot();
    let three = [others[0], others[1], m(VM, RA_A)];
    let e = make_equal(&mut t, &three, &room(2)).unwrap_err();
    assert!(
        matches!(
            e,
            OpError::NoRoom {
                need: 3,
                capacity: 2,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(t.snapshot(), before);
    // A move needs one reverse entry more: its new address goes in before the old one
    // goes (and drains).
    let moved = [m("198.19.0.12", RA_B), others[1]];
    for drain in [Duration::ZERO, SECOND] {
        let e = make_equal(
            &mut t,
            &moved,
            &ApplyOptions {
                capacity: Some(2),
                ..opts(drain)
            },
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                OpError::NoRoom {
                    map: "R2V",
                    need: 3,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(t.snapshot(), before);
    }
    make_equal(&mut t, &moved, &room(3)).unwrap();
}

#[test]
fn installs_that_fail_are_undone() {
    let mut t = mapped(VM, RA_A);
    let before = t.snapshot();
    t.fail_on = Some("r2v 198.18.10.103".to_owned());
    let desired = [m(VM, RA_A), m(VM2, RA2), m("198.19.0.13", "198.18.10.103")];
    let e = make_equal(&mut t, &desired, &opts(SECOND)).unwrap_err();
    assert!(matches!(e, OpError::ApplyFailed { undo: None, .. }), "{e}");
    assert!(e.to_string().contains("undone"), "{e}");
    t.fail_on = None;
    assert_eq!(t.snapshot(), before);
}

#[test]
fn a_switch_over_many_nodes_installs_every_reverse_entry_first() {
    let (mut gw, mut host) = (mapped(VM, RA_A), mapped(VM, RA_A));
    host.log = gw.log.clone();
    let mut nodes = [("gw".to_owned(), &mut gw), ("host".to_owned(), &mut host)];
    let s = switch_many(&mut nodes, ip(VM), ip(RA_B), Duration::ZERO, 0).unwrap();
    let names: Vec<_> = s.nodes.iter().map(|n| n.node.as_str()).collect();
    assert_eq!(names, ["gw", "host"]);
    let log = gw.log.borrow().clone();
    let (r2v, v2r) = (format!("r2v {RA_B}={VM}"), format!("v2r {VM}={RA_B}"));
    assert_eq!(log[..4], [r2v.clone(), r2v, v2r.clone(), v2r]);
    assert_eq!((gw.v2r[&ip(VM)], host.v2r[&ip(VM)]), (ip(RA_B), ip(RA_B)));
}

#[test]
fn a_switch_over_many_nodes_updates_them_in_the_order_given() {
    for order in [["gw", "hostA", "hostB"], ["hostB", "hostA", "gw"]] {
        let mut tables = [mapped(VM, RA_A), mapped(VM, RA_A), mapped(VM, RA_A)];
        let mut nodes: Vec<(String, &mut _)> = order
            .iter()
            .map(|n| (*n).to_owned())
            .zip(tables.iter_mut())
            .collect();
        let s = switch_many(&mut nodes, ip(VM), ip(RA_B), Duration::ZERO, 0).unwrap();
        let names: Vec<_> = s.nodes.iter().map(|n| n.node.as_str()).collect();
        assert_eq!(names, order);
    }
}

#[test]
fn a_switch_over_nodes_that_disagree_changes_none() {
    let (mut gw, mut host) = (mapped(VM, RA_A), mapped(VM, "198.18.10.101"));
    let mut nodes = [("gw".to_owned(), &mut gw), ("host".to_owned(), &mut host)];
    let e = switch_many(&mut nodes, ip(VM), ip(RA_B), SECOND, 0).unwrap_err();
    assert!(e.to_string().starts_with("node host"), "{e}");
    assert!(gw.log.borrow().is_empty() && host.log.borrow().is_empty());
}

#[test]
fn a_switch_that_fails_on_a_later_node_is_undone_on_the_others() {
    for fail in [format!("v2r {VM}={RA_B}"), format!("r2v {RA_B}={VM}")] {
        let (mut gw, mut a, mut b) = (mapped(VM, RA_A), mapped(VM, RA_A), mapped(VM, RA_A));
        let before = gw.snapshot();
        b.fail_on = Some(fail.clone());
        let mut nodes = [
            ("gw".to_owned(), &mut gw),
            ("a".to_owned(), &mut a),
            ("b".to_owned(), &mut b),
        ];
        let e = switch_many(&mut nodes, ip(VM), ip(RA_B), SECOND, 0).unwrap_err();
        assert!(matches!(e, OpError::Undone { .. }), "{fail}: {e}");
        assert!(e.to_string().starts_with("node b"), "{e}");
        b.fail_on = None;
        for t in [&gw, &a, &b] {
            assert_eq!(t.snapshot(), before, "{fail}");
        }
    }
}

#[test]
fn a_switch_stopped_part_way_completes_when_run_again() {
    // The gateway switched (and its old reverse entry was removed as an orphan), the host
    // had not.
    let (mut gw, mut host) = (mapped(VM, RA_A), mapped(VM, RA_A));
    gw.set_reverse(ip(RA_B), ip(VM)).unwrap();
    gw.set_forward(ip(VM), ip(RA_B)).unwrap();
    gw.remove_reverse(ip(RA_A)).unwrap();
    let mut nodes = [("gw".to_owned(), &mut gw), ("host".to_owned(), &mut host)];
    let s = switch_many(&mut nodes, ip(VM), ip(RA_B), SECOND, 0).unwrap();
    assert_eq!((s.from, s.to), (ip(RA_A), ip(RA_B)));
    assert!(s.drain_until_ms.is_some());
    assert_eq!((gw.v2r[&ip(VM)], host.v2r[&ip(VM)]), (ip(RA_B), ip(RA_B)));
    assert!(gw.drains.is_empty(), "no drain without its reverse entry");
    assert_eq!(host.drains[&ip(RA_A)].virt, ip(VM));
}

#[test]
fn an_address_left_behind_is_refused_with_the_way_out() {
    let mut t = mapped(VM, RA_A);
    t.set_reverse(ip(RA_B), ip(VM)).unwrap();
    let e = add(&mut t, m(VM2, RA_B)).unwrap_err();
    assert!(matches!(e, OpError::RealInUse { orphan: true, .. }), "{e}");
    assert!(e.to_string().contains("netpage check --repair"), "{e}");
}

const LOC_A: &str = "192.0.2.1";
const LOC_B: &str = "2001:db8:b::1";

#[test]
fn a_segment_mapping_is_one_entry_and_excludes_paging() {
    let mut t = MemTable::default();
    segment::add(&mut t, ip(VM), ip(LOC_B)).unwrap();
    assert_eq!(t.log.borrow().as_slice(), ["seg 198.19.0.10=2001:db8:b::1"]);
    assert!(t.stats.contains_key(&ip(VM)));
    // Neither method may map it again.
    assert!(matches!(
        segment::add(&mut t, ip(VM), ip(LOC_A)),
        Err(OpError::VmExists { .. })
    ));
    assert!(matches!(
        add(&mut t, m(VM, RA_A)),
        Err(OpError::VmExists { .. })
    ));
    // A VM mapped by paging cannot be mapped by segmentation.
    let mut p = mapped(VM, RA_A);
    assert!(matches!(
        segment::add(&mut p, ip(VM), ip(LOC_A)),
        Err(OpError::VmExists { .. })
    ));
    assert!(matches!(
        segment::add(&mut MemTable::default(), ip(VM), ip("224.0.0.1")),
        Err(OpError::UnusableAddress {
            role: Role::Locator,
            ..
        })
    ));
    assert_eq!(
        segment::list(&t).unwrap(),
        [crate::tablefile::Segment {
            vm: ip(VM),
            locator: ip(LOC_B)
        }]
    );
    let gone = delete(&mut t, ip(VM)).unwrap();
    assert_eq!(gone.real, ip(LOC_B));
    assert!(t.seg.is_empty() && t.stats.is_empty());
}

#[test]
fn a_segment_switch_is_one_update_per_node_and_needs_agreement() {
    let (mut a, mut b) = (MemTable::default(), MemTable::default());
    segment::add(&mut a, ip(VM), ip(LOC_A)).unwrap();
    segment::add(&mut b, ip(VM), ip(LOC_A)).unwrap();
    a.log.borrow_mut().clear();
    b.log.borrow_mut().clear();
    let s = {
        let mut nodes = [("a".to_owned(), &mut a), ("b".to_owned(), &mut b)];
        switch_many(&mut nodes, ip(VM), ip(LOC_B), SECOND, 0).unwrap()
    };
    assert_eq!(
        (s.from, s.to, s.drain_until_ms),
        (ip(LOC_A), ip(LOC_B), None)
    );
    assert_eq!(s.nodes.len(), 2);
    for t in [&a, &b] {
        assert_eq!(t.log.borrow().as_slice(), ["seg 198.19.0.10=2001:db8:b::1"]);
        assert!(t.v2r.is_empty() && t.r2v.is_empty() && t.drains.is_empty());
    }
    // A node that maps the VM by paging makes the switch refuse, naming it.
    let mut c = mapped(VM, RA_A);
    let mut nodes = [("a".to_owned(), &mut a), ("c".to_owned(), &mut c)];
    let e = switch_many(&mut nodes, ip(VM), ip(LOC_A), SECOND, 0).unwrap_err();
    assert!(e.to_string().contains("node c"), "{e}");
    // A failure on the second node puts the first back.
    let (mut d, mut e2) = (MemTable::default(), MemTable::default());
    segment::add(&mut d, ip(VM), ip(LOC_A)).unwrap();
    segment::add(&mut e2, ip(VM), ip(LOC_A)).unwrap();
    e2.fail_on = Some("seg ".to_owned());
    let mut nodes = [("d".to_owned(), &mut d), ("e".to_owned(), &mut e2)];
    let err = switch_many(&mut nodes, ip(VM), ip(LOC_B), SECOND, 0).unwrap_err();
    assert!(matches!(err, OpError::Undone { .. }), "{err}");
    assert_eq!(d.seg[&ip(VM)], ip(LOC_A));
}
