//! Where the guest stays after a failed migration, as libvirt's confirm phase decides it.
//!
//! The point of no return is the destination running the guest: its RESUME (or, for a
//! source that was paused, its completed load). Before it, whatever failed (the
//! destination's exit or failed load, a timeout, a signal), the source keeps the guest:
//! netpage fences the destination so that it never starts the guest (`stop` on a QEMU
//! still loading clears its autostart; then `quit`), switches every node back and resumes
//! the source with `cont` if it paused, even after it reported `completed` (without a
//! return path QEMU reports that once it has *sent* everything, whether or not the
//! destination could load it). After it, the table follows the guest to the destination.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::{CANCEL_TIMEOUT, Run, Source};
use crate::{
    qmp::{MigrationStatus, Qmp, QmpError, RunState, Timestamp},
    timeline::Timeline,
};

/// How long the destination may take to answer the fencing commands.
const FENCE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the guest is, after a failure.
pub(super) enum Fate {
    /// The destination ran the guest: the migration completes after all.
    Destination,
    /// The destination did not run the guest and will not: it stays at the source. The
    /// text says what became of the destination.
    Source(String),
}

impl Run {
    /// Whether the destination has (run) the guest: RESUME, or the load completed.
    pub(super) fn past_point_of_no_return(&self) -> bool {
        self.resume.is_some() || self.dst_loaded
    }

    /// Decides where the guest stays, making sure a destination that has not run it never
    /// will. The source's migration has ended (see [`cancel`]).
    pub(super) async fn fence_destination(&mut self) -> Fate {
        if self.past_point_of_no_return() {
            return Fate::Destination;
        }
        if !self.started {
            return Fate::Source("the migration did not start: the destination still waits".into());
        }
        fence(&mut self.dst, &mut self.resume, &mut self.timeline).await
    }

    /// Runs the guest at the source again if it was running when netpage started.
    pub(super) async fn resume_source(&mut self) -> Result<(), String> {
        if !self.src_was_running {
            return Ok(());
        }
        resume(&mut self.src, &mut self.timeline).await
    }
}

/// Fences the destination `dst`, unless it has run the guest (`resumed`, or a RESUME
/// it reports now, which sets `resumed`).
pub(super) async fn fence(
    dst: &mut Qmp,
    resumed: &mut Option<Timestamp>,
    timeline: &mut Timeline,
) -> Fate {
    let stopped = dst
        .execute_within::<Value>("stop", Value::Null, FENCE_TIMEOUT)
        .await;
    match stopped {
        Ok(_) => {}
        Err(QmpError::Closed { .. } | QmpError::Io { .. }) => {
            return Fate::Source("the destination QEMU has exited".into());
        }
        Err(e) if e.is_timeout() => {
            eprintln!(
                "netpage: warning: the destination QEMU does not answer ({e}): kill it, it must not run the guest"
            );
            return Fate::Source(format!("the destination QEMU does not answer: {e}"));
        }
        // Refused: its state tells.
        Err(e) => eprintln!("netpage: warning: pausing the destination QEMU: {e}"),
    }
    // A RESUME that came before the `stop`: the guest ran there, and runs on.
    for e in dst.drain_events() {
        if e.event == "RESUME" {
            *resumed = Some(e.timestamp);
            timeline.mark(e.received, Source::Dst, "RESUME", String::new());
        }
    }
    if resumed.is_some() {
        if let Err(e) = dst.cont().await {
            eprintln!("netpage: warning: resuming the destination QEMU: {e}");
        }
        return Fate::Destination;
    }
    let status = match dst.query_status().await {
        Ok(s) => s.status,
        Err(QmpError::Closed { .. } | QmpError::Io { .. }) => {
            return Fate::Source("the destination QEMU has exited".into());
        }
        Err(e) => {
            eprintln!("netpage: warning: asking the destination QEMU its state: {e}");
            return Fate::Source(format!("the destination QEMU: {e}"));
        }
    };
    if status == RunState::Running {
        return Fate::Destination;
    }
    let what = match dst.quit().await {
        Ok(()) => format!("the destination QEMU ({status}) was told to quit"),
        Err(QmpError::Closed { .. } | QmpError::Io { .. }) => {
            "the destination QEMU has exited".into()
        }
        Err(e) => {
            eprintln!("netpage: warning: telling the destination QEMU to quit: {e}");
            format!("the destination QEMU is {status} and paused, but did not quit: {e}")
        }
    };
    timeline.mark(Instant::now(), Source::Netpage, "FENCED", what.clone());
    Fate::Source(what)
}

/// Runs the guest at the source `src` again if it has paused (`postmigrate` after a
/// migration it believes completed, or `paused`).
pub(super) async fn resume(src: &mut Qmp, timeline: &mut Timeline) -> Result<(), String> {
    let status = src
        .query_status()
        .await
        .map_err(|e| format!("the source QEMU cannot say its state: {e}"))?
        .status;
    match status {
        RunState::Running => Ok(()),
        RunState::Paused | RunState::PostMigrate => {
            src.cont()
                .await
                .map_err(|e| format!("resuming the source QEMU ({status}): {e}"))?;
            timeline.mark(
                Instant::now(),
                Source::Netpage,
                "SOURCE RESUMED",
                format!("cont from {status}"),
            );
            Ok(())
        }
        other => Err(format!(
            "the source QEMU is {other}: it cannot run the guest again"
        )),
    }
}

/// Cancels the source's migration unless it has ended, and waits for its final status.
pub(super) async fn cancel(src: &mut Qmp, timeline: &mut Timeline) -> Option<MigrationStatus> {
    let deadline = Instant::now() + CANCEL_TIMEOUT;
    let mut cancelled = false;
    loop {
        let status = match src.query_migrate().await {
            Ok(info) => info.status,
            // Busy saving its last state: it answers once that is done.
            Err(e) if e.is_timeout() && Instant::now() < deadline => continue,
            Err(e) => {
                eprintln!("netpage: warning: asking the source QEMU how the migration ended: {e}");
                return None;
            }
        };
        match status {
            Some(s) if s.is_final() => return Some(s),
            None | Some(MigrationStatus::None) => return None,
            Some(_) if !cancelled => {
                cancelled = true;
                if let Err(e) = src.migrate_cancel().await {
                    eprintln!("netpage: warning: cancelling the migration: {e}");
                }
                timeline.mark(Instant::now(), Source::Netpage, "CANCEL", String::new());
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
