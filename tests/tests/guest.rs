//! A real VM under QEMU: the Debian-built guest boots in a network namespace, serves TCP echo
//! and a web page through its tap, and live-migrates over a veth to a second QEMU in another
//! namespace, where it serves on through the destination's tap.

use std::{
    io::{ErrorKind, Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use netpage::qmp::{Event, MigrationParameters, MigrationStatus, Qmp, RunState};
use netpage_tests::{
    guest::{self, BootParams, COUNTERS_PATH, ECHO_PORT, Guest, HTTP_PORT, PAGE_MARKER},
    netns::NetNs,
    qemu::{self, NIC_ID, Qemu, QemuOptions},
};

/// The guest's addresses (a /32 with its gateway outside it, and a /64), and its gateway:
/// the host side of the tap on every host.
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
const GATEWAY: &str = "198.19.0.1/24";
const GUEST_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x4e50, 0, 0, 0, 0, 0, 0x10);
const GATEWAY_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x4e50, 0, 0, 0, 0, 0, 1);
/// The host-side MAC of the tap, the same on every host so the guest's neighbour entry for
/// its gateway stays valid after a move.
const GATEWAY_MAC: &str = "02:4e:50:00:00:01";
const GUEST_MAC: &str = "52:54:00:4e:50:0a";
const TAP: &str = "tap0";
/// The migration link between the two hosts.
const MIG_SRC: &str = "198.18.0.1/30";
const MIG_DST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const MIG_PORT: u16 = 4444;

const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
const QMP_TIMEOUT: Duration = Duration::from_secs(10);
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(60);
/// What the non-converging guest rewrites in a loop, and how long it is given.
const DIRTY_MIB: u32 = 40;
const NON_CONVERGENCE_WINDOW: Duration = Duration::from_secs(4);

/// Why this machine cannot run the test, if it cannot.
fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (network namespaces, taps)".into());
    }
    qemu::binary().err().or_else(guest::missing_prerequisites)
}

/// A namespace name unique to this process and call.
fn unique(tag: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "npg-{tag}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Gives QEMU's tap in `ns` the gateway's address and MAC, and raises it.
fn configure_tap(ns: &NetNs) {
    ns.ip(&["link", "set", TAP, "address", GATEWAY_MAC]);
    ns.ip(&["addr", "add", GATEWAY, "dev", TAP]);
    ns.ip(&[
        "addr",
        "add",
        &format!("{GATEWAY_IP6}/64"),
        "dev",
        TAP,
        "nodad",
    ]);
    ns.ip(&["link", "set", TAP, "up"]);
}

fn boot_params() -> BootParams {
    BootParams {
        ipv4: Some((GUEST_IP, 32)),
        gw4: Some(GATEWAY_IP),
        ipv6: Some((GUEST_IP6, 64)),
        gw6: Some(GATEWAY_IP6),
        dirty_mib: 0,
    }
}

/// Connects from `ns` to `addr`, retrying while the guest's service is not yet listening.
fn connect(addr: SocketAddr) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(s) => {
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
                return s;
            }
            Err(e) if e.kind() == ErrorKind::ConnectionRefused && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("connect to {addr}: {e}"),
        }
    }
}

/// Sends a few kilobytes to the guest's TCP echo at `ip` from `ns` and checks they come
/// back intact; returns the round trip.
fn tcp_echo(ns: &NetNs, ip: IpAddr) -> Duration {
    ns.run(|| {
        let addr = SocketAddr::new(ip, ECHO_PORT);
        let started = Instant::now();
        let mut stream = connect(addr);
        let sent: Vec<u8> = (0..8192u32).map(|i| (i * 7 + i / 251) as u8).collect();
        stream.write_all(&sent).expect("write to the echo service");
        let mut got = vec![0u8; sent.len()];
        stream
            .read_exact(&mut got)
            .unwrap_or_else(|e| panic!("read the echo from {addr} in {}: {e}", ns.name()));
        assert!(
            got == sent,
            "the echo from {addr} differs from what was sent"
        );
        started.elapsed()
    })
}

