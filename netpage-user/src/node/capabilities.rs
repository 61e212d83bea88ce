//! Which of the capabilities netpage needs the process lacks, read from its effective set.

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// The effective capability set from the text of `/proc/self/status` (none if absent).
pub fn effective(status: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0)
}

/// The capabilities of `netpage`'s needs that `effective` lacks. CAP_SYS_ADMIN stands in
/// for CAP_BPF, as it does in kernels before 5.8 and still does in later ones.
pub fn missing(effective: u64) -> Vec<&'static str> {
    let has = |cap: u32| effective & (1 << cap) != 0;
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_effective_set_is_read_and_judged() {
        let status = "Name:\tnetpage\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(effective(status), 0x1ff_ffff_ffff);
        assert!(missing(effective(status)).is_empty());
        assert_eq!(effective("Name:\tx\n"), 0);
        assert_eq!(missing(0), ["CAP_BPF", "CAP_NET_ADMIN"]);
        assert_eq!(missing(1 << CAP_BPF), ["CAP_NET_ADMIN"]);
        assert_eq!(missing(1 << CAP_NET_ADMIN), ["CAP_BPF"]);
        assert!(missing(1 << CAP_NET_ADMIN | 1 << CAP_SYS_ADMIN).is_empty());
        assert!(missing(1 << CAP_NET_ADMIN | 1 << CAP_BPF).is_empty());
    }
}
