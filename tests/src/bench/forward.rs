//! Part 4: forwarding throughput through a gateway namespace, netpage against plain kernel
//! routing and two nftables translations of the same VA -> RA mapping.
//!
//! ```text
//!  sender ── s0 ─ gNNN ── gateway ── g1 ─ rNNN ── receiver (XDP_DROP)
//!  10.1.0.2      10.1.0.1        10.2.0.1   10.2.0.2
//! ```
//!
//! The sender (a thread pinned to CPU 0 at nice -20) sends the same small UDP datagram to
//! the VA over and over, in one of two ways: in batches of `sendmmsg` on a packet socket
//! that bypasses the qdisc (the gateway's veth gets socket buffers, which native XDP must
//! first copy into a page-pool buffer), or as XDP frames injected with
//! `BPF_F_TEST_XDP_LIVE_FRAMES` (see `live_frames`), as a NIC driver delivers them. Each
//! row says which one the gateway got, and what limited it: the gateway (it delivered less
//! than 95% of what was offered) or the sender (it took everything). The gateway's ingress veth receives in a NAPI thread (GRO on, as a NIC driver's
//! NAPI; threaded and pinned to CPU 1 at a real-time priority, so that it takes precedence
//! over tasks as softirq work does), in every variant: XDP in native mode, the whole stack
//! after it and the transmission to the receiver run there, so that CPU 1 does the
//! gateway's work and nothing else of the bench. The receiver's veth has an XDP program
//! that drops every frame (see `live_frames::Sink`): with it the veth receives in NAPI and
//! takes XDP frames, as a NIC does, so the fast path's `XDP_REDIRECT` reaches it. Its NAPI
//! thread runs on CPU 0, the sender's, at a real-time priority, so that receiving costs the
//! gateway's CPU nothing and no frame waits behind the sender; what it polled (its
//! `rx_packets`) is what the receiver got. The gateway has no route to the VA in the
//! translating variants, so a packet gets there only if it was translated.
//!
//! Variants, alternated in a rotated order in each repeat: plain routing of the VA, nftables
//! stateful DNAT (+ SNAT for the way back), nftables stateless rewrite with `notrack`,
//! netpage in native mode, netpage in skb mode, netpage in native mode with its fast path
//! (`bpf_fib_lookup` + `XDP_REDIRECT`, bypassing the kernel's forwarding), netpage at
//! the tc hook, and netpage in native mode with the VA mapped by segmentation (each packet
//! encapsulated in IPv4 and UDP to the RA as the VM's locator, 28 bytes more on the wire,
//! then routed by the kernel, or with the fast path redirected by the program).

use std::{
    ffi::CString,
    io::Write as _,
    net::{IpAddr, Ipv4Addr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::PathBuf,
    process::Stdio,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    thread,
    time::{Duration, Instant},
};

use serde_json::json;

use crate::{
    bench::{
        BENCH_PINS, Config,
        live_frames::{LiveFrames, Sink},
        note,
        report::Row,
        stats::Sorted,
    },
    build::{frame4, udp},
    netns::{NetNs, assert_ok, check, output},
    pins::PinDirs,
    world::netpage_bin,
};

const SENDER: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 1, 0, 2));
const RECEIVER: &str = "10.2.0.2";
const VA: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 19, 0, 10));
const RA: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 10, 100));
/// MAC addresses: the sender's frames (see `build::ether`) go from ..:0a to ..:0b.
const MAC_S0: &str = "02:00:00:00:00:0a";
const MAC_GW_IN: &str = "02:00:00:00:00:0b";
const MAC_R0: &str = "02:00:00:00:00:0d";
/// UDP payload of every datagram.
const PAYLOAD: [u8; 64] = [0x5a; 64];
/// Messages per `sendmmsg` call.
const BATCH: usize = 64;
/// Nice value of the sender thread.
const NICE: libc::c_int = -20;
/// Time the stream runs before counting starts.
const WARMUP: Duration = Duration::from_millis(300);
/// The CPU the gateway works on, and the sender's.
const GW_CPU: usize = 1;
const SENDER_CPU: usize = 0;

