//! The `netpage` command on a node of the namespace world: bad input is refused with its
//! error and changes nothing, switch and apply report what they did, and the pinned state
//! (tables and attachments) outlives every process and a re-attach.

use std::{net::SocketAddr, path::PathBuf, process::Command, time::Duration};

use netpage_tests::world::{Node, Prober, V4, V6, World};
use serde_json::Value;

/// What a node's table looks like from outside: its mappings and its status.
fn snapshot(world: &World, node: Node) -> (Value, Value) {
    let list = world.netpage_json(node, &["map", "list"]);
    let mut status = world.netpage_json(node, &["status"]);
    status.as_object_mut().unwrap().remove("pin_dir");
    (list, status)
}

/// A world whose gateway has both VMs' families mapped at host A.
fn mapped_world() -> World {
    let world = World::new();
    world.attach_all();
    for a in [V4, V6] {
        world.map_all(a.va, a.ra_a);
    }
    world
}

/// Runs netpage on the gateway expecting failure of `kind` with `expect` in its message,
/// and checks that the table is unchanged; then again with `--json`, expecting the error
/// object with the same kind, exit code and message on stdout.
fn refused(world: &World, args: &[&str], expect: &str, kind: &str) {
    let before = snapshot(world, Node::Gw);
    let out = world.netpage(Node::Gw, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(exit_code(kind)),
        "netpage {args:?}: {stderr}"
    );
    assert!(
        stderr.contains(expect),
        "netpage {args:?}: expected {expect:?} in:\n{stderr}"
    );
    assert!(out.stdout.is_empty(), "netpage {args:?} printed to stdout");
    let json: Vec<&str> = ["--json"].iter().chain(args).copied().collect();
    let out = world.netpage(Node::Gw, &json);
    assert_eq!(out.status.code(), Some(exit_code(kind)), "netpage {json:?}");
    let error = json_error(&out.stdout);
    assert_eq!(error["kind"], kind, "netpage {json:?}: {error:#}");
    assert_eq!(error["exit_code"], exit_code(kind), "{error:#}");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains(expect), "netpage {json:?}: {message}");
    assert_eq!(
        snapshot(world, Node::Gw),
        before,
        "netpage {args:?} changed the table"
    );
}

/// The exit code the README documents for a failure of `kind`.
fn exit_code(kind: &str) -> i32 {
    match kind {
        "system" => 1,
        "bad_input" => 2,
        "conflict" => 3,
        "not_found" => 4,
        "partial" => 5,
        "permission" => 6,
        "inconsistent" => 7,
        other => panic!("no failure kind {other}"),
    }
}

