//! Many `netpage` processes on one node at once: commands that change a node run one at a
//! time, so that eight writers hammering one gateway for half a minute (adds, switches and
//! switches back, deletes, gc, apply, attach and detach) leave a table `netpage check`
//! finds consistent, and none of them fails for another reason than its own request.
//! (Without the writers' lock, the same run fails: two attaches of one interface race
//! and one fails with EEXIST from `bpf_link_create`, some fifteen to seventy times in
//! 30 s here.)

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use netpage_tests::world::{Node, World};
use serde_json::Value;

/// The VMs and real addresses the writers fight over: few, so that they collide.
const VMS: [&str; 6] = [
    "198.19.1.1",
    "198.19.1.2",
    "198.19.1.3",
    "198.19.1.4",
    "198.19.1.5",
    "198.19.1.6",
];
const RAS: [&str; 8] = [
    "198.18.30.1",
    "198.18.30.2",
    "198.18.30.3",
    "198.18.30.4",
    "198.18.30.5",
    "198.18.30.6",
    "198.18.30.7",
    "198.18.30.8",
];
/// Interfaces of the gateway (veths whose peers stay there too) that the writers attach and detach.
const DUMMIES: [&str; 3] = ["dm0", "dm1", "dm2"];

/// What a writer's command may fail with: its own request refused by the table's rules.
const REFUSALS: &[&str] = &[
    "is already mapped",
    "is not in the page table",
    "is already used by VM",
    "is given to both",
    "not attached",
];

/// A small deterministic random number generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn coin(&mut self) -> bool {
        self.next() & 1 == 0
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[(self.next() % from.len() as u64) as usize]
    }
}

/// One random command of a writer.
fn random_command(rng: &mut Rng, table_file: &str) -> Vec<String> {
    let vm = rng.pick(&VMS);
    let ra = rng.pick(&RAS);
    let drain = if rng.coin() { "0" } else { "0.3" };
    let args: Vec<&str> = match rng.next() % 9 {
        0 | 1 => vec!["map", "add", "--vm", vm, "--real", ra],
        2 => vec!["switch", "--vm", vm, "--to", ra, "--drain", drain],
        // A switch, then back (see `writer`).
        3 => vec!["--json", "switch", "--vm", vm, "--to", ra, "--drain", "0.3"],
        4 => vec!["map", "del", "--vm", vm],
        5 => vec!["gc"],
        6 => vec!["apply", "-f", table_file, "--drain", drain],
        7 => {
            let iface = rng.pick(&DUMMIES);
            let fast = if rng.coin() {
                "--fast-path"
            } else {
                "--no-fast-path"
            };
            vec!["attach", iface, "--side", "physical", "--hook", "xdp", fast]
        }
        _ => vec!["detach", rng.pick(&DUMMIES)],
    };
    args.into_iter().map(str::to_owned).collect()
}

/// A random table file: some VMs, each at a distinct real address.
fn random_table(rng: &mut Rng) -> String {
    let mut ras: Vec<&str> = RAS.to_vec();
    let mut toml = String::new();
    for vm in VMS {
        if rng.coin() || ras.is_empty() {
            continue;
        }
        let ra = ras.swap_remove((rng.next() % ras.len() as u64) as usize);
        toml += &format!("[[mapping]]\nvm = \"{vm}\"\nreal = \"{ra}\"\n");
    }
    if toml.is_empty() {
        toml += &format!("[[mapping]]\nvm = \"{}\"\nreal = \"{}\"\n", VMS[0], RAS[0]);
    }
    toml
}

/// Runs random writers on the gateway until `stop`; returns how many commands ran and
/// the failures that were not refusals of the request itself.
fn writer(
    world: &World,
    seed: u64,
    stop: &AtomicBool,
    dir: &std::path::Path,
) -> (u64, Vec<String>) {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut ran = 0;
    let mut unexpected = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let file = dir.join(format!("table-{seed}.toml"));
        std::fs::write(&file, random_table(&mut rng)).unwrap();
        let args = random_command(&mut rng, file.to_str().unwrap());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut out = world.netpage(Node::Gw, &args);
        ran += 1;
        if args[0] == "--json" && out.status.success() {
            // Switch back to where the VM was, while its old address drains.
            let s: Value = serde_json::from_slice(&out.stdout).unwrap();
            let from = s["from"].as_str().unwrap().to_owned();
            let back = ["switch", "--vm", args[3], "--to", &from, "--drain", "0.3"];
            out = world.netpage(Node::Gw, &back);
            ran += 1;
        }
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            if !REFUSALS.iter().any(|r| err.contains(r)) {
                unexpected.push(format!("netpage {}: {err}", args.join(" ")));
            }
        }
    }
    (ran, unexpected)
}