/// Fetches `path` from the guest's web server from `ns`.
fn http_get(ns: &NetNs, path: &str) -> String {
    ns.run(|| {
        let addr = SocketAddr::new(GUEST_IP.into(), HTTP_PORT);
        let mut stream = connect(addr);
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: guest\r\n\r\n").as_bytes())
            .expect("send the HTTP request");
        let mut reply = String::new();
        stream
            .read_to_string(&mut reply)
            .unwrap_or_else(|e| panic!("read the HTTP reply from {addr}: {e}"));
        reply
    })
}

/// Reads events until a `MIGRATION` event with a final status; returns them all.
async fn events_until_done(qmp: &mut Qmp, side: &str) -> Vec<Event> {
    let deadline = Instant::now() + MIGRATION_TIMEOUT;
    let mut events = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = qmp
            .next_event(left)
            .await
            .unwrap_or_else(|e| panic!("{side}: {e}"))
            .unwrap_or_else(|| {
                panic!(
                    "{side}: migration not over within {MIGRATION_TIMEOUT:?}; events: {events:?}"
                )
            });
        let status = event.migration_status();
        events.push(event);
        if let Some(status) = status {
            assert_ne!(
                status,
                MigrationStatus::Failed,
                "{side}: migration failed; events: {events:?}"
            );
            if status.is_final() {
                return events;
            }
        }
    }
}

fn find<'a>(events: &'a [Event], name: &str, side: &str) -> &'a Event {
    events
        .iter()
        .find(|e| e.event == name)
        .unwrap_or_else(|| panic!("{side}: no {name} event in {events:?}"))
}

fn story(events: &[Event]) -> String {
    events
        .iter()
        .map(|e| match (e.migration_status(), e.migration_pass()) {
            (Some(s), _) => format!("MIGRATION {s}"),
            (_, Some(p)) => format!("PASS {p}"),
            _ => e.event.clone(),
        })
        .collect::<Vec<_>>()
        .join(" -> ")
}

/// Two hosts joined by a migration link, each with its own namespace.
struct Hosts {
    src: NetNs,
    dst: NetNs,
}

impl Hosts {
    fn new() -> Self {
        let src = NetNs::create(&unique("a"));
        let dst = NetNs::create(&unique("b"));
        src.veth("mig0", "mig0", Some(&dst));
        src.ip(&["addr", "add", MIG_SRC, "dev", "mig0"]);
        src.ip(&["link", "set", "mig0", "up"]);
        dst.ip(&["addr", "add", &format!("{MIG_DST}/30"), "dev", "mig0"]);
        dst.ip(&["link", "set", "mig0", "up"]);
        src.wait_up();
        dst.wait_up();
        Self { src, dst }
    }

    /// Boots the guest on the source host and waits until it is ready.
    fn boot_source(&self, guest: &Guest, params: &BootParams) -> Qemu {
        let opts = QemuOptions::new(
            "src",
            self.src.name(),
            TAP,
            GUEST_MAC,
            guest,
            params.cmdline(),
        );
        let mut src = Qemu::start(opts);
        src.wait_tap(QMP_TIMEOUT);
        configure_tap(&self.src);
        let boot = src.wait_ready(BOOT_TIMEOUT);
        eprintln!(
            "guest: ready {:.2} s after start ({:?}, kernel {})",
            boot.as_secs_f64(),
            src.accel(),
            guest.kernel_release()
        );
        src
    }

    /// Starts the destination QEMU, waiting for the migration stream on the link.
    fn start_destination(&self, guest: &Guest, params: &BootParams) -> Qemu {
        let mut opts = QemuOptions::new(
            "dst",
            self.dst.name(),
            TAP,
            GUEST_MAC,
            guest,
            params.cmdline(),
        );
        opts.incoming = Some(migration_uri());
        let mut dst = Qemu::start(opts);
        dst.wait_tap(QMP_TIMEOUT);
        configure_tap(&self.dst);
        dst
    }
}