/// How the sender hands the stream to the gateway's veth.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sender {
    /// `sendmmsg` on a packet socket: socket buffers.
    Socket,
    /// `BPF_PROG_TEST_RUN` with live frames: XDP frames, as from a NIC driver.
    XdpFrames,
}

impl Sender {
    pub const ALL: [Sender; 2] = [Sender::Socket, Sender::XdpFrames];

    /// The name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Sender::Socket => "socket",
            Sender::XdpFrames => "xdp frames",
        }
    }
}

/// The share of the offered packets below which the gateway, not the sender, limits a
/// stream: it did not take all it was given.
const GATEWAY_BOUND: f64 = 0.95;

/// How the gateway treats the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Plain,
    NftStateful,
    NftStateless,
    NetpageNative,
    NetpageSkb,
    /// Native mode with `--fast-path`: the program forwards translated packets itself.
    NetpageFast,
    /// The tc hook (a tcx link on ingress), on the socket buffer.
    NetpageTc,
    /// Native mode, the VA mapped by segmentation: encapsulated to its locator.
    NetpageSegment,
    /// The same with the fast path: the encapsulated packet leaves by `XDP_REDIRECT`.
    NetpageSegmentFast,
}

impl Variant {
    pub const ALL: [Variant; 9] = [
        Variant::Plain,
        Variant::NftStateful,
        Variant::NftStateless,
        Variant::NetpageNative,
        Variant::NetpageSkb,
        Variant::NetpageFast,
        Variant::NetpageTc,
        Variant::NetpageSegment,
        Variant::NetpageSegmentFast,
    ];

    /// The name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Plain => "plain routing",
            Variant::NftStateful => "nft stateful dnat+snat",
            Variant::NftStateless => "nft stateless rewrite",
            Variant::NetpageNative => "netpage native",
            Variant::NetpageSkb => "netpage skb",
            Variant::NetpageFast => "netpage native fast path",
            Variant::NetpageTc => "netpage tc",
            Variant::NetpageSegment => "netpage segmentation native",
            Variant::NetpageSegmentFast => "netpage segmentation native fast path",
        }
    }
}

/// The gateway's nftables ruleset for the mapping VA -> RA, with `ingress` its virtual
/// side: stateful (DNAT in, SNAT out, conntrack keeps the flows) or stateless (addresses
/// rewritten in place on every packet, conntrack off).
fn nft_ruleset(stateful: bool, ingress: &str) -> String {
    let (va, ra) = (VA, RA);
    if stateful {
        format!(
            r#"table ip npbench {{
	chain pre {{
		type nat hook prerouting priority dstnat; policy accept;
		iif "{ingress}" ip daddr {va} dnat to {ra}
	}}
	chain post {{
		type nat hook postrouting priority srcnat; policy accept;
		oif "{ingress}" ip saddr {ra} snat to {va}
	}}
}}
"#
        )
    } else {
        format!(
            r#"table ip npbench {{
	chain pre {{
		type filter hook prerouting priority raw; policy accept;
		notrack
		iif "{ingress}" ip daddr {va} ip daddr set {ra}
	}}
	chain post {{
		type filter hook postrouting priority raw; policy accept;
		oif "{ingress}" ip saddr {ra} ip saddr set {va}
	}}
}}
"#
        )
    }
}

/// The method the gateway's mapping of the VA uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mapping {
    Page,
    Segment,
}

/// The gateway's locator under segmentation: its address toward the receiver.
const GW_LOCATOR: &str = "10.2.0.1";

/// One variant's stream over one measured interval.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    /// Packets per second the sender offered (sent and refused).
    pub offered_pps: f64,
    /// Packets per second the receiver got.
    pub delivered_pps: f64,
    /// Share of the gateway CPU's time spent in softirq, in percent.
    pub softirq_pct: f64,
    /// Share of the gateway CPU's time that was busy in the kernel, in percent.
    pub kernel_pct: f64,
    /// Gateway CPU kernel time per delivered packet, in nanoseconds.
    pub cpu_ns: f64,
    /// Share of the sender CPU's time that was busy, in percent.
    pub sender_busy_pct: f64,
    /// With the fast path: the packets it redirected, in percent of those it handled
    /// (redirected, or left to the kernel's forwarding as a fallback).
    pub redirected_pct: Option<f64>,
}

