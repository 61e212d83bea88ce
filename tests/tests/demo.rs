//! The demo, run as a test so that it keeps working: the VM moves make-before-break and
//! the one-command switch of every node loses no probe.

use std::{sync::atomic::AtomicBool, time::Duration};

use netpage_tests::demo::{self, DemoOptions};

#[test]
fn demo_switches_without_losing_a_probe() {
    let opts = DemoOptions {
        interval: Duration::from_millis(1),
        settle: Duration::from_millis(500),
    };
    let r = demo::run(opts, &AtomicBool::new(false)).expect("not interrupted");
    println!("{r}");
    assert!(r.probes.sent > 500, "{}", r.probes);
    assert_eq!(r.probes.lost, 0, "{}", r.probes);
    assert_eq!(
        r.probes.strangers, 0,
        "replies from an address other than the VA"
    );
    assert_eq!(r.switches.len(), 3, "every edge node switched");
    assert!(
        r.before[0] > 0 && r.before[1] == 0,
        "before: {:?}",
        r.before
    );
    assert!(r.after[1] > 0 && r.after[0] == 0, "after: {:?}", r.after);
}