/// The error object of a `--json` failure: stdout holds exactly `{"error": {...}}`, with
/// a message and the list of its causes.
fn json_error(stdout: &[u8]) -> Value {
    let v: Value = serde_json::from_slice(stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(stdout)));
    let top = v.as_object().unwrap();
    assert_eq!(top.keys().collect::<Vec<_>>(), ["error"], "{v:#}");
    let error = v["error"].clone();
    assert!(error["message"].is_string(), "{error:#}");
    assert!(error["causes"].is_array(), "{error:#}");
    error
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let world = mapped_world();
    let (va, ra_a, ra_b) = (V4.va.to_string(), V4.ra_a.to_string(), V4.ra_b.to_string());
    let (va6, ra6) = (V6.va.to_string(), V6.ra_b.to_string());
    world.netpage_ok(
        Node::Gw,
        &[
            "map",
            "add",
            "--vm",
            "198.19.0.11",
            "--real",
            "198.18.10.101",
        ],
    );
    let cases: &[(&[&str], &str, &str)] = &[
        (
            &["map", "add", "--vm", "198.19.0.300", "--real", &ra_b],
            "invalid IP address",
            "bad_input",
        ),
        (
            &["switch", "--vm", &va, "--to", "banana"],
            "invalid IP address",
            "bad_input",
        ),
        (
            &["map", "add", "--vm", "198.19.0.12", "--real", &ra6],
            "different address families",
            "bad_input",
        ),
        (
            &["switch", "--vm", &va6, "--to", &ra_b],
            "different address families",
            "bad_input",
        ),
        (
            &["map", "add", "--vm", &va, "--real", &ra_b],
            "is already mapped",
            "conflict",
        ),
        (
            &["switch", "--vm", "198.19.0.99", "--to", &ra_b],
            "is not in the page table",
            "not_found",
        ),
        (
            &["map", "del", "--vm", "198.19.0.99"],
            "is not in the page table",
            "not_found",
        ),
        (
            &["stats", "--vm", "198.19.0.99"],
            "is not in the page table",
            "not_found",
        ),
        (
            &["map", "add", "--vm", "198.19.0.12", "--real", &ra_a],
            "already used by VM",
            "conflict",
        ),
        (
            &["switch", "--vm", &va, "--to", "198.18.10.101"],
            "already used by VM",
            "conflict",
        ),
        (
            &["switch", "--vm", &va, "--to", &ra_b, "--drain", "soon"],
            "not a number",
            "bad_input",
        ),
        (
            &["attach", "nosuch0", "--side", "virtual"],
            "no interface named nosuch0",
            "not_found",
        ),
        (
            &["attach", "g0", "--side", "sideways"],
            "invalid value 'sideways'",
            "bad_input",
        ),
        (
            &[
                "attach", "g0", "--side", "virtual", "--hook", "tc", "--mode", "skb",
            ],
            "--mode skb is an XDP mode",
            "bad_input",
        ),
        (
            &[
                "attach",
                "g0",
                "--side",
                "virtual",
                "--hook",
                "tc",
                "--fast-path",
            ],
            "the fast path runs in XDP",
            "bad_input",
        ),
        (
            &["attach", "g0", "--side", "virtual", "--hook", "hook"],
            "invalid value 'hook'",
            "bad_input",
        ),
        (
            &["attach", "g0", "--side", "virtual", "--capacity", "10"],
            "the capacity is fixed",
            "conflict",
        ),
        (
            &["detach", "nosuch0"],
            "nosuch0 is not attached",
            "not_found",
        ),
        (
            &["apply", "-f", "/nonexistent/table.toml"],
            "reading /nonexistent/table.toml",
            "not_found",
        ),
    ];
    for (args, expect, kind) in cases {
        refused(&world, args, expect, kind);
    }
    let dir = tempdir(&world);
    for (name, text, expect, kind) in [
        (
            "dup.toml",
            format!(
                "[[mapping]]\nvm = \"{va}\"\nreal = \"{ra_a}\"\n[[mapping]]\nvm = \"{va}\"\nreal = \"{ra_b}\"\n"
            ),
            "appears twice",
            "bad_input",
        ),
        (
            "family.toml",
            format!("[[mapping]]\nvm = \"{va}\"\nreal = \"{ra6}\"\n"),
            "different address families",
            "bad_input",
        ),
        (
            "syntax.json",
            "{\"mapping\": [".to_owned(),
            "not a valid JSON table file",
            "bad_input",
        ),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        refused(
            &world,
            &["apply", "-f", path.to_str().unwrap()],
            expect,
            kind,
        );
    }
}

/// Multicast, broadcast, unspecified, loopback and IPv4-mapped addresses name no host the
/// datapath could translate: refused as VM and as real address, wherever a mapping is
/// given, with the address and the reason.
#[test]
fn special_addresses_are_refused_and_change_nothing() {
    let world = mapped_world();
    let (va, va6) = (V4.va.to_string(), V6.va.to_string());
    let cases: &[(&[&str], &str)] = &[
        (
            &["map", "add", "--vm", "224.0.0.1", "--real", "198.18.10.102"],
            "VM address 224.0.0.1 cannot be mapped: it is a multicast address",
        ),
        (
            &[
                "map",
                "add",
                "--vm",
                "198.19.0.12",
                "--real",
                "255.255.255.255",
            ],
            "real address 255.255.255.255 cannot be mapped: it is the IPv4 broadcast address",
        ),
        (
            &["map", "add", "--vm", "0.0.0.0", "--real", "198.18.10.102"],
            "VM address 0.0.0.0 cannot be mapped: it is the unspecified address",
        ),
        (
            &["map", "add", "--vm", "198.19.0.12", "--real", "127.0.0.1"],
            "real address 127.0.0.1 cannot be mapped: it is a loopback address",
        ),
        (
            &[
                "map",
                "add",
                "--vm",
                "ff02::1",
                "--real",
                "2001:db8:10::102",
            ],
            "VM address ff02::1 cannot be mapped: it is a multicast address",
        ),
        (
            &["map", "add", "--vm", "2001:db8:100::12", "--real", "::"],
            "real address :: cannot be mapped: it is the unspecified address",
        ),
        (
            &["map", "add", "--vm", "::1", "--real", "2001:db8:10::102"],
            "VM address ::1 cannot be mapped: it is a loopback address",
        ),
        (
            &[
                "map",
                "add",
                "--vm",
                "::ffff:198.19.0.12",
                "--real",
                "2001:db8:10::102",
            ],
            "VM address ::ffff:198.19.0.12 cannot be mapped: it is an IPv4-mapped IPv6 address; \
             map 198.19.0.12 as an IPv4 address instead",
        ),
        (
            &["switch", "--vm", &va, "--to", "239.1.2.3"],
            "real address 239.1.2.3 cannot be mapped: it is a multicast address",
        ),
        (
            &["switch", "--vm", &va6, "--to", "::ffff:198.18.20.100"],
            "real address ::ffff:198.18.20.100 cannot be mapped: it is an IPv4-mapped",
        ),
    ];
    for (args, expect) in cases {
        refused(&world, args, expect, "bad_input");
    }
    let dir = tempdir(&world);
    let path = dir.join("special.toml");
    std::fs::write(
        &path,
        format!(
            "[[mapping]]\nvm = \"{va}\"\nreal = \"{}\"\n[[mapping]]\nvm = \"198.19.0.12\"\nreal = \"255.255.255.255\"\n",
            V4.ra_b
        ),
    )
    .unwrap();
    refused(
        &world,
        &["apply", "-f", path.to_str().unwrap()],
        "real address 255.255.255.255 cannot be mapped: it is the IPv4 broadcast address",
        "bad_input",
    );
}

