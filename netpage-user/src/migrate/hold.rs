//! Switching just before the source pauses (`--switch-at stop` with the hold): the
//! downtime limit held at [`HOLD_MS`], QEMU's progress polled, and once the last copy
//! fits, every node switched and the source paused by netpage at once. See the parent
//! module's documentation for the whole mechanism.

use std::time::{Duration, Instant};

use super::{Release, Run, Source, Step};
use crate::qmp::{MigrationInfo, MigrationParameters, MigrationStatus, Qmp, QmpError};

/// The downtime limit (ms) held while netpage waits to switch: no last copy fits in it.
pub const HOLD_MS: u64 = 1;
/// How often netpage asks QEMU for its progress while it holds the limit.
pub const POLL: Duration = Duration::from_millis(10);
/// The longest netpage waits, after the switch, for QEMU to read what the source's tap
/// holds before it pauses the source (QEMU reads within microseconds when it can; a
/// guest whose receive ring is full makes it wait).
pub const TAP_READ: Duration = Duration::from_millis(10);
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

    /// Asks the source for its progress while the limit is held, and once the last copy
    /// would fit the limit asked for, switches and pauses the source.
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
        let limit = self.limit_ms.unwrap_or(QEMU_DEFAULT_LIMIT_MS) as f64;
        match estimate_ms(&info, since_pass) {
            Some(est) if est <= limit => self.switch_and_pause(&info, est).await,
            _ => Step::Continue,
        }
    }

    /// Ends the hold once the last copy fits: switches every node, then pauses the
    /// source itself (QMP `stop`). With the guest paused QEMU sends what is left of the
    /// pass, which dirties no more, and completes: a pause of about the estimate. The
    /// limit stays held until the migration has ended (a command sent during QEMU's last
    /// copy would wait for its end); the destination, which does not run a guest paused
    /// at the source by itself, is told to run it once it has loaded it.
    async fn switch_and_pause(&mut self, info: &MigrationInfo, estimate_ms: f64) -> Step {
        if let Err(why) = self.switch_all().await {
            return Step::Failed(why);
        }
        // Through the directory the switch reaches each node as its agent applies it:
        // the source's host must have before the guest stops reading its tap.
        if !self.edges.known_applied() {
            let all = self.edges.applied().await;
            let detail = if all {
                "every node confirmed the switch"
            } else {
                "not every node confirmed the switch in time: pausing all the same"
            };
            self.mark(Source::Netpage, "APPLIED", detail.to_owned());
        }
        // What the gateways sent toward the source before the switch reaches it before
        // it pauses (`--hold-lead`).
        if !self.hold_lead.is_zero() {
            tokio::time::sleep(self.hold_lead).await;
            self.mark(
                Source::Netpage,
                "LEAD",
                format!("{:?} after the switch", self.hold_lead),
            );
        }
        // The source's host sends the tap nothing more; what it already holds, the guest
        // reads before it pauses.
        if let Some(s) = &self.salvage {
            let t = Instant::now();
            let read = s.wait_read(TAP_READ);
            let us = t.elapsed().as_secs_f64() * 1e6;
            let detail = if read {
                format!("QEMU read what the source's tap held ({us:.0} us)")
            } else {
                format!(
                    "the source's tap still holds packets after {TAP_READ:?}: pausing all the same"
                )
            };
            self.mark(Source::Netpage, "TAP READ", detail);
        }
        self.record_release(info, estimate_ms, "estimate", true);
        match self.src.stop().await {
            Ok(()) => {
                self.paused_source = true;
                if let Some(r) = &mut self.release {
                    r.paused = true;
                }
                self.mark(
                    Source::Netpage,
                    "PAUSED",
                    format!("the source, after the switch (estimated pause {estimate_ms:.0} ms)"),
                );
                Step::Continue
            }
            // It stopped by itself: the STOP already sent, or its last copy under way.
            Err(e) if e.is_timeout() => self.busy("the pause"),
            Err(e) => Step::Failed(format!("pausing the source: {e}")),
        }
    }

    /// Records the end of the hold for the report, and ends the polls; returns what it
    /// recorded.
    fn record_release(
        &mut self,
        info: &MigrationInfo,
        estimate_ms: f64,
        reason: &'static str,
        switched: bool,
    ) -> Release {
        let ram = info.ram.clone().unwrap_or_default();
        let release = Release {
            pass: self.passes,
            switched,
            paused: false,
            reason,
            remaining_bytes: ram.remaining,
            mbps: ram.mbps,
            estimate_ms,
            limit_ms: self.limit_ms.unwrap_or(QEMU_DEFAULT_LIMIT_MS),
        };
        self.release = Some(release.clone());
        self.hold = None;
        release
    }

    /// Ends the hold without a switch: raises the limit, so that QEMU stops by itself
    /// (and netpage switches at STOP).
    async fn release(
        &mut self,
        info: &MigrationInfo,
        estimate_ms: f64,
        reason: &'static str,
    ) -> Step {
        let r = self.record_release(info, estimate_ms, reason, false);
        let limit = r.limit_ms;
        self.mark(
            Source::Netpage,
            "RELEASED",
            format!(
                "limit {limit} ms ({reason}: {:.1} MiB left at {:.0} Mbit/s, {estimate_ms:.0} ms); switch at STOP",
                r.remaining_bytes as f64 / (1 << 20) as f64,
                r.mbps,
            ),
        );
        eprintln!(
            "netpage: downtime limit released to {limit} ms in pass {} ({reason}, estimated pause {estimate_ms:.0} ms), switching at STOP",
            self.passes,
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
        self.release(&info, est, "passes").await
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
