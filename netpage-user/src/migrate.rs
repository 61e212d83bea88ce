//! `netpage migrate`: live-migrates a QEMU guest from one host to another and switches its
//! page-table entry on every node at the chosen moment, rolling back if the migration fails.
//!
//! The order is that of `switch`, stretched over the migration: R2V[new RA] on every node
//! before the migration starts, one V2R update per node just before the source pauses
//! (`stop`) or when the destination runs (`resume`), what the paused source's tap still
//! holds sent on, and the old RA drained once the migration completed.
//!
//! # Switching before the source pauses
//!
//! QEMU announces its pause (STOP) only after it has paused the guest, and under TCG it
//! stops reading its tap some milliseconds earlier, as it begins to pause: a switch made on
//! hearing STOP comes too late for what reached the source in between. With
//! `--switch-at stop` netpage therefore decides the moment of the pause itself:
//!
//! 1. It starts the migration with QEMU's downtime limit held at [`HOLD_MS`], a pause no
//!    real guest's last copy fits in, so QEMU keeps copying live and never stops on its own.
//! 2. While the live copy runs it asks QEMU for its progress (`query-migrate`) every
//!    [`POLL`], and estimates the pause a stop would take now: the RAM still to send in
//!    this pass, plus what the guest has dirtied since the pass began (at the dirty rate
//!    QEMU measured, known from the second pass on), over the bandwidth QEMU measured.
//! 3. Once that fits the downtime limit asked for (`--downtime-limit`, else the source's
//!    own, QEMU's default being 300 ms) it switches every node (one V2R update each), waits
//!    until QEMU has read what the source's tap still holds (the source's host sends it
//!    nothing more; at most [`TAP_READ`], microseconds as a rule), and pauses the source
//!    itself (QMP `stop`). With the guest paused QEMU sends what is left, which no longer
//!    grows, and completes: a pause of about the estimate. Waiting for the tap matters:
//!    QEMU keeps the first packet it reads once its guest no longer runs, for a guest
//!    that never runs there again.
//! 4. The destination keeps a guest that was paused at the source paused: once it has
//!    loaded the guest netpage runs it (`cont`), and RESUME follows.
//!
//! From the switch to STOP the guest still runs at the source for as long as the `stop`
//! takes (a few milliseconds at most under TCG): packets sent meanwhile go to the
//! destination and wait in its tap's queue (with `--dst-neigh`, and a queue long enough) until
//! RESUME, while the source's replies to earlier packets still get through (the source
//! host's V2R now gives the new RA, which every node's R2V translates). Packets already in
//! flight toward the source at the switch reach its host after it and are forwarded to
//! the new RA (see `netpage_common::forward`); what still reached the source's tap is
//! salvaged (see `salvage`). Nothing is lost, and the client's gap grows only by the time
//! from the switch to STOP (the report's `switch_to_stop_ms`). `--hold-lead` makes netpage
//! wait that long between the switch and the pause, for what is in flight to reach the
//! running guest rather than be forwarded.
//!
//! QEMU's own `downtime` counts from the start of its last copy, after netpage's pause
//! began: the pause a client sees is the report's STOP to RESUME.
//!
//! If no estimate fits by the time pass [`MAX_HELD_PASS`] begins, netpage raises the limit
//! to the one asked for without switching, and switches on hearing STOP, as with
//! `--no-hold`: QEMU 7.2 under TCG has been seen to deliver inconsistent guest memory
//! after migrations of four passes or more, so netpage adds none. On failure the source's
//! limit is set back to the one asked for.
//!
//! With `--no-hold` netpage switches on hearing STOP, then salvages the source's tap:
//! the client's gap is QEMU's pause alone, but a packet QEMU took from its tap as it
//! paused (it keeps it for a guest that never runs there again) is lost.
//!
//! # The point of no return
//!
//! The migration is done when the destination runs the guest (its RESUME; for a source
//! that was paused, its completed load), not when the source reports `completed`: with
//! QEMU's default (no return path) the source says so once it has *sent* everything,
//! whether or not the destination can load it. Until that point any failure (the
//! destination's exit or failed load, the timeout, SIGINT or SIGTERM) ends the same way
//! (see `confirm`): the migration is cancelled if it still runs, the destination is
//! fenced (`stop`, which keeps a QEMU still loading from starting the guest, then
//! `quit`), every node is switched back, and the source resumes with `cont` if it paused
//! (`postmigrate`). After it, the table follows the guest to the destination whatever
//! else failed. Post-copy, where the destination runs the guest before the source has
//! sent it all, is refused before anything changes.
//!
//! Once the hold has ended (and with `--no-hold` or `--switch-at resume` throughout)
//! netpage sends the source QEMU no command until the migration has ended: QEMU holds its
//! big lock for the whole final stop-and-copy, so a command sent then would be answered
//! only after it, and the STOP event queued behind that answer would be handled too late.
//! While the limit is held QEMU cannot enter that phase, so its answers come at once.

