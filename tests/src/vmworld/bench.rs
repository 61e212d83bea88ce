//! Migration figures for the benchmark: the same live migration of a real guest, again and
//! again, while a client probes it every millisecond, in three ways of moving its traffic:
//!
//! - `stop`: `netpage migrate --switch-at stop` as it comes (the downtime limit held,
//!   then every node switched and the source paused by netpage at once; what is sent
//!   during the pause waits in the destination's tap queue);
//! - `resume`: `netpage migrate --switch-at resume` (switched when the destination runs,
//!   then the source's tap salvaged: what was sent during the pause);
//! - `routes`: no netpage, the operator's way today: the gateway routes the VA as a /32
//!   host route to host A, and when the destination QEMU announces RESUME (watched over
//!   QMP) a script replaces it with one to host B (`ip -n GW route replace VA/32 via B`);
//! - `l2-stretch`: no netpage nor routes to the VA, the industry's default: the guest's
//!   segment stretched over VXLAN to both hosts and the gateway ([`super::stretch`]), the
//!   guest's MAC moved by QEMU's announcement after the migration;
//! - over the WAN only: `stop-no-hold` (`--no-hold`: every node switched on hearing
//!   STOP, then what the source's tap still holds salvaged), and the negative controls
//!   without the salvage, `stop-no-salvage` (`--no-hold --no-salvage`) and
//!   `resume-no-salvage`.
//!
//! Over the WAN ([`WAN_DELAY`] one way between sites) each run also captures the probes'
//! echoes on the destination tap, for the guest's own first-reply latency after RESUME,
//! and `stop` runs with the nodes in three orders: gateway first, destination host first,
//! and source host first.
//!
//! Each run has a world and guest of its own; a run that fails (a guest whose kernel
//! panicked after the migration, which QEMU 7.2 under TCG sometimes causes, a migration
//! that failed, ...) is reported with its reason, not left out.

use std::{
    fmt,
    panic::{self, AssertUnwindSafe},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use netpage::qmp::{MigrationInfo, MigrationParameters, MigrationStatus, Qmp, QmpError};
use serde::Serialize;

use super::{
    IcmpProbe, MigrateCall, QEMU_TIMEOUT, VA, VmWorld, boot_params, guest_echoes::GuestEchoes,
    migration_uri, runtime, tap_capture::TapCapture,
};
use crate::{
    netns::output,
    qemu::Qemu,
    wan::Wan,
    world::{Host, Node, V4},
};

/// The pause QEMU may plan for its last copy, in every variant: high enough that the
/// guest converges right after the first full pass over the shaped link (QEMU 7.2 under
/// TCG sometimes delivers inconsistent guest memory after more passes).
pub const DOWNTIME_LIMIT_MS: u64 = 1000;
/// The client's probe interval.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(1);
/// Traffic before the migration starts, and after it ended.
const BEFORE: Duration = Duration::from_millis(500);
const AFTER: Duration = Duration::from_secs(1);
/// The longest a migration may take.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(60);

/// How the guest's traffic follows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    /// `netpage migrate --switch-at stop`: the hold, then switched and paused by netpage.
    Stop,
    /// `netpage migrate --switch-at resume`, the source's tap salvaged.
    Resume,
    /// Plain routing, the gateway's host route replaced at RESUME.
    Routes,
    /// The segment stretched over VXLAN, the MAC moved by QEMU's announcement.
    #[serde(rename = "l2-stretch")]
    L2Stretch,
    /// `netpage migrate --switch-at stop --no-hold`: switched on hearing STOP, the
    /// source's tap salvaged.
    StopNoHold,
    /// `netpage migrate --switch-at stop --no-hold --no-salvage`: switched on hearing STOP,
    /// what reached the source's tap left there.
    StopNoSalvage,
    /// `netpage migrate --switch-at resume --no-salvage`.
    ResumeNoSalvage,
    /// `netpage migrate --switch-at stop` with the VA mapped with method encap
    /// ([`VmWorld::segmented`]).
    Segmentation,
}