/// The three namespaces and the gateway's netpage node; everything is removed on drop.
pub struct Bed {
    // Declared before `pins`: namespaces (and their XDP programs) go first.
    snd: NetNs,
    gw: NetNs,
    rcv: NetNs,
    _pins: PinDirs,
    pin: PathBuf,
    /// The gateway's ingress veth and the receiver's, named uniquely so that their NAPI
    /// threads can be found.
    ingress: String,
    receiver: String,
    /// The receiver's program, attached once the links are made; detached when the bed
    /// goes.
    sink: Option<Sink>,
    /// How the VA is mapped on the gateway now, if it is.
    mapped: Option<Mapping>,
    /// Whether the fast path is on, so that its count of redirected packets is read.
    fast: bool,
}

/// Measures every variant, `cfg.forward_repeats` times each, and reports medians.
pub fn run(cfg: &Config) -> Vec<Row> {
    assert!(
        std::thread::available_parallelism().map_or(1, |n| n.get()) > GW_CPU,
        "the forwarding measurement needs two CPUs"
    );
    note("forward: building sender, gateway and receiver namespaces");
    let mut bed = Bed::new();
    let n = Variant::ALL.len();
    let mut rows_out = Vec::new();
    for sender in Sender::ALL {
        let mut samples = vec![Vec::with_capacity(cfg.forward_repeats); n];
        for r in 0..cfg.forward_repeats {
            for j in 0..n {
                let k = (j + r) % n;
                let v = Variant::ALL[k];
                bed.setup(v);
                let s = bed.measure(cfg.forward_time, sender);
                bed.teardown(v);
                note(format_args!(
                    "forward: {} sender, repeat {}/{}, {}: {:.0} kpps delivered of {:.0} \
                     offered, gateway CPU {:.0}% kernel ({:.0}% softirq), {:.0} ns/packet",
                    sender.name(),
                    r + 1,
                    cfg.forward_repeats,
                    v.name(),
                    s.delivered_pps / 1e3,
                    s.offered_pps / 1e3,
                    s.kernel_pct,
                    s.softirq_pct,
                    s.cpu_ns
                ));
                samples[k].push(s);
            }
        }
        rows_out.extend(rows(cfg, sender, &samples));
    }
    drop(bed);
    rows_out
}

/// The rows: one per variant and quantity, each against plain routing.
fn rows(cfg: &Config, sender: Sender, samples: &[Vec<Sample>]) -> Vec<Row> {
    type Pick = fn(&Sample) -> f64;
    let quantities: [(&str, &str, Pick); 6] = [
        ("forward_pps", "packets/s", |s| s.delivered_pps),
        ("forward_offered_pps", "packets/s", |s| s.offered_pps),
        ("forward_cpu_ns", "ns", |s| s.cpu_ns),
        ("forward_gw_cpu", "%", |s| s.kernel_pct),
        ("forward_softirq", "%", |s| s.softirq_pct),
        ("forward_sender_cpu", "%", |s| s.sender_busy_pct),
    ];
    let mut rows = Vec::new();
    for (measure, unit, pick) in quantities {
        let sorted: Vec<Sorted> = samples
            .iter()
            .map(|s| Sorted::new(s.iter().map(pick).collect()))
            .collect();
        let base = sorted[0].median();
        for (k, (v, s)) in Variant::ALL.iter().zip(&sorted).enumerate() {
            let taken = Sorted::new(
                samples[k]
                    .iter()
                    .map(|s| s.delivered_pps / s.offered_pps.max(1.0))
                    .collect(),
            );
            let limited_by = if taken.median() < GATEWAY_BOUND {
                "gateway"
            } else {
                "sender"
            };
            // The range over the repeats, to judge how noisy the machine was.
            let mut params = json!({
                "sender": sender.name(),
                "limited_by": limited_by,
                "payload_bytes": PAYLOAD.len(),
                "seconds": cfg.forward_time.as_secs_f64(),
                "min": round(s.min()),
                "max": round(s.max()),
            });
            let redirected: Vec<f64> = samples[k].iter().filter_map(|s| s.redirected_pct).collect();
            if !redirected.is_empty() {
                params["redirected_pct"] = json!(round(Sorted::new(redirected).median()));
            }
            let name = variant_name(*v, sender);
            let mut row = Row::new(measure, &name, params, s.median(), unit).repeats(s.count());
            if k > 0 && base > 0.0 && s.median() > 0.0 {
                row = row.against(variant_name(Variant::Plain, sender), base);
            }
            rows.push(row);
        }
    }
    rows
}

