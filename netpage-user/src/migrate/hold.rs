//! Switching just before the source pauses (`--switch-at stop`): the downtime limit held
//! at [`HOLD_MS`], QEMU's progress polled, and the limit released (after the switch) once
//! the last copy fits, at QEMU's next bandwidth measurement. See the parent module's
//! documentation for the whole mechanism.

use std::time::{Duration, Instant};

use super::{Edit, Release, Run, Source, Step};
use crate::qmp::{MigrationInfo, MigrationParameters, MigrationStatus, Qmp, QmpError};

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
pub(super) const QEMU_DEFAULT_LIMIT_MS: u64 = 300;
/// The guest page size for a QEMU that does not report its own (`page-size`).
pub(super) const PAGE_SIZE: u64 = 4096;

/// The source's own downtime limit (QEMU's default if it does not say). A limit of
/// [`HOLD_MS`] is the hold of a netpage killed during a migration (recorded, and undone by
/// `--recover`), not the source's: QEMU's default is taken instead.
pub(super) async fn source_limit(src: &mut Qmp) -> Result<u64, QmpError> {
    let params: serde_json::Value = src
        .execute("query-migrate-parameters", serde_json::Value::Null)
        .await?;
    match params["downtime-limit"].as_u64() {
        Some(HOLD_MS) => {
            eprintln!(
                "netpage: warning: the source's downtime limit is {HOLD_MS} ms, netpage's hold: taking QEMU's default, {QEMU_DEFAULT_LIMIT_MS} ms, as its own"
            );
            Ok(QEMU_DEFAULT_LIMIT_MS)
        }
        Some(ms) => Ok(ms),
        None => Ok(QEMU_DEFAULT_LIMIT_MS),
    }
}

/// The downtime limit held at [`HOLD_MS`] while netpage waits for the moment to switch.
pub(super) struct Hold {
    pub(super) next_poll: Instant,
    /// When the pass under way began (its MIGRATION_PASS event).
    pub(super) pass_began: Instant,
    /// QEMU's measurement rhythm, seen in the answers to the polls.
    pub(super) ticks: Ticks,
}

/// When QEMU measures its bandwidth (and applies a new downtime limit): about every
/// 100 ms, at the end of a round of sending, which makes the period steady for one
/// migration. The measured figures (`mbps`, `pages-per-second`) change at each one, so
/// the polls see them.
#[derive(Default)]
pub(super) struct Ticks {
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
    pub(super) fn observe(&mut self, mbps: f64, pages_per_second: u64, now: Instant) {
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
    pub(super) fn until_next(&self, now: Instant) -> Option<Duration> {
        let due = self.tick? + self.period?;
        Some(due.saturating_duration_since(now))
    }
}

impl Run {
    pub(super) async fn set_limit(&mut self, ms: u64) -> Result<(), QmpError> {
        let p = MigrationParameters {
            downtime_limit: Some(ms),
            ..MigrationParameters::default()
        };
        self.src.migrate_set_parameters(&p).await
    }

