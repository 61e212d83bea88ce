//! The report's sections: which measures each part writes, and a paragraph on how they
//! were taken and how to read them.

use crate::bench::{Config, command, directory, forward::Variant, gap, report::Section, wan};

/// The sections of the report, in the order the parts run.
pub fn sections(cfg: &Config) -> Vec<Section> {
    vec![
        Section::new(
            "Per-packet cost in the kernel",
            format!(
                "`per_packet`: CPU time of one BPF_PROG_TEST_RUN call of {} runs, per run; \
                 median of {} repeats, variants alternated within each repeat. Packets go to \
                 the virtual side; a table of N entries holds N mappings per family (V2R, R2V, \
                 counters), the measured one among them. Baselines: the bare `XDP_PASS` \
                 program, and (`per_packet_growth`) the same packet at the smallest table. \
                 `per_packet_trace`: the IPv4 UDP packet with `netpage trace` off, on for \
                 another VM, and on for every packet (its ring buffer unread, so full: the \
                 capture, the selection and a failed send, counted as lost); off against \
                 the floor, since no build without the flag runs beside this one, on \
                 against off. Rows `..., one run per call` compare paging with segmentation: \
                 a run that encapsulates cannot be repeated on its own output, so each of \
                 {} calls per repeat runs the program once on a fresh copy of the packet, \
                 and the value is the mean of the kernel's own time for the run (the \
                 test-run loop's clock reads included, hence the floor measured the same \
                 way). Paging against that floor; segmentation against paging on the same \
                 side.",
                cfg.runs, cfg.repeats, cfg.single_runs
            ),
            &["per_packet", "per_packet_growth", "per_packet_trace"],
        ),
        Section::new(
            "Switch: the map updates",
            format!(
                "`v2r_update` is the one V2R update that redirects a VM's traffic; \
                 `switch_whole` the R2V insert and the V2R update together, as \
                 `netpage switch` makes them. Wall time of {} switches per row (p50, p99, \
                 max), idle and with a thread running the program on packets to the switched \
                 VM; the baseline is the idle row of the same size, or of the smallest table.",
                cfg.switches
            ),
            &["v2r_update", "switch_whole"],
        ),
        Section::new(
            "Switch: the `netpage switch` command",
            format!(
                "`switch_command`: wall time of the release `netpage switch` process, from \
                 spawning it to its exit, on a node (a bpffs pin directory, netpage attached \
                 to a veth) whose table holds N mappings per family. {} runs per \
                 row, alternated with `{}`, the floor of starting any process of that binary, \
                 which is the baseline of the smallest table; larger tables are compared with \
                 the smallest. `metrics_scrape`: on the same nodes, one metrics scrape (read \
                 the node's maps, write the OpenMetrics text, as `netpage metrics` does for \
                 each scrape; `params.bytes` is the text's size), the median of 3.",
                cfg.command_runs,
                command::FLOOR
            ),
            &["switch_command", "metrics_scrape"],
        ),
        Section::new(
            "Forwarding through a gateway",
            format!(
                "A UDP stream of {}-byte payloads from a sender namespace through a gateway \
                 namespace toward a receiver namespace (veth pairs, transmit checksum offload \
                 off), {:.1} s per variant in each of {} repeats, the variants alternated; \
                 medians (`params` give the range over the repeats). The sender (CPU 0) \
                 sends in two ways, each a set of rows: with `sendmmsg` on a packet socket \
                 (socket buffers, which native XDP first copies into a page-pool buffer), \
                 and as XDP frames, as a NIC driver delivers them (`, xdp frames`: \
                 BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES and a program that \
                 writes the frame and redirects it into the sender's veth). `params.\
                 limited_by` says whether the gateway (it delivered less than 95% of what \
                 was offered) or the sender limited the row. The gateway's ingress veth \
                 receives in a NAPI thread (GRO on) pinned to CPU 1 at a real-time \
                 priority, so all the gateway's work (XDP, routing, nftables, \
                 transmission) is on CPU 1. The receiver's veth drops every frame in an XDP \
                 program, so it receives in NAPI and takes XDP frames as a NIC does (the \
                 fast path's redirect reaches it); its NAPI thread runs on CPU 0 at a \
                 real-time priority, so receiving costs CPU 1 nothing, and what it polled \
                 is what was delivered; `params.redirected_pct` of the fast path's rows: the \
                 share of the packets it handled that it redirected (the rest fell back to \
                 the kernel). In the translating variants the gateway has no route to the VA, so \
                 only translated packets count; under segmentation (`netpage \
                 segmentation native`) the VA is mapped to the RA as its locator, and each \
                 packet leaves encapsulated (28 bytes more) and routed by the kernel. \
                 `forward_pps`: packets that reached the \
                 receiver's port per second; `forward_offered_pps`: what the sender offered \
                 (the excess was refused by the full ingress ring); `forward_cpu_ns`: CPU 1's \
                 kernel time per forwarded packet (/proc/stat), the cost that stays \
                 comparable when the sender, not the gateway, is the limit; `forward_gw_cpu`: \
                 how busy CPU 1 was in the kernel, and `forward_softirq` in softirq (near 0: \
                 the NAPI thread's time is system time); `forward_sender_cpu`: how busy CPU 0 \
                 was. Baseline: plain routing (`{}`). A ratio above 1 is better for \
                 packets/s, worse for ns.",
                64,
                cfg.forward_time.as_secs_f64(),
                cfg.forward_repeats,
                Variant::Plain.name()
            ),
            &[
                "forward_pps",
                "forward_offered_pps",
                "forward_cpu_ns",
                "forward_gw_cpu",
                "forward_softirq",
                "forward_sender_cpu",
            ],
        ),
        Section::new(
            "Each method on the wire",
            format!(
                "The namespace world (every link's MTU 1,500): a TCP stream of {} payload \
                 bytes from the client to the VM at host A, carried by plain routing, \
                 paging, and segmentation with outer headers of each family, for a VA of \
                 each family; a fresh world per row. `wire_bytes_per_payload_byte`: bytes \
                 the gateway sent to host A (an nftables counter at the link's egress, \
                 Ethernet headers included; the \
                 acknowledgements back, whose number varies with timing, left out) per \
                 payload byte the VM received, and in `params` the packets sent and their header bytes \
                 (beyond the payload, Ethernet on), which tell the encapsulation's bytes from \
                 a stream cut into more packets. \
                 `largest_tcp_payload`: the client's segment size at the end \
                 (`tcpi_snd_mss`, after path MTU discovery answered by the gateway's \
                 \"too big\" replies); `params.fragments_created` counts fragments made \
                 anywhere in the world meanwhile (0: every segment passed whole). Baseline: \
                 plain routing of the same family.",
                cfg.wire_bytes
            ),
            &["wire_bytes_per_payload_byte", "largest_tcp_payload"],
        ),
        Section::new(
            "Switch gap with a live VM",
            format!(
                "The namespace world: the client probes the VM's UDP echo every millisecond. \
                 {} times, a quiet window (the baseline: the machine's own jitter) is followed \
                 by a window in which the VM changes hosts: {}. `switch_gap_lost`: probes \
                 never answered in a window; `switch_gap_largest`: the longest time between \
                 two answers; `switch_gap_move`: how long the move took (plugging, unplugging \
                 and netpage's attach and detach, the switch left out); \
                 `switch_gap_command`: how long the one switch command took. p50 and max \
                 over the windows.",
                cfg.gap_switches,
                gap::HOW
            ),
            &[
                "switch_gap_lost",
                "switch_gap_largest",
                "switch_gap_move",
                "switch_gap_command",
            ],
        ),
        Section::new(
            "Switch through the directory on etcd",
            format!(
                "One etcd member and N `netpage agent`s (N = {}), each on a node of its own \
                 (a bpffs pin directory, tables created by its agent, no interface); one VM \
                 mapping switched {} times per N between two RAs with `{}` (`--json`). \
                 `directory_propagation`: each node's map update after the switch transaction \
                 (`propagation_ms` of the command's JSON), p50, p99 and max over every node \
                 and switch. `directory_switch_command`: wall time of the whole command, from \
                 spawning it to its exit (reserve, wait for every node, switch, wait for \
                 every node), at the largest N, against `{}` over as many pin directories \
                 with no agent (an agent's node refuses local writes), the two taking turns.",
                cfg.directory_agents
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                cfg.directory_switches,
                directory::VIA_ETCD,
                directory::LOCAL
            ),
            &["directory_propagation", "directory_switch_command"],
        ),
        Section::new(
            "The WAN delay line of the test world",
            format!(
                "A test instrument, not netpage: the delay line that `Options::wan` puts \
                 between the world's sites (an AF_PACKET relay in a namespace of its own). A \
                 UDP stream from the gateway to host A's uplink address, {:.1} s at each rate \
                 (packets/s: {}), over the plain link and through the delay line set to {} ms \
                 one way. Each datagram carries its send time; the receiver takes the \
                 kernel's receive time. `wan_one_way`: one-way time per variant, p50 and \
                 p99. `wan_added_delay`: the delay line's one-way times minus the plain \
                 link's median at the same rate, p50 and p99, against the configured delay \
                 (a ratio of 1 is exact; the delay is a floor, so it is never below). \
                 `params` give datagrams sent and received. `wan_tcp`: one TCP connection \
                 from the gateway to host A for as long, Mbit/s read by host A (slow start \
                 included), through the delay line against the plain link; `params` give the \
                 frames the delay line dropped (its queue full) or the kernel dropped before \
                 it read them.",
                cfg.wan_time.as_secs_f64(),
                cfg.wan_rates
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                wan::DELAY.as_millis(),
            ),
            &["wan_one_way", "wan_added_delay", "wan_tcp"],
        ),
        Section::new(
            "Live migration of a QEMU guest",
            format!(
                "The VM world: a QEMU guest (TCG, 128 MiB) on a tap at host A, migrated to \
                 host B over a link shaped to 200 Mbit/s while the client pings it every \
                 millisecond; {} round(s), the variants taking turns. `stop`: `netpage \
                 migrate --switch-at stop` (the switch just before the source pauses); \
                 `resume`: `--switch-at resume`; `routes`: no netpage, the gateway's host \
                 route to the VA replaced by hand when the destination resumes, the way \
                 operators move traffic today; `l2-stretch`: no netpage nor routes, the \
                 guest's segment stretched over VXLAN between the hosts (routed at host A, \
                 the underlay's MTU raised by VXLAN's 50 bytes), the MAC moved by QEMU's \
                 announcement after the migration, the industry's default; \
                 `segmentation`: `--switch-at stop` with the VA mapped with method encap \
                 (GUE to each host's locator; the guest's NIC without offloads, since \
                 segmentation is attached at the XDP hook). Per run: \
                 probes lost, the client's largest gap, QEMU's STOP to RESUME, the gap \
                 minus that pause, QEMU's downtime and when the traffic was switched \
                 relative to STOP; then medians per variant against `routes`. A failed \
                 run (QEMU 7.2 under TCG sometimes corrupts a guest that takes four \
                 passes) is a `migration_failed` row with its reason.",
                cfg.migration_rounds
            ),
            &[
                "migration_lost",
                "migration_gap",
                "migration_stop_to_resume",
                "migration_gap_minus_pause",
                "migration_downtime",
                "migration_switch_minus_stop",
                "migration_failed",
                "migration_lost_median",
                "migration_gap_median",
                "migration_stop_to_resume_median",
                "migration_gap_minus_pause_median",
            ],
        ),
        Section::new(
            "Live migration over a WAN",
            format!(
                "The same migration with the sites {} ms apart (one way, the test world's \
                 delay line on every link between gateway and hosts and on the migration \
                 link; the client's link is not delayed); {} round(s), the cases taking \
                 turns. `stop`: `--switch-at stop` as it comes, the downtime limit held until the \
                 last copy fits, then every node switched and the source paused by netpage at \
                 once (what is in flight toward the source and reaches the old site after its \
                 switch is forwarded to the new RA); `stop-no-hold`: `--no-hold`, every node \
                 switched on hearing STOP, then what the source's tap holds salvaged and sent \
                 on; `stop-no-salvage`: `--no-hold --no-salvage`, the negative control of the \
                 salvage; `resume` (its tap salvaged at RESUME) and `resume-no-salvage`; \
                 `routes`, switched by hand. Per run: probes lost, the largest gap, STOP to \
                 RESUME, the gap minus that pause, and the guest's own first-reply latency \
                 after RESUME, from a kernel-stamped capture on the destination tap (the first \
                 probe in after RESUME to its reply out); `migration_wan_salvaged`, the \
                 packets netpage read out of the source's tap and sent on. \
                 `stop@destination-first` and `@source-first`: the same case with its \
                 `--node`s destination host, source host, gateway, or source host, gateway, \
                 destination host, instead of gateway first, compared with it; \
                 `migration_wan_node_switch_minus_stop` gives each node's V2R update against \
                 STOP; `migration_wan_delay_line_lost`, the frames the delay line itself lost \
                 on the links the probes take (a test instrument's loss, not the switch's).",
                crate::vmworld::bench::WAN_DELAY.as_millis(),
                cfg.migration_wan_rounds,
            ),
            &[
                "migration_wan_lost",
                "migration_wan_gap",
                "migration_wan_stop_to_resume",
                "migration_wan_gap_minus_pause",
                "migration_wan_first_reply",
                "migration_wan_downtime",
                "migration_wan_switch_minus_stop",
                "migration_wan_node_switch_minus_stop",
                "migration_wan_failed",
                "migration_wan_lost_median",
                "migration_wan_gap_median",
                "migration_wan_stop_to_resume_median",
                "migration_wan_gap_minus_pause_median",
                "migration_wan_first_reply_median",
            ],
        ),
    ]
}