#[test]
fn missing_node_and_privileges_are_explained() {
    let world = World::new();
    let empty = tempdir(&world).join("empty-node");
    let bin = netpage_tests::world::netpage_bin();
    let out = world.ns(Node::Gw).exec(
        bin.to_str().unwrap(),
        &[
            "--json",
            "--pin-dir",
            empty.to_str().unwrap(),
            "map",
            "list",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(exit_code("not_found")), "{stderr}");
    assert!(
        stderr.contains("no page table under") && stderr.contains("netpage attach"),
        "{stderr}"
    );
    let error = json_error(&out.stdout);
    assert_eq!(error["kind"], "not_found");
    assert_eq!(error["pin_dir"], empty.to_str().unwrap());

    // Another user, with no capabilities at all.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bin)
        .args(["--json", "--pin-dir", empty.to_str().unwrap(), "status"])
        .output()
        .expect("run setpriv");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(exit_code("permission")), "{stderr}");
    assert!(
        stderr.contains("lacks CAP_BPF and CAP_NET_ADMIN"),
        "{stderr}"
    );
    assert_eq!(
        json_error(&out.stdout)["missing"],
        serde_json::json!(["CAP_BPF", "CAP_NET_ADMIN"])
    );
}

/// Root is neither needed nor enough: root without CAP_NET_ADMIN (as in a container that
/// drops it) is refused, naming the capability; root with CAP_BPF and CAP_NET_ADMIN and
/// nothing else changes and reads the table.
#[test]
fn capabilities_decide_not_the_user() {
    let world = mapped_world();
    let bin = netpage_tests::world::netpage_bin();
    let dir = world.pin_dir(Node::Gw);
    let with_caps = |bounding: &str, args: &[&str]| {
        let mut all = vec![
            format!("--bounding-set={bounding}"),
            "--inh-caps=-all".to_owned(),
            bin.display().to_string(),
            "--pin-dir".to_owned(),
            dir.display().to_string(),
        ];
        all.extend(args.iter().map(|a| a.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        world.ns(Node::Gw).exec("setpriv", &all)
    };
    let before = snapshot(&world, Node::Gw);
    let va = V4.va.to_string();
    let ra_b = V4.ra_b.to_string();
    for (bounding, missing) in [
        ("-net_admin", "CAP_NET_ADMIN"),
        ("-bpf,-sys_admin", "CAP_BPF"),
    ] {
        let out = with_caps(bounding, &["switch", "--vm", &va, "--to", &ra_b]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(exit_code("permission")), "{stderr}");
        assert!(stderr.contains(&format!("lacks {missing}:")), "{stderr}");
    }
    assert_eq!(
        snapshot(&world, Node::Gw),
        before,
        "a refused switch changed the table"
    );

    let out = with_caps(
        "-all,+bpf,+net_admin",
        &["--json", "switch", "--vm", &va, "--to", &ra_b],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = with_caps("-all,+bpf,+net_admin", &["--json", "map", "list"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        list["mapping"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["vm"] == va.as_str() && m["real"] == ra_b.as_str()),
        "{list:#}"
    );
}

#[test]
fn switch_reports_and_drains() {
    let world = mapped_world();
    for a in [V4, V6] {
        let (va, ra_b) = (a.va.to_string(), a.ra_b.to_string());
        let s = world.netpage_json(
            Node::Gw,
            &["switch", "--vm", &va, "--to", &ra_b, "--drain", "60"],
        );
        assert_eq!(s["from"], a.ra_a.to_string());
        assert_eq!(s["to"], ra_b);
        let us = s["update_us"].as_f64().unwrap();
        assert!(us > 0.0 && us < 1e6, "update took {us} us");
        assert!(s["drain_until_ms"].as_u64().is_some());
        // Both real addresses translate back to the VM while the old one drains.
        let status = world.netpage_json(Node::Gw, &["status"]);
        assert_eq!(status["draining"], 1);
        let ended = world.netpage_json(Node::Gw, &["gc", "--now"]);
        assert_eq!(ended["ended"][0]["real"], a.ra_a.to_string());
        let status = world.netpage_json(Node::Gw, &["status"]);
        assert_eq!(status["draining"], 0);
        // Switching to where the VM already is changes nothing.
        let again = world.netpage_json(Node::Gw, &["switch", "--vm", &va, "--to", &ra_b]);
        assert_eq!(again["from"], again["to"]);
    }
    assert_eq!(
        status_reverse(&world),
        2,
        "one reverse entry per mapping after the drains"
    );
}

fn status_reverse(world: &World) -> u64 {
    world.netpage_json(Node::Gw, &["status"])["reverse_entries"]
        .as_u64()
        .unwrap()
}

#[test]
fn apply_loads_a_table_and_is_idempotent() {
    let world = mapped_world();
    let dir = tempdir(&world);
    let mut toml = String::new();
    for i in 0..2000u32 {
        let (b, c) = (i / 250, i % 250 + 1);
        toml += &format!("[[mapping]]\nvm = \"10.{b}.{c}.1\"\nreal = \"10.100.{b}.{c}\"\n");
        toml += &format!("[[mapping]]\nvm = \"fd00::{i:x}\"\nreal = \"fd01::{i:x}\"\n");
    }
    let file = dir.join("table.toml");
    std::fs::write(&file, &toml).unwrap();
    let f = file.to_str().unwrap();

    let dry = world.netpage_json(Node::Gw, &["apply", "-f", f, "--dry-run"]);
    assert_eq!(dry["added"].as_array().unwrap().len(), 4000);
    assert_eq!(status_reverse(&world), 2, "a dry run changes nothing");

    let first = world.netpage_json(Node::Gw, &["apply", "-f", f]);
    assert_eq!(first["added"].as_array().unwrap().len(), 4000);
    // The two mappings of the world are not in the file: the file is the whole table.
    assert_eq!(first["removed"].as_array().unwrap().len(), 2);
    let second = world.netpage_json(Node::Gw, &["apply", "-f", f]);
    assert_eq!(second["unchanged"], 4000);
    for k in ["added", "moved", "removed"] {
        assert_eq!(second[k].as_array().unwrap().len(), 0, "second apply {k}");
    }
    assert_eq!(status_reverse(&world), 4000);

    // What `map list --json` prints is a table file: it applies with no change, and an
    // edited copy moves exactly the edited VM.
    let saved = world.netpage_json(Node::Gw, &["map", "list"]);
    let mut edited = saved.clone();
    edited["mapping"][0]["real"] = "10.200.0.1".into();
    for (name, table, moved) in [("saved.json", saved, 0), ("edited.json", edited, 1)] {
        let path = dir.join(name);
        std::fs::write(&path, table.to_string()).unwrap();
        let r = world.netpage_json(
            Node::Gw,
            &["apply", "-f", path.to_str().unwrap(), "--drain", "0"],
        );
        assert_eq!(r["moved"].as_array().unwrap().len(), moved, "{name}");
        assert_eq!(r["unchanged"], 4000 - moved, "{name}");
    }
    assert_eq!(
        status_reverse(&world),
        4000,
        "the moved VM's old address is gone"
    );
}

#[test]
fn pinned_state_outlives_the_loader_and_a_reattach_loses_nothing() {
    let world = mapped_world();
    let target = SocketAddr::new(V4.va, 7100);
    let _echo = world.udp_echo(Node::Vm, target);
    let before = snapshot(&world, Node::Gw);
    // Every `netpage` process has exited: translation runs on pinned state alone.
    let client = world.udp_socket(Node::Client, SocketAddr::new(V4.client, 0));
    let probes = Prober::spawn(
        client,
        target,
        Duration::from_millis(1),
        Duration::from_secs(10),
    );
    std::thread::sleep(Duration::from_millis(300));
    // The first attach on each node loads and verifies a new copy of the program
    // (`--reload`); the node's other interfaces then get that copy. Each swaps atomically.
    let mut reloaded = Vec::new();
    for (node, iface, virtual_side) in world.attachments() {
        let mut args = world.attach_args(iface, virtual_side);
        if !reloaded.contains(&node) {
            args.push("--reload".into());
            reloaded.push(node);
        }
        let r = world.netpage_json(node, &args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(r["replaced"], true, "{r}");
    }
    let report = probes.join();
    assert!(report.sent > 1000, "{report}");
    assert_eq!(report.lost, 0, "probes lost while re-attaching: {report}");
    assert_eq!(
        snapshot(&world, Node::Gw),
        before,
        "re-attaching changed the table"
    );
    let status = world.netpage_json(Node::Gw, &["status"]);
    for i in status["interfaces"].as_array().unwrap() {
        assert_eq!(
            (i["present"].as_bool(), i["pinned"].as_bool()),
            (Some(true), Some(true)),
            "{i}"
        );
    }
    // The replacing programs count into the same pinned per-mapping counters.
    assert!(world.mapped_packets(Node::Gw, V4.va) >= report.received * 2);
}

/// Moving an interface from one hook to the other (tc to XDP and back) while traffic
/// flows loses nothing: the new hook's link is in place before the old one goes, and only
/// the new one stays pinned.
#[test]
fn changing_the_hook_under_traffic_loses_nothing() {
    let world = mapped_world();
    let target = SocketAddr::new(V4.va, 7101);
    let _echo = world.udp_echo(Node::Vm, target);
    let client = world.udp_socket(Node::Client, SocketAddr::new(V4.client, 0));
    let probes = Prober::spawn(
        client,
        target,
        Duration::from_millis(1),
        Duration::from_secs(10),
    );
    std::thread::sleep(Duration::from_millis(200));
    for hook in ["xdp", "tc", "xdp", "tc"] {
        for (node, iface, virtual_side) in world.attachments() {
            let mut args = world.attach_args(iface, virtual_side);
            args.extend(["--hook".into(), hook.into()]);
            let r = world.netpage_json(node, &args.iter().map(String::as_str).collect::<Vec<_>>());
            assert_eq!(
                (r["hook"].as_str(), r["replaced"].as_bool()),
                (Some(hook), Some(true)),
                "{r}"
            );
            let (kept, gone) = match hook {
                "tc" => ("links-tc", "links"),
                _ => ("links", "links-tc"),
            };
            let pins = world.pin_dir(node);
            assert!(
                pins.join(kept).join(iface).exists(),
                "{node:?} {iface}: no {kept} pin"
            );
            assert!(
                !pins.join(gone).join(iface).exists(),
                "{node:?} {iface}: {gone} pin left"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let report = probes.join();
    assert!(report.sent > 500, "{report}");
    assert_eq!(report.lost, 0, "probes lost while changing hooks: {report}");
    let status = world.netpage_json(Node::Gw, &["status"]);
    for i in status["interfaces"].as_array().unwrap() {
        assert_eq!(
            (
                i["hook"].as_str(),
                i["hook_reason"].as_str(),
                i["pinned"].as_bool()
            ),
            (Some("tc"), Some("asked for"), Some(true)),
            "{i}"
        );
    }
}

/// A scratch directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir(world: &World) -> TempDir {
    let dir = std::env::temp_dir().join(format!("netpage-cli-{}", world.prefix()));
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

/// A node made by an older build, whose counter array had 20 slots: a command names the
/// problem and the way out, and attaching its interfaces again keeps its table (and its
/// translation) and starts its counters anew.
#[test]
fn an_older_builds_counters_are_renewed_by_a_reattach_and_the_table_kept() {
    let world = mapped_world();
    let list = world.netpage_json(Node::Gw, &["map", "list"]);
    let counters = world.pin_dir(Node::Gw).join("maps").join("NP_COUNTERS");
    std::fs::remove_file(&counters).unwrap();
    pin_counter_array(&counters, 20);
    let out = world.netpage(Node::Gw, &["map", "list"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "map list succeeded on an older node");
    assert!(
        stderr.contains("made by an older build") && stderr.contains("attach its interfaces again"),
        "{stderr}"
    );
    for (node, iface, virtual_side) in world.attachments() {
        if node == Node::Gw {
            world.attach(node, iface, virtual_side);
        }
    }
    assert_eq!(world.netpage_json(Node::Gw, &["map", "list"]), list);
    let stats = world.netpage_json(Node::Gw, &["stats"]);
    assert!(stats["counters"]["pass_miss"].as_u64().is_some(), "{stats}");
    assert!(
        world.ping(Node::Client, V4.va),
        "the VM unreachable after the upgrade"
    );
}

/// Creates a per-CPU array of `slots` u64 counters, as an older build made it, and pins it
/// at `path` (BPF_MAP_CREATE, BPF_OBJ_PIN).
fn pin_counter_array(path: &std::path::Path, slots: u32) {
    const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
    let fd = create_map(BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, slots);
    pin_map(fd, path);
}

/// A new map (BPF_MAP_CREATE); its descriptor.
fn create_map(map_type: u32, key_size: u32, value_size: u32, max_entries: u32) -> i32 {
    #[repr(C)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
    }
    const BPF_MAP_CREATE: libc::c_long = 0;
    let create = MapCreate {
        map_type,
        key_size,
        value_size,
        max_entries,
    };
    // SAFETY: `create` is a prefix of `union bpf_attr` for BPF_MAP_CREATE, of the size given.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            &create,
            std::mem::size_of::<MapCreate>(),
        )
    };
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    fd as i32
}

/// Sets `key -> value` in the map `fd` (BPF_MAP_UPDATE_ELEM).
fn update_map(fd: i32, key: &[u8], value: &[u8]) {
    #[repr(C)]
    struct Update {
        map_fd: u32,
        pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
    let attr = Update {
        map_fd: fd as u32,
        pad: 0,
        key: key.as_ptr() as u64,
        value: value.as_ptr() as u64,
        flags: 0,
    };
    // SAFETY: `attr` is a prefix of `union bpf_attr` for BPF_MAP_UPDATE_ELEM; `key` and
    // `value` are of the map's sizes and outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_UPDATE_ELEM,
            &attr,
            std::mem::size_of::<Update>(),
        )
    };
    assert_eq!(
        rc,
        0,
        "BPF_MAP_UPDATE_ELEM: {}",
        std::io::Error::last_os_error()
    );
}

/// Pins the map `fd` at `path` (BPF_OBJ_PIN) and closes the descriptor.
fn pin_map(fd: i32, path: &std::path::Path) {
    #[repr(C)]
    struct ObjPin {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    const BPF_OBJ_PIN: libc::c_long = 6;
    let name = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let pin = ObjPin {
        pathname: name.as_ptr() as u64,
        bpf_fd: fd as u32,
        file_flags: 0,
    };
    // SAFETY: `pin` is a prefix of `union bpf_attr` for BPF_OBJ_PIN; `name` outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_PIN,
            &pin,
            std::mem::size_of::<ObjPin>(),
        )
    };
    assert_eq!(rc, 0, "BPF_OBJ_PIN: {}", std::io::Error::last_os_error());
    // SAFETY: closes the descriptor made by `create_map`; the pin keeps the map.
    unsafe { libc::close(fd) };
}

/// A node whose page tables an older build made (the address alone as value, per-mapping
/// counters in hash maps keyed by VA): a command names the problem and the way out, and
/// attaching an interface again moves the table into this build's maps, each mapping with
/// a counter slot of its own, and gives every interface this build's programs.
#[test]
fn an_older_builds_table_is_upgraded_by_a_reattach_and_kept() {
    let world = mapped_world();
    let list = world.netpage_json(Node::Gw, &["map", "list"]);
    let maps = world.pin_dir(Node::Gw).join("maps");
    let capacity = world.netpage_json(Node::Gw, &["status"])["capacity"]
        .as_u64()
        .unwrap() as u32;
    for name in [
        "NP_V2R4",
        "NP_R2V4",
        "NP_V2R6",
        "NP_R2V6",
        "NP_SLOTSTATS4",
        "NP_SLOTSTATS6",
    ] {
        std::fs::remove_file(maps.join(name)).unwrap();
    }
    const BPF_MAP_TYPE_HASH: u32 = 1;
    const BPF_MAP_TYPE_PERCPU_HASH: u32 = 5;
    let octets = |ip: std::net::IpAddr| match ip {
        std::net::IpAddr::V4(a) => a.octets().to_vec(),
        std::net::IpAddr::V6(a) => a.octets().to_vec(),
    };
    for (v6, v2r, r2v, stats) in [
        (false, "NP_V2R4", "NP_R2V4", "NP_STATS4"),
        (true, "NP_V2R6", "NP_R2V6", "NP_STATS6"),
    ] {
        let size = if v6 { 16 } else { 4 };
        let fwd = create_map(BPF_MAP_TYPE_HASH, size, size, capacity);
        let rev = create_map(BPF_MAP_TYPE_HASH, size, size, capacity);
        for m in list["mapping"].as_array().unwrap() {
            let vm: std::net::IpAddr = m["vm"].as_str().unwrap().parse().unwrap();
            let real: std::net::IpAddr = m["real"].as_str().unwrap().parse().unwrap();
            if vm.is_ipv6() == v6 {
                update_map(fwd, &octets(vm), &octets(real));
                update_map(rev, &octets(real), &octets(vm));
            }
        }
        pin_map(fwd, &maps.join(v2r));
        pin_map(rev, &maps.join(r2v));
        pin_map(
            create_map(BPF_MAP_TYPE_PERCPU_HASH, size, 16, capacity),
            &maps.join(stats),
        );
    }
    let out = world.netpage(Node::Gw, &["map", "list"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "map list succeeded on an older node");
    assert!(
        stderr.contains("made by an older build")
            && stderr.contains("counter slots")
            && stderr.contains("attach its interfaces again"),
        "{stderr}"
    );
    // One attach upgrades the node and swaps every interface's program.
    let (node, iface, virtual_side) = world
        .attachments()
        .into_iter()
        .find(|a| a.0 == Node::Gw)
        .unwrap();
    let side = if virtual_side { "virtual" } else { "physical" };
    world.netpage_json(node, &["attach", iface, "--side", side]);
    assert_eq!(world.netpage_json(Node::Gw, &["map", "list"]), list);
    for old in ["NP_STATS4", "NP_STATS6"] {
        assert!(!maps.join(old).exists(), "{old} left behind");
    }
    let check = world.netpage_json(Node::Gw, &["check"]);
    assert_eq!(check["findings"], serde_json::json!([]), "{check}");
    assert!(check.get("slots").is_none(), "{check}");
    assert!(
        world.ping(Node::Client, V4.va),
        "the VM unreachable after the upgrade"
    );
    let stats = world.netpage_json(Node::Gw, &["stats"]);
    let v4 = stats["mappings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["vm"] == V4.va.to_string())
        .unwrap_or_else(|| panic!("{stats}"));
    assert!(v4["packets"].as_u64().unwrap() >= 2, "{stats}");
}

/// The interface named `iface` in a `status --json` report.
fn status_iface(status: &Value, iface: &str) -> Value {
    status["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["iface"] == iface)
        .unwrap_or_else(|| panic!("{iface} not in {status}"))
        .clone()
}

/// The VMs `iface` of `node` owns, as `status --json` shows them.
fn owned(world: &World, node: Node, iface: &str) -> Vec<String> {
    let status = world.netpage_json(node, &["status"]);
    status_iface(&status, iface)["vms"]
        .as_array()
        .unwrap_or_else(|| panic!("no vms in {status}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

/// `attach --vm`: a VM's port owns its VMs, shown by `status`; refused on the physical
/// side, for an address no VM has, and for a VM another attached port owns (with nothing
/// changed); a port that is gone gives its VMs up; `map del` leaves ownership and `detach`
/// ends it, after which the VM cannot send until its port owns it again.
#[test]
fn vms_are_owned_by_their_port() {
    let world = mapped_world();
    let host = Node::HostA;
    let (va, va6) = (V4.va.to_string(), V6.va.to_string());
    assert_eq!(owned(&world, host, "vm1"), [va.clone(), va6.clone()]);
    let text = world.netpage_ok(host, &["status"]);
    assert!(text.contains(&format!("owns VMs {va}, {va6}")), "{text}");
    world.ns(host).ip_batch(&[
        "link add vmx type veth peer name vmxp".into(),
        "link set vmx up".into(),
        "link set vmxp up".into(),
    ]);
    let refusals: &[(&[&str], &str)] = &[
        (
            &["attach", "a0", "--side", "physical", "--vm", &va],
            "a0 is attached --side physical, which owns no VM",
        ),
        (
            &["attach", "vmx", "--side", "virtual", "--vm", "224.0.0.1"],
            "--vm 224.0.0.1: a multicast address",
        ),
        (
            &["attach", "vmx", "--side", "virtual", "--vm", &va6],
            "is owned by vm1, another port of this node",
        ),
    ];
    for (args, expect) in refusals {
        let before = world.netpage_json(host, &["status"]);
        let out = world.netpage(host, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "netpage {args:?} succeeded");
        assert!(stderr.contains(expect), "netpage {args:?}: {stderr}");
        assert_eq!(world.netpage_json(host, &["status"]), before, "{args:?}");
    }
    // Another port's VMs add up over re-attaches; once it is gone, they can be taken over.
    let a = world.netpage_json(
        host,
        &["attach", "vmx", "--side", "virtual", "--vm", "198.19.0.77"],
    );
    assert_eq!(a["vms"], serde_json::json!(["198.19.0.77"]), "{a}");
    let a = world.netpage_json(
        host,
        &[
            "attach",
            "vmx",
            "--side",
            "virtual",
            "--vm",
            "2001:db8:100::77",
        ],
    );
    assert_eq!(
        a["vms"],
        serde_json::json!(["198.19.0.77", "2001:db8:100::77"]),
        "{a}"
    );
    world.ns(host).ip(&["link", "del", "vmx"]);
    world.netpage_ok(
        host,
        &["attach", "vm1", "--side", "virtual", "--vm", "198.19.0.77"],
    );
    assert_eq!(
        owned(&world, host, "vm1"),
        [va.clone(), "198.19.0.77".into(), va6.clone()]
    );
    // Ownership belongs to the port, not the mapping.
    world.netpage_ok(host, &["map", "del", "--vm", &va]);
    assert!(owned(&world, host, "vm1").contains(&va));
    world.netpage_ok(
        host,
        &["map", "add", "--vm", &va, "--real", &V4.ra_a.to_string()],
    );
    assert!(world.ping(Node::Client, V4.va), "the VM after map del, add");
    // Detached, the port owns nothing: attached again without --vm, the VM's answers are
    // dropped as spoofed at its own port, until it owns the VM again.
    world.detach(host, "vm1");
    world.netpage_ok(host, &["attach", "vm1", "--side", "virtual"]);
    assert!(owned(&world, host, "vm1").is_empty());
    assert!(
        !world.ping(Node::Client, V4.va),
        "a VM nobody owns answered"
    );
    let stats = world.netpage_json(host, &["stats"]);
    assert!(
        stats["counters"]["dropped_spoofed"].as_u64() >= Some(1),
        "{stats}"
    );
    world.netpage_ok(host, &["attach", "vm1", "--side", "virtual", "--vm", &va]);
    assert!(world.ping(Node::Client, V4.va), "the VM owned again");
}

/// A node made by a build without owner records: other commands name the problem and the
/// way out; attaching its interfaces again (the VM's port with --vm) creates them and keeps
/// the table, and the VM answers again.
#[test]
fn an_older_node_without_owners_gets_them_at_its_next_attach() {
    let world = mapped_world();
    let host = Node::HostA;
    let list = world.netpage_json(host, &["map", "list"]);
    let maps = world.pin_dir(host).join("maps");
    for m in ["NP_OWNER4", "NP_OWNER6"] {
        std::fs::remove_file(maps.join(m)).unwrap();
    }
    let out = world.netpage(host, &["map", "list"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "map list succeeded on an older node");
    assert!(
        stderr.contains("made by an older build") && stderr.contains("--vm VA"),
        "{stderr}"
    );
    for (node, iface, virtual_side) in world.attachments() {
        if node == host {
            world.attach(node, iface, virtual_side);
        }
    }
    assert_eq!(world.netpage_json(host, &["map", "list"]), list);
    assert_eq!(
        owned(&world, host, "vm1"),
        [V4.va.to_string(), V6.va.to_string()]
    );
    assert!(world.ping(Node::Client, V4.va), "the VM after the upgrade");
}