impl Variant {
    /// The variants of the plain world's rounds.
    pub const ALL: [Variant; 5] = [
        Variant::Stop,
        Variant::Resume,
        Variant::Routes,
        Variant::L2Stretch,
        Variant::Segmentation,
    ];
    /// The variants of the WAN's rounds.
    pub const WAN: [Variant; 7] = [
        Variant::Stop,
        Variant::StopNoHold,
        Variant::StopNoSalvage,
        Variant::Resume,
        Variant::ResumeNoSalvage,
        Variant::Routes,
        Variant::Segmentation,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Variant::Stop => "stop",
            Variant::Resume => "resume",
            Variant::Routes => "routes",
            Variant::L2Stretch => "l2-stretch",
            Variant::StopNoHold => "stop-no-hold",
            Variant::StopNoSalvage => "stop-no-salvage",
            Variant::ResumeNoSalvage => "resume-no-salvage",
            Variant::Segmentation => "segmentation",
        }
    }

    /// The `netpage migrate` arguments that choose the moment of the switch (none for
    /// `routes` and `l2-stretch`).
    pub fn args(self) -> &'static [&'static str] {
        match self {
            Variant::Stop | Variant::Segmentation => &["--switch-at", "stop"],
            Variant::StopNoHold => &["--switch-at", "stop", "--no-hold"],
            Variant::StopNoSalvage => &["--switch-at", "stop", "--no-hold", "--no-salvage"],
            Variant::Resume => &["--switch-at", "resume"],
            Variant::ResumeNoSalvage => &["--switch-at", "resume", "--no-salvage"],
            Variant::Routes | Variant::L2Stretch => &[],
        }
    }
}

/// The one-way delay between the sites of the WAN rounds.
pub const WAN_DELAY: Duration = Duration::from_millis(20);

/// The order in which `netpage migrate` updates the nodes' V2R entries (the order of its
/// `--node`s).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Order {
    /// Gateway, source host, destination host.
    GatewayFirst,
    /// Destination host, source host, gateway.
    DestinationFirst,
    /// Source host, gateway, destination host: the node where what arrives before its
    /// switch goes to the paused source.
    SourceFirst,
}

impl Order {
    pub fn name(self) -> &'static str {
        match self {
            Order::GatewayFirst => "gateway-first",
            Order::DestinationFirst => "destination-first",
            Order::SourceFirst => "source-first",
        }
    }

    pub fn nodes(self) -> [Node; 3] {
        match self {
            Order::GatewayFirst => [Node::Gw, Node::HostA, Node::HostB],
            Order::DestinationFirst => [Node::HostB, Node::HostA, Node::Gw],
            Order::SourceFirst => [Node::HostA, Node::Gw, Node::HostB],
        }
    }
}

/// One migration's settings: how the traffic follows, the nodes' order, and the WAN.
#[derive(Clone, Copy, Debug)]
pub struct Case {
    pub variant: Variant,
    pub order: Order,
    /// The one-way delay between sites (`None`: the plain world).
    pub wan: Option<Duration>,
}

impl Case {
    /// The case's name in the report: the variant, and the order if not gateway first.
    pub fn label(&self) -> String {
        match self.order {
            Order::GatewayFirst => self.variant.name().to_owned(),
            o => format!("{}@{}", self.variant.name(), o.name()),
        }
    }
}

