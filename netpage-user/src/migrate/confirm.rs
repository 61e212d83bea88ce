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

use super::{Run, Source};
use crate::qmp::{QmpError, RunState};

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
    /// will. The source's migration has ended (see `cancel`).
    pub(super) async fn fence_destination(&mut self) -> Fate {
        if self.past_point_of_no_return() {
            return Fate::Destination;
        }
        let stopped = self
            .dst
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
        for e in self.dst.drain_events() {
            if e.event == "RESUME" {
                self.resume = Some(e.timestamp);
                self.timeline
                    .mark(e.received, Source::Dst, "RESUME", String::new());
            }
        }
        if self.resume.is_some() {
            if let Err(e) = self.dst.cont().await {
                eprintln!("netpage: warning: resuming the destination QEMU: {e}");
            }
            return Fate::Destination;
        }
        let status = match self.dst.query_status().await {
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
        let what = match self.dst.quit().await {
            Ok(()) => format!("the destination QEMU ({status}) was told to quit"),
            Err(QmpError::Closed { .. } | QmpError::Io { .. }) => {
                "the destination QEMU has exited".into()
            }
            Err(e) => {
                eprintln!("netpage: warning: telling the destination QEMU to quit: {e}");
                format!("the destination QEMU is {status} and paused, but did not quit: {e}")
            }
        };
        self.timeline
            .mark(Instant::now(), Source::Netpage, "FENCED", what.clone());
        Fate::Source(what)
    }

    /// Runs the guest at the source again if it was running when netpage started and has
    /// paused since (`postmigrate` after a migration it believes completed, or `paused`).
    pub(super) async fn resume_source(&mut self) -> Result<(), String> {
        if !self.src_was_running {
            return Ok(());
        }
        let status = self
            .src
            .query_status()
            .await
            .map_err(|e| format!("the source QEMU cannot say its state: {e}"))?
            .status;
        match status {
            RunState::Running => Ok(()),
            RunState::Paused | RunState::PostMigrate => {
                self.src
                    .cont()
                    .await
                    .map_err(|e| format!("resuming the source QEMU ({status}): {e}"))?;
                self.timeline.mark(
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
}