use std::{
    net::IpAddr,
    path::PathBuf,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;

mod confirm;
mod edges;
mod hold;
pub mod intent;
mod interrupt;
mod neighbour;
mod recover;
mod report;
mod salvage;
pub mod tally;

use crate::{
    clock,
    directory::DirError,
    node::NodeError,
    ops::OpError,
    progress::Progress,
    qmp::{Event, MigrationStatus, Qmp, QmpError, RunState, Timestamp},
    realtime::Realtime,
    table::TableError,
    timeline::{Source, Timeline},
};

use confirm::Fate;
pub use edges::EdgeSpec;
use edges::{Edges, Edit};
use hold::Hold;
pub use hold::{HOLD_MS, MAX_HELD_PASS, POLL, TAP_READ};
use intent::{Intent, IntentError, RecordedEdges};
use interrupt::Interrupts;
use neighbour::{guest_mac, neigh};
pub use recover::{RecoverReport, recover};
pub use report::{MigrateReport, NodeSwitch, Release};
use salvage::Salvage;
pub use salvage::{SalvageError, SalvageReport};

/// When the page table switches to the destination.
///
/// With `Stop`, [`MigrateOptions::hold`] says how: just before the pause, which netpage
/// then makes itself (the default), or on hearing STOP (`--no-hold`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SwitchAt {
    /// Just before the source pauses for its last copy, at a moment netpage chooses: it
    /// holds QEMU's downtime limit low, and once the last copy would fit the limit asked
    /// for it switches and pauses the source itself (see the module's documentation).
    /// Packets sent from the switch to the end of the pause wait in the destination's tap
    /// queue and reach the guest when it resumes: none is lost, and the client's gap grows
    /// only by the time from the switch to STOP (`switch_to_stop_ms`).
    Stop,
    /// When the destination runs the guest: packets sent during the pause go to the
    /// paused source and wait in its tap, from which netpage salvages them once every
    /// node has switched (lost with `--no-salvage`).
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
    /// The page tables that switch: nodes of this machine, or the directory.
    pub edges: EdgeSpec,
    pub switch_at: SwitchAt,
    /// With [`SwitchAt::Stop`]: whether netpage holds the downtime limit, then switches and
    /// pauses the source itself (`true`), or switches on hearing STOP (`false`,
    /// `--no-hold`).
    pub hold: bool,
    /// With the hold: how long netpage waits between the switch and its pause of the source.
    pub hold_lead: Duration,
    /// Whether netpage's thread runs at SCHED_FIFO for the migration (see [`realtime`]).
    pub realtime: bool,
    /// The longest pause QEMU may plan for its last copy (`None`: the source's own).
    pub downtime_limit_ms: Option<u64>,
    /// The whole migration must complete within this.
    pub timeout: Duration,
    /// How long the old real address keeps translating after completion.
    pub drain: Duration,
    pub neighbour: Option<Neighbour>,
    /// Whether netpage reads the source's tap queue out once the source has paused and
    /// its host has switched, and sends what it holds for the VM on (see `salvage`).
    pub salvage: bool,
    /// Where the record of the migration in flight is kept (see [`intent`]).
    pub state_dir: PathBuf,
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
    #[error(transparent)]
    Op(#[from] OpError),
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
    #[error(
        "post-copy is on ({which} QEMU's `postcopy-ram` capability): netpage migrates pre-copy only, where the source keeps the guest until the destination runs it; turn it off with `migrate-set-capabilities`"
    )]
    PostCopy { which: &'static str },
    #[error(transparent)]
    Qmp(#[from] QmpError),
    #[error("preparing the page tables")]
    Table(#[from] TableError),
    #[error(transparent)]
    Dir(#[from] DirError),
    #[error(transparent)]
    Intent(#[from] IntentError),
    #[error(
        "the migration of {vm} still runs (netpage, pid {pid}): interrupt it with SIGINT, which rolls it back"
    )]
    StillRunning { vm: IpAddr, pid: u32 },
    #[error("the migration of {vm} switched the directory: recover it with --etcd")]
    RecoverWithEtcd { vm: IpAddr },
    #[error("listening for SIGINT and SIGTERM")]
    Signals(#[source] std::io::Error),
}

/// Runs a migration. `Err` means it could not start and nothing changed; a migration that
/// started and failed gives a report with its error, after the rollback.
pub async fn migrate(opts: &MigrateOptions) -> Result<MigrateReport, MigrateError> {
    let start = Instant::now();
    // From here on a signal ends the migration through its rollback, never half-way.
    let interrupts = Interrupts::listen().map_err(MigrateError::Signals)?;
    let mut run = Run::prepare(opts, start, interrupts).await?;
    // Held until the report is made: the thread goes back to its class on drop.
    let realtime = if opts.realtime {
        Realtime::raise()
            .map_err(|e| eprintln!("netpage: running time-shared, not at SCHED_FIFO: {e}"))
            .ok()
    } else {
        None
    };
    let outcome = run.drive(opts).await;
    let mut report = run.finish(opts, outcome).await;
    report.realtime = realtime.is_some();
    if let Err(e) = tally::Tally::record(&opts.state_dir, &report) {
        eprintln!(
            "netpage: warning: this migration is missing from the metrics: {:#}",
            anyhow::Error::from(e)
        );
    }
    Ok(report)
}

/// How a migration whose destination QEMU died is reported.
const DESTINATION_EXITED: &str = "the destination QEMU exited";
/// How long one QMP exchange may take.
const QMP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a cancelled migration may take to end.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(10);
/// A wait with no end of its own (the migration's deadline ends it).
const FOREVER: Duration = Duration::from_secs(365 * 24 * 3600);
/// A migration under way.
struct Run {
    start: Instant,
    edges: Edges,
    /// Until when the old address keeps translating if netpage never completes the
    /// migration (the directory's drain lease): its deadline plus the drain.
    old_until_ms: u64,
    src: Qmp,
    dst: Qmp,
    vm: IpAddr,
    from: IpAddr,
    to: IpAddr,
    neighbour: Option<(Neighbour, String)>,
    timeline: Timeline,
    switches: Vec<NodeSwitch>,
    /// The live nodes that did not confirm the directory's switch in time.
    unconfirmed: Vec<String>,
    /// Whether every node's V2R names the destination.
    switched: bool,
    /// Whether the source ran the guest when netpage started (a rollback resumes it).
    src_was_running: bool,
    /// Whether the destination reported its incoming migration completed.
    dst_loaded: bool,
    /// Whether the source accepted the `migrate` command (else the destination got
    /// nothing and keeps waiting).
    started: bool,
    switched_at: Option<SystemTime>,
    stop: Option<Timestamp>,
    resume: Option<Timestamp>,
    passes: u64,
    /// Polling while the downtime limit is held, until released (`--switch-at stop`).
    hold: Option<Hold>,
    /// Whether the source's downtime limit is netpage's [`HOLD_MS`].
    held: bool,
    /// Whether netpage paused the source (the hold's end): the destination then waits
    /// for its `cont` once it has loaded the guest.
    paused_source: bool,
    /// The limit asked for: the last copy must fit it (and it is restored after the hold).
    limit_ms: Option<u64>,
    /// How long netpage waits between the switch and its pause of the source (`--hold-lead`).
    hold_lead: Duration,
    release: Option<Release>,
    interrupts: Interrupts,
    /// The source's own downtime limit, put back after a rollback.
    src_limit_ms: u64,
    /// The record of this migration, removed once it has ended consistently.
    intent: PathBuf,
    /// Whether a table could not be switched back or forward: the record is kept.
    inconsistent: bool,
    /// Each node's `forwarded` counter when the migration started (this machine's nodes).
    forwarded_before: Vec<(String, u64)>,
    /// The source's tap queues, held to be read out (`--no-salvage`: none).
    salvage: Option<Salvage>,
    /// What was salvaged (`None` with `--no-salvage`).
    salvaged: Option<SalvageReport>,
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
    async fn prepare(
        opts: &MigrateOptions,
        start: Instant,
        interrupts: Interrupts,
    ) -> Result<Self, MigrateError> {
        Intent::refuse_if_recorded(&opts.state_dir, opts.vm)?;
        let mut edges = Edges::open(&opts.edges).await?;
        let from = edges.locate(opts.vm, opts.to).await?;
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
        for (which, qmp) in [("source", &mut src), ("destination", &mut dst)] {
            let caps = qmp.query_migrate_capabilities().await?;
            if caps
                .iter()
                .any(|c| c.capability == "postcopy-ram" && c.state)
            {
                return Err(MigrateError::PostCopy { which });
            }
        }
        let neighbour = match &opts.neighbour {
            Some(n) => Some((n.clone(), guest_mac(&mut src, n).await?)),
            None => None,
        };
        let (salvage, salvaged) = if opts.salvage {
            match Salvage::open(src.peer_pid()) {
                Ok(s) => {
                    let report = SalvageReport {
                        taps: s.taps(),
                        ..SalvageReport::default()
                    };
                    (Some(s), Some(report))
                }
                Err(e) => {
                    let why = format!("{:#}", anyhow::Error::from(e));
                    eprintln!(
                        "netpage: warning: what reaches the source after its pause cannot be salvaged: {why}"
                    );
                    let report = SalvageReport {
                        unavailable: Some(why),
                        ..SalvageReport::default()
                    };
                    (None, Some(report))
                }
            }
        } else {
            (None, None)
        };
        let mut timeline = Timeline::new(start).showing(Progress::spinner(format!(
            "migrate {} to {}",
            opts.vm, opts.to
        )));
        timeline.mark(
            Instant::now(),
            Source::Netpage,
            "CHECKED",
            format!("{} at {from}", opts.vm),
        );
        let src_limit_ms = hold::source_limit(&mut src).await?;
        let record = Intent {
            vm: opts.vm,
            from,
            to: opts.to,
            edges: match &opts.edges {
                EdgeSpec::Nodes(nodes) => {
                    RecordedEdges::Nodes(nodes.iter().map(|n| n.dir().to_path_buf()).collect())
                }
                EdgeSpec::Directory { .. } => RecordedEdges::Directory,
            },
            src_qmp: opts.src_qmp.clone(),
            dst_qmp: opts.dst_qmp.clone(),
            src_limit_ms,
            src_was_running: s == RunState::Running,
            neighbour: opts
                .neighbour
                .as_ref()
                .map(|n| (n.iface.clone(), n.netns.clone())),
            started_unix_ms: clock::unix_ms(),
            pid: std::process::id(),
        };
        let intent = record.write(&opts.state_dir)?;
        timeline.mark(
            Instant::now(),
            Source::Netpage,
            "RECORDED",
            intent.display().to_string(),
        );
        let old_until_ms = clock::unix_ms() + (opts.timeout + opts.drain).as_millis() as u64;
        if let Err(e) = edges
            .reserve(opts.vm, from, opts.to, old_until_ms, &mut timeline)
            .await
        {
            intent::remove(&intent);
            return Err(e);
        }
        let mut run = Run {
            start,
            edges,
            old_until_ms,
            src,
            dst,
            vm: opts.vm,
            from,
            to: opts.to,
            neighbour,
            timeline,
            switches: Vec::new(),
            unconfirmed: Vec::new(),
            switched: false,
            src_was_running: s == RunState::Running,
            dst_loaded: false,
            started: false,
            switched_at: None,
            stop: None,
            resume: None,
            passes: 0,
            hold: None,
            held: false,
            paused_source: false,
            limit_ms: opts.downtime_limit_ms,
            hold_lead: opts.hold_lead,
            release: None,
            interrupts,
            src_limit_ms,
            intent,
            inconsistent: false,
            forwarded_before: Vec::new(),
            salvage,
            salvaged,
        };
        if let Some(s) = &run.salvaged {
            let detail = match &s.unavailable {
                Some(why) => format!("unavailable: {why}"),
                None => s.taps.join(", "),
            };
            run.mark(Source::Netpage, "SALVAGE", detail);
        }
        run.forwarded_before = run.edges.forwarded();
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
            // Biased: an event already received (a STOP read while a poll waited for its
            // answer) is handled before anything else, so that a STOP during the hold
            // switches at once and no poll asks a QEMU busy with its last copy.
            let step = tokio::select! {
                biased;
                ev = self.src.next_event(FOREVER) => match ev {
                    Ok(Some(e)) => self.on_source(&e, opts.switch_at).await,
                    Ok(None) => Step::Continue,
                    Err(QmpError::Closed { .. }) => Step::Failed("the source QEMU exited".into()),
                    Err(e) => Step::Failed(format!("the source QEMU: {e}")),
                },
                ev = self.dst.next_event(FOREVER) => match ev {
                    Ok(Some(e)) => match self.on_destination(&e, opts.switch_at).await {
                        Step::Done => {
                            dst_done = true;
                            Step::Continue
                        }
                        other => other,
                    },
                    Ok(None) => Step::Continue,
                    Err(QmpError::Closed { .. }) => {
                        self.mark(Source::Dst, "EXITED", String::new());
                        Step::Failed(DESTINATION_EXITED.into())
                    }
                    Err(e) => Step::Failed(format!("the destination QEMU: {e}")),
                },
                _ = tokio::time::sleep_until(poll_at.map_or(deadline, Into::into)),
                    if poll_at.is_some() => self.poll().await,
                sig = self.interrupts.next() => {
                    self.mark(Source::Netpage, sig, String::new());
                    Step::Failed(format!("interrupted by {sig}"))
                }
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
        if opts.switch_at == SwitchAt::Stop && !opts.hold {
            let then = if self.salvage.is_some() {
                ", then salvage the source's tap"
            } else {
                ""
            };
            self.mark(
                Source::Netpage,
                "NO HOLD",
                format!("switch on hearing STOP{then}"),
            );
        }
        if opts.switch_at == SwitchAt::Stop && opts.hold {
            let limit = match opts.downtime_limit_ms {
                Some(ms) => ms,
                None => self.src_limit_ms,
            };
            self.limit_ms = Some(limit);
            self.set_limit(HOLD_MS).await?;
            self.held = true;
            self.hold = Some(Hold {
                next_poll: Instant::now() + POLL,
                pass_began: Instant::now(),
            });
            self.mark(
                Source::Netpage,
                "LIMIT HELD",
                format!("{HOLD_MS} ms until the last copy fits {limit} ms: then switch and pause"),
            );
        } else if let Some(ms) = opts.downtime_limit_ms {
            self.set_limit(ms).await?;
        }
        if let Err(e) = self.src.migrate(&opts.uri).await {
            self.restore_limit().await;
            return Err(e);
        }
        self.started = true;
        self.mark(Source::Netpage, "MIGRATE", opts.uri.clone());
        Ok(())
    }

    /// Handles a source event: `Done` once it completed.
    async fn on_source(&mut self, e: &Event, at: SwitchAt) -> Step {
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
            return Step::Continue;
        }
        match (e.event.as_str(), e.migration_status()) {
            ("STOP", _) => {
                self.stop = Some(e.timestamp);
                // QEMU stopped with the limit held (its last copy fitted even that): no
                // more questions until it has finished.
                self.hold = None;
                self.timeline
                    .mark(e.received, Source::Src, "STOP", String::new());
                if at == SwitchAt::Stop
                    && !self.switched
                    && let Err(why) = self.switch_all().await
                {
                    return Step::Failed(why);
                }
                if self.switched && self.edges.known_applied() {
                    self.salvage_now("STOP");
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
    async fn on_destination(&mut self, e: &Event, at: SwitchAt) -> Step {
        match (e.event.as_str(), e.migration_status()) {
            ("RESUME", _) => {
                self.resume = Some(e.timestamp);
                self.timeline
                    .mark(e.received, Source::Dst, "RESUME", String::new());
                if at == SwitchAt::Resume
                    && !self.switched
                    && let Err(why) = self.switch_all().await
                {
                    return Step::Failed(why);
                }
                if self.switched && self.edges.known_applied() {
                    self.salvage_now("RESUME");
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
                if s != MigrationStatus::Completed {
                    return Step::Continue;
                }
                self.dst_loaded = true;
                if !self.paused_source {
                    return Step::Done;
                }
                // A guest paused at the source stays paused at the destination: netpage
                // paused it, so netpage runs it (RESUME follows).
                match self.run_at_destination().await {
                    Ok(()) => Step::Continue,
                    Err(why) => Step::Failed(why),
                }
            }
            _ => Step::Continue,
        }
    }

    /// Switches every page table to the destination: one V2R update per node, in the
    /// order given, or the directory's one transaction and the nodes' confirmations.
    /// Every node is tried; the error names those that failed.
    async fn switch_all(&mut self) -> Result<(), String> {
        let done = self
            .edges
            .switch(
                self.vm,
                self.from,
                self.to,
                self.old_until_ms,
                &mut self.timeline,
            )
            .await
            .map_err(|why| format!("switching {} to {}: {why}", self.vm, self.to))?;
        self.switched_at = Some(SystemTime::now());
        self.switches = done.switches;
        if done.failed.is_empty() {
            self.switched = true;
            Ok(())
        } else {
            Err(format!(
                "switching {} to {} failed on {}",
                self.vm,
                self.to,
                done.failed.join("; ")
            ))
        }
    }

    /// The failure, saying so if the destination QEMU died: the source then reports only
    /// that its migration failed. Asked before the cancel, after which the destination
    /// exits by itself.
    async fn with_destination_state(&mut self, why: String) -> String {
        const ASK: Duration = Duration::from_secs(1);
        let dead = matches!(
            self.dst
                .execute_within::<serde_json::Value>("query-status", serde_json::Value::Null, ASK)
                .await,
            Err(QmpError::Closed { .. } | QmpError::Io { .. })
        );
        if dead && !why.contains(DESTINATION_EXITED) {
            format!("{why}: {DESTINATION_EXITED}")
        } else {
            why
        }
    }

    /// Completes (drain and figures) or rolls back, and reports.
    async fn finish(mut self, opts: &MigrateOptions, outcome: Outcome) -> MigrateReport {
        let (mut error, mut failed, mut rolled_back) = (None, false, false);
        self.hold = None;
        match outcome {
            Outcome::Completed => self.complete(opts, &mut error).await,
            Outcome::Failed(why) => {
                let mut why = self.with_destination_state(why).await;
                confirm::cancel(&mut self.src, &mut self.timeline).await;
                match self.fence_destination().await {
                    Fate::Destination => {
                        // Past the point of no return: the guest runs at the destination,
                        // so the table follows it there.
                        self.mark(Source::Netpage, "COMPLETED ANYWAY", format!("after: {why}"));
                        if let Err(e) = self.run_at_destination().await {
                            error = Some(e);
                        }
                        self.complete(opts, &mut error).await;
                    }
                    Fate::Source(what) => {
                        eprintln!("netpage: {what}; the guest stays at the source: rolling back");
                        let not_back = self.rollback().await;
                        // The source's own limit, whatever netpage set (held or asked).
                        self.held = false;
                        let own = self.src_limit_ms;
                        if let Err(e) = self.set_limit(own).await {
                            eprintln!(
                                "netpage: warning: setting the source's downtime limit back to {own} ms: {e}"
                            );
                        }
                        if let Err(e) = self.resume_source().await {
                            why = format!("{why}; {e}");
                        }
                        if !not_back.is_empty() {
                            why = format!(
                                "{why}; putting the nodes back failed: {}",
                                not_back.join("; ")
                            );
                        }
                        error = Some(why);
                        failed = true;
                        rolled_back = not_back.is_empty();
                    }
                }
            }
        }
        if let Some(c) = self.edges.confirmed(&mut self.timeline).await {
            self.switches = c.switches;
            self.unconfirmed = c.unconfirmed;
            self.switched_at = c.last_update.or(self.switched_at);
        }
        // Once every node names the destination, whatever the source's tap still holds
        // goes there (through the directory, its nodes' confirmations say so).
        if !failed && self.switched && self.unconfirmed.is_empty() {
            self.salvage_now("COMPLETED");
        }
        if error.is_none() && !self.unconfirmed.is_empty() {
            error = Some(format!(
                "{} did not confirm the switch in time: the directory holds {} -> {}, and they converge when they return",
                self.unconfirmed.join(", "),
                self.vm,
                self.to
            ));
        }
        self.restore_limit().await;
        let record_kept = self.inconsistent;
        if record_kept {
            let kept = format!(
                "the migration's record {} is kept: `netpage migrate --recover --vm {}` finishes or undoes it",
                self.intent.display(),
                self.vm
            );
            error = Some(error.map_or(kept.clone(), |e| format!("{e}; {kept}")));
        } else {
            intent::remove(&self.intent);
        }
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
            hold: opts.switch_at == SwitchAt::Stop && opts.hold,
            hold_lead_ms: (opts.switch_at == SwitchAt::Stop && opts.hold)
                .then_some(opts.hold_lead.as_secs_f64() * 1e3),
            // Set by `migrate` once the thread is back in its own class.
            realtime: false,
            status: if failed { "failed" } else { "completed" }.into(),
            error,
            rolled_back,
            record_kept,
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
            unconfirmed: self.unconfirmed,
            salvage: self.salvaged,
            timeline: {
                self.timeline.shown();
                self.timeline
            },
        }
    }

    /// The guest runs at the destination: switches the nodes not yet switched (all of
    /// them if the source was paused, so that no STOP came), then drains the old address.
    async fn complete(&mut self, opts: &MigrateOptions, error: &mut Option<String>) {
        if !self.switched
            && let Err(why) = self.switch_all().await
        {
            self.inconsistent = true;
            *error = Some(format!(
                "{why}; the guest runs at the destination: run `netpage switch --vm {} --to {}` on those nodes",
                self.vm, self.to
            ));
        }
        self.drain(opts.drain).await;
        self.mark_forwarded();
    }

    /// Runs the guest at the destination (`cont`) if netpage paused it at the source and
    /// the destination has loaded it but not run it yet.
    async fn run_at_destination(&mut self) -> Result<(), String> {
        if !self.paused_source || !self.dst_loaded || self.resume.is_some() {
            return Ok(());
        }
        match self.dst.cont().await {
            Ok(()) => {
                self.mark(
                    Source::Netpage,
                    "RUN",
                    "the guest at the destination".into(),
                );
                Ok(())
            }
            Err(e) => Err(format!(
                "the destination has the guest, paused, and `cont` failed ({e}): run it there with `cont`"
            )),
        }
    }

    /// Reads the source's tap queues out (see `salvage`): the source has paused and every
    /// node names the destination. `when` names the moment, for the timeline.
    fn salvage_now(&mut self, when: &str) {
        let (Some(s), Some(report)) = (&self.salvage, &mut self.salvaged) else {
            return;
        };
        let t = Instant::now();
        let done = s.run(self.vm);
        let us = t.elapsed().as_nanos() as f64 / 1e3;
        for (tap, d, err) in done {
            report.total += d;
            let err = err.map_or(String::new(), |e| format!("; stopped: {e}"));
            let detail = format!("{tap} at {when}: {d}{err} ({us:.0} us)");
            self.timeline
                .mark(Instant::now(), Source::Netpage, "SALVAGED", detail);
        }
    }

    /// Marks what each node of this machine forwarded since the migration started: packets
    /// in flight to the old address, sent on to the new one (the node's counter, which
    /// counts every VM's).
    fn mark_forwarded(&mut self) {
        for (node, now) in self.edges.forwarded() {
            let before = self
                .forwarded_before
                .iter()
                .find(|(n, _)| *n == node)
                .map_or(0, |(_, c)| *c);
            let detail = format!(
                "{} packets for {} sent on to {}",
                now.saturating_sub(before),
                self.from,
                self.to
            );
            self.mark(Source::Netpage, format!("FORWARDED {node}"), detail);
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
        let (vm, from, to) = (self.vm, self.from, self.to);
        let edit = Edit::Retire { drain };
        for why in self
            .edges
            .edit(edit, vm, from, to, &mut self.timeline)
            .await
        {
            eprintln!("netpage: warning: {why}");
        }
        if drain.is_zero() {
            return;
        }
        if self.edges.drains_end_by_themselves() {
            self.mark(
                Source::Netpage,
                "DRAINING",
                format!("{from} for {drain:?}, ended by its lease"),
            );
            return;
        }
        self.mark(Source::Netpage, "DRAINING", format!("{from} for {drain:?}"));
        tokio::select! {
            _ = tokio::time::sleep(drain) => {}
            sig = self.interrupts.next() => {
                // The migration is done: only the wait ends. The drain's deadline is in
                // every table, and the next command that writes them ends it.
                self.mark(Source::Netpage, sig, "the drain ends with the next gc".into());
                eprintln!("netpage: {sig}: {from} drains until its deadline; `netpage gc` ends it after");
                return;
            }
        }
        for why in self.edges.end_drains() {
            eprintln!("netpage: warning: {why}");
        }
        self.mark(Source::Netpage, "DRAINED", format!("{from} removed"));
    }

    /// Puts every page table back: V2R to the old address, the new reverse entry
    /// removed, and the destination's neighbour entry deleted. The migration has ended
    /// (see `cancel`).
    /// Puts every node back at the old address; returns the nodes' failures (the
    /// migration's record is then kept for `--recover`).
    async fn rollback(&mut self) -> Vec<String> {
        let (vm, from, to) = (self.vm, self.from, self.to);
        let failed = self
            .edges
            .edit(Edit::Rollback, vm, from, to, &mut self.timeline)
            .await;
        self.inconsistent |= !failed.is_empty();
        // A destination QEMU that exited took its tap, and the entry, with it.
        if let Some((n, _)) = &self.neighbour
            && let Err(e) = neigh(n, "del", vm, None)
            && !e.contains("Cannot find device")
        {
            eprintln!("netpage: warning: removing the destination neighbour entry: {e}");
        }
        if failed.is_empty() {
            self.mark(Source::Netpage, "ROLLED BACK", format!("{vm} -> {from}"));
        } else {
            self.mark(Source::Netpage, "NOT ROLLED BACK", failed.join("; "));
        }
        failed
    }
}
