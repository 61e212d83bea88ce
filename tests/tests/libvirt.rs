//! libvirt end to end: a guest defined in libvirt moves from host A to host B with
//! `virsh migrate --live` between two libvirtds (one per host's namespace, each in a mount
//! namespace of its own), while the destination's `netpage libvirt-hook` reserves RA_B at
//! `migrate begin` and a `netpage libvirt-follow` on each host switches every edge: with
//! `--switch-at stop` the source's when libvirt reports the guest paused for the last copy
//! (the destination's then finds nothing to do at the resume), with `resume` the
//! destination's when libvirt reports the guest running there. A 1 ms ICMP probe from
//! the client measures the gap.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Stdio},
    sync::{Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

use netpage_tests::{
    guest::READY_MARKER,
    libvirtd::{self, DomainSpec, Libvirtd},
    vmworld::{self, GUEST_MAC, IcmpProbe, TAP, VA, VmWorld, boot_params, ra},
    world::{Host, Node, netpage_bin},
};

const PROBE_INTERVAL: Duration = Duration::from_millis(1);
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
const DOMAIN: &str = "np-vm1";

/// One guest world at a time: two would share the machine's two cores.
static SERIAL: Mutex<()> = Mutex::new(());

/// A `netpage libvirt-follow` and the lines it prints.
struct Follower {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Follower {
    fn start(vw: &VmWorld, host: Host, d: &Libvirtd, switch_at: &str, nodes: &[String]) -> Self {
        Self::start_for(vw, host, d, switch_at, nodes, 1)
    }

    /// [`Follower::start`], stopping after `max` switches.
    fn start_for(
        vw: &VmWorld,
        host: Host,
        d: &Libvirtd,
        switch_at: &str,
        nodes: &[String],
        max: u32,
    ) -> Self {
        let name = if host == Host::A { "A" } else { "B" };
        let mut follow = vw.world.ns(host.node()).command(netpage_bin());
        follow.args(["--json", "libvirt-follow", "--host", name, "-c", &d.uri()]);
        let max = max.to_string();
        follow.args(["--switch-at", switch_at, "--max-switches", &max]);
        for n in nodes {
            follow.args(["--node", n]);
        }
        let mut child = follow
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start netpage libvirt-follow");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self { child, lines }
    }

    /// The first `n` actions it printed within `wait`; the follower is stopped.
    fn actions(self, n: usize, wait: Duration) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + wait;
        let mut got = Vec::new();
        while got.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => got.push(serde_json::from_str(&l).expect("the follower's JSON")),
                Err(_) => break,
            }
        }
        let mut child = self.child;
        let _ = child.kill();
        let _ = child.wait();
        got
    }

    /// Its one action, if it printed one within `wait`; the follower is stopped.
    fn action(mut self, wait: Duration) -> Result<serde_json::Value, String> {
        let line = self.lines.recv_timeout(wait);
        let _ = self.child.kill();
        let out = self.child.wait_with_output().unwrap();
        match line {
            Ok(l) => Ok(serde_json::from_str(&l).expect("the follower's JSON")),
            Err(_) => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
        }
    }
}

fn skip_reason() -> Option<String> {
    vmworld::skip_reason().or_else(libvirtd::skip_reason)
}

fn metadata() -> String {
    format!(
        "<netpage:vm xmlns:netpage='https://netpage.dev/xmlns/libvirt/1'>\
         <netpage:va>{VA}</netpage:va>\
         <netpage:real host='A'>{}</netpage:real>\
         <netpage:real host='B'>{}</netpage:real></netpage:vm>",
        ra(Host::A),
        ra(Host::B)
    )
}

/// The hook script of `host`: netpage's hook on every edge's pin directory, setting the
/// neighbour entry at `started begin`, logging to `log`.
fn hook_script(host: &str, nodes: &[String], log: &std::path::Path) -> String {
    let nodes: Vec<String> = nodes.iter().map(|n| format!("--node {n}")).collect();
    format!(
        "#!/bin/sh\nexec {} libvirt-hook --neigh --host {host} {} --log {} \"$@\"\n",
        netpage_bin().display(),
        nodes.join(" "),
        log.display()
    )
}