/// The cases of one WAN round: every variant gateway first, then `stop` destination host
/// first and source host first (the order of the nodes' updates, microseconds apart,
/// against the same case gateway first).
pub fn wan_cases() -> Vec<Case> {
    let wan = Some(WAN_DELAY);
    let mut cases: Vec<Case> = Variant::WAN
        .iter()
        .map(|&variant| Case {
            variant,
            order: Order::GatewayFirst,
            wan,
        })
        .collect();
    cases.extend(
        [Order::DestinationFirst, Order::SourceFirst].map(|order| Case {
            variant: Variant::Stop,
            order,
            wan,
        }),
    );
    cases
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What one migration measured. Times are milliseconds; a figure is `None` when the run
/// did not get that far.
#[derive(Clone, Debug, Serialize)]
pub struct MigrationRun {
    /// The round (from 0) and the variant.
    pub round: usize,
    pub variant: Variant,
    /// The nodes' order, and the WAN's one-way delay (ms) if the sites were apart.
    pub order: Order,
    pub wan_ms: Option<f64>,
    /// Why the run failed, if it did: its figures are then what it had measured.
    pub failure: Option<String>,
    pub probes_sent: u64,
    pub probes_lost: u64,
    /// The longest time between two answers at the client.
    pub largest_gap_ms: f64,
    /// From the source's STOP to the destination's RESUME (QEMU's event timestamps).
    pub stop_to_resume_ms: Option<f64>,
    /// The largest gap minus STOP -> RESUME: what the way of moving the traffic adds to
    /// the hypervisor's pause.
    pub gap_minus_pause_ms: Option<f64>,
    /// The pause and the whole migration, as QEMU measured them.
    pub qemu_downtime_ms: Option<u64>,
    pub qemu_total_ms: Option<u64>,
    /// When the traffic was switched (the last node's V2R update, or the route replaced),
    /// relative to STOP: negative when before.
    pub switch_minus_stop_ms: Option<f64>,
    /// QEMU's dirty-bitmap passes (its last MIGRATION_PASS).
    pub passes: Option<u64>,
    /// When the first and the last lost probe were sent, relative to STOP.
    pub lost_sent_ms: Option<(f64, f64)>,
    /// `stop` only: how netpage ended its held downtime limit (the report's `release`).
    pub release: Option<serde_json::Value>,
    /// From the first probe in to the guest after RESUME to its reply out, on the
    /// destination tap (kernel timestamps): the guest's own first-reply latency.
    pub first_reply_ms: Option<f64>,
    /// When that probe went in, after RESUME.
    pub first_request_after_resume_ms: Option<f64>,
    /// Each node's V2R update relative to STOP, in the order made (netpage only).
    pub node_switch_minus_stop_ms: Vec<(String, f64)>,
    /// Over a WAN: the frames the delay line itself lost during the run (its queue full,
    /// or its socket buffer when its thread could not keep up) on the links the probes
    /// take, between the gateway and each host, both ways; probes lost there are the test
    /// instrument's, not the switch's.
    pub wan_lost: Option<u64>,
    /// Of the probes lost, how many went in to the destination guest on its tap: lost in
    /// the hypervisor or the guest, after the network had delivered them.
    pub lost_into_guest: Option<u64>,
    /// The probes the guest itself took and left unanswered, by its own counters (see
    /// [`GuestEchoes`]): lost inside the guest.
    pub unanswered_by_guest: Option<u64>,
    /// The packets netpage salvaged from the source's tap and sent on (its report's
    /// `salvage.resent`; `None` without the salvage).
    pub salvaged: Option<u64>,
}

impl MigrationRun {
    fn new(round: usize, case: Case) -> Self {
        Self {
            round,
            variant: case.variant,
            order: case.order,
            wan_ms: case.wan.map(|d| d.as_secs_f64() * 1e3),
            failure: None,
            probes_sent: 0,
            probes_lost: 0,
            largest_gap_ms: 0.0,
            stop_to_resume_ms: None,
            gap_minus_pause_ms: None,
            qemu_downtime_ms: None,
            qemu_total_ms: None,
            switch_minus_stop_ms: None,
            passes: None,
            lost_sent_ms: None,
            release: None,
            first_reply_ms: None,
            first_request_after_resume_ms: None,
            node_switch_minus_stop_ms: Vec::new(),
            wan_lost: None,
            lost_into_guest: None,
            unanswered_by_guest: None,
            salvaged: None,
        }
    }

    pub fn ok(&self) -> bool {
        self.failure.is_none()
    }

    /// The run's case.
    pub fn case(&self) -> Case {
        Case {
            variant: self.variant,
            order: self.order,
            wan: self.wan_ms.map(|ms| Duration::from_secs_f64(ms / 1e3)),
        }
    }
}

impl fmt::Display for MigrationRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
        let int = |v: Option<u64>| v.map_or("-".into(), |v| v.to_string());
        write!(
            f,
            "round {} {:<6} lost {}/{} gap {:.1} ms, STOP->RESUME {} ms, gap - pause {} ms, \
             downtime {} ms, total {} ms, switch - STOP {} ms, passes {}",
            self.round,
            self.case().label(),
            self.probes_lost,
            self.probes_sent,
            self.largest_gap_ms,
            ms(self.stop_to_resume_ms),
            ms(self.gap_minus_pause_ms),
            int(self.qemu_downtime_ms),
            int(self.qemu_total_ms),
            ms(self.switch_minus_stop_ms),
            int(self.passes),
        )?;
        if let Some(w) = self.wan_ms {
            write!(f, ", WAN {w:.0} ms")?;
        }
        if let Some(ms) = self.first_reply_ms {
            write!(f, ", guest's first reply after RESUME {ms:.1} ms")?;
        }
        for (node, ms) in &self.node_switch_minus_stop_ms {
            write!(f, ", {node} switched at STOP {ms:+.2} ms")?;
        }
        if let Some((first, last)) = self.lost_sent_ms {
            write!(f, ", lost sent at STOP {first:+.1} .. {last:+.1} ms")?;
        }
        if let Some(n) = self.wan_lost {
            write!(f, ", lost by the delay line {n}")?;
        }
        if let Some(n) = self.lost_into_guest {
            write!(f, ", lost after going in to the destination guest {n}")?;
        }
        if let Some(n) = self.unanswered_by_guest {
            write!(f, ", left unanswered by the guest itself {n}")?;
        }
        if let Some(n) = self.salvaged {
            write!(f, ", salvaged from the source's tap {n}")?;
        }
        if let Some(r) = &self.release {
            write!(
                f,
                ", hold ended in pass {} ({}{})",
                r["pass"],
                r["reason"].as_str().unwrap_or("?"),
                if r["paused"] == true {
                    ", switched and paused the source"
                } else {
                    ", released, switched at STOP"
                }
            )?;
        }
        if let Some(why) = &self.failure {
            write!(f, " FAILED: {why}")?;
        }
        Ok(())
    }
}