/// The seconds the writers run: 30, or `NETPAGE_STRESS_SECS`.
fn stress_time() -> Duration {
    let secs = std::env::var("NETPAGE_STRESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    Duration::from_secs(secs)
}

#[test]
fn eight_concurrent_writers_leave_a_consistent_table() {
    let world = World::new();
    world.attach_all();
    for d in DUMMIES {
        let peer = format!("{d}p");
        let gw = world.ns(Node::Gw);
        gw.ip(&["link", "add", d, "type", "veth", "peer", "name", &peer]);
        gw.ip(&["link", "set", d, "up"]);
        gw.ip(&["link", "set", &peer, "up"]);
    }
    let dir = std::env::temp_dir().join(format!("netpage-locking-{}", world.prefix()));
    std::fs::create_dir_all(&dir).unwrap();
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let results: Vec<(u64, Vec<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (1..=8u64)
            .map(|seed| {
                let (world, stop, dir) = (&world, &stop, &dir);
                s.spawn(move || writer(world, seed, stop, dir))
            })
            .collect();
        std::thread::sleep(stress_time());
        stop.store(true, Ordering::Relaxed);
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let _ = std::fs::remove_dir_all(&dir);
    let ran: u64 = results.iter().map(|r| r.0).sum();
    println!("{ran} commands in {:.1} s", start.elapsed().as_secs_f64());
    let unexpected: Vec<&String> = results.iter().flat_map(|r| &r.1).collect();
    // The drains of the last switches end, then the table must be consistent.
    std::thread::sleep(Duration::from_millis(400));
    world.netpage_ok(Node::Gw, &["gc"]);
    let out = world.netpage(Node::Gw, &["--json", "check"]);
    let report: Value = serde_json::from_slice(&out.stdout).expect("check prints JSON");
    let consistent =
        out.status.success() && report["findings"].as_array().is_some_and(|f| f.is_empty());
    assert!(
        consistent && unexpected.is_empty(),
        "after {ran} commands: {} unexpected failures, e.g.:\n{}\ncheck: {report:#}",
        unexpected.len(),
        unexpected
            .iter()
            .take(5)
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n"),
    );
}

/// A writer waits for the one changing the node's table, up to `--lock-wait`, then gives
/// up as busy; reading commands and attachments do not wait; killing the holder frees the
/// node.
#[test]
fn a_writer_waits_for_another_then_gives_up_as_busy() {
    let world = World::new();
    world.attach_all();
    let (vm, ra) = ("198.19.1.1", "198.18.30.1");
    world.netpage_ok(Node::Gw, &["map", "add", "--vm", vm, "--real", ra]);
    let mut holder = world.netpage_paused_at(
        Node::Gw,
        &["switch", "--vm", vm, "--to", "198.18.30.2"],
        "switch-reverse:1",
    );
    let start = Instant::now();
    let out = world.netpage(
        Node::Gw,
        &[
            "--lock-wait",
            "0.5",
            "map",
            "add",
            "--vm",
            "198.19.1.2",
            "--real",
            "198.18.30.3",
        ],
    );
    let waited = start.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(3),
        "a busy node is a conflict: {err}"
    );
    assert!(
        err.contains("is busy: another netpage command") && err.contains("--lock-wait"),
        "{err}"
    );
    assert!(
        waited >= Duration::from_millis(500),
        "gave up after {waited:?}"
    );
    for read in [&["map", "list"][..], &["status"], &["stats"]] {
        world.netpage_ok(Node::Gw, read);
    }
    // Attachments have a lock of their own: an interface attaches meanwhile.
    world.netpage_ok(
        Node::Gw,
        &["--lock-wait", "0.5", "attach", "g0", "--side", "virtual"],
    );
    // `check` waits to see the table between two changes.
    let out = world.netpage(Node::Gw, &["--lock-wait", "0.5", "check"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is busy"),
        "{out:?}"
    );
    holder.kill().unwrap();
    holder.wait().unwrap();
    world.netpage_ok(
        Node::Gw,
        &["map", "add", "--vm", "198.19.1.2", "--real", "198.18.30.3"],
    );
}

/// Reading commands write nothing: an expired drain stays until a command that changes
/// the table (here `gc`) ends it.
/// Two switches of two VMs to one free real address: the first stops between its check
/// (the address is free) and its first write. Without the lock the second would pass the
/// same check and write, and both VMs would end on one address; with it, the second waits
/// until the first is gone (killed here, having written nothing), then runs alone.
#[test]
fn a_switch_waits_for_another_between_its_check_and_its_writes() {
    let world = World::new();
    world.attach_all();
    let (vm1, vm2, free) = ("198.19.1.1", "198.19.1.2", "198.18.30.9");
    world.netpage_ok(
        Node::Gw,
        &["map", "add", "--vm", vm1, "--real", "198.18.30.1"],
    );
    world.netpage_ok(
        Node::Gw,
        &["map", "add", "--vm", vm2, "--real", "198.18.30.2"],
    );
    let mut first = world.netpage_paused_at(
        Node::Gw,
        &["switch", "--vm", vm1, "--to", free],
        "switch-checked",
    );
    std::thread::scope(|s| {
        let second = s.spawn(|| {
            world.netpage(
                Node::Gw,
                &[
                    "--lock-wait",
                    "30",
                    "--json",
                    "switch",
                    "--vm",
                    vm2,
                    "--to",
                    free,
                ],
            )
        });
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            !second.is_finished(),
            "the second switch ran while the first stood between its check and its writes"
        );
        first.kill().unwrap();
        first.wait().unwrap();
        let out = second.join().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
    let list = world.netpage_json(Node::Gw, &["map", "list"]);
    let on_free: Vec<&Value> = list["mapping"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["real"] == free)
        .collect();
    assert_eq!(on_free.len(), 1, "{list:#}");
    assert_eq!(on_free[0]["vm"], vm2, "{list:#}");
    let check = world.netpage(Node::Gw, &["check"]);
    assert!(check.status.success(), "{check:?}");
}

#[test]
fn reading_commands_write_nothing() {
    let world = World::new();
    world.attach_all();
    let (vm, ra) = ("198.19.1.1", "198.18.30.1");
    world.netpage_ok(Node::Gw, &["map", "add", "--vm", vm, "--real", ra]);
    world.netpage_ok(
        Node::Gw,
        &[
            "switch",
            "--vm",
            vm,
            "--to",
            "198.18.30.2",
            "--drain",
            "0.1",
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    for read in [&["map", "list"][..], &["stats"], &["status"]] {
        world.netpage_ok(Node::Gw, read);
    }
    assert_eq!(world.netpage_json(Node::Gw, &["status"])["draining"], 1);
    let ended = world.netpage_json(Node::Gw, &["gc"]);
    assert_eq!(ended["ended"][0]["real"], ra);
    assert_eq!(world.netpage_json(Node::Gw, &["status"])["draining"], 0);
}

/// A node held by an agent (its maps directory locked exclusively, as `netpage agent`
/// does) refuses the commands that write its table, and says why; reading and checking
/// it still work. (And a node given twice to one command is refused.)
#[test]
fn a_node_its_agent_holds_refuses_writers_and_is_still_read() {
    use netpage_tests::{pins::PinDirs, world::netpage_at};

    let mut pins = PinDirs::new("netpage-locking", "agent");
    let dir = pins.mount("n");
    netpage::node::Node::new(&dir).load(Some(16)).unwrap();
    let netpage = |args: &[&str]| netpage_at(&dir, args);
    assert!(
        netpage(&["map", "add", "--vm", "198.19.1.1", "--real", "198.18.30.1"])
            .status
            .success()
    );
    // A node given twice to one command (it would wait for itself) is refused.
    let again = dir.join("maps").join("..");
    let (a, b) = (dir.to_str().unwrap(), again.to_str().unwrap());
    let out = netpage(&[
        "switch",
        "--vm",
        "198.19.1.1",
        "--to",
        "198.18.30.9",
        "--node",
        a,
        "--node",
        b,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("are the same node"), "{err}");
    // What the agent holds: an exclusive flock on the maps directory.
    let agent = std::fs::File::open(dir.join("maps")).unwrap();
    // SAFETY: `agent` is an open descriptor for the duration of the call.
    let locked = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&agent), libc::LOCK_EX) };
    assert_eq!(locked, 0, "flock: {}", std::io::Error::last_os_error());
    let out = netpage(&["map", "add", "--vm", "198.19.1.2", "--real", "198.18.30.2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("managed by `netpage agent`"), "{err}");
    for writer in [
        &["gc"][..],
        &["check", "--repair"],
        &["map", "del", "--vm", "198.19.1.1"],
    ] {
        let out = netpage(writer);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("managed by `netpage agent`"),
            "{writer:?}: {err}"
        );
    }
    for reader in [&["map", "list"][..], &["status"], &["check"]] {
        let out = netpage(reader);
        assert!(
            out.status.success(),
            "{reader:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    drop(agent);
    let out = netpage(&["map", "add", "--vm", "198.19.1.2", "--real", "198.18.30.2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
