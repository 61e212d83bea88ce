//! What a `netpage` process killed part-way leaves behind, and `netpage check --repair`:
//! the leftovers are listed (`map list --reverse`), found by `check`, refused with the way
//! out when they block a request, and repaired into a consistent table that forwards
//! traffic; a switch over several nodes killed at each of its steps is repaired node by
//! node and then completed, or undone, by running a switch again.

use netpage_tests::world::{Node, V4, World};
use serde_json::Value;

/// A world whose edges map the first VM's IPv4 VA at host A.
fn mapped_world() -> World {
    let world = World::new();
    world.attach_all();
    world.map_all(V4.va, V4.ra_a);
    world
}

/// Runs `netpage ARGS` on `node` until it stops at `step`, then kills it (SIGKILL).
fn kill_at(world: &World, node: Node, args: &[&str], step: &str) {
    let mut child = world.netpage_paused_at(node, args, step);
    child.kill().unwrap();
    child.wait().unwrap();
}

/// `netpage --json check [--repair]` on `node`: its report and whether it succeeded.
fn check(world: &World, node: Node, repair: bool) -> (Value, bool) {
    let mut args = vec!["--json", "check"];
    if repair {
        args.push("--repair");
    }
    let out = world.netpage(node, &args);
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("check {args:?} on {node:?}: not JSON ({e})"));
    (report, out.status.success())
}

/// The kinds of a check's findings.
fn kinds(report: &Value, field: &str) -> Vec<String> {
    report[field]
        .as_array()
        .unwrap_or_else(|| panic!("no {field} in {report:#}"))
        .iter()
        .map(|f| f["kind"].as_str().unwrap().to_owned())
        .collect()
}

/// Repairs `node`, expecting it to end consistent.
fn repair(world: &World, node: Node) -> Value {
    let (report, ok) = check(world, node, true);
    assert!(ok, "{node:?}: repair left findings: {report:#}");
    assert_eq!(kinds(&report, "remaining"), Vec::<String>::new());
    let (again, ok) = check(world, node, false);
    assert!(ok, "{node:?} after repair: {again:#}");
    report
}