/// `runs` rounds of one migration per variant, the variants taking turns to go first.
pub fn migration_runs(runs: usize) -> Vec<MigrationRun> {
    let cases: Vec<Case> = Variant::ALL
        .iter()
        .map(|&variant| Case {
            variant,
            order: Order::GatewayFirst,
            wan: None,
        })
        .collect();
    rounds(&cases, runs)
}

/// `runs` rounds of every case of [`wan_cases`], taking turns to go first.
pub fn wan_migration_runs(runs: usize) -> Vec<MigrationRun> {
    rounds(&wan_cases(), runs)
}

fn rounds(cases: &[Case], runs: usize) -> Vec<MigrationRun> {
    let mut out = Vec::new();
    for round in 0..runs {
        for case in in_turn(cases, round) {
            let run = migration_run(round, case);
            eprintln!("migration bench: {run}");
            out.push(run);
        }
    }
    out
}

/// The cases of `round`, in turn: each goes first in one round out of as many as there
/// are cases.
fn in_turn<T: Copy>(cases: &[T], round: usize) -> Vec<T> {
    (0..cases.len())
        .map(|i| cases[(round + i) % cases.len()])
        .collect()
}

/// One migration of `case`; a panic on the way (a world that could not be built, a
/// guest that did not boot) is a failed run.
pub fn migration_run(round: usize, case: Case) -> MigrationRun {
    let mut run = MigrationRun::new(round, case);
    let result = panic::catch_unwind(AssertUnwindSafe(|| measure(&mut run)));
    if let Err(payload) = result {
        let why = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "panicked".into());
        run.failure.get_or_insert(why);
    }
    run
}