/// A variant's name in the report: as before for the socket sender, with the sender's
/// name for the others.
fn variant_name(v: Variant, sender: Sender) -> String {
    match sender {
        Sender::Socket => v.name().to_owned(),
        other => format!("{}, {}", v.name(), other.name()),
    }
}

/// `x` to three significant digits, for the report's parameters.
fn round(x: f64) -> f64 {
    if x == 0.0 {
        return 0.0;
    }
    let scale = 10f64.powi(2 - x.abs().log10().floor() as i32);
    (x * scale).round() / scale
}

impl Bed {
    /// Builds the namespaces, links, addresses and routes shared by every variant.
    pub fn new() -> Self {
        let pid = std::process::id();
        let ns = |what: &str| NetNs::create(&format!("npbench{pid}-{what}"));
        let (snd, gw, rcv) = (ns("snd"), ns("gw"), ns("rcv"));
        let mut pins = PinDirs::new(BENCH_PINS, "fwd");
        let pin = pins.mount("gw");
        let ingress = format!("g{}", pid % 1_000_000);
        let receiver = format!("r{}", pid % 1_000_000);
        let mut bed = Bed {
            snd,
            gw,
            rcv,
            _pins: pins,
            pin,
            ingress,
            receiver,
            sink: None,
            mapped: None,
            fast: false,
        };
        bed.wire();
        bed
    }

    fn wire(&mut self) {
        let (ing, rcv) = (self.ingress.as_str(), self.receiver.as_str());
        sysctl(&self.gw, "net/ipv4/ip_forward", "1");
        for ns in [&self.snd, &self.gw, &self.rcv] {
            sysctl(ns, "net/ipv4/conf/all/rp_filter", "0");
            sysctl(ns, "net/ipv4/conf/default/rp_filter", "0");
        }
        self.snd.ip(&[
            "link",
            "add",
            "s0",
            "address",
            MAC_S0,
            "type",
            "veth",
            "peer",
            "name",
            ing,
            "address",
            MAC_GW_IN,
            "netns",
            self.gw.name(),
        ]);
        self.gw.ip(&[
            "link",
            "add",
            "g1",
            "type",
            "veth",
            "peer",
            "name",
            rcv,
            "address",
            MAC_R0,
            "netns",
            self.rcv.name(),
        ]);
        for (ns, ifname, addr) in [
            (&self.snd, "s0", "10.1.0.2/24"),
            (&self.gw, ing, "10.1.0.1/24"),
            (&self.gw, "g1", "10.2.0.1/24"),
            (&self.rcv, rcv, "10.2.0.2/24"),
        ] {
            // Checksums in the packet (translation updates them); and without TSO on the
            // sending side, a veth hands every packet to its peer's NAPI.
            check(
                ns.command("ethtool")
                    .args(["-K", ifname, "tx", "off", "tso", "off"]),
            );
            ns.ip(&["addr", "add", addr, "dev", ifname]);
            ns.ip(&["link", "set", ifname, "up"]);
        }
        // GRO gives the ingress veth a NAPI instance even without XDP; make it a thread.
        check(self.gw.command("ethtool").args(["-K", ing, "gro", "on"]));
        threaded_napi(&self.gw, ing);
        self.gw.ip(&[
            "neigh",
            "replace",
            RECEIVER,
            "lladdr",
            MAC_R0,
            "dev",
            "g1",
            "nud",
            "permanent",
        ]);
        self.gw
            .ip(&["route", "add", &format!("{RA}/32"), "via", RECEIVER]);
        for ns in [&self.snd, &self.gw, &self.rcv] {
            ns.wait_up();
        }
        // The sink gives the receiver its NAPI instance, a thread on the sender's CPU.
        let sink = self
            .rcv
            .run(|| Sink::attach(ifindex(rcv)))
            .expect("attach the receiver's XDP program");
        self.sink = Some(sink);
        threaded_napi(&self.rcv, rcv);
        napi_on_cpu(rcv, SENDER_CPU);
        napi_on_cpu(ing, GW_CPU);
    }