#[test]
fn leftovers_are_listed_found_refused_with_the_way_out_and_repaired() {
    let world = mapped_world();
    let (va, ra_a, ra_b) = (V4.va.to_string(), V4.ra_a.to_string(), V4.ra_b.to_string());
    // A switch killed between its reverse and forward writes: R2V[ra_b] with no mapping.
    kill_at(
        &world,
        Node::Gw,
        &["switch", "--vm", &va, "--to", &ra_b],
        "switch-reverse:1",
    );
    // An add killed after taking its counter slot: nothing left, the slot is free while no
    // entry carries it.
    let other = "198.19.0.77";
    kill_at(
        &world,
        Node::Gw,
        &["map", "add", "--vm", other, "--real", "198.18.10.177"],
        "add-stats",
    );
    let list = world.netpage_json(Node::Gw, &["map", "list"]);
    assert_eq!(list["mapping"].as_array().unwrap().len(), 1, "{list:#}");
    let reverse = world.netpage_json(Node::Gw, &["map", "list", "--reverse"]);
    let states: Vec<(&str, &str)> = reverse["reverse"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["real"].as_str().unwrap(), e["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        vec![(ra_a.as_str(), "mapped"), (ra_b.as_str(), "orphan")]
    );
    let text = world.netpage_ok(Node::Gw, &["map", "list", "--reverse"]);
    assert!(text.contains("orphan"), "{text}");

    let out = world.netpage(
        Node::Gw,
        &["map", "add", "--vm", "198.19.0.78", "--real", &ra_b],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("already used by VM") && err.contains("netpage check --repair"),
        "{err}"
    );

    let (report, ok) = check(&world, Node::Gw, false);
    assert!(!ok, "check found nothing: {report:#}");
    assert_eq!(kinds(&report, "findings"), ["orphan_reverse"]);
    let text = String::from_utf8_lossy(&world.netpage(Node::Gw, &["check"]).stdout).into_owned();
    assert!(
        text.contains("orphan_reverse") && text.contains(&ra_b),
        "{text}"
    );

    let report = repair(&world, Node::Gw);
    let actions: Vec<&str> = report["repaired"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["removed_reverse"]);
    let text = world.netpage_ok(Node::Gw, &["check"]);
    assert!(text.contains("consistent"), "{text}");

    // The address is free again, and the VM still reachable at its mapping.
    world.netpage_ok(
        Node::Gw,
        &["map", "add", "--vm", "198.19.0.78", "--real", &ra_b],
    );
    world.netpage_ok(Node::Gw, &["map", "del", "--vm", "198.19.0.78"]);
    assert!(world.ping(Node::Client, V4.va), "{}", world.diagnostics());
}

#[test]
fn a_switch_over_nodes_killed_at_each_step_is_repaired_and_switched_again() {
    let world = mapped_world();
    let (va, ra_a, ra_b) = (V4.va.to_string(), V4.ra_a.to_string(), V4.ra_b.to_string());
    let dirs: Vec<String> = Node::EDGES
        .iter()
        .map(|n| world.pin_dir(*n).display().to_string())
        .collect();
    let switch = |to: &str, drain: &str| {
        let mut args = vec!["switch", "--vm", &va, "--to", to, "--drain", drain];
        for d in &dirs {
            args.extend(["--node", d.as_str()]);
        }
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    for step in [
        "switch-reverse:1",
        "switch-reverse:2",
        "switch-reverse:3",
        "switch-forward:1",
        "switch-forward:2",
        "switch-forward:3",
    ] {
        let args = switch(&ra_b, "5");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        kill_at(&world, Node::Gw, &args, step);
        let broken = Node::EDGES
            .iter()
            .filter(|n| !check(&world, **n, false).1)
            .count();
        assert!(broken > 0, "{step}: no node is inconsistent");
        for node in Node::EDGES {
            repair(&world, node);
        }
        // Run again, the switch completes or (here) is undone: back to host A, where the
        // VM is, on every node.
        let args = switch(&ra_a, "0");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let back = world.netpage_json(Node::Gw, &args);
        assert_eq!(back["to"], ra_a.as_str(), "{step}: {back:#}");
        for node in Node::EDGES {
            let (report, ok) = check(&world, node, false);
            assert!(ok, "{step}: {node:?} after switching back: {report:#}");
            let list = world.netpage_json(node, &["map", "list"]);
            assert_eq!(list["mapping"][0]["real"], ra_a.as_str(), "{step} {node:?}");
        }
        assert!(
            world.ping(Node::Client, V4.va),
            "{step}: no answer after the repair\n{}",
            world.diagnostics()
        );
    }
}

/// A count of fast-path ports that does not match the port map (as two attaches that
/// raced left it) is found, and recounted by `check --repair`.
#[test]
fn a_wrong_count_of_fast_path_ports_is_found_and_recounted() {
    use aya::maps::{Array, MapData};
    use netpage_tests::{pins::PinDirs, world::netpage_at};

    let mut pins = PinDirs::new("netpage-repair", "fast");
    let dir = pins.mount("n");
    netpage::node::Node::new(&dir).load(Some(4)).unwrap();
    let path = dir.join("maps").join(netpage_common::maps::FAST_PORTS);
    let mut fast: Array<MapData, u32> =
        Array::try_from(aya::maps::Map::Array(MapData::from_pin(&path).unwrap())).unwrap();
    fast.set(0, 3, 0).unwrap();
    let netpage = |args: &[&str]| netpage_at(&dir, args);
    let out = netpage(&["--json", "check"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!out.status.success(), "{report:#}");
    assert_eq!(report["fast_port_count"], serde_json::json!([3, 0]));
    let text = String::from_utf8_lossy(&netpage(&["check"]).stdout).into_owned();
    assert!(text.contains("count 3 fast-path ports"), "{text}");
    let out = netpage(&["--json", "check", "--repair"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(fast.get(&0, 0).unwrap(), 0);
    assert!(netpage(&["check"]).status.success());
}

/// The directory is not repaired from the command line: its agents mirror it.
#[test]
fn repairing_the_directory_is_refused() {
    let out = std::process::Command::new(netpage_tests::world::netpage_bin())
        .args(["--etcd", "http://127.0.0.1:9", "check", "--repair"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("not supported on the directory") && err.contains("--pin-dir"),
        "{err}"
    );
}
