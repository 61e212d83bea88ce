//! What each command prints: one serializable report per command, as text or as JSON.

use std::{fmt, net::IpAddr};

use anyhow::Result;
use netpage::{
    attach::{Attached, Attachment, Hook, Mode, hook, iface_exists},
    check::{Finding, Repair, ReverseEntry},
    directory::{DirSwitched, Method, NodeStatus},
    failure::{self, Kind},
    loader::Side,
    migrate::{MigrateReport, RecoverReport},
    node::{Node, OpenNode},
    ops::{Mapping, Plan, Switched},
    table::{Drain, PageTable, slots::SlotProblem},
    tablefile::TableFile,
};
use netpage_common::maps::{IFACE_HOOK_ASKED, MappingStats, PORT_FAST_PATH};
use serde::Serialize;
use serde_json::Value;

/// The result of a command.
#[derive(Serialize)]
#[serde(untagged)]
pub enum Output {
    Attached(Attached),
    Detached {
        iface: String,
    },
    Status(Status),
    Added(Mapping),
    AddedSegment(netpage::tablefile::Segment),
    Deleted(Mapping),
    List(TableFile),
    Locator(netpage::segment::Settings),
    Reverse(ReverseList),
    Switched(Switched),
    Applied {
        #[serde(flatten)]
        plan: Plan,
        dry_run: bool,
    },
    Stats(Stats),
    Gc(Vec<Drain>),
    Migrated(Box<MigrateReport>),
    Recovered(Box<RecoverReport>),
    DirSwitched(DirSwitched),
    DirStatus(DirStatus),
    Nodes(Vec<NodeStatus>),
    Checked(Checked),
    AgentStopped {
        node: String,
    },
    MetricsStopped {
        listen: std::net::SocketAddr,
    },
    Traced(netpage::trace::Summary),
    FollowStopped {
        switches: u64,
    },
}

impl Output {
    /// Why the command failed although it ran to the end (a migration rolled back), and
    /// how.
    pub fn failure(&self) -> Option<(Kind, &str)> {
        match self {
            Output::Migrated(r) => r.error.as_deref().map(|e| (r.failure_kind(), e)),
            Output::Recovered(r) => r.error.as_deref().map(|e| (r.failure_kind(), e)),
            Output::DirSwitched(s) if !s.unconfirmed.is_empty() => Some((
                Kind::Partial,
                "the switch is in the directory, but not every live node confirmed it in time (named above); they converge when they reach etcd again",
            )),
            Output::Checked(c) => c.failure().map(|e| (Kind::Inconsistent, e)),
            _ => None,
        }
    }

    /// Prints the report to stdout.
    pub fn print(&self, json: bool) {
        if json {
            println!("{}", self.json());
        } else {
            print!("{self}");
        }
    }

    /// Prints the report of a command that failed as `kind` for `why`: under `--json`,
    /// the report's object carries the error object in its `error` field.
    pub fn print_failed(&self, json: bool, kind: Kind, why: &str) {
        if !json {
            return self.print(false);
        }
        let mut report = self.json();
        let error = failure::error_json(kind, why, &[], Default::default());
        if let (Some(report), Value::Object(mut error)) = (report.as_object_mut(), error) {
            report.insert("error".into(), error.remove("error").unwrap_or_default());
        }
        println!("{report}");
    }