fn migration_uri() -> String {
    format!("tcp:{MIG_DST}:{MIG_PORT}")
}

/// Connects to both QEMUs' QMP and turns migration events on at both ends.
async fn connect_both(src: &Qemu, dst: &Qemu) -> (Qmp, Qmp) {
    let mut src_qmp = Qmp::connect(src.qmp_path(), QMP_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", src.diagnostics()));
    let mut dst_qmp = Qmp::connect(dst.qmp_path(), QMP_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", dst.diagnostics()));
    assert_eq!(
        src_qmp.query_status().await.unwrap().status,
        RunState::Running
    );
    assert_eq!(
        dst_qmp.query_status().await.unwrap().status,
        RunState::InMigrate
    );
    src_qmp.enable_migration_events().await.unwrap();
    dst_qmp.enable_migration_events().await.unwrap();
    (src_qmp, dst_qmp)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Both tests keep two cores busy with TCG; one at a time keeps their timings meaningful.
static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn guest_boots_serves_and_live_migrates() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let guest = Guest::build();
    let hosts = Hosts::new();
    let params = boot_params();
    let mut src = hosts.boot_source(&guest, &params);
    let rtt = tcp_echo(&hosts.src, GUEST_IP.into());
    eprintln!("guest: TCP echo on the source in {rtt:?}");
    let rtt = tcp_echo(&hosts.src, GUEST_IP6.into());
    eprintln!("guest: TCP echo over IPv6 on the source in {rtt:?}");
    let page = http_get(&hosts.src, "/");
    assert!(
        page.starts_with("HTTP/1.") && page.contains(" 200 "),
        "{page}"
    );
    assert!(page.contains(PAGE_MARKER), "{page}");
    let counters = http_get(&hosts.src, COUNTERS_PATH);
    for part in [
        " 200 ",
        "eth0:",
        "\nIp: ",
        "\nIcmp: ",
        "\nTcpExt: ",
        "HW address",
    ] {
        assert!(
            counters.contains(part),
            "no {part:?} in the counters:\n{counters}"
        );
    }

    let mut dst = hosts.start_destination(&guest, &params);
    let (src_events, dst_events, info, wall) = runtime().block_on(async {
        let (mut src_qmp, mut dst_qmp) = connect_both(&src, &dst).await;
        assert_eq!(src_qmp.mac_of(NIC_ID).await.unwrap(), GUEST_MAC);
        src_qmp
            .migrate_set_parameters(&MigrationParameters {
                downtime_limit: Some(300),
                ..Default::default()
            })
            .await
            .unwrap();

        let started = Instant::now();
        src_qmp.migrate(&migration_uri()).await.unwrap();
        let (src_events, dst_events) = tokio::join!(
            events_until_done(&mut src_qmp, "source"),
            events_until_done(&mut dst_qmp, "destination"),
        );
        let wall = started.elapsed();

        // Right after `completed` QEMU may still report a downtime of 0: ask again.
        let mut info = src_qmp.query_migrate().await.unwrap();
        for _ in 0..10 {
            if info.downtime.unwrap_or(0) > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            info = src_qmp.query_migrate().await.unwrap();
        }
        assert_eq!(info.status, Some(MigrationStatus::Completed), "{info:?}");
        assert_eq!(
            src_qmp.query_status().await.unwrap().status,
            RunState::PostMigrate
        );
        assert_eq!(
            dst_qmp.query_status().await.unwrap().status,
            RunState::Running
        );
        (src_events, dst_events, info, wall)
    });
    src.assert_alive();
    dst.assert_alive();

    eprintln!("migration: source events {}", story(&src_events));
    eprintln!("migration: destination events {}", story(&dst_events));
    let stop = find(&src_events, "STOP", "source");
    let resume = find(&dst_events, "RESUME", "destination");
    let paused_qemu = resume.timestamp.micros_since(&stop.timestamp);
    let paused_local = resume.received.duration_since(stop.received);
    let ram = info.ram.clone().unwrap_or_default();
    eprintln!(
        "migration: {:?} wall, QEMU total {} ms, downtime {} ms, setup {} ms, \
         {:.1} MB sent in {} passes; STOP->RESUME {:.1} ms by QEMU's clock, {:.1} ms as received",
        wall,
        info.total_time.unwrap_or(0),
        info.downtime.unwrap_or(0),
        info.setup_time.unwrap_or(0),
        ram.transferred as f64 / 1e6,
        ram.dirty_sync_count,
        paused_qemu as f64 / 1e3,
        paused_local.as_secs_f64() * 1e3,
    );
    assert!(paused_qemu > 0, "RESUME before STOP: {stop:?} {resume:?}");

    // The guest now answers through the destination's tap, with nothing changed inside it.
    let rtt = tcp_echo(&hosts.dst, GUEST_IP.into());
    eprintln!("guest: TCP echo on the destination in {rtt:?}");
    let rtt = tcp_echo(&hosts.dst, GUEST_IP6.into());
    eprintln!("guest: TCP echo over IPv6 on the destination in {rtt:?}");
    let page = http_get(&hosts.dst, "/");
    assert!(page.contains(PAGE_MARKER), "{page}");
}

/// A guest that dirties memory faster than the link copies it never converges under a
/// tight downtime limit; cancelling leaves it running on the source, and the destination
/// QEMU exits.
#[test]
fn dirtying_guest_does_not_converge_and_cancels() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let guest = Guest::build();
    let hosts = Hosts::new();
    let params = BootParams {
        dirty_mib: DIRTY_MIB,
        ..boot_params()
    };
    let mut src = hosts.boot_source(&guest, &params);
    assert!(
        src.serial_log()
            .contains(&format!("np: dirtying {DIRTY_MIB} MiB")),
        "{}",
        src.diagnostics()
    );
    let mut dst = hosts.start_destination(&guest, &params);
    let (info, events) = runtime().block_on(async {
        let (mut src_qmp, _dst_qmp) = connect_both(&src, &dst).await;
        src_qmp
            .migrate_set_parameters(&MigrationParameters {
                downtime_limit: Some(20),
                ..Default::default()
            })
            .await
            .unwrap();
        src_qmp.migrate(&migration_uri()).await.unwrap();
        tokio::time::sleep(NON_CONVERGENCE_WINDOW).await;
        let info = src_qmp.query_migrate().await.unwrap();
        assert_eq!(info.status, Some(MigrationStatus::Active), "{info:?}");
        src_qmp.migrate_cancel().await.unwrap();
        let events = events_until_done(&mut src_qmp, "source").await;
        assert_eq!(
            events.last().and_then(Event::migration_status),
            Some(MigrationStatus::Cancelled)
        );
        assert_eq!(
            src_qmp.query_status().await.unwrap().status,
            RunState::Running
        );
        (info, events)
    });
    let ram = info.ram.clone().unwrap_or_default();
    eprintln!(
        "migration: still {} after {NON_CONVERGENCE_WINDOW:?}: {} passes, {:.1} MB sent, \
         {:.1} MB remaining, expected downtime {} ms; source events {}",
        info.status
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        ram.dirty_sync_count,
        ram.transferred as f64 / 1e6,
        ram.remaining as f64 / 1e6,
        info.expected_downtime.unwrap_or(0),
        story(&events)
    );
    assert!(ram.dirty_sync_count >= 3, "{info:?}");
    let status = dst.wait_exit(Duration::from_secs(10));
    assert!(
        status.is_some(),
        "the destination QEMU still runs after the cancel"
    );
    src.assert_alive();
    let rtt = tcp_echo(&hosts.src, GUEST_IP.into());
    eprintln!("guest: TCP echo on the source after the cancel in {rtt:?}");
}