    /// Loads an nftables script in `ns`.
    fn nft(&self, ns: &NetNs, script: &str) {
        let mut child = ns
            .command("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nft");
        child
            .stdin
            .take()
            .expect("nft stdin")
            .write_all(script.as_bytes())
            .expect("feed nft");
        let out = child.wait_with_output().expect("wait for nft");
        assert_ok(&out, &format!("nft -f - in {}:\n{script}", ns.name()));
    }

    fn netpage(&self, args: &[&str]) {
        let out = output(
            self.gw
                .command(netpage_bin())
                .arg("--pin-dir")
                .arg(&self.pin)
                .args(args),
        );
        assert_ok(&out, &format!("netpage {}", args.join(" ")));
    }

    /// Packets the fast path redirected so far (its `fast_redirected` counter), and those
    /// it handled: redirected, or left to the kernel (its `fast_fallback_*` counters).
    fn fast_path_counts(&self) -> (u64, u64) {
        let out = output(
            self.gw
                .command(netpage_bin())
                .arg("--pin-dir")
                .arg(&self.pin)
                .args(["--json", "stats"]),
        );
        assert_ok(&out, "netpage --json stats");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stats JSON");
        let counters = v["counters"].as_object().expect("counters");
        let count = |name: &str| counters.get(name).and_then(|c| c.as_u64()).unwrap_or(0);
        let fallbacks: u64 = counters
            .keys()
            .filter(|k| k.starts_with("fast_fallback_"))
            .map(|k| count(k))
            .sum();
        let redirected = count("fast_redirected");
        (redirected, redirected + fallbacks)
    }

    /// Configures the gateway for `v`.
    pub fn setup(&mut self, v: Variant) {
        self.fast = matches!(v, Variant::NetpageFast | Variant::NetpageSegmentFast);
        let ing = self.ingress.clone();
        let (va, ra) = (VA.to_string(), RA.to_string());
        match v {
            Variant::Plain => {
                self.gw
                    .ip(&["route", "add", &format!("{VA}/32"), "via", RECEIVER]);
            }
            Variant::NftStateful | Variant::NftStateless => {
                self.nft(&self.gw, &nft_ruleset(v == Variant::NftStateful, &ing));
            }
            Variant::NetpageNative
            | Variant::NetpageSkb
            | Variant::NetpageFast
            | Variant::NetpageTc
            | Variant::NetpageSegment
            | Variant::NetpageSegmentFast => {
                let how: &[&str] = match v {
                    Variant::NetpageSkb => &["--hook", "xdp", "--mode", "skb", "--no-fast-path"],
                    Variant::NetpageFast | Variant::NetpageSegmentFast => {
                        &["--hook", "xdp", "--mode", "native", "--fast-path"]
                    }
                    Variant::NetpageTc => &["--hook", "tc", "--no-fast-path"],
                    _ => &["--hook", "xdp", "--mode", "native", "--no-fast-path"],
                };
                let mapping = match v {
                    Variant::NetpageSegment | Variant::NetpageSegmentFast => Mapping::Segment,
                    _ => Mapping::Page,
                };
                self.map(mapping, &va, &ra);
                for (iface, side) in [(ing.as_str(), "virtual"), ("g1", "physical")] {
                    self.netpage(&[&["attach", iface, "--side", side], how].concat());
                }
            }
        }
        // Attaching may make the NAPI thread anew.
        napi_on_cpu(&self.ingress, GW_CPU);
    }

    /// Undoes [`Bed::setup`] of `v`.
    pub fn teardown(&mut self, v: Variant) {
        self.fast = false;
        let ing = self.ingress.clone();
        match v {
            Variant::Plain => {
                self.gw.ip(&["route", "del", &format!("{VA}/32")]);
            }
            Variant::NftStateful | Variant::NftStateless => {
                self.nft(&self.gw, "delete table ip npbench\n");
            }
            Variant::NetpageNative
            | Variant::NetpageSkb
            | Variant::NetpageFast
            | Variant::NetpageTc
            | Variant::NetpageSegment
            | Variant::NetpageSegmentFast => {
                self.netpage(&["detach", &ing]);
                self.netpage(&["detach", "g1"]);
            }
        }
    }