    fn json(&self) -> Value {
        match self {
            Output::Gc(ended) => serde_json::json!({ "ended": ended }),
            Output::Nodes(nodes) => serde_json::json!({ "nodes": nodes }),
            other => serde_json::to_value(other).expect("reports serialize"),
        }
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Output::Attached(a) => {
                let how = if a.replaced {
                    "replaced the program on"
                } else {
                    "attached to"
                };
                let fast = if a.fast_path { ", fast path" } else { "" };
                let mode = a.mode.map(|m| format!(" {m} mode")).unwrap_or_default();
                writeln!(
                    f,
                    "{how} {} ({} side, {}{mode}{fast}; {})",
                    a.iface, a.side, a.hook, a.hook_reason
                )?;
                if !a.vms.is_empty() {
                    writeln!(f, "owns VMs {}", list(&a.vms))?;
                }
                if let Some(why) = &a.fallback {
                    writeln!(f, "note: using skb mode because {why}")?;
                }
                if a.fast_path && !a.redirect_target {
                    writeln!(
                        f,
                        "note: {} takes no frames redirected from native XDP (no ndo_xdp_xmit; a veth needs an XDP program or GRO on at its peer): packets routed out of it go through the kernel",
                        a.iface
                    )?;
                }
                Ok(())
            }
            Output::Detached { iface } => writeln!(f, "detached from {iface}"),
            Output::Status(s) => s.fmt(f),
            Output::Added(m) => writeln!(f, "mapped {} -> {}", m.vm, m.real),
            Output::AddedSegment(m) => {
                writeln!(f, "mapped {} -> locator {} (encap)", m.vm, m.locator)
            }
            Output::Deleted(m) => writeln!(f, "removed {} -> {}", m.vm, m.real),
            Output::List(t) => {
                writeln!(f, "{:<40} {:<6} REAL OR LOCATOR", "VM", "METHOD")?;
                t.mapping
                    .iter()
                    .try_for_each(|m| writeln!(f, "{:<40} {:<6} {}", m.vm, "page", m.real))?;
                t.segment
                    .iter()
                    .try_for_each(|m| writeln!(f, "{:<40} {:<6} {}", m.vm, "encap", m.locator))
            }
            Output::Locator(l) => locator(f, l),
            Output::Reverse(r) => r.fmt(f),
            Output::Switched(s) => switched(f, s),
            Output::Applied { plan, dry_run } => applied(f, plan, *dry_run),
            Output::Stats(s) => s.fmt(f),
            Output::Migrated(r) => r.fmt(f),
            Output::Recovered(r) => r.fmt(f),
            Output::DirSwitched(s) => dir_switched(f, s),
            Output::DirStatus(s) => s.fmt(f),
            Output::Nodes(n) => nodes(f, n),
            Output::Checked(c) => c.fmt(f),
            Output::AgentStopped { node } => writeln!(f, "agent of {node} stopped"),
            Output::MetricsStopped { listen } => writeln!(f, "metrics at {listen} stopped"),
            Output::Traced(t) => {
                writeln!(f, "trace stopped: {} event(s), {} lost", t.events, t.lost)
            }
            Output::FollowStopped { switches } => {
                writeln!(f, "libvirt follower stopped after {switches} switches")
            }
            Output::Gc(ended) => {
                writeln!(f, "ended {} drain(s)", ended.len())?;
                ended
                    .iter()
                    .try_for_each(|d| writeln!(f, "  {} (was {})", d.real, d.virt))
            }
        }
    }
}

fn switched(f: &mut fmt::Formatter<'_>, s: &Switched) -> fmt::Result {
    if s.from == s.to {
        return writeln!(f, "{} is already at {}; nothing changed", s.vm, s.to);
    }
    writeln!(
        f,
        "switched {}: {} -> {} (V2R update {:.1} us)",
        s.vm,
        s.from,
        s.to,
        s.update.as_secs_f64() * 1e6
    )?;
    if s.nodes.len() > 1 {
        for n in &s.nodes {
            writeln!(f, "  {:<40} {:.1} us", n.node, n.update.as_secs_f64() * 1e6)?;
        }
    }
    match s.drain_until_ms {
        Some(_) => writeln!(
            f,
            "{} keeps translating replies until its drain ends",
            s.from
        ),
        None => writeln!(f, "{} removed", s.from),
    }
}

fn dir_switched(f: &mut fmt::Formatter<'_>, s: &DirSwitched) -> fmt::Result {
    if s.from == s.to {
        return writeln!(f, "{} is already at {}; nothing changed", s.vm, s.to);
    }
    match s.method {
        Method::Paging => writeln!(
            f,
            "switched {}: {} -> {} in the directory (reserved at revision {}, switched at revision {}, transaction {:.1} ms)",
            s.vm, s.from, s.to, s.reserve_revision, s.revision, s.txn_ms
        )?,
        Method::Encap => writeln!(
            f,
            "switched {}: locator {} -> {} in the directory (method encap: switched at revision {}, transaction {:.1} ms)",
            s.vm, s.from, s.to, s.revision, s.txn_ms
        )?,
    }
    if !s.waited {
        return writeln!(f, "not waiting for the nodes (--no-wait)");
    }
    for c in &s.nodes {
        let state = match (c.confirmed, c.left, c.after_ms) {
            (true, _, Some(ms)) => format!(
                "confirmed after {ms:.1} ms (its map update {:.1} ms after the switch)",
                c.propagation_ms.unwrap_or(0.0)
            ),
            (_, true, _) => "left the directory (its agent stopped)".into(),
            _ => "NOT CONFIRMED in time".into(),
        };
        writeln!(f, "  {:<24} {state}", c.node)?;
    }
    if s.nodes.is_empty() {
        writeln!(f, "  no live node is registered")?;
    }
    Ok(())
}

