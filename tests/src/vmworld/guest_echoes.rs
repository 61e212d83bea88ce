//! The guest's own count of the echo requests it took and the replies it sent, read from
//! its counters page (`/proc/net/snmp`'s `Icmp:` lines): a probe the guest took and did
//! not answer was lost inside the guest, past the network. Under a burst, as when a
//! migrated guest answers at RESUME every request queued for it during the pause, a
//! reply is refused when the kernel's ICMP socket has used its whole send buffer on
//! replies its NIC has not sent yet, and counted as `OutErrors` (a slow emulated NIC
//! drains them slowly).

/// Echo counters of the guest, or their change over a while.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestEchoes {
    /// Echo requests the guest took (`InEchos`).
    pub requests_in: u64,
    /// Echo replies it sent (`OutEchoReps`).
    pub replies_out: u64,
    /// ICMP messages it could not send (`OutErrors`).
    pub send_errors: u64,
}

impl GuestEchoes {
    /// The counters in the guest's counters page, if it holds them.
    pub fn parse(page: &str) -> Option<Self> {
        let mut icmp = page.lines().filter(|l| l.starts_with("Icmp: "));
        let (names, values) = (icmp.next()?, icmp.next()?);
        let get = |name: &str| {
            let at = names.split_whitespace().position(|n| n == name)?;
            values.split_whitespace().nth(at)?.parse().ok()
        };
        Some(Self {
            requests_in: get("InEchos")?,
            replies_out: get("OutEchoReps")?,
            send_errors: get("OutErrors")?,
        })
    }

    /// The change since `before`.
    pub fn since(&self, before: &Self) -> Self {
        Self {
            requests_in: self.requests_in.saturating_sub(before.requests_in),
            replies_out: self.replies_out.saturating_sub(before.replies_out),
            send_errors: self.send_errors.saturating_sub(before.send_errors),
        }
    }

    /// Requests the guest took and did not answer.
    pub fn unanswered(&self) -> u64 {
        self.requests_in.saturating_sub(self.replies_out)
    }

    /// Whether, of `sent` probes of which `lost` were lost, every one reached the guest
    /// and the guest itself left exactly the lost ones unanswered: the network lost none.
    pub fn explain(&self, sent: u64, lost: u64) -> bool {
        lost > 0 && self.requests_in == sent && self.unanswered() == lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "== /proc/net/snmp\n\
        Ip: Forwarding DefaultTTL\nIp: 2 64\n\
        Icmp: InMsgs InErrors InEchos OutMsgs OutErrors OutEchoReps\n\
        Icmp: 6690 0 6689 6631 58 6631\n\
        IcmpMsg: InType8 OutType0\nIcmpMsg: 6689 6631\n";

    #[test]
    fn the_counters_are_read_by_name() {
        let g = GuestEchoes::parse(PAGE).unwrap();
        assert_eq!(
            g,
            GuestEchoes {
                requests_in: 6689,
                replies_out: 6631,
                send_errors: 58
            }
        );
        assert_eq!(GuestEchoes::parse("Ip: 1\nIp: 2\n"), None);
        assert_eq!(GuestEchoes::parse("Icmp: InEchos\nIcmp: x\n"), None);
    }

    #[test]
    fn the_guest_explains_a_loss_only_when_it_took_every_probe_and_left_the_lost_unanswered() {
        let before = GuestEchoes {
            requests_in: 1,
            replies_out: 1,
            send_errors: 0,
        };
        let after = GuestEchoes::parse(PAGE).unwrap();
        let d = after.since(&before);
        assert_eq!(
            (d.requests_in, d.unanswered(), d.send_errors),
            (6688, 58, 58)
        );
        assert!(d.explain(6688, 58));
        // A probe that never reached the guest, or a reply lost after it left.
        assert!(!d.explain(6689, 59));
        assert!(!d.explain(6688, 60));
        assert!(!d.explain(6688, 0) && !GuestEchoes::default().explain(0, 0));
    }
}