    /// Maps the VA to the RA on the gateway by `how`, replacing a mapping of the other
    /// method. Under segmentation the RA is the locator of the node hosting the VM and the
    /// gateway's own locator is its address on the receiver's side.
    fn map(&mut self, how: Mapping, va: &str, ra: &str) {
        if self.mapped == Some(how) {
            return;
        }
        if self.mapped.take().is_some() {
            self.netpage(&["map", "del", "--vm", va]);
        }
        match how {
            Mapping::Page => {
                self.netpage(&["locator", "--clear"]);
                self.netpage(&["map", "add", "--vm", va, "--real", ra]);
            }
            Mapping::Segment => {
                self.netpage(&["locator", "--own", GW_LOCATOR]);
                self.netpage(&["map", "add", "--vm", va, "--locator", ra]);
            }
        }
        self.mapped = Some(how);
    }

    /// Runs the stream from `sender` for `time` after a warm-up and measures it.
    pub fn measure(&self, time: Duration, sender: Sender) -> Sample {
        let frame = frame4(&|a| a, SENDER, VA, 17, |s, d| udp(s, d, &PAYLOAD));
        let stop = AtomicBool::new(false);
        let counts = SendCounts::default();
        thread::scope(|s| {
            let sender = s.spawn(|| {
                self.snd.run(|| match sender {
                    Sender::Socket => send(&frame, &stop, &counts),
                    Sender::XdpFrames => send_frames(&frame, &stop, &counts),
                })
            });
            thread::sleep(WARMUP);
            let before = Snapshot::take(self, &counts);
            thread::sleep(time);
            let after = Snapshot::take(self, &counts);
            stop.store(true, Ordering::Relaxed);
            sender.join().expect("sender thread");
            after.since(&before)
        })
    }
}

impl Default for Bed {
    fn default() -> Self {
        Self::new()
    }
}

/// What the sender did so far.
#[derive(Default)]
struct SendCounts {
    sent: AtomicU64,
    refused: AtomicU64,
}

/// Counters at one moment.
struct Snapshot {
    at: Instant,
    sent: u64,
    refused: u64,
    received: u64,
    /// With the fast path: packets it redirected, and packets it handled.
    fast: Option<(u64, u64)>,
    gw_cpu: CpuTimes,
    sender_cpu: CpuTimes,
}

impl Snapshot {
    fn take(bed: &Bed, counts: &SendCounts) -> Self {
        let received = bed.rcv.rx_counts(&bed.receiver).1;
        Self {
            at: Instant::now(),
            sent: counts.sent.load(Ordering::Relaxed),
            refused: counts.refused.load(Ordering::Relaxed),
            received,
            fast: bed.fast.then(|| bed.fast_path_counts()),
            gw_cpu: CpuTimes::read(GW_CPU),
            sender_cpu: CpuTimes::read(SENDER_CPU),
        }
    }

    fn since(&self, before: &Snapshot) -> Sample {
        let secs = self.at.duration_since(before.at).as_secs_f64();
        let delivered = self.received - before.received;
        let offered = (self.sent + self.refused) - (before.sent + before.refused);
        let gw = self.gw_cpu.since(&before.gw_cpu);
        let snd = self.sender_cpu.since(&before.sender_cpu);
        let share = |part: u64, whole: u64| 100.0 * part as f64 / whole.max(1) as f64;
        Sample {
            offered_pps: offered as f64 / secs,
            delivered_pps: delivered as f64 / secs,
            softirq_pct: share(gw.softirq, gw.total()),
            kernel_pct: share(gw.kernel(), gw.total()),
            cpu_ns: gw.kernel() as f64 * 1e9 / clock_ticks() / delivered.max(1) as f64,
            sender_busy_pct: share(snd.total() - snd.idle, snd.total()),
            redirected_pct: self
                .fast
                .zip(before.fast)
                .map(|(now, then)| share(now.0 - then.0, now.1 - then.1)),
        }
    }
}

