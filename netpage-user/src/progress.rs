//! Progress on a terminal for long work (a migration, a large `apply`, an agent's first
//! sync, the benchmark): drawn on stderr only when stderr is a terminal and the output is
//! not JSON ([`silence`]); otherwise nothing at all, so that logs and scripts see exactly
//! what they saw before.

use std::{
    borrow::Cow,
    io::IsTerminal,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use indicatif::{ProgressBar, ProgressFinish, ProgressStyle};

/// Set once `--json` is given: no progress is drawn from then on.
static SILENT: AtomicBool = AtomicBool::new(false);

/// Draws no progress from now on (`--json`).
pub fn silence() {
    SILENT.store(true, Ordering::Relaxed);
}

/// Whether progress is drawn: stderr is a terminal and nothing silenced it.
pub fn shown() -> bool {
    !SILENT.load(Ordering::Relaxed) && std::io::stderr().is_terminal()
}

/// A bar or a spinner on stderr, or nothing (see [`shown`]). Clones share the display.
#[derive(Clone, Debug)]
pub struct Progress(ProgressBar);

impl Progress {
    /// A bar of `len` steps, prefixed `what`.
    pub fn bar(what: impl Into<Cow<'static, str>>, len: u64) -> Self {
        let bar = Self::new(ProgressBar::new(len), what);
        bar.0.set_style(
            ProgressStyle::with_template(
                "{prefix}: [{bar:30}] {human_pos}/{human_len} {msg} ({elapsed}, {eta} left)",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar
    }

    /// A spinner for work of unknown length, prefixed `what`; its message says the stage.
    pub fn spinner(what: impl Into<Cow<'static, str>>) -> Self {
        let spinner = Self::new(ProgressBar::new_spinner(), what);
        spinner.0.set_style(
            ProgressStyle::with_template("{spinner} {prefix}: {msg} ({elapsed})")
                .expect("a valid template"),
        );
        if shown() {
            spinner.0.enable_steady_tick(Duration::from_millis(100));
        }
        spinner
    }

    /// Nothing drawn, whatever the terminal.
    pub fn hidden() -> Self {
        Self(ProgressBar::hidden())
    }

    fn new(bar: ProgressBar, what: impl Into<Cow<'static, str>>) -> Self {
        if !shown() {
            return Self::hidden();
        }
        bar.set_prefix(what);
        // Dropped without `finish` (an early error): its line is cleared all the same.
        Self(bar.with_finish(ProgressFinish::AndClear))
    }

    /// Says what is under way now.
    pub fn stage(&self, msg: impl Into<Cow<'static, str>>) {
        self.0.set_message(msg);
    }

    /// The number of steps, once known.
    pub fn set_length(&self, len: u64) {
        self.0.set_length(len);
    }

    /// `n` more steps done.
    pub fn inc(&self, n: u64) {
        self.0.inc(n);
    }

    /// Prints `line` above the display (as is, when nothing is drawn).
    pub fn println(&self, line: impl AsRef<str>) {
        if self.0.is_hidden() {
            eprintln!("{}", line.as_ref());
        } else {
            self.0.println(line);
        }
    }

    /// Removes the display: what the command prints next stands alone.
    pub fn finish(&self) {
        self.0.finish_and_clear();
    }
}
