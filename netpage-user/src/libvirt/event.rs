//! The lines `virsh event --loop --all [--timestamp]` prints, parsed: which domain, and
//! for lifecycle events the event and its detail as libvirt 9.0 names them
//! (`event 'lifecycle' for domain 'vm1': Suspended Migrated`).
//!
//! Lines that are not events (the indented fields of `job-completed`, virsh's own
//! messages, `events received: N`) give `None`.

/// One domain event line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The time virsh printed before the event with `--timestamp`, as printed.
    pub timestamp: Option<String>,
    /// The domain's name.
    pub domain: String,
    pub kind: EventKind,
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A lifecycle event: `Suspended`, `Resumed`, `Started`, `Stopped`, ... and its
    /// detail: `Migrated`, `Paused`, `Unpaused`, ...
    Lifecycle { event: String, detail: String },
    /// The migration started its `n`th pass over memory (source).
    MigrationIteration(u64),
    /// Any other event, by its type (`job-completed`, `reboot`, ...).
    Other(String),
}

impl Event {
    /// Whether this is the lifecycle event `event` with detail `detail`.
    pub fn is(&self, event: &str, detail: &str) -> bool {
        matches!(&self.kind, EventKind::Lifecycle { event: e, detail: d } if e == event && d == detail)
    }
}

/// Parses one line of `virsh event` output.
pub fn parse_line(line: &str) -> Option<Event> {
    let line = line.trim_end_matches(['\n', '\r']);
    let (timestamp, rest) = match line.find(": event '") {
        Some(at) if !line.starts_with("event '") => {
            (Some(line[..at].to_owned()), &line[at + ": ".len()..])
        }
        _ => (None, line),
    };
    let rest = rest.strip_prefix("event '")?;
    let (kind, rest) = rest.split_once("' for domain '")?;
    // A domain's name may hold quotes: it ends at the last `'` before `: ` (or the end).
    let (domain, tail) = match rest.rfind("': ") {
        Some(end) => (&rest[..end], &rest[end + "': ".len()..]),
        None => (rest.strip_suffix("':").or(rest.strip_suffix('\''))?, ""),
    };
    let kind = match kind {
        "lifecycle" => {
            let (event, detail) = tail.trim().split_once(' ')?;
            EventKind::Lifecycle {
                event: event.to_owned(),
                detail: detail.trim().to_owned(),
            }
        }
        "migration-iteration" => {
            let n = tail
                .trim()
                .strip_prefix("iteration: '")?
                .strip_suffix('\'')?;
            EventKind::MigrationIteration(n.parse().ok()?)
        }
        other => EventKind::Other(other.to_owned()),
    };
    Some(Event {
        timestamp,
        domain: domain.to_owned(),
        kind,
    })
}

#[cfg(test)]
mod tests;
