//! The targets the report is read against, each stated with the worst measured value.
//! They are noted, never asserted: a benchmark on a shared machine is not a test.

use crate::bench::report::Row;

/// Per-packet cost may grow this much from the smallest to the largest table.
const GROWTH: f64 = 1.10;
/// p99 of the V2R update, in microseconds.
const V2R_P99_US: f64 = 2.0;
/// p99 of the whole switch, in microseconds.
const WHOLE_P99_US: f64 = 5.0;
/// Median wall time of the `netpage switch` command, in milliseconds.
const COMMAND_P50_MS: f64 = 5.0;
/// netpage's forwarding rate against plain routing.
const FORWARD_RATIO: f64 = 0.95;
/// p99 of a node's map update after a switch through the directory, in milliseconds, at
/// the largest number of agents measured.
const DIRECTORY_P99_MS: f64 = 20.0;
/// The netpage variants of the forwarding measurement that pass packets to the kernel.
const NETPAGE_MODES: [&str; 2] = ["netpage native", "netpage skb"];
/// The fast path's variant, and how many times cheaper per forwarded packet (gateway CPU
/// time) it should be than plain routing and than nftables stateful DNAT.
const FAST_PATH: &str = "netpage native fast path";
const FAST_VS_PLAIN: f64 = 1.5;
const FAST_VS_NFT: f64 = 2.0;

/// One line per target: what it is, the worst row against it, and whether it is met.
pub fn notes(rows: &[Row]) -> Vec<String> {
    let mut notes = Vec::new();
    let largest = rows
        .iter()
        .filter(|r| r.measure == "per_packet_growth")
        .filter_map(|r| r.param_u64("table_entries"))
        .max();
    if let Some(size) = largest {
        let worst = worst(rows, |r| {
            (r.measure == "per_packet_growth" && r.param_u64("table_entries") == Some(size))
                .then_some(r.ratio?)
        });
        if let Some((ratio, r)) = worst {
            notes.push(format!(
                "per-packet cost grows at most {:.0}% from the smallest table to {size} entries: \
                 worst {:+.1}% ({}) - {}",
                (GROWTH - 1.0) * 100.0,
                (ratio - 1.0) * 100.0,
                r.variant,
                verdict(ratio <= GROWTH)
            ));
        }
    }
    for (measure, what, limit) in [
        ("v2r_update", "V2R update", V2R_P99_US),
        (
            "switch_whole",
            "whole switch (R2V insert + V2R update)",
            WHOLE_P99_US,
        ),
    ] {
        let worst = worst(rows, |r| {
            (r.measure == measure && r.param_str("stat") == Some("p99")).then_some(r.value)
        });
        if let Some((us, r)) = worst {
            notes.push(format!(
                "{what} p99 at most {limit} us: worst {us:.2} us ({} entries, {}) - {}",
                r.param_u64("table_entries").unwrap_or(0),
                r.variant,
                verdict(us <= limit)
            ));
        }
    }
    notes.extend(command_note(rows));
    notes.extend(forward_notes(rows));
    notes.extend(fast_path_notes(rows));
    notes.extend(gap_note(rows));
    notes.extend(directory_note(rows));
    notes.extend(migration_notes(rows));
    notes
}

/// The p99 propagation row at the largest number of agents.
fn directory_p99(rows: &[Row]) -> Option<&Row> {
    rows.iter()
        .filter(|r| r.measure == "directory_propagation" && r.param_str("stat") == Some("p99"))
        .max_by_key(|r| r.param_u64("agents"))
}

fn directory_note(rows: &[Row]) -> Option<String> {
    let r = directory_p99(rows)?;
    Some(format!(
        "a switch through the directory reaches every node's map within {DIRECTORY_P99_MS} ms \
         (p99) at {} agents: {:.2} ms - {}",
        r.param_u64("agents").unwrap_or(0),
        r.value,
        verdict(r.value <= DIRECTORY_P99_MS)
    ))
}