/// One CPU's line of /proc/stat, in clock ticks.
#[derive(Clone, Copy, Debug, Default)]
struct CpuTimes {
    user: u64,
    system: u64,
    idle: u64,
    irq: u64,
    softirq: u64,
    other: u64,
}

impl CpuTimes {
    fn read(cpu: usize) -> Self {
        let stat = std::fs::read_to_string("/proc/stat").expect("read /proc/stat");
        let tag = format!("cpu{cpu} ");
        let line = stat
            .lines()
            .find(|l| l.starts_with(&tag))
            .unwrap_or_else(|| panic!("no {tag}in /proc/stat"));
        // user nice system idle iowait irq softirq steal (guest time is inside user).
        let f: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse().expect("a /proc/stat number"))
            .collect();
        Self {
            user: f[0] + f[1],
            system: f[2],
            idle: f[3] + f[4],
            irq: f[5],
            softirq: f[6],
            other: f[7],
        }
    }

    fn since(&self, b: &CpuTimes) -> CpuTimes {
        CpuTimes {
            user: self.user - b.user,
            system: self.system - b.system,
            idle: self.idle - b.idle,
            irq: self.irq - b.irq,
            softirq: self.softirq - b.softirq,
            other: self.other - b.other,
        }
    }

    /// Time in the kernel: system, hard and soft interrupts.
    fn kernel(&self) -> u64 {
        self.system + self.irq + self.softirq
    }

    fn total(&self) -> u64 {
        self.user + self.idle + self.kernel() + self.other
    }
}

/// Clock ticks per second, the unit of /proc/stat.
fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    assert!(hz > 0, "sysconf(_SC_CLK_TCK)");
    hz as f64
}

/// `setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS)` (include/uapi/linux/if_packet.h): send
/// straight to the driver, as pktgen would.
const PACKET_QDISC_BYPASS: libc::c_int = 20;

/// Sends `frame` out of `s0` in batches until `stop`, pinned to the sender CPU.
fn send(frame: &[u8], stop: &AtomicBool, counts: &SendCounts) {
    pin_to_cpu(0, SENDER_CPU);
    renice(0, NICE);
    let fd = packet_socket("s0");
    let mut iov = [libc::iovec {
        iov_base: frame.as_ptr() as *mut libc::c_void,
        iov_len: frame.len(),
    }; BATCH];
    // SAFETY: an all-zero mmsghdr is a valid "no name, no control" message.
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
        m.msg_hdr.msg_iov = v;
        m.msg_hdr.msg_iovlen = 1;
    }
    let (mut sent, mut refused) = (0u64, 0u64);
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: `msgs` holds BATCH messages whose buffers (`iov`, `frame`) outlive the call.
        let n = unsafe { libc::sendmmsg(fd.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0) };
        // A short count means the message after the last one sent was refused (the
        // gateway's queue was full); -1 that the first one was.
        if n >= 0 {
            sent += n as u64;
            refused += u64::from((n as usize) < BATCH);
        } else {
            refused += 1;
        }
        counts.sent.store(sent, Ordering::Relaxed);
        counts.refused.store(refused, Ordering::Relaxed);
    }
}

/// Frames per `BPF_PROG_TEST_RUN` call of the XDP-frame sender. Every call makes and
/// destroys a page pool, whose pages still in flight at the gateway are released the slow
/// way: with 16,384 frames a call that cost the gateway 7.7 us a packet instead of 1.2 us.
/// A call of this many lasts a fraction of a second.
const FRAMES_PER_CALL: u32 = 262_144;

/// Sends `frame` into `s0` as XDP frames until `stop`, pinned to the sender CPU. A frame
/// the gateway's full receive ring refuses is dropped by the veth: the offered count is
/// what the program redirected.
fn send_frames(frame: &[u8], stop: &AtomicBool, counts: &SendCounts) {
    pin_to_cpu(0, SENDER_CPU);
    renice(0, NICE);
    let frames = LiveFrames::new(ifindex("s0"), frame).expect("load the frame sender's program");
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) {
        frames
            .send(FRAMES_PER_CALL)
            .expect("BPF_PROG_TEST_RUN with live frames");
        sent += u64::from(FRAMES_PER_CALL);
        counts.sent.store(sent, Ordering::Relaxed);
    }
}

