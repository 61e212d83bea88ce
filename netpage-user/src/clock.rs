//! The clocks of drain deadlines. A node's table counts `CLOCK_BOOTTIME` milliseconds,
//! which a stepped or mis-set wall clock does not move and which keeps counting while the
//! machine is suspended; its pins do not outlive a reboot, so neither need its deadlines.
//! The directory is shared by machines whose boot clocks differ, so its deadlines (and the
//! records people read) count Unix time; an agent turns them into its node's clock.

use std::time::{SystemTime, UNIX_EPOCH};

/// A node deadline at least this large (2001-09-09 as Unix milliseconds, 31 years as boot
/// time) was written by an older build, which counted Unix time.
const UNIX_FLOOR_MS: u64 = 1_000_000_000_000;

/// Milliseconds since boot, suspended time included: the clock of a node's deadlines.
pub fn node_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to write.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    assert_eq!(r, 0, "CLOCK_BOOTTIME is available since Linux 2.6.39");
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// Nanoseconds since boot, suspended time included: the clock of `bpf_ktime_get_boot_ns`,
/// which the datapath's trace deadline counts.
pub fn node_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to write.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    assert_eq!(r, 0, "CLOCK_BOOTTIME is available since Linux 2.6.39");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Milliseconds since the Unix epoch: the clock of the directory's deadlines.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Milliseconds since the Unix epoch, to the microsecond: for timelines set beside
/// QEMU's event timestamps.
pub fn unix_ms_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_micros() as f64 / 1e3)
}

/// The node-clock reading at the Unix-time deadline `unix`.
pub fn unix_to_node(unix: u64) -> u64 {
    shift(unix, unix_ms(), node_ms())
}

/// A deadline read from a node's table, in the node's clock: an older build's Unix-time
/// deadline is converted.
pub fn node_deadline(stored: u64) -> u64 {
    if stored >= UNIX_FLOOR_MS {
        unix_to_node(stored)
    } else {
        stored
    }
}

/// `at`, read on a clock that shows `from_now` now, as read on one that shows `to_now`.
fn shift(at: u64, from_now: u64, to_now: u64) -> u64 {
    let shifted = at as i128 - from_now as i128 + to_now as i128;
    shifted.clamp(0, u64::MAX as i128) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_move_between_clocks_and_older_ones_are_recognised() {
        assert_eq!(shift(1_700_000_005_000, 1_700_000_000_000, 90_000), 95_000);
        assert_eq!(shift(1_700_000_000_000, 1_700_000_050_000, 10_000), 0);
        let boot = node_ms();
        assert!(boot < UNIX_FLOOR_MS);
        assert_eq!(node_deadline(boot + 5), boot + 5);
        let converted = node_deadline(unix_ms() + 60_000);
        assert!(
            converted.abs_diff(node_ms() + 60_000) < 1_000,
            "{converted}"
        );
    }
}