fn nodes(f: &mut fmt::Formatter<'_>, nodes: &[NodeStatus]) -> fmt::Result {
    writeln!(
        f,
        "{:<24} {:<18} {:>10} {:>6}  BUILD",
        "NODE", "SIDES", "APPLIED", "LAG"
    )?;
    for n in nodes {
        writeln!(
            f,
            "{:<24} {:<18} {:>10} {:>6}  {}",
            n.record.node,
            if n.record.sides.is_empty() {
                "-".to_owned()
            } else {
                n.record.sides.join(",")
            },
            n.record.applied_revision,
            n.lag,
            n.record.build
        )?;
    }
    Ok(())
}

fn applied(f: &mut fmt::Formatter<'_>, p: &Plan, dry_run: bool) -> fmt::Result {
    let verb = if dry_run { "would " } else { "" };
    for m in &p.added {
        writeln!(f, "{verb}add    {} -> {}", m.vm, m.real)?;
    }
    for m in &p.moved {
        writeln!(f, "{verb}move   {} -> {} (from {})", m.vm, m.to, m.from)?;
    }
    for m in &p.removed {
        writeln!(f, "{verb}remove {} -> {}", m.vm, m.real)?;
    }
    for d in &p.deferred {
        writeln!(
            f,
            "defer  {} -> {} ({} holds it, draining: apply again once its drain ends)",
            d.vm, d.real, d.held_by
        )?;
    }
    writeln!(
        f,
        "{} added, {} moved, {} removed, {} unchanged, {} deferred{}",
        p.added.len(),
        p.moved.len(),
        p.removed.len(),
        p.unchanged,
        p.deferred.len(),
        if dry_run {
            " (dry run: nothing changed)"
        } else {
            ""
        }
    )
}

/// `netpage status --etcd`.
#[derive(Serialize)]
pub struct DirStatus {
    pub endpoints: String,
    pub prefix: String,
    /// The revision the directory was read at.
    pub revision: i64,
    pub mappings_v4: usize,
    pub mappings_v6: usize,
    pub reverse_entries: usize,
    pub draining: usize,
    /// Mappings of method encap.
    pub segments: usize,
    pub nodes: Vec<NodeStatus>,
}

impl fmt::Display for DirStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "directory {} at {} (revision {})",
            self.prefix, self.endpoints, self.revision
        )?;
        writeln!(
            f,
            "table: {} IPv4 + {} IPv6 mappings, {} reverse entries ({} draining), {} of method encap",
            self.mappings_v4, self.mappings_v6, self.reverse_entries, self.draining, self.segments
        )?;
        nodes(f, &self.nodes)
    }
}

/// `netpage check`.
#[derive(Serialize)]
pub struct Checked {
    /// The table checked: a pin directory, or the directory's prefix and endpoints.
    pub table: String,
    pub findings: Vec<Finding>,
    /// A node's count of fast-path ports, if it differs from its port map's: `[stored,
    /// actual]` (after --repair: as it was found).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fast_port_count: Option<[u32; 2]>,
    /// With --repair: what was done about each finding.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repaired: Option<Vec<Repair>>,
    /// With --repair: what a check after the repairs still finds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remaining: Option<Vec<Finding>>,
    /// What is wrong with the counter slots of a node's entries (none in the directory,
    /// which has no counters). --repair leaves them: they mix counts, not traffic.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub slots: Vec<SlotProblem>,
}

