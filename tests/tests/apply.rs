//! `netpage apply` on a node near its capacity, with an empty file, and handing a real
//! address from one VM to another: each refused or carried out without losing a mapping
//! or leaving the table inconsistent. The nodes are bare pin directories (no interface is
//! needed to change a table), made with a small capacity.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use netpage::{
    node::Node,
    table::{PageTable, TableError},
};
use netpage_tests::{netns::output, pins::PinDirs, world::netpage_bin};
use serde_json::Value;

/// Entries per map of the test nodes.
const CAPACITY: u32 = 4;

/// A node with empty tables of [`CAPACITY`] entries in a fresh bpffs.
fn node(pins: &mut PinDirs, name: &str) -> PathBuf {
    let dir = pins.mount(name);
    Node::new(&dir)
        .load(Some(CAPACITY))
        .expect("create the node's tables");
    dir
}

fn netpage(dir: &Path, args: &[&str]) -> Output {
    output(
        Command::new(netpage_bin())
            .arg("--pin-dir")
            .arg(dir)
            .args(args),
    )
}

fn json(dir: &Path, args: &[&str]) -> Value {
    let out = netpage(dir, &[&["--json"][..], args].concat());
    assert!(
        out.status.success(),
        "netpage {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Writes a table file of `(vm, real)` pairs and returns its path.
fn table_file(dir: &Path, name: &str, mappings: &[(&str, &str)]) -> PathBuf {
    let mut toml = String::new();
    for (vm, real) in mappings {
        toml += &format!("[[mapping]]\nvm = \"{vm}\"\nreal = \"{real}\"\n");
    }
    let path = dir.with_file_name(format!("{}-{name}.toml", dir.display()));
    std::fs::write(&path, toml).unwrap();
    path
}

/// The node's mappings, reverse entries and drains (not the clock's reading).
fn snapshot(dir: &Path) -> (Value, Value) {
    let mut reverse = json(dir, &["map", "list", "--reverse"]);
    reverse.as_object_mut().unwrap().remove("now_ms");
    (json(dir, &["map", "list"]), reverse)
}

fn consistent(dir: &Path) {
    let out = netpage(dir, &["check"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Runs `apply ARGS` expecting failure with `expect` in its message and no change.
fn refused(dir: &Path, args: &[&str], expect: &str) {
    let before = snapshot(dir);
    let out = netpage(dir, args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "netpage {args:?} succeeded");
    assert!(err.contains(expect), "netpage {args:?}: {err}");
    assert_eq!(snapshot(dir), before, "netpage {args:?} changed the table");
}

const FOUR: [(&str, &str); 4] = [
    ("198.19.0.1", "198.18.0.1"),
    ("198.19.0.2", "198.18.0.2"),
    ("198.19.0.3", "198.18.0.3"),
    ("198.19.0.4", "198.18.0.4"),
];
const FOUR_OTHERS: [(&str, &str); 4] = [
    ("198.19.0.5", "198.18.0.5"),
    ("198.19.0.6", "198.18.0.6"),
    ("198.19.0.7", "198.18.0.7"),
    ("198.19.0.8", "198.18.0.8"),
];

#[test]
fn a_full_node_takes_a_whole_new_table_and_refuses_one_too_big() {
    let mut pins = PinDirs::new("netpage-apply", "full");
    let dir = node(&mut pins, "n");
    let path = |name, m: &[(&str, &str)]| table_file(&dir, name, m);
    let four = path("four", &FOUR);
    json(&dir, &["apply", "-f", four.to_str().unwrap()]);
    // Four others replace them in a full table: the removals go first.
    let others = path("others", &FOUR_OTHERS);
    let p = json(&dir, &["apply", "-f", others.to_str().unwrap()]);
    assert_eq!(p["added"].as_array().unwrap().len(), 4, "{p:#}");
    assert_eq!(p["removed"].as_array().unwrap().len(), 4, "{p:#}");
    consistent(&dir);
    // Five do not fit: refused before any write.
    let five = path("five", &[&FOUR[..], &FOUR_OTHERS[..1]].concat());
    refused(
        &dir,
        &["apply", "-f", five.to_str().unwrap()],
        "would need 5 IPv4 entries in V2R at its fullest, more than the 4 it holds",
    );
    // A full table cannot move a VM: its new reverse entry goes in before the old one goes.
    let moved: Vec<(&str, &str)> = FOUR_OTHERS
        .iter()
        .map(|&(vm, _)| vm)
        .zip(FOUR.iter().map(|&(_, r)| r))
        .collect();
    let moved = path("moved", &moved);
    for drain in ["0", "5"] {
        refused(
            &dir,
            &["apply", "-f", moved.to_str().unwrap(), "--drain", drain],
            "would need 8 IPv4 entries in R2V at its fullest, more than the 4 it holds",
        );
    }
    // With room (one mapping fewer), one VM moves and its old address drains.
    let three = path("three", &FOUR_OTHERS[..3]);
    json(&dir, &["apply", "-f", three.to_str().unwrap()]);
    let one_moved = path(
        "one-moved",
        &[FOUR_OTHERS[0], FOUR_OTHERS[1], ("198.19.0.7", "198.18.0.1")],
    );
    let p = json(&dir, &["apply", "-f", one_moved.to_str().unwrap()]);
    assert_eq!(p["moved"].as_array().unwrap().len(), 1, "{p:#}");
    consistent(&dir);
}

/// A batch that the kernel stops part-way is reported at the entry that failed, with how
/// many were set before it.
#[test]
fn a_failed_batch_names_the_entry_that_failed() {
    let mut pins = PinDirs::new("netpage-apply", "batch");
    let dir = node(&mut pins, "n");
    let mut open = Node::new(&dir).open().unwrap();
    let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
    // One VM's addresses (as a VM with draining addresses has several), so that they
    // share its counter slot and the reverse table, not the slots, runs out.
    let entries: Vec<(IpAddr, IpAddr)> = (1..=6)
        .map(|i| (ip(&format!("198.18.0.{i}")), ip("198.19.0.1")))
        .collect();
    let e = open.table.set_reverse_many(&entries).unwrap_err();
    match &e {
        TableError::Batch {
            addr, done, total, ..
        } => {
            assert_eq!((*addr, *done, *total), (entries[4].0, 4, 6), "{e}");
        }
        other => panic!("not a batch error: {other}"),
    }
    assert!(e.to_string().contains("198.18.0.5"), "{e}");
}

#[test]
fn an_empty_file_is_refused_unless_allowed() {
    let mut pins = PinDirs::new("netpage-apply", "empty");
    let dir = node(&mut pins, "n");
    let four = table_file(&dir, "four", &FOUR);
    json(&dir, &["apply", "-f", four.to_str().unwrap()]);
    refused(
        &dir,
        &["apply", "-f", "/dev/null"],
        "the table file has no mapping: applying it would remove all 4 mappings",
    );
    let empty_json = table_file(&dir, "empty", &[]);
    refused(
        &dir,
        &["apply", "-f", empty_json.to_str().unwrap()],
        "--allow-empty",
    );
    let p = json(&dir, &["apply", "-f", "/dev/null", "--allow-empty"]);
    assert_eq!(p["removed"].as_array().unwrap().len(), 4, "{p:#}");
    assert_eq!(
        json(&dir, &["map", "list"])["mapping"],
        serde_json::json!([])
    );
}

#[test]
fn a_real_address_handed_to_another_vm_drains_first() {
    let mut pins = PinDirs::new("netpage-apply", "handover");
    let dir = node(&mut pins, "n");
    let (a, b) = ("198.19.0.1", "198.19.0.2");
    let (x, y) = ("198.18.0.1", "198.18.0.2");
    let first = table_file(&dir, "first", &[(a, x)]);
    json(&dir, &["apply", "-f", first.to_str().unwrap()]);
    let handover = table_file(&dir, "handover", &[(a, y), (b, x)]);
    let p = json(
        &dir,
        &["apply", "-f", handover.to_str().unwrap(), "--drain", "60"],
    );
    assert_eq!(p["moved"][0]["to"], y, "{p:#}");
    assert_eq!(
        p["deferred"],
        serde_json::json!([{"vm": b, "real": x, "held_by": a}]),
        "{p:#}"
    );
    let text = String::from_utf8_lossy(
        &netpage(
            &dir,
            &["apply", "-f", handover.to_str().unwrap(), "--dry-run"],
        )
        .stdout,
    )
    .into_owned();
    assert!(
        text.contains("defer") && text.contains("apply again"),
        "{text}"
    );
    // Replies in flight to x still reach a while it drains; b waits.
    let reverse = json(&dir, &["map", "list", "--reverse"]);
    let x_entry = reverse["reverse"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["real"] == x)
        .cloned()
        .unwrap();
    assert_eq!(
        (&x_entry["vm"], &x_entry["state"]),
        (&a.into(), &"draining".into())
    );
    consistent(&dir);
    // Once the drain is over, the same file hands x over.
    json(&dir, &["gc", "--now"]);
    let p = json(
        &dir,
        &["apply", "-f", handover.to_str().unwrap(), "--drain", "60"],
    );
    assert_eq!(
        p["added"],
        serde_json::json!([{"vm": b, "real": x}]),
        "{p:#}"
    );
    assert_eq!(p["deferred"], serde_json::json!([]));
    consistent(&dir);
}

/// An `apply` killed (SIGKILL) after its removals, between its reverse and forward
/// batches, and after both batches, leaves a table that `check --repair` makes consistent
/// without losing a mapping the table had; the same `apply` run again then brings the
/// table to the file.
#[test]
fn an_apply_killed_between_its_batches_is_repaired_and_applied_again() {
    let mut pins = PinDirs::new("netpage-apply", "killed");
    let (a, b, c, d) = ("198.19.0.1", "198.19.0.2", "198.19.0.3", "198.19.0.4");
    let (w, x, y, z) = ("198.18.0.1", "198.18.0.2", "198.18.0.3", "198.18.0.4");
    for step in ["apply-removed", "apply-reverse", "apply-forward"] {
        let dir = node(&mut pins, step);
        let first = table_file(&dir, "first", &[(a, w), (b, x), (c, y)]);
        json(&dir, &["apply", "-f", first.to_str().unwrap()]);
        // b leaves, c moves from y to z, d arrives at x (b's old address, free at once).
        let second = table_file(&dir, "second", &[(a, w), (c, z), (d, x)]);
        let mut cmd = Command::new(netpage_bin());
        cmd.arg("--pin-dir").arg(&dir).args([
            "apply",
            "-f",
            second.to_str().unwrap(),
            "--drain",
            "0",
        ]);
        let mut child = netpage_tests::world::paused_at(cmd, step);
        child.kill().unwrap();
        child.wait().unwrap();

        let out = netpage(&dir, &["--json", "check", "--repair"]);
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(out.status.success(), "{step}: {report:#}");
        assert_eq!(report["remaining"], serde_json::json!([]), "{step}");
        if step == "apply-reverse" {
            // The new reverse entries without their forward ones.
            assert!(
                !report["findings"].as_array().unwrap().is_empty(),
                "{step}: nothing found: {report:#}"
            );
        }
        consistent(&dir);
        // Every VM the table still maps is at an address of one of the two files.
        let list = json(&dir, &["map", "list"]);
        for m in list["mapping"].as_array().unwrap() {
            let (vm, real) = (m["vm"].as_str().unwrap(), m["real"].as_str().unwrap());
            assert!(
                [(a, w), (b, x), (c, y), (c, z), (d, x)].contains(&(vm, real)),
                "{step}: {vm} at {real} after the repair: {list:#}"
            );
        }
        assert!(
            list["mapping"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["vm"] == a),
            "{step}: a, in both files, was lost: {list:#}"
        );

        json(
            &dir,
            &["apply", "-f", second.to_str().unwrap(), "--drain", "0"],
        );
        consistent(&dir);
        let list = json(&dir, &["map", "list"]);
        let mut got: Vec<(String, String)> = list["mapping"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["vm"].as_str().unwrap().into(),
                    m["real"].as_str().unwrap().into(),
                )
            })
            .collect();
        got.sort();
        let want: Vec<(String, String)> = [(a, w), (c, z), (d, x)]
            .iter()
            .map(|&(v, r)| (v.into(), r.into()))
            .collect();
        assert_eq!(got, want, "{step}: the table after applying again");
    }
}

/// Runs `netpage --pin-dir DIR ARGS` on a pseudo-terminal (`script`) and returns what the
/// terminal showed, its standard output and error together.
fn on_a_terminal(dir: &Path, args: &[&str]) -> String {
    let cmd = [
        netpage_bin().display().to_string(),
        "--pin-dir".into(),
        dir.display().to_string(),
    ]
    .into_iter()
    .chain(args.iter().map(|a| (*a).to_owned()))
    .collect::<Vec<_>>()
    .join(" ");
    let out = output(Command::new("script").args(["-qec", &cmd, "/dev/null"]));
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{cmd}: {shown}");
    shown
}

/// A large `apply` draws its progress on a terminal, and nothing of it with `--json` or
/// when its output is not a terminal.
#[test]
fn progress_is_drawn_on_a_terminal_only() {
    const N: usize = 20_000;
    let mut pins = PinDirs::new("netpage-apply", "progress");
    let dir = pins.mount("n");
    Node::new(&dir)
        .load(Some(2 * N as u32))
        .expect("create the node's tables");
    let pairs: Vec<(String, String)> = (0..N)
        .map(|i| {
            let (hi, lo) = (i / 250, i % 250 + 1);
            (format!("10.1.{hi}.{lo}"), format!("10.2.{hi}.{lo}"))
        })
        .collect();
    let refs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(v, r)| (v.as_str(), r.as_str()))
        .collect();
    let file = table_file(&dir, "big", &refs);
    let file = file.to_str().unwrap();
    let bar = "apply: [";

    let shown = on_a_terminal(&dir, &["apply", "-f", file]);
    assert!(shown.contains(bar), "no progress on a terminal:\n{shown}");
    assert!(shown.contains("installing"), "no stage shown:\n{shown}");

    let shown = on_a_terminal(&dir, &["--json", "apply", "-f", file, "--dry-run"]);
    assert!(!shown.contains(bar), "progress with --json:\n{shown}");
    assert!(
        !shown.contains('\u{1b}'),
        "terminal escapes with --json:\n{shown}"
    );
    let report: Value = serde_json::from_str(shown.trim()).expect("only the JSON report");
    assert_eq!(report["unchanged"], N, "{report}");

    let out = netpage(&dir, &["apply", "-f", file]);
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "stderr without a terminal: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