/// A raw packet socket bound to `ifname` for sending only (protocol 0: it receives nothing).
fn packet_socket(ifname: &str) -> OwnedFd {
    let ifindex = ifindex(ifname);
    // SAFETY: plain socket creation.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    assert!(
        raw >= 0,
        "socket(AF_PACKET): {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a new descriptor, owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let one: libc::c_int = 1;
    // SAFETY: an int option of the right size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            PACKET_QDISC_BYPASS,
            std::ptr::from_ref(&one).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        )
    };
    assert_eq!(
        rc,
        0,
        "PACKET_QDISC_BYPASS: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: an all-zero sockaddr_ll is valid; the fields set below complete it.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: `sll` is a sockaddr_ll of the size passed.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            std::ptr::from_ref(&sll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(
        rc,
        0,
        "bind to {ifname}: {}",
        std::io::Error::last_os_error()
    );
    fd
}

/// Pins thread `tid` (0: the calling thread) to `cpu`.
fn pin_to_cpu(tid: libc::pid_t, cpu: usize) {
    // SAFETY: an all-zero cpu_set_t is the empty set; CPU_SET stays within it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    assert_eq!(
        rc,
        0,
        "pin {tid} to CPU {cpu}: {}",
        std::io::Error::last_os_error()
    );
}

/// Makes thread `tid` SCHED_FIFO at the lowest real-time priority: it runs as soon as it
/// is woken, ahead of every ordinary task, as softirq work would.
fn realtime(tid: libc::pid_t) {
    let param = libc::sched_param { sched_priority: 1 };
    // SAFETY: `param` is a valid sched_param for the call.
    let rc = unsafe { libc::sched_setscheduler(tid, libc::SCHED_FIFO, &param) };
    assert_eq!(
        rc,
        0,
        "SCHED_FIFO for {tid}: {}",
        std::io::Error::last_os_error()
    );
}

/// Sets the nice value of thread `tid` (0: the calling thread).
fn renice(tid: libc::pid_t, nice: libc::c_int) {
    // SAFETY: setpriority has no memory preconditions; PRIO_PROCESS with a thread id
    // applies to that thread on Linux.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
    assert_eq!(rc, 0, "renice {tid}: {}", std::io::Error::last_os_error());
}

/// The process ids whose name starts with `prefix` (kernel threads included).
fn threads_named(prefix: &str) -> Vec<libc::pid_t> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let pid: libc::pid_t = e.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        comm.starts_with(prefix).then_some(pid)
    })
    .collect()
}

/// Pins the NAPI threads of interface `ifname` to `cpu` at a real-time priority.
fn napi_on_cpu(ifname: &str, cpu: usize) {
    let prefix = format!("napi/{ifname}-");
    let deadline = Instant::now() + Duration::from_secs(2);
    let pids = loop {
        let pids = threads_named(&prefix);
        if !pids.is_empty() {
            break pids;
        }
        assert!(Instant::now() < deadline, "no NAPI thread {prefix}*");
        thread::sleep(Duration::from_millis(10));
    };
    for pid in pids {
        pin_to_cpu(pid, cpu);
        realtime(pid);
    }
}

/// Makes interface `ifname` of `ns` poll in NAPI threads rather than in softirq.
fn threaded_napi(ns: &NetNs, ifname: &str) {
    let script = format!("echo 1 > /sys/class/net/{ifname}/threaded");
    check(ns.command("sh").args(["-c", &script]));
}

/// The index of interface `ifname` in the calling thread's network namespace.
fn ifindex(ifname: &str) -> u32 {
    let name = CString::new(ifname).unwrap();
    // SAFETY: a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert!(index != 0, "no interface {ifname}");
    index
}

/// Writes a sysctl (a path under /proc/sys) inside `ns`.
fn sysctl(ns: &NetNs, key: &str, value: &str) {
    ns.run(|| {
        let path = format!("/proc/sys/{key}");
        std::fs::write(&path, value).unwrap_or_else(|e| panic!("{path}={value}: {e}"));
    });
}