impl Checked {
    fn failure(&self) -> Option<&'static str> {
        if !self.slots.is_empty() {
            return Some("the table's counter slots are inconsistent (see above)");
        }
        if self.fast_port_count.is_some() && self.repaired.is_none() {
            return Some("the table is inconsistent");
        }
        match &self.remaining {
            Some(left) if !left.is_empty() => Some("the table is still inconsistent (see above)"),
            Some(_) => None,
            None if !self.findings.is_empty() => Some("the table is inconsistent"),
            None => None,
        }
    }
}

impl fmt::Display for Checked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.slots {
            match *p {
                SlotProblem::Shared { slot, vm, other } => writeln!(
                    f,
                    "  {:<24} slot {slot} vm {vm} ({other})",
                    "shared_counter_slot"
                )?,
                SlotProblem::Split { vm, slot, other } => writeln!(
                    f,
                    "  {:<24} vm {vm} slots {slot} and {other}",
                    "split_counter_slots"
                )?,
                SlotProblem::OutOfRange { vm, slot } => writeln!(
                    f,
                    "  {:<24} vm {vm} slot {slot}",
                    "counter_slot_out_of_range"
                )?,
            }
        }
        if let Some([stored, actual]) = self.fast_port_count {
            let done = if self.repaired.is_some() {
                ": recounted"
            } else {
                ""
            };
            writeln!(
                f,
                "{}: the programs count {stored} fast-path ports, the port map has {actual}{done}",
                self.table
            )?;
        }
        if self.findings.is_empty() {
            if self.slots.is_empty() && (self.fast_port_count.is_none() || self.repaired.is_some())
            {
                writeln!(f, "{}: consistent", self.table)?;
            }
            return Ok(());
        }
        writeln!(f, "{}: {} inconsistencies", self.table, self.findings.len())?;
        match &self.repaired {
            None => self.findings.iter().try_for_each(|x| finding(f, x, "")),
            Some(repairs) => {
                for r in repairs {
                    let did = serde_json::to_value(r.action).expect("actions serialize");
                    let did = did.as_str().unwrap_or("?").replace('_', " ");
                    finding(f, &r.finding, &format!(": {did}"))?;
                }
                let left = self.remaining.as_deref().unwrap_or_default();
                if left.is_empty() {
                    writeln!(f, "repaired: consistent now")
                } else {
                    writeln!(f, "{} left:", left.len())?;
                    left.iter().try_for_each(|x| finding(f, x, ""))
                }
            }
        }
    }
}

fn finding(f: &mut fmt::Formatter<'_>, x: &Finding, then: &str) -> fmt::Result {
    let other = x.other.map_or(String::new(), |o| format!(" ({o})"));
    let real = x.real;
    let kind = serde_json::to_value(x.kind).expect("kinds serialize");
    writeln!(
        f,
        "  {:<24} real {real} vm {}{other}{then}",
        kind.as_str().unwrap_or("?"),
        x.vm
    )
}

/// `netpage map list --reverse`.
#[derive(Serialize)]
pub struct ReverseList {
    pub reverse: Vec<ReverseEntry>,
    pub drains: Vec<Drain>,
    /// The clock of the drains' deadlines: `boot` (a node's table: milliseconds since its
    /// machine booted) or `unix` (the directory: milliseconds since the Unix epoch).
    pub clock: &'static str,
    /// That clock's reading when the table was read.
    pub now_ms: u64,
}

impl fmt::Display for ReverseList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:<40} {:<40} STATE", "REAL", "VM")?;
        for e in &self.reverse {
            let state = serde_json::to_value(e.state).expect("states serialize");
            let state = state.as_str().unwrap_or("?").replace('_', " ");
            writeln!(f, "{:<40} {:<40} {state}", e.real, e.vm)?;
        }
        if !self.drains.is_empty() {
            writeln!(f, "drains:")?;
        }
        let now = self.now_ms;
        for d in &self.drains {
            let left = if d.deadline_ms > now {
                format!("ends in {:.1} s", (d.deadline_ms - now) as f64 / 1000.0)
            } else {
                format!("ended {:.1} s ago", (now - d.deadline_ms) as f64 / 1000.0)
            };
            writeln!(f, "  {} (vm {}) {left}", d.real, d.virt)?;
        }
        Ok(())
    }
}

