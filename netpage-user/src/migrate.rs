//! `netpage migrate`: live-migrates a QEMU guest from one host to another and switches its
//! page-table entry on every node at the chosen moment, rolling back if the migration fails.
//!
//! The order is that of `switch`, stretched over the migration: R2V[new RA] on every node
//! before the migration starts, one V2R update per node just before the source pauses
//! (`stop`) or when the destination runs (`resume`), and the old RA drained once the
//! migration completed.
//!
//! # Switching before the source pauses
//!
//! QEMU announces its pause (STOP) only after it has paused the guest, so a switch made on
//! hearing STOP comes too late for a packet that reached the source in that last
//! millisecond: it sits in the source's tap and is never read. With `--switch-at stop`
//! netpage therefore decides the moment of the pause itself:
//!
//! 1. It starts the migration with QEMU's downtime limit held at [`HOLD_MS`], a pause no
//!    real guest's last copy fits in, so QEMU keeps copying live and never stops on its own.
//! 2. While the live copy runs it asks QEMU for its progress (`query-migrate`) every
//!    [`POLL`], and estimates the pause a stop would take now: the RAM still to send in
//!    this pass, plus what the guest has dirtied since the pass began (at the dirty rate
//!    QEMU measured, known from the second pass on), over the bandwidth QEMU measured.
//! 3. Once that fits the downtime limit asked for (`--downtime-limit`, else the source's
//!    own, QEMU's default being 300 ms) it switches every node (one V2R update each) and
//!    only then raises the limit. QEMU applies the new limit at its next bandwidth
//!    measurement (every 100 ms or so), ends the pass at once since what remains now fits,
//!    and stops and copies; that is, the pass ends where QEMU would have ended it with the
//!    limit set from the start, a little later, with no pass added. QEMU's measured
//!    figures change at each measurement, so the polls learn its rhythm, and netpage
//!    waits (the guest still running at the source, nothing switched) until the next one
//!    is at most [`TICK_LEAD`] away before it switches and releases.
//!
//! From the switch to STOP the guest still runs at the source: packets sent meanwhile go
//! to the destination and wait in its tap's queue (with `--dst-neigh`, and a queue long
//! enough) until RESUME, while the source's replies to earlier packets still get through
//! (the source host's V2R now gives the new RA, which every node's R2V translates). Nothing
//! is lost, at a cost: the client's gap grows by the time from the switch to STOP (the
//! report's `switch_to_stop_ms`): about [`TICK_LEAD`] when QEMU keeps its rhythm, up to
//! one measurement period more when it does not.
//!
//! If QEMU does not stop after the pass the release ended (the guest dirtied more than
//! estimated), netpage switches back within [`STOP_GRACE`] and falls back to switching at
//! STOP. It also stops holding, and falls back so, if no estimate fits by the end of the
//! second live pass ([`MAX_HELD_PASS`]): QEMU 7.2 under TCG has been seen to deliver
//! inconsistent guest memory after migrations of four passes or more, so netpage adds
//! none. On failure the source's limit is set back to the one asked for.
//!
//! After the release (and with `--switch-at resume` throughout) netpage sends the source
//! QEMU no command until the migration has ended: QEMU holds its big lock for the whole
//! final stop-and-copy, so a command sent then would be answered only after it, and the
//! STOP event queued behind that answer would be handled too late. While the limit is
//! held QEMU cannot enter that phase, so its answers come at once.

use std::{
    fmt,
    net::IpAddr,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;

use crate::{
    node::{Node, NodeError, OpenNode},
    ops::{self, OpError, now_ms},
    qmp::{
        Event, MigrationInfo, MigrationParameters, MigrationStatus, Qmp, QmpError, RunState,
        Timestamp,
    },
    table::{PageTable, TableError},
    timeline::{Source, Timeline},
};

/// When the page table switches to the destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SwitchAt {
    /// Just before the source pauses for its last copy, at a moment netpage chooses: it
    /// holds QEMU's downtime limit low, switches once the last copy would fit the limit
    /// asked for, then releases the limit so that QEMU stops (see the module's
    /// documentation). Packets sent from the switch to the end of the pause wait in the
    /// destination's tap queue and reach the guest when it resumes: none is lost, but the
    /// client's gap grows by the time from the switch to STOP (`switch_to_stop_ms`).
    Stop,
    /// When the destination runs the guest: packets sent during the pause go to the
    /// paused source and are lost.
    Resume,
}

/// The neighbour entry to install at the destination host, so that packets for the guest
/// go into its tap queue while it is paused instead of waiting for ARP. The entry is
/// permanent: it stays after a completed migration (the guest keeps its MAC) and is
/// deleted by a rollback.
#[derive(Clone, Debug)]
pub struct Neighbour {
    /// The destination's tap (or bridge) for the guest.
    pub iface: String,
    /// The destination host's network namespace (`ip netns` name), if not this one.
    pub netns: Option<String>,
    /// The guest's MAC; asked from the source QEMU if not given.
    pub mac: Option<String>,
}

/// What to migrate, where, and how.
#[derive(Clone, Debug)]
pub struct MigrateOptions {
    pub vm: IpAddr,
    pub to: IpAddr,
    pub src_qmp: PathBuf,
    pub dst_qmp: PathBuf,
    /// Where the source sends the migration stream (`tcp:HOST:PORT`).
    pub uri: String,
    /// The pin directories of every node whose table switches.
    pub nodes: Vec<PathBuf>,
    pub switch_at: SwitchAt,
    /// The longest pause QEMU may plan for its last copy (`None`: the source's own).
    pub downtime_limit_ms: Option<u64>,
    /// The whole migration must complete within this.
    pub timeout: Duration,
    /// How long the old real address keeps translating after completion.
    pub drain: Duration,
    pub neighbour: Option<Neighbour>,
}

