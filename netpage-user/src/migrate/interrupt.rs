//! SIGINT and SIGTERM during a migration: heard from the start, so that they never kill
//! netpage half-way, and turned into a failure of the migration, which then ends as any
//! other (cancelled, rolled back, the source resumed) before the command exits. A second
//! signal during that ending is not heard: the ending finishes first (a SIGKILL then
//! leaves the migration's record for `netpage migrate --recover`).

use tokio::signal::unix::{Signal, SignalKind, signal};

/// The signals that end a migration.
pub(super) struct Interrupts {
    int: Signal,
    term: Signal,
}

impl Interrupts {
    /// Takes SIGINT and SIGTERM over for this process.
    pub(super) fn listen() -> std::io::Result<Self> {
        Ok(Self {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    /// The next signal's name (one that came since [`Interrupts::listen`] counts).
    pub(super) async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
        }
    }
}