/// An attached interface.
#[derive(Serialize)]
pub struct Iface {
    pub iface: String,
    pub side: Option<Side>,
    /// The hook the program runs at: `xdp` or `tc`.
    pub hook: Option<Hook>,
    /// Why: asked for, or why `attach --hook auto` picked it.
    pub hook_reason: String,
    /// The XDP mode (XDP only).
    pub mode: Option<Mode>,
    /// Whether translated packets are forwarded from XDP (`attach --fast-path`).
    pub fast_path: bool,
    /// Whether the fast path may redirect frames to it from native XDP (it takes XDP
    /// frames, as of the node's last attach or detach).
    pub redirect_target: bool,
    /// Whether the interface exists in this network namespace.
    pub present: bool,
    /// Whether its link (XDP or tcx) is pinned.
    pub pinned: bool,
    /// The virtual addresses of the VMs it owns (`attach --vm`): the only port of the node
    /// they are accepted from as a source.
    pub vms: Vec<IpAddr>,
}

/// `netpage status`.
#[derive(Serialize)]
pub struct Status {
    pub pin_dir: String,
    pub interfaces: Vec<Iface>,
    /// Entries each table can hold.
    pub capacity: u32,
    pub mappings_v4: usize,
    pub mappings_v6: usize,
    /// Reverse entries, including those of draining addresses.
    pub reverse_entries: usize,
    pub draining: usize,
    /// Mappings of method encap.
    pub segments: usize,
    /// The node's segmentation settings (`None`: a node of an older build).
    pub segmentation: Option<netpage::segment::Settings>,
}

impl Status {
    pub fn read(node: &Node, n: &OpenNode) -> Result<Self> {
        let owners = n.owners.entries()?;
        let segmentation = n.segments.as_ref().map(|s| s.read()).transpose()?;
        let segments = segmentation
            .as_ref()
            .is_some_and(|s| !s.locators.is_empty());
        let targets = n.redirect_targets()?;
        let interfaces = n
            .ifaces()?
            .into_iter()
            .map(|(iface, r)| {
                let vms = owners
                    .iter()
                    .filter(|&&(_, i)| i != 0 && i == r.ifindex)
                    .map(|&(va, _)| va)
                    .collect();
                let how = Attachment::from_code(r.mode);
                let fast_path = r.flags & PORT_FAST_PATH != 0;
                let link = match how {
                    Some(Attachment::Tc) => node.tc_link_path(&iface),
                    _ => node.link_path(&iface),
                };
                Iface {
                    side: Side::from_code(r.side),
                    hook: how.map(Attachment::hook),
                    hook_reason: if r.flags & IFACE_HOOK_ASKED != 0 {
                        "asked for".to_owned()
                    } else {
                        hook::choose(&iface, Hook::Auto, Mode::Auto, fast_path, segments)
                            .map_or_else(|e| e.to_string(), |(_, why)| why)
                    },
                    mode: how.and_then(Attachment::xdp_mode),
                    fast_path,
                    redirect_target: targets.contains(&r.ifindex),
                    present: iface_exists(&iface),
                    pinned: link.exists(),
                    vms,
                    iface,
                }
            })
            .collect();
        let forward = n.table.forward_entries()?;
        let v4 = forward.iter().filter(|(va, _)| va.is_ipv4()).count();
        Ok(Self {
            pin_dir: node.dir().display().to_string(),
            interfaces,
            capacity: node.capacity()?,
            mappings_v4: v4,
            mappings_v6: forward.len() - v4,
            reverse_entries: n.table.reverse_entries()?.len(),
            draining: n.table.drains()?.len(),
            segments: n.table.segment_entries()?.len(),
            segmentation,
        })
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "node {}", self.pin_dir)?;
        if self.interfaces.is_empty() {
            writeln!(f, "  no interface attached")?;
        }
        for i in &self.interfaces {
            let state = match (i.present, i.pinned) {
                (true, true) => "",
                (false, _) => "  (interface missing)",
                (true, false) => "  (link missing)",
            };
            let fast = if i.fast_path { "fast-path" } else { "" };
            // Under tc, where the programs run instead of an XDP mode.
            let at = match (i.hook, i.side) {
                (Some(Hook::Tc), Some(Side::Virtual)) => "in+out".to_owned(),
                (Some(Hook::Tc), _) => "in".to_owned(),
                _ => opt(&i.mode),
            };
            let target = if i.redirect_target { "xdp-xmit" } else { "" };
            let line = format!(
                "  {:<16} {:<9} {:<3} {at:<7} {fast:<9} {target:<8}{state}",
                i.iface,
                opt(&i.side),
                opt(&i.hook),
            );
            writeln!(f, "{}", line.trim_end())?;
            writeln!(f, "    {}: {}", opt(&i.hook), i.hook_reason)?;
            if !i.vms.is_empty() {
                writeln!(f, "    owns VMs {}", list(&i.vms))?;
            }
        }
        writeln!(
            f,
            "table: {} IPv4 + {} IPv6 mappings, {} reverse entries ({} draining), capacity {} per table",
            self.mappings_v4, self.mappings_v6, self.reverse_entries, self.draining, self.capacity
        )?;
        if let Some(s) = self
            .segmentation
            .as_ref()
            .filter(|s| !s.locators.is_empty())
        {
            writeln!(
                f,
                "segmentation: {} mapping(s) of method encap; locators {}, default locator {}, tunnel MTU {}",
                self.segments,
                list(&s.locators),
                opt(&s.default_locator),
                s.tunnel_mtu
            )?;
        }
        Ok(())
    }
}

