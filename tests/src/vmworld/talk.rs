//! A TCP conversation with the guest during a migration: numbered lines to its echo
//! service on a fixed pace, each echoed intact before the next, and what it saw (lines,
//! the longest wait, the first failure and when).

use std::{
    io::{Read, Write},
    net::TcpStream,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant, SystemTime},
};

/// Pause between the lines of the conversation.
pub const TALK_EVERY: Duration = Duration::from_millis(10);

/// A TCP conversation with the guest's echo service in the background: a numbered line
/// every [`TALK_EVERY`], each echoed intact before the next.
pub struct Talker {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Talk>,
}

/// What the conversation saw.
pub struct Talk {
    pub stream: TcpStream,
    pub lines: u64,
    /// The longest wait for an echo.
    pub longest: Duration,
    /// The first failure, and when it came.
    pub failure: Option<(String, SystemTime)>,
}

impl Talker {
    /// Starts the conversation on `stream`.
    pub fn spawn(mut stream: TcpStream) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let (mut lines, mut longest, mut failure) = (0, Duration::ZERO, None);
            while !flag.load(Ordering::Relaxed) && failure.is_none() {
                let line = format!("during the migration, line {lines}, {}\n", "x".repeat(64));
                let sent = Instant::now();
                match try_echo(&mut stream, &line) {
                    Ok(()) => {
                        longest = longest.max(sent.elapsed());
                        lines += 1;
                    }
                    Err(e) => failure = Some((format!("line {lines}: {e}"), SystemTime::now())),
                }
                thread::sleep(TALK_EVERY);
            }
            Talk {
                stream,
                lines,
                longest,
                failure,
            }
        });
        Self { stop, thread }
    }

    /// Ends the conversation and tells how it went.
    pub fn stop(self) -> Talk {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }
}

/// Writes `line` and reads back as many bytes, which must be the same.
pub fn try_echo(stream: &mut TcpStream, line: &str) -> Result<(), String> {
    stream
        .write_all(line.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut back = vec![0u8; line.len()];
    stream
        .read_exact(&mut back)
        .map_err(|e| format!("echo: {e}"))?;
    if back == line.as_bytes() {
        Ok(())
    } else {
        Err(format!(
            "echo differs: {:?}",
            String::from_utf8_lossy(&back)
        ))
    }
}
