use super::*;

fn lifecycle(domain: &str, event: &str, detail: &str) -> Event {
    Event {
        timestamp: None,
        domain: domain.into(),
        kind: EventKind::Lifecycle {
            event: event.into(),
            detail: detail.into(),
        },
    }
}

/// The source's stream of a live migration, as virsh 9.0 printed it.
#[test]
fn the_recorded_source_stream() {
    let text = include_str!("../testdata/events-source.txt");
    let events: Vec<Event> = text.lines().filter_map(parse_line).collect();
    let want = vec![
        Event {
            timestamp: None,
            domain: "vm1".into(),
            kind: EventKind::MigrationIteration(1),
        },
        Event {
            timestamp: None,
            domain: "vm1".into(),
            kind: EventKind::MigrationIteration(2),
        },
        lifecycle("vm1", "Suspended", "Migrated"),
        Event {
            timestamp: None,
            domain: "vm1".into(),
            kind: EventKind::MigrationIteration(3),
        },
        lifecycle("vm1", "Stopped", "Migrated"),
        Event {
            timestamp: None,
            domain: "vm1".into(),
            kind: EventKind::Other("job-completed".into()),
        },
    ];
    assert_eq!(events, want);
}

/// The destination's, then a pause and resume by hand, then libvirtd going away.
#[test]
fn the_recorded_destination_stream() {
    let text = include_str!("../testdata/events-destination.txt");
    let events: Vec<Event> = text.lines().filter_map(parse_line).collect();
    assert_eq!(
        events,
        vec![
            lifecycle("vm1", "Started", "Migrated"),
            lifecycle("vm1", "Resumed", "Migrated"),
            lifecycle("vm1", "Suspended", "Paused"),
            lifecycle("vm1", "Resumed", "Unpaused"),
        ]
    );
    assert!(events[1].is("Resumed", "Migrated"));
    assert!(!events[3].is("Resumed", "Migrated"));
}

#[test]
fn timestamps_are_kept() {
    let text = include_str!("../testdata/events-timestamped.txt");
    let events: Vec<Event> = text.lines().filter_map(parse_line).collect();
    assert_eq!(events.len(), 2);
    assert_eq!(
        events[0].timestamp.as_deref(),
        Some("2026-12-03 18:03:45.308+0000")
    );
    assert!(events[0].is("Suspended", "Paused"));
}

#[test]
fn odd_names_and_non_events() {
    let e = parse_line("event 'lifecycle' for domain 'it's: odd': Suspended Migrated").unwrap();
    assert_eq!(e.domain, "it's: odd");
    assert!(e.is("Suspended", "Migrated"));
    let e = parse_line("event 'job-completed' for domain 'vm1':").unwrap();
    assert_eq!(e.kind, EventKind::Other("job-completed".into()));
    let e = parse_line("event 'reboot' for domain 'vm1'").unwrap();
    assert_eq!(e.kind, EventKind::Other("reboot".into()));
    assert_eq!(parse_line("\toperation: 5"), None);
    assert_eq!(parse_line("events received: 4"), None);
    assert_eq!(
        parse_line("error: Disconnected from qemu:///system due to end of file"),
        None
    );
    assert_eq!(parse_line(""), None);
}