fn wait_ready(console: &std::path::Path, a: &Libvirtd) {
    let deadline = Instant::now() + BOOT_TIMEOUT;
    while !std::fs::read_to_string(console)
        .unwrap_or_default()
        .contains(READY_MARKER)
    {
        assert!(
            Instant::now() < deadline,
            "the guest is not ready within {BOOT_TIMEOUT:?}\n{}\n{}",
            std::fs::read_to_string(console).unwrap_or_default(),
            a.log_tail()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// The `Total downtime` libvirt reports for the last migration (the destination keeps
/// the completed job's statistics; the source forgot the transient domain), ms.
fn downtime_ms(dst: &Libvirtd) -> Option<u64> {
    let info = dst.virsh(&["domjobinfo", "--completed", DOMAIN]);
    String::from_utf8_lossy(&info.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Total downtime:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Where `host`'s hook logs.
fn hook_log(dir: &std::path::Path, host: &str) -> PathBuf {
    dir.join(format!("hook-{host}.jsonl"))
}

/// Starts a libvirtd on each host, with netpage's hook, and the guest at host A; returns
/// the daemons, the guest's console log and its domain XML.
fn boot_at_a(
    vw: &VmWorld,
    dir: &std::path::Path,
    nodes: &[String],
) -> (Libvirtd, Libvirtd, PathBuf, String) {
    let hook_log = |h: &str| hook_log(dir, h);
    let a = Libvirtd::start(
        "A",
        &vw.netns(Host::A),
        "198.18.5.1",
        dir,
        Some(&hook_script("A", nodes, &hook_log("A"))),
    );
    let b = Libvirtd::start(
        "B",
        &vw.netns(Host::B),
        "198.18.5.2",
        dir,
        Some(&hook_script("B", nodes, &hook_log("B"))),
    );
    let console = dir.join("console.log");
    let emulator = libvirtd::emulator_wrapper(dir);
    let cmdline = boot_params(0).cmdline();
    let xml = libvirtd::domain_xml(&DomainSpec {
        name: DOMAIN,
        emulator: &emulator,
        kernel: &vw.guest.kernel(),
        initrd: &vw.guest.initrd(),
        cmdline: &cmdline,
        tap: TAP,
        mac: GUEST_MAC,
        console: &console,
        memory_mib: 128,
        metadata: &metadata(),
    });
    let xml_path = dir.join("domain.xml");
    std::fs::write(&xml_path, &xml).unwrap();
    let started = Instant::now();
    a.virsh_ok(&["create", xml_path.to_str().unwrap()]);
    wait_ready(&console, &a);
    eprintln!(
        "guest: ready at host A {:?} after virsh create",
        started.elapsed()
    );
    assert!(
        vw.world.ping(Node::Client, VA.into()),
        "the guest does not answer at host A\n{}",
        vw.world.diagnostics()
    );

    (a, b, console, xml)
}

#[test]
fn virsh_live_migration_is_switched_at_the_pause() {
    migrate_with_libvirt("stop");
}

#[test]
fn virsh_live_migration_is_switched_at_the_resume() {
    migrate_with_libvirt("resume");
}

fn migrate_with_libvirt(switch_at: &str) {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let vw = VmWorld::new();
    vw.prepare_tap(Host::A);
    vw.prepare_tap(Host::B);
    let dir = tempdir();
    let nodes = vw.nodes();
    let (a, b, console, _) = boot_at_a(&vw, &dir, &nodes);
    let hook_log = |h: &str| hook_log(&dir, h);

    let follow_a = Follower::start(&vw, Host::A, &a, switch_at, &nodes);
    let follow_b = Follower::start(&vw, Host::B, &b, switch_at, &nodes);
    // Until its virsh listens: nothing tells, so give it a moment.
    thread::sleep(Duration::from_millis(1500));

    let probe = IcmpProbe::spawn(
        &vw.world,
        Node::Client,
        VA,
        PROBE_INTERVAL,
        Duration::from_secs(120),
    );
    thread::sleep(Duration::from_millis(500));
    let migrating = Instant::now();
    let out = a.virsh(&[
        "migrate",
        "--live",
        DOMAIN,
        &b.uri(),
        "--migrateuri",
        "tcp://198.18.5.2",
    ]);
    let took = migrating.elapsed();
    // Long enough after virsh returns for the probe to see the guest answer again.
    thread::sleep(Duration::from_secs(5));
    let icmp = probe.stop();
    assert!(
        out.status.success(),
        "virsh migrate failed: {}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        a.log_tail(),
        b.log_tail()
    );
    // The one that switches, and the other.
    let (switcher, other) = if switch_at == "stop" {
        (follow_a, follow_b)
    } else {
        (follow_b, follow_a)
    };
    let action = switcher
        .action(Duration::from_secs(10))
        .unwrap_or_else(|stderr| panic!("the follower switched nothing; stderr:\n{stderr}"));
    eprintln!("follower that switched: {action}");
    let other = other.action(Duration::from_secs(1));
    eprintln!("the other follower: {other:?}");
    let hook = std::fs::read_to_string(hook_log("B")).unwrap_or_default();
    eprintln!("hook at B:\n{hook}");

    let reserved = hook
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|l| l["operation"] == "migrate")
        .expect("the destination's hook ran at migrate begin");
    let unix_ms = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    let switched = action["switched_unix_ms"].as_f64().unwrap_or(f64::NAN);
    let gap = icmp.probes.largest_gap.as_secs_f64() * 1e3;
    println!(
        "figures: libvirt migration switched at {switch_at}: virsh migrate {:.2} s, libvirt \
         downtime {} ms, reservation {:.1} ms, event->switched {:.1} ms (V2R update {} us), \
         probes sent {}, lost {} (longest run {}), largest gap {gap:.1} ms (last answer->switched {:.1} ms, \
         switched->first answer {:.1} ms)",
        took.as_secs_f64(),
        downtime_ms(&b).map_or("-".into(), |d| d.to_string()),
        reserved["ms"].as_f64().unwrap_or(f64::NAN),
        action["ms"].as_f64().unwrap_or(f64::NAN),
        action["update_us"],
        icmp.probes.sent,
        icmp.probes.lost,
        icmp.probes.longest_loss_run,
        switched - unix_ms(icmp.gap_from),
        unix_ms(icmp.gap_to) - switched,
    );
    assert_eq!(action["action"], "switched", "{action}");
    let event = if switch_at == "stop" {
        "Suspended Migrated"
    } else {
        "Resumed Migrated"
    };
    assert_eq!(action["event"], event, "{action}");
    if switch_at == "stop" {
        let other = other.expect("the destination's follower acts at the resume");
        assert_eq!(other["action"], "already-there", "{other}");
    } else {
        assert!(other.is_err(), "the source's follower switched: {other:?}");
    }
    assert_eq!(action["from"], ra(Host::A).to_string());
    assert_eq!(action["to"], ra(Host::B).to_string());
    assert_eq!(reserved["outcome"], "reserved", "{reserved}");
    assert_eq!(reserved["to"], ra(Host::B).to_string());
    assert!(
        hook.lines()
            .any(|l| l.contains("\"started\"") && l.contains("neighbour-set")),
        "the destination's hook did not set the neighbour entry:\n{hook}"
    );
    for t in vw.tables() {
        assert_eq!(
            t.map_list["mapping"][0]["real"],
            ra(Host::B).to_string(),
            "an edge still maps the VA elsewhere: {}",
            t.map_list
        );
    }
    assert!(
        b.virsh_ok(&["domstate", DOMAIN]).contains("running"),
        "the guest does not run at host B"
    );
    let answers = (0..10).any(|_| vw.world.ping(Node::Client, VA.into()));
    assert!(
        answers,
        "the guest does not answer at host B\n{}\n{}\n{}\n{}\n{}",
        vw.world
            .exec_ok(Node::HostB, "ip", &["-s", "link", "show", TAP]),
        String::from_utf8_lossy(
            &b.virsh(&["qemu-monitor-command", "--hmp", DOMAIN, "info status"])
                .stdout
        ),
        String::from_utf8_lossy(
            &b.virsh(&["qemu-monitor-command", "--hmp", DOMAIN, "info network"])
                .stdout
        ),
        std::fs::read_to_string(&console).unwrap_or_default(),
        vw.world.diagnostics()
    );
    assert!(
        icmp.probes.received > 0 && gap < 5000.0,
        "the guest was unreachable for {gap:.0} ms"
    );
    // The daemons (and their guests) first; a failed run keeps the directory to look at.
    drop((a, b));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A fresh directory of this test's own.
fn tempdir() -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("netpage-libvirt-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The domain XML libvirt 9.0 gave a destination's hook at `migrate begin`.
const RECORDED_XML: &str =
    include_str!("../../netpage-user/src/libvirt/testdata/migrate-begin.xml");

/// Runs `netpage ARGS` with `stdin` on its standard input.
fn hook(args: &[&str], stdin: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = std::process::Command::new(netpage_bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run netpage");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// A reservation that fails does not fail the migration (exit 0, unless --strict), and
/// the hook never writes stdout (libvirt would take it for a new domain XML).
#[test]
fn the_hook_fails_quietly_unless_strict() {
    let dir = tempdir();
    let pins = dir.join("no-node");
    let pins = pins.to_str().unwrap();
    let call = ["libvirt-hook", "--pin-dir", pins, "--host", "A"];
    let tail = ["vm1", "migrate", "begin", "-"];
    let args: Vec<&str> = call.iter().chain(&tail).copied().collect();
    let out = hook(&args, RECORDED_XML);
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no page table under"));

    let strict: Vec<&str> = call
        .iter()
        .chain(&["--strict"])
        .chain(&tail)
        .copied()
        .collect();
    let out = hook(&strict, RECORDED_XML);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());

    // Other operations, and domains without netpage metadata, are left alone.
    let other: Vec<&str> = call
        .iter()
        .chain(&["--strict", "vm1", "prepare", "begin", "-"])
        .copied()
        .collect();
    assert_eq!(hook(&other, RECORDED_XML).status.code(), Some(0));
    let bare = hook(&strict, "<domain><name>vm1</name></domain>");
    assert_eq!(bare.status.code(), Some(0));
    assert!(bare.stdout.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

/// An etcd that never answers holds the hook no longer than --timeout.
#[test]
fn the_hook_gives_up_at_its_timeout() {
    let dir = tempdir();
    // Connections are accepted by the kernel and never answered.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let log = dir.join("hook.jsonl");
    let started = Instant::now();
    let out = hook(
        &[
            "libvirt-hook",
            "--etcd",
            &url,
            "--timeout",
            "1",
            "--host",
            "A",
            "--log",
            log.to_str().unwrap(),
            "vm1",
            "migrate",
            "begin",
            "-",
        ],
        RECORDED_XML,
    );
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(0));
    assert!(took < Duration::from_secs(3), "the hook took {took:?}");
    let logged: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&log).unwrap().trim()).unwrap();
    assert_eq!(logged["outcome"], "timed-out", "{logged}");
    drop(silent);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A migration that fails after the pause: the destination's NIC lacks a feature
/// (mergeable receive buffers) the guest acknowledged at the source, which QEMU finds
/// when it loads the NIC's state, after the last copy; libvirt resumes the guest at the
/// source (libvirt 9.0 reports `Resumed Unpaused` there). The source's follower switched
/// at the pause, and switches back when it hears the guest resume there.
#[test]
fn a_libvirt_migration_failing_after_the_pause_is_switched_back() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let vw = VmWorld::new();
    vw.prepare_tap(Host::A);
    vw.prepare_tap(Host::B);
    let dir = tempdir();
    let nodes = vw.nodes();
    let (a, b, _console, _xml) = boot_at_a(&vw, &dir, &nodes);
    // libvirt refuses a destination XML whose NIC differs: the destination's QEMU gets
    // the difference from the wrapper instead.
    std::fs::write(
        dir.join(libvirtd::INCOMING_ARGS),
        "-global virtio-net-device.mrg_rxbuf=off",
    )
    .unwrap();
    let follow_a = Follower::start_for(&vw, Host::A, &a, "stop", &nodes, 2);
    thread::sleep(Duration::from_millis(1500));
    let out = a.virsh(&[
        "migrate",
        "--live",
        DOMAIN,
        &b.uri(),
        "--migrateuri",
        "tcp://198.18.5.2",
    ]);
    eprintln!(
        "virsh migrate: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "the migration did not fail");
    let actions = follow_a.actions(2, Duration::from_secs(10));
    eprintln!("follower at A: {actions:?}");
    let kinds: Vec<&str> = actions
        .iter()
        .map(|a| a["action"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(kinds, ["switched", "switched-back"], "{actions:?}");
    assert_eq!(actions[0]["event"], "Suspended Migrated");
    assert_eq!(actions[1]["to"], ra(Host::A).to_string());
    for t in vw.tables() {
        assert_eq!(
            t.map_list["mapping"][0]["real"],
            ra(Host::A).to_string(),
            "an edge maps the VA elsewhere: {}",
            t.map_list
        );
    }
    assert!(a.virsh_ok(&["domstate", DOMAIN]).contains("running"));
    let answers = (0..10).any(|_| vw.world.ping(Node::Client, VA.into()));
    assert!(answers, "the guest does not answer at host A again");
    drop((a, b));
    let _ = std::fs::remove_dir_all(&dir);
}
