//! The demo, run as a test so that it keeps working, both ways: through the directory on
//! etcd (its own member, an agent per edge node, one `netpage --etcd URLS switch`) and on
//! this machine's pin directories (`--local`). The VM moves make-before-break and the one
//! switch command loses no probe.

use std::{
    sync::{Mutex, atomic::AtomicBool},
    time::Duration,
};

use netpage_tests::demo::{self, DemoOptions, DemoReport, Mode, Switch};

/// One demo at a time: two at once would share the CPUs that the 1 ms prober needs.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn run(mode: Mode) -> DemoReport {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let opts = DemoOptions {
        interval: Duration::from_millis(1),
        settle: Duration::from_millis(500),
        mode,
    };
    let r = demo::run(opts, &AtomicBool::new(false)).expect("not interrupted");
    println!("{r}");
    r
}

/// What both variants show: no probe lost, every reply from the VA, replies via host A
/// before the switch and via host B after it, every edge node switched.
fn assert_moved_without_loss(r: &DemoReport) {
    assert!(r.probes.sent > 500, "{}", r.probes);
    assert_eq!(r.probes.lost, 0, "{}", r.probes);
    assert_eq!(r.probes.received, r.probes.sent, "{}", r.probes);
    assert_eq!(
        r.probes.strangers, 0,
        "replies from an address other than the VA"
    );
    assert_eq!(r.switch.nodes(), 3, "every edge node switched");
    assert!(
        r.before[0] > 0 && r.before[1] == 0,
        "before: {:?}",
        r.before
    );
    assert!(r.after[1] > 0 && r.after[0] == 0, "after: {:?}", r.after);
}

#[test]
fn demo_through_the_directory_switches_without_losing_a_probe() {
    let r = run(Mode::Directory);
    assert_moved_without_loss(&r);
    let Switch::Directory(d) = &r.switch else {
        panic!("the directory demo switched locally: {:?}", r.switch);
    };
    assert!(d.unconfirmed.is_empty(), "unconfirmed: {:?}", d.unconfirmed);
    let mut names: Vec<&str> = d.nodes.iter().map(|n| n.node.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["gw", "hostA", "hostB"]);
    for n in &d.nodes {
        assert!(n.confirmed, "{} did not confirm", n.node);
        let prop = n
            .propagation_ms
            .expect("a confirmed node's propagation time");
        let after = n.after_ms.expect("a confirmed node's confirmation time");
        assert!(prop >= 0.0 && after >= 0.0, "{n:?}");
    }
    assert!(
        d.revision > d.reserve_revision && d.reserve_revision > 0,
        "reserved at {}, switched at {}",
        d.reserve_revision,
        d.revision
    );
}

#[test]
fn demo_on_local_pin_directories_switches_without_losing_a_probe() {
    let r = run(Mode::Local);
    assert_moved_without_loss(&r);
    let Switch::Local(nodes) = &r.switch else {
        panic!(
            "the local demo switched through the directory: {:?}",
            r.switch
        );
    };
    let names: Vec<&str> = nodes.iter().map(|n| n.node.as_str()).collect();
    assert_eq!(names, ["gw", "hostA", "hostB"]);
    assert!(nodes.iter().all(|n| n.update_us > 0.0), "{nodes:?}");
}
