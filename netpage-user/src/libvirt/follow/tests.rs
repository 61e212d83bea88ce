use super::*;

fn steps(at: SwitchAt, text: &str) -> Vec<Step> {
    let mut f = Follower::new(at);
    text.lines()
        .filter_map(event::parse_line)
        .flat_map(|e| f.on_event(&e))
        .collect()
}

const SOURCE: &str = include_str!("../testdata/events-source.txt");
const DESTINATION: &str = include_str!("../testdata/events-destination.txt");

fn learn(d: &str) -> Step {
    Step::Learn(d.into())
}

#[test]
fn at_stop_the_source_switches_to_the_reservation_on_the_pause() {
    assert_eq!(
        steps(SwitchAt::Stop, SOURCE),
        vec![
            learn("vm1"),
            learn("vm1"),
            learn("vm1"),
            Step::Switch {
                domain: "vm1".into(),
                target: Target::Reserved
            },
            learn("vm1"),
            Step::Forget("vm1".into()),
        ]
    );
}

#[test]
fn at_stop_the_destination_does_nothing() {
    let s = steps(SwitchAt::Stop, DESTINATION);
    assert!(s.iter().all(|s| matches!(s, Step::Learn(_))), "{s:?}");
}

#[test]
fn at_resume_the_destination_switches_to_itself_and_the_source_does_nothing() {
    assert_eq!(
        steps(SwitchAt::Resume, DESTINATION),
        vec![
            learn("vm1"),
            learn("vm1"),
            Step::Switch {
                domain: "vm1".into(),
                target: Target::Here
            },
        ]
    );
    let s = steps(SwitchAt::Resume, SOURCE);
    assert!(
        !s.iter()
            .any(|s| matches!(s, Step::Switch { .. } | Step::SwitchBack(_))),
        "{s:?}"
    );
}

/// A migration that fails after the pause: libvirt resumes the guest on the source
/// (`Resumed Migrated`, the detail libvirt gives a cancelled migration's resume).
#[test]
fn a_failed_migration_after_the_switch_switches_back() {
    let text = "event 'migration-iteration' for domain 'vm1': iteration: '1'\n\
        event 'lifecycle' for domain 'vm1': Suspended Migrated\n\
        event 'lifecycle' for domain 'vm1': Resumed Migrated\n\
        event 'lifecycle' for domain 'vm1': Suspended Migrated\n\
        event 'lifecycle' for domain 'vm1': Stopped Migrated\n\
        event 'lifecycle' for domain 'vm1': Resumed Migrated\n";
    let s = steps(SwitchAt::Stop, text);
    let switches: Vec<&Step> = s.iter().filter(|s| !matches!(s, Step::Learn(_))).collect();
    assert_eq!(
        switches,
        vec![
            &Step::Switch {
                domain: "vm1".into(),
                target: Target::Reserved
            },
            &Step::SwitchBack("vm1".into()),
            &Step::Switch {
                domain: "vm1".into(),
                target: Target::Reserved
            },
            &Step::Forget("vm1".into()),
        ],
        "after the stop, a resume is another domain's business"
    );
}

#[test]
fn a_paused_guest_is_no_migration() {
    let text = "event 'lifecycle' for domain 'vm1': Suspended Paused\n\
        event 'lifecycle' for domain 'vm1': Resumed Unpaused\n";
    assert!(steps(SwitchAt::Stop, text).is_empty());
    assert!(steps(SwitchAt::Resume, text).is_empty());
}