/// What a migration reported, whoever drove it.
#[derive(Clone, Debug, Default)]
pub struct Driven {
    /// Why it failed, if it did.
    pub failure: Option<String>,
    pub stop_to_resume_ms: Option<f64>,
    pub qemu_downtime_ms: Option<u64>,
    pub qemu_total_ms: Option<u64>,
    /// When the traffic was switched relative to STOP (negative: before), if it was.
    pub switch_minus_stop_ms: Option<f64>,
    pub passes: Option<u64>,
    /// QEMU's STOP and RESUME, in milliseconds since the Unix epoch.
    pub stop_unix_ms: Option<f64>,
    pub resume_unix_ms: Option<f64>,
    pub release: Option<serde_json::Value>,
    /// Each node's V2R update, ms since the Unix epoch, in the order made.
    pub node_switch_unix_ms: Vec<(String, f64)>,
    /// The packets salvaged from the source's tap, if netpage salvaged.
    pub salvaged: Option<u64>,
}

fn measure(run: &mut MigrationRun) {
    let case = run.case();
    let wan = case.wan.map(Wan::delay);
    let vw = match (run.variant, wan) {
        (Variant::Routes, None) => VmWorld::plain(),
        (Variant::Routes, Some(w)) => VmWorld::plain_over_wan(w),
        (Variant::L2Stretch, None) => VmWorld::l2_stretch(),
        (Variant::L2Stretch, Some(_)) => panic!("the L2 stretch has no WAN world"),
        (Variant::Segmentation, None) => VmWorld::segmented(),
        (Variant::Segmentation, Some(w)) => VmWorld::segmented_over_wan(w),
        (_, None) => VmWorld::new(),
        (_, Some(w)) => VmWorld::over_wan(w),
    };
    let params = boot_params(0);
    let src = vw.boot(Host::A, &params);
    let dst = vw.incoming(Host::B, &params);
    let capture = TapCapture::start(&vw.world, Host::B);
    let wan_before = vw.delay_line_lost();
    assert!(
        (0..5).any(|_| vw.world.ping(Node::Client, VA.into())),
        "the guest does not answer at host A"
    );
    let echoes_before = GuestEchoes::parse(&vw.guest_counters());
    let probe = IcmpProbe::spawn(
        &vw.world,
        Node::Client,
        VA,
        PROBE_INTERVAL,
        MIGRATION_TIMEOUT * 2,
    );
    thread::sleep(BEFORE);
    let driven = drive(&vw, &src, &dst, case);
    thread::sleep(AFTER);
    let icmp = probe.stop();
    run.wan_lost = wan_before.zip(vw.delay_line_lost()).map(|(b, a)| a - b);
    run.unanswered_by_guest = GuestEchoes::parse(&vw.guest_counters())
        .zip(echoes_before)
        .map(|(after, before)| after.since(&before).unanswered());
    let mut capture_failure = None;
    let capture = capture.stop();
    if let Ok(c) = &capture {
        run.lost_into_guest = Some(c.went_in(&icmp.probes.lost_seqs));
    }
    match (capture, driven.resume_unix_ms) {
        (Ok(c), Some(resume)) => {
            if let Some(first) = c.first_reply_after(resume) {
                run.first_reply_ms = Some(first.latency_ms);
                run.first_request_after_resume_ms = Some(first.request_after_ms);
            }
        }
        (Ok(_), None) => {}
        // The destination's tap goes with its QEMU, which exits when a migration is
        // cancelled: the run's own failure says why, else this does.
        (Err(e), _) => {
            capture_failure = Some(format!("the capture on the destination tap: {e}"));
        }
    }
    if let Some(stop) = driven.stop_unix_ms {
        run.node_switch_minus_stop_ms = driven
            .node_switch_unix_ms
            .iter()
            .map(|(node, at)| (node.clone(), at - stop))
            .collect();
    }
    run.probes_sent = icmp.probes.sent;
    run.probes_lost = icmp.probes.lost;
    run.largest_gap_ms = icmp.probes.largest_gap.as_secs_f64() * 1e3;
    run.stop_to_resume_ms = driven.stop_to_resume_ms;
    run.gap_minus_pause_ms = driven.stop_to_resume_ms.map(|p| run.largest_gap_ms - p);
    run.qemu_downtime_ms = driven.qemu_downtime_ms;
    run.qemu_total_ms = driven.qemu_total_ms;
    run.switch_minus_stop_ms = driven.switch_minus_stop_ms;
    run.passes = driven.passes;
    run.failure = driven.failure.or(capture_failure);
    run.release = driven.release;
    run.salvaged = driven.salvaged;
    if let (Some(stop), Some(first), Some(last)) = (
        driven.stop_unix_ms,
        icmp.probes.lost_seqs.first(),
        icmp.probes.lost_seqs.last(),
    ) {
        let at = |seq: u64| unix_ms(icmp.sent_at[seq as usize]) - stop;
        run.lost_sent_ms = Some((at(*first), at(*last)));
    }
    for (qemu, side) in [(&dst, "destination"), (&src, "source")] {
        if qemu.serial_log().contains("Kernel panic") {
            let why = format!(
                "the guest's kernel panicked at the {side} after a migration of {} passes",
                run.passes.map_or("?".into(), |p| p.to_string())
            );
            run.failure = Some(match run.failure.take() {
                Some(other) => format!("{why}; {other}"),
                None => why,
            });
        }
    }
    if run.failure.is_none() && run.probes_sent > 0 && icmp.probes.received == 0 {
        run.failure = Some("no probe answered".into());
    }
}