/// Why a migration could not start (nothing was changed).
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("node {}", dir.display())]
    Node {
        dir: PathBuf,
        #[source]
        source: NodeError,
    },
    #[error("node {}", dir.display())]
    Op {
        dir: PathBuf,
        #[source]
        source: OpError,
    },
    #[error(
        "the nodes disagree on where {vm} is: {} says {a}, {} says {b}; fix the tables first",
        first.display(),
        other.display()
    )]
    Disagree {
        vm: IpAddr,
        first: PathBuf,
        a: IpAddr,
        other: PathBuf,
        b: IpAddr,
    },
    #[error("{vm} is already at {to}: nothing to migrate to")]
    AlreadyThere { vm: IpAddr, to: IpAddr },
    #[error(
        "no QMP socket at {} for the {which} QEMU: is it running with `-qmp unix:{},server=on,wait=off`?",
        path.display(),
        path.display()
    )]
    NoSocket { which: &'static str, path: PathBuf },
    #[error("the source VM is {status}, not running: nothing to migrate")]
    SourceNotRunning { status: RunState },
    #[error(
        "the destination QEMU is {status}, not waiting for a migration: start it with `-incoming`"
    )]
    DestinationNotWaiting { status: RunState },
    #[error("{0}")]
    Mac(String),
    #[error(transparent)]
    Qmp(#[from] QmpError),
    #[error("preparing the page tables")]
    Table(#[from] TableError),
}

/// One node's switch.
#[derive(Clone, Debug, Serialize)]
pub struct NodeSwitch {
    pub node: String,
    /// The one V2R update.
    pub update_us: f64,
}

/// The moment netpage released the downtime limit it held (`--switch-at stop`).
#[derive(Clone, Debug, Serialize)]
pub struct Release {
    /// The pass under way (QEMU's last MIGRATION_PASS).
    pub pass: u64,
    /// Whether the nodes were switched then (`false`: the fallback to a switch at STOP).
    pub switched: bool,
    /// Why: `estimate` (the last copy fits the limit) or `passes` (none fitted in time).
    pub reason: &'static str,
    /// RAM still to send in the pass, and QEMU's measured bandwidth.
    pub remaining_bytes: u64,
    pub mbps: f64,
    /// The pause netpage estimated, and the limit it released.
    pub estimate_ms: f64,
    pub limit_ms: u64,
    /// Whether netpage switched back because QEMU went on with another pass.
    pub switched_back: bool,
}

/// How a migration ended.
#[derive(Clone, Debug, Serialize)]
pub struct MigrateReport {
    pub vm: IpAddr,
    pub from: IpAddr,
    pub to: IpAddr,
    pub switch_at: SwitchAt,
    /// `completed`, or `failed` (the table was rolled back).
    pub status: String,
    /// Why the migration failed, or what went wrong although the guest did move.
    pub error: Option<String>,
    pub rolled_back: bool,
    /// The guest's pause as QEMU measured it.
    pub qemu_downtime_ms: Option<u64>,
    pub qemu_total_ms: Option<u64>,
    /// From the source's STOP to the destination's RESUME, by QEMU's event timestamps.
    pub stop_to_resume_ms: Option<f64>,
    /// From the source's STOP (QEMU's timestamp) to the last node's V2R update (this
    /// host's clock, which QEMU's shares when it runs here): negative when the switch
    /// came first.
    pub stop_to_switch_ms: Option<f64>,
    /// From the last node's V2R update to the source's STOP, when the switch came first:
    /// what the switch before the pause adds to a client's gap.
    pub switch_to_stop_ms: Option<f64>,
    /// How netpage ended the held downtime limit (`--switch-at stop`).
    pub release: Option<Release>,
    /// QEMU's timestamps of the source's STOP and the destination's RESUME, in
    /// milliseconds since the Unix epoch, to set beside what clients saw.
    pub stop_unix_ms: Option<f64>,
    pub resume_unix_ms: Option<f64>,
    pub passes: u64,
    pub switches: Vec<NodeSwitch>,
    pub timeline: Timeline,
}

impl MigrateReport {
    pub fn completed(&self) -> bool {
        self.error.is_none()
    }
}

/// Runs a migration. `Err` means it could not start and nothing changed; a migration that
/// started and failed gives a report with its error, after the rollback.
pub async fn migrate(opts: &MigrateOptions) -> Result<MigrateReport, MigrateError> {
    let start = Instant::now();
    let mut run = Run::prepare(opts, start).await?;
    let outcome = run.drive(opts).await;
    Ok(run.finish(opts, outcome).await)
}

/// How long one QMP exchange may take.
const QMP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a cancelled migration may take to end.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(10);
/// A wait with no end of its own (the migration's deadline ends it).
const FOREVER: Duration = Duration::from_secs(365 * 24 * 3600);
/// The downtime limit (ms) held while netpage waits to switch: no last copy fits in it.
pub const HOLD_MS: u64 = 1;
/// How often netpage asks QEMU for its progress while it holds the limit.
pub const POLL: Duration = Duration::from_millis(10);
/// How long before QEMU's next bandwidth measurement netpage releases the limit: enough
/// for the polls' view of QEMU's rhythm to be off a little.
pub const TICK_LEAD: Duration = Duration::from_millis(25);
/// How long after the pass that a release ended QEMU may take to stop; QEMU stops within
/// a millisecond of that pass's event when it stops at all.
pub const STOP_GRACE: Duration = Duration::from_millis(50);
/// The last pass during which netpage holds the limit: if no estimate fits by the time
/// this pass begins, it releases the limit without switching.
pub const MAX_HELD_PASS: u64 = 3;
/// QEMU's default downtime limit, for a source that does not tell its own.
const QEMU_DEFAULT_LIMIT_MS: u64 = 300;
/// Guest page size: QEMU counts dirty pages of this size on x86.
const PAGE_SIZE: f64 = 4096.0;

/// A migration under way.
struct Run {
    start: Instant,
    nodes: Vec<(PathBuf, OpenNode)>,
    src: Qmp,
    dst: Qmp,
    vm: IpAddr,
    from: IpAddr,
    to: IpAddr,
    neighbour: Option<(Neighbour, String)>,
    timeline: Timeline,
    switches: Vec<NodeSwitch>,
    /// Whether every node's V2R names the destination.
    switched: bool,
    switched_at: Option<SystemTime>,
    stop: Option<Timestamp>,
    resume: Option<Timestamp>,
    passes: u64,
    /// Polling while the downtime limit is held, until released (`--switch-at stop`).
    hold: Option<Hold>,
    /// Whether the source's downtime limit is netpage's [`HOLD_MS`].
    held: bool,
    released_at: Option<Instant>,
    /// The limit to release (and to restore after a failure).
    limit_ms: Option<u64>,
    release: Option<Release>,
    /// After a release with a switch: when netpage switches back unless STOP came.
    grace: Option<Instant>,
}

/// The downtime limit held at [`HOLD_MS`] while netpage waits for the moment to switch.
struct Hold {
    next_poll: Instant,
    /// When the pass under way began (its MIGRATION_PASS event).
    pass_began: Instant,
    /// QEMU's measurement rhythm, seen in the answers to the polls.
    ticks: Ticks,
}

/// When QEMU measures its bandwidth (and applies a new downtime limit): about every
/// 100 ms, at the end of a round of sending, which makes the period steady for one
/// migration. The measured figures (`mbps`, `pages-per-second`) change at each one, so
/// the polls see them.
#[derive(Default)]
struct Ticks {
    /// The figures of the last poll, and when it was answered.
    last: Option<((u64, u64), Instant)>,
    /// The last measurement seen: between the poll before the change and the poll that
    /// saw it.
    tick: Option<Instant>,
    /// The last interval between two measurements seen.
    period: Option<Duration>,
}

impl Ticks {
    /// Records a poll's figures, answered at `now`.
    fn observe(&mut self, mbps: f64, pages_per_second: u64, now: Instant) {
        let figures = (mbps.to_bits(), pages_per_second);
        if let Some((before, at)) = self.last
            && before != figures
        {
            let tick = at + (now - at) / 2;
            if let Some(prev) = self.tick {
                self.period = Some(tick - prev);
            }
            self.tick = Some(tick);
        }
        self.last = Some((figures, now));
    }

    /// How long until QEMU's next measurement, if its rhythm is known (zero if overdue).
    fn until_next(&self, now: Instant) -> Option<Duration> {
        let due = self.tick? + self.period?;
        Some(due.saturating_duration_since(now))
    }
}

/// Where the event loop ended.
enum Outcome {
    Completed,
    Failed(String),
}

/// What one event means for the loop.
enum Step {
    Continue,
    /// Pass [`MAX_HELD_PASS`] began with the limit still held.
    GiveUp,
    /// This side is done: the source completed, or the destination runs the guest.
    Done,
    Failed(String),
}

impl Run {
    /// Checks everything, then installs R2V[to] everywhere (and the neighbour entry).
    async fn prepare(opts: &MigrateOptions, start: Instant) -> Result<Self, MigrateError> {
        let mut nodes = open_nodes(opts)?;
        let from = where_is(&nodes, opts.vm, opts.to)?;
        if from == opts.to {
            return Err(MigrateError::AlreadyThere {
                vm: opts.vm,
                to: opts.to,
            });
        }
        for (which, path) in [("source", &opts.src_qmp), ("destination", &opts.dst_qmp)] {
            if !path.exists() {
                return Err(MigrateError::NoSocket {
                    which,
                    path: path.clone(),
                });
            }
        }
        let mut src = Qmp::connect(&opts.src_qmp, QMP_TIMEOUT).await?;
        let mut dst = Qmp::connect(&opts.dst_qmp, QMP_TIMEOUT).await?;
        let s = src.query_status().await?.status;
        if !matches!(s, RunState::Running | RunState::Paused) {
            return Err(MigrateError::SourceNotRunning { status: s });
        }
        let d = dst.query_status().await?.status;
        if d != RunState::InMigrate {
            return Err(MigrateError::DestinationNotWaiting { status: d });
        }
        let neighbour = match &opts.neighbour {
            Some(n) => Some((n.clone(), guest_mac(&mut src, n).await?)),
            None => None,
        };
        install_reverse(&mut nodes, opts.to, opts.vm)?;
        let mut run = Run {
            start,
            nodes,
            src,
            dst,
            vm: opts.vm,
            from,
            to: opts.to,
            neighbour,
            timeline: Timeline::new(start),
            switches: Vec::new(),
            switched: false,
            switched_at: None,
            stop: None,
            resume: None,
            passes: 0,
            hold: None,
            held: false,
            released_at: None,
            limit_ms: opts.downtime_limit_ms,
            release: None,
            grace: None,
        };
        run.mark(Source::Netpage, "CHECKED", format!("{} at {from}", opts.vm));
        run.mark(
            Source::Netpage,
            "R2V INSTALLED",
            format!("{} -> {}", opts.to, opts.vm),
        );
        if let Some((n, mac)) = &run.neighbour {
            // A failure here is reported, not fatal: without the entry, the destination
            // resolves the guest by ARP after it resumes.
            match neigh(n, "replace", opts.vm, Some(mac)) {
                Ok(()) => run.mark(
                    Source::Netpage,
                    "NEIGHBOUR",
                    format!("{} {mac} on {}", opts.vm, n.iface),
                ),
                Err(e) => eprintln!("netpage: warning: destination neighbour entry: {e}"),
            }
        }
        Ok(run)
    }

    fn mark(&mut self, source: Source, what: impl Into<String>, detail: String) {
        self.timeline.mark(Instant::now(), source, what, detail);
    }

    /// Starts the migration and follows both QEMUs until it ends. No command goes to the
    /// source until then (see the module's documentation).
    async fn drive(&mut self, opts: &MigrateOptions) -> Outcome {
        if let Err(e) = self.start(opts).await {
            return Outcome::Failed(format!("starting the migration: {e}"));
        }
        let deadline = tokio::time::Instant::from_std(self.start + opts.timeout);
        let (mut src_done, mut dst_done) = (false, false);
        while !(src_done && dst_done) {
            let poll_at = self.hold.as_ref().map(|h| h.next_poll);
            let grace_at = self.grace;
            let step = tokio::select! {
                _ = tokio::time::sleep_until(poll_at.map_or(deadline, Into::into)),
                    if poll_at.is_some() => self.poll().await,
                _ = tokio::time::sleep_until(grace_at.map_or(deadline, Into::into)),
                    if grace_at.is_some() => self.switch_back(),
                ev = self.src.next_event(FOREVER) => match ev {
                    Ok(Some(e)) => self.on_source(&e, opts.switch_at),
                    Ok(None) => Step::Continue,
                    Err(QmpError::Closed { .. }) => Step::Failed("the source QEMU exited".into()),
                    Err(e) => Step::Failed(format!("the source QEMU: {e}")),
                },
                ev = self.dst.next_event(FOREVER) => match ev {
                    Ok(Some(e)) => match self.on_destination(&e, opts.switch_at) {
                        Step::Done => {
                            dst_done = true;
                            Step::Continue
                        }
                        other => other,
                    },
                    Ok(None) => Step::Continue,
                    Err(QmpError::Closed { .. }) => {
                        Step::Failed("the destination QEMU exited".into())
                    }
                    Err(e) => Step::Failed(format!("the destination QEMU: {e}")),
                },
                _ = tokio::time::sleep_until(deadline) => Step::Failed(format!(
                    "the migration did not complete within {:?} (it may not converge: raise --downtime-limit or --timeout)",
                    opts.timeout
                )),
            };
            let step = match step {
                Step::GiveUp => self.give_up_hold().await,
                other => other,
            };
            match step {
                Step::Continue | Step::GiveUp => {}
                Step::Done => src_done = true,
                Step::Failed(why) => return Outcome::Failed(why),
            }
        }
        Outcome::Completed
    }

    async fn start(&mut self, opts: &MigrateOptions) -> Result<(), QmpError> {
        self.src.enable_migration_events().await?;
        self.dst.enable_migration_events().await?;
        if opts.switch_at == SwitchAt::Stop {
            let limit = match opts.downtime_limit_ms {
                Some(ms) => ms,
                None => self.source_limit().await?,
            };
            self.limit_ms = Some(limit);
            self.set_limit(HOLD_MS).await?;
            self.held = true;
            self.hold = Some(Hold {
                next_poll: Instant::now() + POLL,
                pass_began: Instant::now(),
                ticks: Ticks::default(),
            });
            self.mark(
                Source::Netpage,
                "LIMIT HELD",
                format!("{HOLD_MS} ms until the switch, then {limit} ms"),
            );
        } else if let Some(ms) = opts.downtime_limit_ms {
            self.set_limit(ms).await?;
        }
        if let Err(e) = self.src.migrate(&opts.uri).await {
            self.restore_limit().await;
            return Err(e);
        }
        self.mark(Source::Netpage, "MIGRATE", opts.uri.clone());
        Ok(())
    }

    async fn set_limit(&mut self, ms: u64) -> Result<(), QmpError> {
        let p = MigrationParameters {
            downtime_limit: Some(ms),
            ..MigrationParameters::default()
        };
        self.src.migrate_set_parameters(&p).await
    }

    /// The source's downtime limit as it stands (QEMU's default if it does not say).
    async fn source_limit(&mut self) -> Result<u64, QmpError> {
        let params: serde_json::Value = self
            .src
            .execute("query-migrate-parameters", serde_json::Value::Null)
            .await?;
        Ok(params["downtime-limit"]
            .as_u64()
            .unwrap_or(QEMU_DEFAULT_LIMIT_MS))
    }

    /// Puts the limit asked for back if netpage still holds its own (after a failure, or
    /// a migration that ended while held), so that the next migration of this QEMU
    /// converges.
    async fn restore_limit(&mut self) {
        self.hold = None;
        if !std::mem::take(&mut self.held) {
            return;
        }
        if let Some(ms) = self.limit_ms
            && let Err(e) = self.set_limit(ms).await
        {
            eprintln!("netpage: warning: setting the source's downtime limit back to {ms} ms: {e}");
        }
    }

    /// Asks the source for its progress while the limit is held, and releases the limit
    /// (switching first) once the last copy would fit the limit asked for.
    async fn poll(&mut self) -> Step {
        let info = match self.src.query_migrate().await {
            Ok(info) => info,
            Err(QmpError::Closed { .. }) => return Step::Failed("the source QEMU exited".into()),
            Err(e) => return Step::Failed(format!("the source QEMU: {e}")),
        };
        let Some(hold) = &mut self.hold else {
            return Step::Continue;
        };
        let now = Instant::now();
        hold.next_poll = now + POLL;
        let since_pass = hold.pass_began.elapsed();
        if info.status != Some(MigrationStatus::Active) {
            return Step::Continue;
        }
        if let Some(ram) = &info.ram {
            hold.ticks.observe(ram.mbps, ram.pages_per_second, now);
        }
        let limit = self.limit_ms.unwrap_or(QEMU_DEFAULT_LIMIT_MS) as f64;
        match estimate_ms(&info, since_pass) {
            // QEMU applies the new limit only at its next measurement: release just
            // before it, so that the guest runs as briefly as possible after the switch.
            Some(est)
                if est <= limit
                    && hold
                        .ticks
                        .until_next(now)
                        .is_none_or(|left| left <= TICK_LEAD) =>
            {
                self.release(&info, est, "estimate", true).await
            }
            _ => Step::Continue,
        }
    }

    /// Ends the hold: switches every node if `switch`, then raises the limit.
    async fn release(
        &mut self,
        info: &MigrationInfo,
        estimate_ms: f64,
        reason: &'static str,
        switch: bool,
    ) -> Step {
        if switch && let Err(why) = self.switch_all() {
            return Step::Failed(why);
        }
        let limit = self.limit_ms.unwrap_or(QEMU_DEFAULT_LIMIT_MS);
        let ram = info.ram.clone().unwrap_or_default();
        self.release = Some(Release {
            pass: self.passes,
            switched: switch,
            reason,
            remaining_bytes: ram.remaining,
            mbps: ram.mbps,
            estimate_ms,
            limit_ms: limit,
            switched_back: false,
        });
        self.hold = None;
        self.released_at = Some(Instant::now());
        self.mark(
            Source::Netpage,
            "RELEASED",
            format!(
                "limit {limit} ms ({reason}: {:.1} MiB left at {:.0} Mbit/s, {estimate_ms:.0} ms){}",
                ram.remaining as f64 / (1 << 20) as f64,
                ram.mbps,
                if switch { "" } else { "; switch at STOP" }
            ),
        );
        eprintln!(
            "netpage: downtime limit released to {limit} ms in pass {} ({reason}, estimated pause {estimate_ms:.0} ms){}",
            self.passes,
            if switch {
                " after the switch"
            } else {
                ", switching at STOP"
            }
        );
        match self.set_limit(limit).await {
            Ok(()) => {
                self.held = false;
                Step::Continue
            }
            Err(e) => Step::Failed(format!("releasing the downtime limit: {e}")),
        }
    }

    /// No estimate fitted by pass [`MAX_HELD_PASS`]: releases the limit without a switch
    /// (which then comes at STOP).
    async fn give_up_hold(&mut self) -> Step {
        let info = match self.src.query_migrate().await {
            Ok(info) => info,
            Err(e) => return Step::Failed(format!("the source QEMU: {e}")),
        };
        let since = self
            .hold
            .as_ref()
            .map_or(Duration::ZERO, |h| h.pass_began.elapsed());
        let est = estimate_ms(&info, since).unwrap_or(f64::NAN);
        self.release(&info, est, "passes", false).await
    }

    /// QEMU went on with another pass after the release: puts every node back on the
    /// source, which still runs the guest, and switches again at STOP.
    fn switch_back(&mut self) -> Step {
        self.grace = None;
        if self.stop.is_some() || !self.switched {
            return Step::Continue;
        }
        let mut failed = Vec::new();
        let (vm, from) = (self.vm, self.from);
        for (dir, n) in &mut self.nodes {
            if let Err(e) = n.table.set_forward(vm, from) {
                failed.push(format!("{}: {e}", dir.display()));
            }
        }
        self.switched = false;
        self.switched_at = None;
        self.switches.clear();
        if let Some(r) = &mut self.release {
            r.switched_back = true;
        }
        self.mark(
            Source::Netpage,
            "SWITCHED BACK",
            format!("no STOP after pass {}: switch at STOP", self.passes),
        );
        eprintln!(
            "netpage: QEMU went on with pass {} after the release: switched back, switching at STOP",
            self.passes
        );
        if failed.is_empty() {
            Step::Continue
        } else {
            Step::Failed(format!(
                "switching {vm} back to {from} failed on {}",
                failed.join("; ")
            ))
        }
    }

    /// Handles a source event: `Done` once it completed.
    fn on_source(&mut self, e: &Event, at: SwitchAt) -> Step {
        if let Some(pass) = e.migration_pass() {
            self.passes = pass;
            self.timeline.mark(
                e.received,
                Source::Src,
                format!("PASS {pass}"),
                String::new(),
            );
            eprintln!(
                "netpage: migration pass {pass} at {:.1} s",
                e.received
                    .saturating_duration_since(self.start)
                    .as_secs_f64()
            );
            if let Some(h) = &mut self.hold {
                h.pass_began = e.received;
                if pass >= MAX_HELD_PASS {
                    return Step::GiveUp;
                }
            }
            // The pass a release with a switch ended: STOP must follow at once.
            if self.switched
                && self.stop.is_none()
                && self.released_at.is_some_and(|r| e.received > r)
            {
                self.grace = Some(e.received + STOP_GRACE);
            }
            return Step::Continue;
        }
        match (e.event.as_str(), e.migration_status()) {
            ("STOP", _) => {
                self.stop = Some(e.timestamp);
                self.grace = None;
                // QEMU stopped with the limit held (its last copy fitted even that): no
                // more questions until it has finished.
                self.hold = None;
                self.timeline
                    .mark(e.received, Source::Src, "STOP", String::new());
                if at == SwitchAt::Stop
                    && !self.switched
                    && let Err(why) = self.switch_all()
                {
                    return Step::Failed(why);
                }
                Step::Continue
            }
            ("RESUME", _) => {
                self.timeline
                    .mark(e.received, Source::Src, "RESUME", String::new());
                Step::Continue
            }
            (_, Some(MigrationStatus::Completed)) => {
                self.timeline
                    .mark(e.received, Source::Src, "COMPLETED", String::new());
                Step::Done
            }
            (_, Some(s @ (MigrationStatus::Failed | MigrationStatus::Cancelled))) => {
                self.timeline.mark(
                    e.received,
                    Source::Src,
                    s.to_string().to_uppercase(),
                    String::new(),
                );
                Step::Failed(format!("the migration {s}"))
            }
            (_, Some(s)) => {
                self.timeline.mark(
                    e.received,
                    Source::Src,
                    s.to_string().to_uppercase(),
                    String::new(),
                );
                Step::Continue
            }
            _ => Step::Continue,
        }
    }

    /// Handles a destination event: `Done` once the guest runs there (or, if the source
    /// was paused, once the destination has loaded it).
    fn on_destination(&mut self, e: &Event, at: SwitchAt) -> Step {
        match (e.event.as_str(), e.migration_status()) {
            ("RESUME", _) => {
                self.resume = Some(e.timestamp);
                self.timeline
                    .mark(e.received, Source::Dst, "RESUME", String::new());
                if at == SwitchAt::Resume
                    && !self.switched
                    && let Err(why) = self.switch_all()
                {
                    return Step::Failed(why);
                }
                Step::Done
            }
            (_, Some(MigrationStatus::Failed)) => {
                self.timeline
                    .mark(e.received, Source::Dst, "FAILED", String::new());
                Step::Failed("the destination failed to load the migration".into())
            }
            (_, Some(s)) => {
                self.timeline.mark(
                    e.received,
                    Source::Dst,
                    s.to_string().to_uppercase(),
                    String::new(),
                );
                if s == MigrationStatus::Completed {
                    Step::Done
                } else {
                    Step::Continue
                }
            }
            _ => Step::Continue,
        }
    }

    /// One V2R update per node, in the order given, as fast as they can follow one
    /// another. Every node is tried; the error names those that failed.
    fn switch_all(&mut self) -> Result<(), String> {
        let mut failed = Vec::new();
        for i in 0..self.nodes.len() {
            let t = Instant::now();
            let r = self.nodes[i].1.table.set_forward(self.vm, self.to);
            let update = t.elapsed();
            let node = self.nodes[i].0.display().to_string();
            match r {
                Ok(()) => {
                    let us = update.as_nanos() as f64 / 1000.0;
                    self.timeline.mark(
                        Instant::now(),
                        Source::Netpage,
                        format!("SWITCHED {node}"),
                        format!("{us:.1} us"),
                    );
                    self.switches.push(NodeSwitch {
                        node,
                        update_us: us,
                    });
                }
                Err(e) => failed.push(format!("{node}: {e}")),
            }
        }
        self.switched_at = Some(SystemTime::now());
        if failed.is_empty() {
            self.switched = true;
            Ok(())
        } else {
            Err(format!(
                "switching {} to {} failed on {}",
                self.vm,
                self.to,
                failed.join("; ")
            ))
        }
    }

    /// Completes (drain and figures) or rolls back, and reports.
    async fn finish(mut self, opts: &MigrateOptions, outcome: Outcome) -> MigrateReport {
        let (mut error, mut rolled_back) = (None, false);
        self.hold = None;
        match outcome {
            Outcome::Completed => self.complete(opts, &mut error).await,
            Outcome::Failed(why) => {
                if self.cancel().await == Some(MigrationStatus::Completed) {
                    // Too late to cancel: the guest runs at the destination, so the table
                    // follows it there.
                    self.mark(Source::Netpage, "COMPLETED ANYWAY", format!("after: {why}"));
                    self.complete(opts, &mut error).await;
                } else {
                    self.rollback();
                    error = Some(why);
                    rolled_back = true;
                }
            }
        }
        self.restore_limit().await;
        let info = self.final_info().await;
        let stop_to_resume_ms = match (self.stop, self.resume) {
            (Some(s), Some(r)) => Some(r.micros_since(&s) as f64 / 1e3),
            _ => None,
        };
        let stop_to_switch_ms = match (self.stop, self.switched_at) {
            (Some(s), Some(at)) => at
                .duration_since(UNIX_EPOCH)
                .ok()
                .map(|d| (d.as_micros() as i64 - s.as_micros()) as f64 / 1e3),
            _ => None,
        };
        let switch_to_stop_ms = stop_to_switch_ms.filter(|&ms| ms <= 0.0).map(|ms| -ms);
        MigrateReport {
            vm: self.vm,
            from: self.from,
            to: self.to,
            switch_at: opts.switch_at,
            status: if rolled_back { "failed" } else { "completed" }.into(),
            error,
            rolled_back,
            qemu_downtime_ms: info.as_ref().and_then(|i| i.downtime),
            qemu_total_ms: info.as_ref().and_then(|i| i.total_time),
            stop_to_resume_ms,
            stop_to_switch_ms,
            switch_to_stop_ms,
            release: self.release,
            stop_unix_ms: self.stop.map(|t| t.as_micros() as f64 / 1e3),
            resume_unix_ms: self.resume.map(|t| t.as_micros() as f64 / 1e3),
            passes: self.passes,
            switches: self.switches,
            timeline: self.timeline,
        }
    }

    /// The guest runs at the destination: switches the nodes not yet switched (all of
    /// them if the source was paused, so that no STOP came), then drains the old address.
    async fn complete(&mut self, opts: &MigrateOptions, error: &mut Option<String>) {
        if !self.switched
            && let Err(why) = self.switch_all()
        {
            *error = Some(format!(
                "{why}; the guest runs at the destination: run `netpage switch --vm {} --to {}` on those nodes",
                self.vm, self.to
            ));
        }
        self.drain(opts.drain).await;
    }

    /// Cancels the migration unless it has ended, and waits for its final status.
    async fn cancel(&mut self) -> Option<MigrationStatus> {
        let deadline = Instant::now() + CANCEL_TIMEOUT;
        let mut cancelled = false;
        loop {
            let status = match self.src.query_migrate().await {
                Ok(info) => info.status,
                Err(e) => {
                    eprintln!(
                        "netpage: warning: asking the source QEMU how the migration ended: {e}"
                    );
                    return None;
                }
            };
            match status {
                Some(s) if s.is_final() => return Some(s),
                None | Some(MigrationStatus::None) => return None,
                Some(_) if !cancelled => {
                    cancelled = true;
                    if let Err(e) = self.src.migrate_cancel().await {
                        eprintln!("netpage: warning: cancelling the migration: {e}");
                    }
                    self.mark(Source::Netpage, "CANCEL", String::new());
                }
                Some(s) if Instant::now() >= deadline => {
                    eprintln!(
                        "netpage: warning: the migration is still {s} {CANCEL_TIMEOUT:?} after its cancel"
                    );
                    return Some(s);
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// QEMU's figures; right after completion `downtime` may still read 0, so ask again.
    async fn final_info(&mut self) -> Option<crate::qmp::MigrationInfo> {
        let mut info = self.src.query_migrate().await.ok()?;
        for _ in 0..5 {
            if info.downtime.unwrap_or(0) != 0 || info.status != Some(MigrationStatus::Completed) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            info = self.src.query_migrate().await.ok()?;
        }
        Some(info)
    }

    async fn drain(&mut self, drain: Duration) {
        let now = now_ms();
        let (vm, from, to) = (self.vm, self.from, self.to);
        for (dir, n) in &mut self.nodes {
            let r = n
                .table
                .remove_drain(to)
                .and_then(|()| ops::retire(&mut n.table, vm, from, drain, now));
            if let Err(e) = r {
                eprintln!(
                    "netpage: warning: node {}: draining {from}: {e}",
                    dir.display()
                );
            }
        }
        if drain.is_zero() {
            return;
        }
        self.mark(
            Source::Netpage,
            "DRAINING",
            format!("{} for {:?}", self.from, drain),
        );
        tokio::time::sleep(drain).await;
        for (dir, n) in &mut self.nodes {
            if let Err(e) = ops::gc(&mut n.table, now_ms()) {
                eprintln!(
                    "netpage: warning: node {}: ending the drain: {e}",
                    dir.display()
                );
            }
        }
        self.mark(Source::Netpage, "DRAINED", format!("{from} removed"));
    }

    /// Puts every node back: V2R to the old address, the new reverse entry removed, and
    /// the destination's neighbour entry deleted. The migration has ended (see `cancel`).
    fn rollback(&mut self) {
        let (vm, from, to) = (self.vm, self.from, self.to);
        for (dir, n) in &mut self.nodes {
            let r = n.table.set_forward(vm, from).and_then(|()| {
                if n.table.reverse(to)? == Some(vm) {
                    n.table.remove_reverse(to)?;
                }
                Ok(())
            });
            if let Err(e) = r {
                eprintln!("netpage: error: rolling back node {}: {e}", dir.display());
            }
        }
        if let Some((n, _)) = &self.neighbour
            && let Err(e) = neigh(n, "del", vm, None)
        {
            eprintln!("netpage: warning: removing the destination neighbour entry: {e}");
        }
        self.mark(Source::Netpage, "ROLLED BACK", format!("{vm} -> {from}"));
    }
}

/// Opens every node and ends the drains that are over, as every command does first.
fn open_nodes(opts: &MigrateOptions) -> Result<Vec<(PathBuf, OpenNode)>, MigrateError> {
    opts.nodes
        .iter()
        .map(|dir| {
            let mut n = Node::new(dir).open().map_err(|source| MigrateError::Node {
                dir: dir.clone(),
                source,
            })?;
            ops::gc(&mut n.table, now_ms())?;
            Ok((dir.clone(), n))
        })
        .collect()
}

/// Installs R2V[to] = vm on every node, or on none: a failure undoes those installed.
fn install_reverse(
    nodes: &mut [(PathBuf, OpenNode)],
    to: IpAddr,
    vm: IpAddr,
) -> Result<(), MigrateError> {
    for i in 0..nodes.len() {
        if let Err(e) = nodes[i].1.table.set_reverse(to, vm) {
            for (_, n) in &mut nodes[..i] {
                let _ = n.table.remove_reverse(to);
            }
            return Err(MigrateError::Table(e));
        }
    }
    Ok(())
}

/// Where every node has the VM now (they must agree), checking that it may move to `to`.
fn where_is(nodes: &[(PathBuf, OpenNode)], vm: IpAddr, to: IpAddr) -> Result<IpAddr, MigrateError> {
    let mut first: Option<(&PathBuf, IpAddr)> = None;
    for (dir, n) in nodes {
        let at = ops::check_switch(&n.table, vm, to).map_err(|source| MigrateError::Op {
            dir: dir.clone(),
            source,
        })?;
        match first {
            None => first = Some((dir, at)),
            Some((f, a)) if a != at => {
                return Err(MigrateError::Disagree {
                    vm,
                    first: f.clone(),
                    a,
                    other: dir.clone(),
                    b: at,
                });
            }
            Some(_) => {}
        }
    }
    Ok(first.expect("at least one node").1)
}

/// The guest's MAC: given, or the only NIC's as the source QEMU reports it.
async fn guest_mac(src: &mut Qmp, n: &Neighbour) -> Result<String, MigrateError> {
    if let Some(mac) = &n.mac {
        return Ok(mac.clone());
    }
    let nics = src.query_rx_filter(None).await?;
    match nics.as_slice() {
        [one] => Ok(one.main_mac.clone()),
        _ => Err(MigrateError::Mac(format!(
            "the source VM has {} network devices: give the guest's MAC with --mac",
            nics.len()
        ))),
    }
}

/// Runs `ip [-n NETNS] neigh OP VM [lladdr MAC nud permanent] dev IFACE`.
fn neigh(n: &Neighbour, op: &str, vm: IpAddr, mac: Option<&str>) -> Result<(), String> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = &n.netns {
        cmd.args(["-n", ns]);
    }
    cmd.args(["neigh", op, &vm.to_string()]);
    if let Some(mac) = mac {
        cmd.args(["lladdr", mac, "nud", "permanent"]);
    }
    cmd.args(["dev", &n.iface]);
    let out = cmd.output().map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// The pause (ms) a stop-and-copy would take now: the RAM still to send in this pass
/// plus what the guest dirtied since the pass began (at the rate QEMU last measured,
/// none in the first pass), over the bandwidth QEMU measured. `None` before QEMU has
/// measured a bandwidth.
fn estimate_ms(info: &MigrationInfo, since_pass: Duration) -> Option<f64> {
    let ram = info.ram.as_ref()?;
    // Megabits per second to bytes per millisecond.
    let bytes_per_ms = ram.mbps * 125.0;
    if bytes_per_ms <= 0.0 || info.total_time.unwrap_or(0) == 0 {
        return None;
    }
    let dirtied = ram.dirty_pages_rate as f64 * PAGE_SIZE * since_pass.as_secs_f64();
    Some((ram.remaining as f64 + dirtied) / bytes_per_ms)
}

impl fmt::Display for MigrateReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "migration of {} from {} to {} (switch at {:?}): {}",
            self.vm,
            self.from,
            self.to,
            self.switch_at,
            self.error.as_deref().unwrap_or("completed")
        )?;
        if self.rolled_back {
            writeln!(
                f,
                "  the page table was rolled back: {} is at {} again",
                self.vm, self.from
            )?;
        }
        let opt = |v: Option<u64>| v.map_or("-".into(), |v| format!("{v} ms"));
        writeln!(
            f,
            "  QEMU: total {}, downtime {}, {} pass(es); STOP -> RESUME {}",
            opt(self.qemu_total_ms),
            opt(self.qemu_downtime_ms),
            self.passes,
            self.stop_to_resume_ms
                .map_or("-".into(), |v| format!("{v:.1} ms"))
        )?;
        match (self.switch_to_stop_ms, self.stop_to_switch_ms) {
            (Some(ms), _) => writeln!(
                f,
                "  last node switched {ms:.2} ms before STOP (added to a client's gap)"
            )?,
            (None, Some(ms)) => writeln!(f, "  STOP -> last node switched {ms:.2} ms")?,
            (None, None) => {}
        }
        if let Some(r) = &self.release {
            writeln!(
                f,
                "  downtime limit released to {} ms in pass {} ({}: estimated pause {:.0} ms){}",
                r.limit_ms,
                r.pass,
                r.reason,
                r.estimate_ms,
                if r.switched_back {
                    "; QEMU went on with another pass: switched back, then at STOP"
                } else if r.switched {
                    ""
                } else {
                    "; switched at STOP"
                }
            )?;
        }
        for s in &self.switches {
            writeln!(f, "  switched {}: V2R update {:.1} us", s.node, s.update_us)?;
        }
        writeln!(f, "timeline:")?;
        write!(f, "{}", self.timeline)
    }
}
