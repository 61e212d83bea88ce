//! A real-time scheduling class for a thread that must act the moment an event arrives:
//! `netpage migrate` switches on hearing QEMU's STOP, and every millisecond it spends
//! waiting for a CPU behind busy vCPU threads is a millisecond of packets sent to a paused
//! guest. The thread sleeps on its sockets almost all the time, so the class costs the
//! machine nothing otherwise.

use std::io;

/// The SCHED_FIFO priority netpage takes: above every time-shared thread, low among
/// real-time ones (the kernel's own threads and audio use more).
pub const PRIORITY: i32 = 10;

/// The calling thread raised to SCHED_FIFO; its previous policy comes back on drop.
#[must_use = "the thread returns to its previous class when this is dropped"]
pub struct Realtime {
    policy: i32,
    param: libc::sched_param,
}

impl Realtime {
    /// Raises the calling thread to SCHED_FIFO at [`PRIORITY`]. Fails without
    /// CAP_SYS_NICE (or an RLIMIT_RTPRIO that allows it), and leaves the thread as it was.
    pub fn raise() -> io::Result<Self> {
        // SAFETY: 0 names the calling thread; the parameter outlives the calls.
        unsafe {
            let policy = libc::sched_getscheduler(0);
            if policy < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut param = libc::sched_param { sched_priority: 0 };
            if libc::sched_getparam(0, &mut param) != 0 {
                return Err(io::Error::last_os_error());
            }
            let fifo = libc::sched_param {
                sched_priority: PRIORITY,
            };
            if libc::sched_setscheduler(0, libc::SCHED_FIFO, &fifo) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(Self { policy, param })
        }
    }
}

impl Drop for Realtime {
    fn drop(&mut self) {
        // SAFETY: as in `raise`; going back to a class the thread had cannot fail but for
        // a vanished thread, which is this one.
        unsafe {
            libc::sched_setscheduler(0, self.policy, &self.param);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> i32 {
        // SAFETY: as above.
        unsafe { libc::sched_getscheduler(0) }
    }

    #[test]
    fn raises_and_restores_or_leaves_alone() {
        let before = policy();
        match Realtime::raise() {
            Ok(rt) => {
                assert_eq!(policy(), libc::SCHED_FIFO);
                drop(rt);
                assert_eq!(policy(), before);
            }
            // Without the capability nothing changed.
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
                assert_eq!(policy(), before);
            }
        }
    }
}