/// Migrates the guest from `src` (host A) to `dst` (host B) as `case`'s variant says,
/// and reports QEMU's figures and the switch's.
pub fn drive(vw: &VmWorld, src: &Qemu, dst: &Qemu, case: Case) -> Driven {
    match case.variant {
        Variant::Routes => by_qmp(vw, src, dst, true),
        Variant::L2Stretch => by_qmp(vw, src, dst, false),
        _ => by_netpage(vw, src, dst, case),
    }
}

/// `netpage migrate` as `case` says, figures from its JSON report.
fn by_netpage(vw: &VmWorld, src: &Qemu, dst: &Qemu, case: Case) -> Driven {
    let limit = DOWNTIME_LIMIT_MS.to_string();
    let timeout = MIGRATION_TIMEOUT.as_secs().to_string();
    let mut args: Vec<&str> = case.variant.args().to_vec();
    args.extend(["--downtime-limit", &limit, "--timeout", &timeout]);
    let mut call = MigrateCall::usual(src, dst, Host::B);
    call.to = vw.address_at(Host::B).to_string();
    let out = vw.migrate_in_order(&call, &case.order.nodes(), &args);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let node_switch_unix_ms = report["switches"]
        .as_array()
        .map(|all| {
            all.iter()
                .filter_map(|s| {
                    let node = s["node"].as_str()?;
                    let name = node.rsplit('/').next().unwrap_or(node).to_owned();
                    Some((name, s["at_unix_ms"].as_f64()?))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut d = Driven {
        stop_to_resume_ms: report["stop_to_resume_ms"].as_f64(),
        qemu_downtime_ms: report["qemu_downtime_ms"].as_u64(),
        qemu_total_ms: report["qemu_total_ms"].as_u64(),
        switch_minus_stop_ms: report["stop_to_switch_ms"].as_f64(),
        passes: report["passes"].as_u64(),
        stop_unix_ms: report["stop_unix_ms"].as_f64(),
        resume_unix_ms: report["resume_unix_ms"].as_f64(),
        release: Some(report["release"].clone()).filter(|r| !r.is_null()),
        node_switch_unix_ms,
        salvaged: report["salvage"]["resent"].as_u64(),
        failure: None,
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().last().unwrap_or("").trim().to_owned();
        d.failure = Some(format!("netpage migrate failed ({}): {last}", out.status));
    }
    d
}

/// The migration over QMP alone, watching both QEMUs' events; with `reroute`, the
/// gateway's host route replaced by a script as soon as the destination announces RESUME.
fn by_qmp(vw: &VmWorld, src: &Qemu, dst: &Qemu, reroute: bool) -> Driven {
    let gw = reroute.then(|| vw.world.ns(Node::Gw).name().to_owned());
    runtime().block_on(async {
        match drive_qmp(src, dst, gw.as_deref()).await {
            Ok(d) => d,
            Err(e) => Driven {
                failure: Some(format!("the migration over QMP: {e}")),
                ..Driven::default()
            },
        }
    })
}

async fn drive_qmp(src: &Qemu, dst: &Qemu, gw: Option<&str>) -> Result<Driven, QmpError> {
    let mut s = Qmp::connect(src.qmp_path(), QEMU_TIMEOUT).await?;
    let mut t = Qmp::connect(dst.qmp_path(), QEMU_TIMEOUT).await?;
    s.enable_migration_events().await?;
    t.enable_migration_events().await?;
    s.migrate_set_parameters(&MigrationParameters {
        downtime_limit: Some(DOWNTIME_LIMIT_MS),
        ..MigrationParameters::default()
    })
    .await?;
    s.migrate(&migration_uri(Host::B)).await?;
    let deadline = Instant::now() + MIGRATION_TIMEOUT;
    let (mut stop, mut resume, mut routed) = (None, None, None);
    let (mut passes, mut ended, mut failure) = (None, None::<MigrationStatus>, None);
    let via = Host::B.uplink_addr(&V4).to_string();
    let route = format!("{VA}/32");
    // Until the source has ended the migration and the destination runs the guest.
    while (ended.is_none() || resume.is_none()) && failure.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            failure = Some(format!(
                "the migration did not complete within {MIGRATION_TIMEOUT:?}"
            ));
            break;
        }
        tokio::select! {
            ev = s.next_event(left) => {
                let Some(e) = ev? else { continue };
                if let Some(p) = e.migration_pass() {
                    passes = Some(p);
                } else if e.event == "STOP" {
                    stop = Some(e.timestamp);
                } else if let Some(st) = e.migration_status().filter(|st| st.is_final()) {
                    if st != MigrationStatus::Completed {
                        failure = Some(format!("the migration {st}"));
                    }
                    ended = Some(st);
                }
            }
            ev = t.next_event(left), if resume.is_none() => {
                let Some(e) = ev? else { continue };
                if e.event == "RESUME" {
                    resume = Some(e.timestamp);
                    let Some(gw) = gw else { continue };
                    let out = output(
                        Command::new("ip").args(["-n", gw, "route", "replace", &route, "via", &via]),
                    );
                    routed = Some(std::time::SystemTime::now());
                    if !out.status.success() {
                        failure = Some(format!(
                            "ip route replace: {}",
                            String::from_utf8_lossy(&out.stderr).trim()
                        ));
                    }
                } else if e.migration_status() == Some(MigrationStatus::Failed) {
                    failure = Some("the destination failed to load the migration".into());
                }
            }
        }
    }
    let info = final_info(&mut s).await;
    let ms =
        |a: &netpage::qmp::Timestamp, b: &netpage::qmp::Timestamp| b.micros_since(a) as f64 / 1e3;
    let switch_minus_stop_ms = match (stop, routed) {
        (Some(st), Some(at)) => at
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .map(|d| (d.as_micros() as i64 - st.as_micros()) as f64 / 1e3),
        _ => None,
    };
    Ok(Driven {
        failure,
        stop_to_resume_ms: stop.zip(resume).map(|(a, b)| ms(&a, &b)),
        qemu_downtime_ms: info.downtime,
        qemu_total_ms: info.total_time,
        switch_minus_stop_ms,
        passes,
        stop_unix_ms: stop.map(|t| t.as_micros() as f64 / 1e3),
        resume_unix_ms: resume.map(|t| t.as_micros() as f64 / 1e3),
        release: None,
        node_switch_unix_ms: Vec::new(),
        salvaged: None,
    })
}

fn unix_ms(t: std::time::SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

/// QEMU's figures once the migration has ended (the downtime may read 0 at first).
async fn final_info(qmp: &mut Qmp) -> MigrationInfo {
    let mut info = qmp.query_migrate().await.unwrap_or_default();
    for _ in 0..10 {
        if info.downtime.unwrap_or(0) > 0 || info.status != Some(MigrationStatus::Completed) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        info = qmp.query_migrate().await.unwrap_or_default();
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_take_turns() {
        let v = &Variant::ALL;
        assert_eq!(
            in_turn(v, 0),
            [
                Variant::Stop,
                Variant::Resume,
                Variant::Routes,
                Variant::L2Stretch,
                Variant::Segmentation
            ]
        );
        assert_eq!(
            in_turn(v, 1),
            [
                Variant::Resume,
                Variant::Routes,
                Variant::L2Stretch,
                Variant::Segmentation,
                Variant::Stop
            ]
        );
        assert_eq!(in_turn(v, 8)[0], Variant::L2Stretch);
    }

    #[test]
    fn the_l2_stretch_is_a_plain_round_case_without_netpage_arguments() {
        assert_eq!(Variant::L2Stretch.name(), "l2-stretch");
        assert_eq!(
            serde_json::to_value(Variant::L2Stretch).unwrap(),
            "l2-stretch"
        );
        assert!(Variant::L2Stretch.args().is_empty());
        assert!(Variant::ALL.contains(&Variant::L2Stretch));
        assert!(!Variant::WAN.contains(&Variant::L2Stretch));
        assert_eq!(Variant::Segmentation.args(), Variant::Stop.args());
        assert!(Variant::ALL.contains(&Variant::Segmentation));
    }

    #[test]
    fn the_wan_round_compares_every_variant_and_every_order_of_stop() {
        assert!(Variant::WAN.contains(&Variant::Segmentation));
        let labels: Vec<String> = wan_cases().iter().map(Case::label).collect();
        assert_eq!(
            labels,
            [
                "stop",
                "stop-no-hold",
                "stop-no-salvage",
                "resume",
                "resume-no-salvage",
                "routes",
                "segmentation",
                "stop@destination-first",
                "stop@source-first",
            ]
        );
        assert!(wan_cases().iter().all(|c| c.wan == Some(WAN_DELAY)));
        assert_eq!(
            Variant::StopNoHold.args(),
            ["--switch-at", "stop", "--no-hold"]
        );
        assert_eq!(
            Variant::StopNoSalvage.args(),
            ["--switch-at", "stop", "--no-hold", "--no-salvage"]
        );
        assert_eq!(
            Order::DestinationFirst.nodes(),
            [Node::HostB, Node::HostA, Node::Gw]
        );
    }

    #[test]
    fn a_failed_run_says_why() {
        let case = Case {
            variant: Variant::Routes,
            order: Order::GatewayFirst,
            wan: None,
        };
        let mut run = MigrationRun::new(2, case);
        run.failure = Some("the guest's kernel panicked at the destination".into());
        let text = run.to_string();
        assert!(text.contains("round 2 routes"), "{text}");
        assert!(text.ends_with("FAILED: the guest's kernel panicked at the destination"));
        assert!(!run.ok());
    }
}