fn directory_why(rows: &[Row]) -> Option<String> {
    let r = directory_p99(rows)?;
    if r.value <= DIRECTORY_P99_MS {
        return None;
    }
    let agents = r.param_u64("agents").unwrap_or(0);
    let at = |n: u64, stat: &str| {
        rows.iter()
            .find(|x| {
                x.measure == "directory_propagation"
                    && x.param_u64("agents") == Some(n)
                    && x.param_str("stat") == Some(stat)
            })
            .map(|x| x.value)
    };
    let p50 = at(agents, "p50").unwrap_or(0.0);
    let fewest = rows
        .iter()
        .filter(|x| x.measure == "directory_propagation")
        .filter_map(|x| x.param_u64("agents"))
        .min()
        .unwrap_or(agents);
    let few = at(fewest, "p99").map_or(String::new(), |v| {
        format!(" (p99 {v:.1} ms with {fewest} agent(s))")
    });
    Some(format!(
        "Directory: p99 propagation {:.1} ms at {agents} agents{few}, p50 {p50:.1} ms. Each \
         agent is a process of its own that wakes on etcd's watch event, updates its maps and \
         writes its confirmation; with {agents} of them on {} CPUs, the last of a switch \
         waits for the CPU behind the others (and behind etcd and the command), so the tail \
         grows with the number of agents per CPU, which a real deployment, one agent per \
         machine, does not have",
        r.value,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    ))
}

/// How much a migration's gap may exceed the hypervisor's own pause, in milliseconds.
const MIGRATION_GAP_OVER_PAUSE_MS: f64 = 2.0;

fn migration_notes(rows: &[Row]) -> Vec<String> {
    let worst_of = |measure: &str| {
        worst(rows, |r| {
            (r.measure == measure && r.variant == "stop").then_some(r.value)
        })
    };
    let mut notes = Vec::new();
    if let Some((lost, _)) = worst_of("migration_lost") {
        notes.push(format!(
            "`netpage migrate --switch-at stop` loses no probe: worst {lost:.0} lost - {}",
            verdict(lost == 0.0)
        ));
    }
    if let Some((over, _)) = worst_of("migration_gap_minus_pause") {
        notes.push(format!(
            "with `stop`, the client's largest gap exceeds QEMU's STOP to RESUME by at most \
             {MIGRATION_GAP_OVER_PAUSE_MS} ms: worst {over:.1} ms - {}",
            verdict(over <= MIGRATION_GAP_OVER_PAUSE_MS)
        ));
    }
    notes
}

/// The slowest median of the `netpage switch` command, with its row.
fn slowest_command(rows: &[Row]) -> Option<(f64, &Row)> {
    worst(rows, |r| {
        (r.measure == "switch_command"
            && r.variant == "switch"
            && r.param_str("stat") == Some("p50"))
        .then_some(r.value)
    })
}

fn command_note(rows: &[Row]) -> Option<String> {
    let (ms, r) = slowest_command(rows)?;
    Some(format!(
        "`netpage switch` median at most {COMMAND_P50_MS} ms: worst {ms:.2} ms ({} entries) - {}",
        r.param_u64("table_entries").unwrap_or(0),
        verdict(ms <= COMMAND_P50_MS)
    ))
}

fn forward_notes(rows: &[Row]) -> Vec<String> {
    let nft = find(rows, "forward_pps", "nft stateful dnat+snat").and_then(|r| r.ratio);
    NETPAGE_MODES
        .iter()
        .filter_map(|mode| {
            let ratio = find(rows, "forward_pps", mode)?.ratio?;
            let scale = nft.map_or(String::new(), |x| format!(", nft stateful dnat {x:.2}x"));
            Some(format!(
                "{mode} forwards at least {FORWARD_RATIO}x the packets/s of plain routing: \
                 {ratio:.2}x{scale} - {}",
                verdict(ratio >= FORWARD_RATIO)
            ))
        })
        .collect()
}

/// One note per sender (see `forward::Sender`): the socket sender's rows carry no suffix,
/// the others the sender's name.
fn fast_path_notes(rows: &[Row]) -> Vec<String> {
    [("", "socket"), (", xdp frames", "xdp frames")]
        .into_iter()
        .filter_map(|(suffix, sender)| {
            let ns = |variant: &str| {
                find(rows, "forward_cpu_ns", &format!("{variant}{suffix}")).map(|r| r.value)
            };
            let fast = ns(FAST_PATH)?;
            let vs_plain = ns("plain routing")? / fast;
            let vs_nft = ns("nft stateful dnat+snat")? / fast;
            Some(format!(
                "the fast path forwards at least {FAST_VS_PLAIN}x as cheaply as plain routing \
                 and {FAST_VS_NFT}x as nft stateful dnat (gateway CPU per packet, {sender} \
                 sender): {fast:.0} ns, {vs_plain:.2}x and {vs_nft:.2}x - {}",
                verdict(vs_plain >= FAST_VS_PLAIN && vs_nft >= FAST_VS_NFT)
            ))
        })
        .collect()
}

