//! A test hook: stops the process at a named step of an operation, so that a test can kill
//! it exactly there and see what the step leaves behind.

use std::time::Duration;

/// The variable that names the step to stop at.
pub const PAUSE_AT: &str = "NETPAGE_TEST_PAUSE_AT";

/// In a debug build with `NETPAGE_TEST_PAUSE_AT=STEP` set, reaching `STEP` prints
/// `netpage: paused at STEP` to stderr and sleeps until the process is killed. Release
/// builds never stop.
pub fn at(step: impl FnOnce() -> String) {
    if !cfg!(debug_assertions) {
        return;
    }
    let Some(want) = std::env::var_os(PAUSE_AT) else {
        return;
    };
    let step = step();
    if want.to_str() == Some(step.as_str()) {
        eprintln!("netpage: paused at {step}");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}