    /// Puts the limit asked for back if netpage still holds its own (after a failure, or
    /// a migration that ended while held), so that the next migration of this QEMU
    /// converges.
    pub(super) async fn restore_limit(&mut self) {
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
    pub(super) async fn poll(&mut self) -> Step {
        let info = match self.src.query_migrate().await {
            Ok(info) => info,
            Err(QmpError::Closed { .. }) => return Step::Failed("the source QEMU exited".into()),
            Err(e) if e.is_timeout() => return self.busy("a poll"),
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
            // before it, so that the guest runs as briefly as possible after the switch
            // (which starts earlier by what it takes: a transaction, through etcd).
            Some(est)
                if est <= limit
                    && hold.ticks.until_next(now).is_none_or(|left| {
                        left <= TICK_LEAD + self.edges.switch_cost() + self.hold_lead
                    }) =>
            {
                self.release(&info, est, "estimate", true).await
            }
            _ => Step::Continue,
        }
    }

    /// Ends the hold: switches every node if `switch`, then raises the limit.
    pub(super) async fn release(
        &mut self,
        info: &MigrationInfo,
        estimate_ms: f64,
        reason: &'static str,
        switch: bool,
    ) -> Step {
        if switch {
            if let Err(why) = self.switch_all().await {
                return Step::Failed(why);
            }
            // What the gateways sent toward the source before the switch reaches it
            // before it pauses (`--hold-lead`); the limit stays held meanwhile.
            if !self.hold_lead.is_zero() {
                tokio::time::sleep(self.hold_lead).await;
                self.mark(
                    Source::Netpage,
                    "LEAD",
                    format!("{:?} after the switch", self.hold_lead),
                );
            }
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
            Err(e) if e.is_timeout() => self.busy("the release"),
            Err(e) => Step::Failed(format!("releasing the downtime limit: {e}")),
        }
    }

    /// The source did not answer in time during the hold: it has entered its last copy
    /// (its estimate fitted even the held limit), during which QEMU answers nothing until
    /// the device state is saved, however long that takes. Not a failure: netpage stops
    /// asking, and the STOP already sent (handled first) or the migration's end follows.
    fn busy(&mut self, during: &str) -> Step {
        self.hold = None;
        self.mark(
            Source::Netpage,
            "SOURCE BUSY",
            format!("no answer during {during}: QEMU copies its last state"),
        );
        Step::Continue
    }

    /// No estimate fitted by pass [`MAX_HELD_PASS`]: releases the limit without a switch
    /// (which then comes at STOP).
    pub(super) async fn give_up_hold(&mut self) -> Step {
        let info = match self.src.query_migrate().await {
            Ok(info) => info,
            Err(e) if e.is_timeout() => return self.busy("the end of the hold"),
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
    pub(super) async fn switch_back(&mut self) -> Step {
        self.grace = None;
        if self.stop.is_some() || !self.switched {
            return Step::Continue;
        }
        let (vm, from, to) = (self.vm, self.from, self.to);
        let failed = self
            .edges
            .edit(Edit::SwitchBack, vm, from, to, &mut self.timeline)
            .await;
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
                "switching {vm} back to {from} failed: {}",
                failed.join("; ")
            ))
        }
    }
}

/// The pause (ms) a stop-and-copy would take now: the RAM still to send in this pass
/// plus what the guest dirtied since the pass began (at the rate QEMU last measured,
/// none in the first pass), over the bandwidth QEMU measured. `None` before QEMU has
/// measured a bandwidth.
pub(super) fn estimate_ms(info: &MigrationInfo, since_pass: Duration) -> Option<f64> {
    let ram = info.ram.as_ref()?;
    // Megabits per second to bytes per millisecond.
    let bytes_per_ms = ram.mbps * 125.0;
    if bytes_per_ms <= 0.0 || info.total_time.unwrap_or(0) == 0 {
        return None;
    }
    let page = match ram.page_size {
        0 => PAGE_SIZE,
        size => size,
    };
    let dirtied = ram.dirty_pages_rate as f64 * page as f64 * since_pass.as_secs_f64();
    Some((ram.remaining as f64 + dirtied) / bytes_per_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qmp::RamStats;

    #[test]
    fn ticks_learn_qemus_rhythm_from_the_polls() {
        let t0 = Instant::now();
        let mut t = Ticks::default();
        assert_eq!(t.until_next(t0), None, "no rhythm before two measurements");
        // Polls every 10 ms; QEMU's figures change between the polls at 90 and 100 ms,
        // and between those at 190 and 200 ms.
        for i in 0..30u32 {
            let now = t0 + Duration::from_millis(10 * u64::from(i));
            t.observe(f64::from(i / 10), 0, now);
        }
        // Measurements at 95 and 195 ms: the next is due at 295 ms.
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(t.until_next(at(290)), Some(Duration::from_millis(5)));
        assert_eq!(t.until_next(at(300)), Some(Duration::ZERO), "overdue");
    }

    #[test]
    fn the_estimate_adds_what_the_guest_dirtied_since_the_pass_began() {
        let info = MigrationInfo {
            total_time: Some(100),
            ram: Some(RamStats {
                remaining: 1_250_000,
                mbps: 100.0,
                dirty_pages_rate: 1000,
                ..RamStats::default()
            }),
            ..MigrationInfo::default()
        };
        // 100 Mbit/s is 12,500 bytes per ms: 1.25 MB take 100 ms.
        assert_eq!(estimate_ms(&info, Duration::ZERO), Some(100.0));
        // Half a second at 1,000 pages of 4 KiB per second: 2,048,000 bytes more.
        let e = estimate_ms(&info, Duration::from_millis(500)).unwrap();
        assert!((e - 263.84).abs() < 1e-9, "{e}");
        // The page size QEMU reports (64 KiB pages): 32,768,000 bytes more.
        let mut big = info.clone();
        big.ram.as_mut().unwrap().page_size = 65536;
        let e = estimate_ms(&big, Duration::from_millis(500)).unwrap();
        assert!((e - 2721.44).abs() < 1e-9, "{e}");
        let unmeasured = MigrationInfo {
            total_time: Some(0),
            ..info.clone()
        };
        assert_eq!(estimate_ms(&unmeasured, Duration::ZERO), None);
    }
}