fn gap_note(rows: &[Row]) -> Option<String> {
    let lost = find_stat(rows, "switch_gap_lost", "move + switch", "max")?.value;
    let gap = find_stat(rows, "switch_gap_largest", "move + switch", "max")?.value;
    Some(format!(
        "no probe lost when the VM moves: worst {lost:.0} lost, largest gap {gap:.1} ms - {}",
        verdict(lost == 0.0)
    ))
}

/// The row of `measure` and `variant` (the first, if several).
fn find<'a>(rows: &'a [Row], measure: &str, variant: &str) -> Option<&'a Row> {
    rows.iter()
        .find(|r| r.measure == measure && r.variant == variant)
}

/// The row of `measure`, `variant` and statistic `stat`.
fn find_stat<'a>(rows: &'a [Row], measure: &str, variant: &str, stat: &str) -> Option<&'a Row> {
    rows.iter()
        .find(|r| r.measure == measure && r.variant == variant && r.param_str("stat") == Some(stat))
}

/// The largest value `pick` finds among `rows`, with its row.
fn worst(rows: &[Row], pick: impl Fn(&Row) -> Option<f64>) -> Option<(f64, &Row)> {
    rows.iter()
        .filter_map(|r| pick(r).map(|v| (v, r)))
        .max_by(|a, b| a.0.total_cmp(&b.0))
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

/// Why targets were missed, as far as the rows and what is known of the kernel paths
/// tell: one line per missed target, and one on what limited the forwarding measurement.
pub fn diagnose(rows: &[Row]) -> Vec<String> {
    let mut notes = Vec::new();
    if let Some(n) = command_why(rows) {
        notes.push(n);
    }
    notes.extend(forward_why(rows));
    notes.extend(fast_path_why(rows));
    if let Some(n) = gap_why(rows) {
        notes.push(n);
    }
    notes.extend(directory_why(rows));
    notes
}

fn fast_path_why(rows: &[Row]) -> Option<String> {
    let ns = |variant| find(rows, "forward_cpu_ns", variant).map(|r| r.value);
    let (fast, native, plain) = (ns(FAST_PATH)?, ns("netpage native")?, ns("plain routing")?);
    if plain / fast >= FAST_VS_PLAIN {
        return None;
    }
    Some(format!(
        "{FAST_PATH}: {fast:.0} ns per forwarded packet against {native:.0} ns for netpage \
         native without it and {plain:.0} ns for plain routing. Redirecting from XDP saves \
         {:.0} ns of the kernel's forwarding, but on a veth native XDP first copies every \
         packet (see netpage native), a cost a NIC driver's XDP does not have and that eats \
         most of the saving here",
        native - fast
    ))
}

fn command_why(rows: &[Row]) -> Option<String> {
    let (ms, r) = slowest_command(rows)?;
    if ms <= COMMAND_P50_MS {
        return None;
    }
    let floor = find_stat(rows, "switch_command", "netpage --version", "p50")?.value;
    Some(format!(
        "`netpage switch` took {ms:.2} ms at {} entries; starting and ending the binary \
         (`netpage --version`) alone took {floor:.2} ms, so {:.0}% of it is the process, \
         not the switch (opening the pinned maps, ending drains, two map updates)",
        r.param_u64("table_entries").unwrap_or(0),
        100.0 * floor / ms
    ))
}

fn forward_why(rows: &[Row]) -> Vec<String> {
    let mut notes = Vec::new();
    let value = |m: &str, v: &str| find(rows, m, v).map(|r| r.value);
    let (Some(plain_pps), Some(plain_offered), Some(plain_ns)) = (
        value("forward_pps", "plain routing"),
        value("forward_offered_pps", "plain routing"),
        value("forward_cpu_ns", "plain routing"),
    ) else {
        return notes;
    };
    let gw_cpu = value("forward_gw_cpu", "plain routing").unwrap_or(0.0);
    notes.push(format!(
        "Forwarding: under plain routing the gateway delivered {:.0}% of what the sender \
         offered while CPU 1 was {gw_cpu:.0}% busy in the kernel: {}. Packets/s then \
         depend on the sender and on the machine's other load as much as on the gateway; \
         `forward_cpu_ns` (CPU 1's kernel time per forwarded packet) is the comparison \
         that does not",
        100.0 * plain_pps / plain_offered.max(1.0),
        if plain_pps < 0.97 * plain_offered {
            "the ingress ring overflowed at times (the gateway was the limit) while at other \
             times CPU 1 waited for packets (the sender was): with one CPU each, neither side \
             holds the limit throughout"
        } else {
            "the sender, not the gateway, was the limit"
        }
    ));
    // The program's own cost: the translated packet less the bare XDP_PASS floor.
    let floor = find(rows, "per_packet", "xdp_pass floor").map_or(0.0, |r| r.value);
    let program = find(rows, "per_packet", "ipv4 udp").map(|r| r.value - floor);
    let missed = NETPAGE_MODES.iter().any(|mode| {
        find(rows, "forward_pps", mode)
            .and_then(|r| r.ratio)
            .is_some_and(|x| x < FORWARD_RATIO)
    });
    if let (true, Some(p)) = (missed, program) {
        let budget = plain_ns * (1.0 / FORWARD_RATIO - 1.0);
        notes.push(format!(
            "Forwarding at {FORWARD_RATIO}x plain routing leaves a translation {budget:.0} ns \
             per packet on this machine ({:.0}% of plain routing's {plain_ns:.0} ns), less \
             than the program's own {p:.0} ns (`per_packet`, ipv4 udp less the `XDP_PASS` \
             floor): on these CPUs the target asks for less than running the program costs, \
             in either mode. What remains to compare is the translators' cost per packet, \
             `forward_cpu_ns`, whose medians still move by some hundred ns between runs \
             (see the min and max of the repeats)",
            (1.0 / FORWARD_RATIO - 1.0) * 100.0
        ));
    }
    for mode in NETPAGE_MODES {
        let Some(r) = find(rows, "forward_pps", mode) else {
            continue;
        };
        if r.ratio.is_none_or(|x| x >= FORWARD_RATIO) {
            continue;
        }
        let Some(ns) = value("forward_cpu_ns", mode) else {
            continue;
        };
        let own = program.map_or(String::new(), |p| {
            let around = ns - plain_ns - p;
            if around > 0.0 {
                format!(
                    "; the program itself takes {p:.0} ns per packet (`per_packet`, ipv4 \
                     udp less the floor), so {around:.0} ns of the difference is the mode's \
                     path around it"
                )
            } else {
                format!(
                    "; that is within the program's own {p:.0} ns per packet (`per_packet`, \
                     ipv4 udp less the floor): the mode adds no measurable cost around it, \
                     and the packets/s lost beyond that come from the interplay of sender \
                     and gateway described above, not from CPU time"
                )
            }
        });
        let why = if mode == "netpage native" {
            "On a veth, native XDP is handed socket buffers, not driver buffers: one with \
             less than 256 bytes of headroom is copied into a page-pool buffer before the \
             program runs (veth_xdp_rcv_skb -> skb_pp_cow_data, with skb_copy_header, in \
             a perf profile of CPU 1 while this variant runs), a copy a NIC driver's XDP does \
             not make"
        } else {
            "Generic XDP also wants 256 bytes of headroom, so the kernel reallocates the \
             head of every packet with less before the program runs (do_xdp_generic -> \
             pskb_expand_head, in a perf profile of CPU 1 while this variant runs)"
        };
        notes.push(format!(
            "{mode}: {:.2}x plain routing in packets/s; CPU 1 spent {ns:.0} ns per forwarded \
             packet against {plain_ns:.0} ns for plain routing (+{:.0} ns){own}. {why}",
            r.ratio.unwrap_or(0.0),
            ns - plain_ns
        ));
    }
    notes
}

fn gap_why(rows: &[Row]) -> Option<String> {
    let lost = find_stat(rows, "switch_gap_lost", "move + switch", "max")?.value;
    if lost == 0.0 {
        return None;
    }
    let moved = find_stat(rows, "switch_gap_move", "move + switch", "max")?.value;
    let cmd = find_stat(rows, "switch_gap_command", "move + switch", "max")?.value;
    let quiet = find_stat(rows, "switch_gap_lost", "quiet window", "max").map_or(0.0, |r| r.value);
    Some(format!(
        "Switch gap: up to {lost:.0} probes lost in a move (up to {quiet:.0} in a quiet \
         window); the move took up to {moved:.1} ms and the switch command {cmd:.1} ms. At \
         one probe per millisecond, losses beyond the quiet window's are the time the VM's \
         traffic went to a host that no longer had its port"
    ))
}