/// Addresses separated by commas.
fn list(addrs: &[IpAddr]) -> String {
    addrs
        .iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn opt<T: fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map_or("?".into(), T::to_string)
}

/// The traffic of one mapping.
#[derive(Serialize)]
pub struct MappingTraffic {
    pub vm: IpAddr,
    pub real: IpAddr,
    pub packets: u64,
    pub bytes: u64,
}

/// `netpage stats`.
#[derive(Serialize)]
pub struct Stats {
    /// Packets by outcome, over all interfaces of the node.
    pub counters: serde_json::Map<String, serde_json::Value>,
    pub mappings: Vec<MappingTraffic>,
}

impl Stats {
    /// The node's counters, and the traffic of `vm`'s mapping or of every mapping.
    pub fn read(n: &OpenNode, vm: Option<(IpAddr, IpAddr)>) -> Result<Self> {
        let counters = n
            .counters()?
            .named()
            .map(|(name, v)| (name.to_owned(), v.into()))
            .collect();
        let traffic = |vm, real, s: MappingStats| MappingTraffic {
            vm,
            real,
            packets: s.packets,
            bytes: s.bytes,
        };
        let mut mappings: Vec<MappingTraffic> = match vm {
            Some((vm, real)) => vec![traffic(vm, real, n.table.stats(vm)?.unwrap_or_default())],
            None => n
                .table
                .mapping_stats()?
                .into_iter()
                .map(|(vm, real, s)| traffic(vm, real, s))
                .collect(),
        };
        mappings.sort_by_key(|m| m.vm);
        Ok(Self { counters, mappings })
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "packets by outcome:")?;
        for (name, v) in &self.counters {
            writeln!(f, "  {name:<26} {v}")?;
        }
        writeln!(
            f,
            "{:<40} {:<40} {:>12} {:>14}",
            "VM", "REAL", "PACKETS", "BYTES"
        )?;
        for m in &self.mappings {
            writeln!(
                f,
                "{:<40} {:<40} {:>12} {:>14}",
                m.vm, m.real, m.packets, m.bytes
            )?;
        }
        Ok(())
    }
}

fn locator(f: &mut fmt::Formatter<'_>, l: &netpage::segment::Settings) -> fmt::Result {
    if l.locators.is_empty() {
        writeln!(
            f,
            "locators:        none (the node does not take part in segmentation)"
        )?;
    } else {
        let all: Vec<String> = l.locators.iter().map(ToString::to_string).collect();
        writeln!(f, "locators:        {}", all.join(", "))?;
    }
    match l.default_locator {
        Some(d) => writeln!(f, "default locator: {d}")?,
        None => writeln!(f, "default locator: none")?,
    }
    writeln!(f, "tunnel MTU:      {}", l.tunnel_mtu)
}
