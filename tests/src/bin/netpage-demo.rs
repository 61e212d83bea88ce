//! `netpage-demo [--local]`: runs the demo (see `netpage_tests::demo`) and prints its
//! report. By default the switch goes through the directory on etcd (its own etcd member
//! and an agent per edge node); `--local` switches this machine's pin directories directly.
//! Ctrl-C or SIGTERM ends it early, with the namespace world, etcd and the agents removed.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    thread,
};

use netpage_tests::demo::{self, DemoOptions, Mode};

static STOP: AtomicBool = AtomicBool::new(false);

fn main() {
    let mut opts = DemoOptions::default();
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--local" => opts.mode = Mode::Local,
            other => {
                eprintln!("netpage-demo: unknown argument {other}\nusage: netpage-demo [--local]");
                std::process::exit(2);
            }
        }
    }
    let signals = block_signals();
    let worker = thread::spawn(move || demo::run(opts, &STOP));
    while !worker.is_finished() {
        if let Some(sig) = wait_signal(&signals) {
            eprintln!("netpage-demo: signal {sig}: stopping and removing the world ...");
            STOP.store(true, Ordering::Relaxed);
        }
    }
    match worker.join() {
        Ok(Ok(report)) => print!("{report}"),
        Ok(Err(demo::Interrupted)) => std::process::exit(130),
        Err(_) => {
            eprintln!("netpage-demo: failed (see above); the world was removed");
            std::process::exit(1);
        }
    }
}

/// Blocks SIGINT, SIGTERM and SIGHUP in this thread and every thread it starts, so that
/// they are taken only by [`wait_signal`] and never kill the process before cleanup.
fn block_signals() -> libc::sigset_t {
    // SAFETY: the set is initialised by sigemptyset before use; SIG_DFL undoes a parent's
    // SIG_IGN, under which these signals would be discarded instead of waited for.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::signal(sig, libc::SIG_DFL);
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Waits up to 100 ms for one of the blocked signals.
fn wait_signal(set: &libc::sigset_t) -> Option<i32> {
    let timeout = libc::timespec {
        tv_sec: 0,
        tv_nsec: 100_000_000,
    };
    // SAFETY: `set` is a valid signal set; no siginfo is requested.
    let sig = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &timeout) };
    (sig > 0).then_some(sig)
}
