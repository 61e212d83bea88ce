//! What netpage guards because it runs with privileges: its pin directories are private
//! (a bpffs it mounts, and the directories it makes, are mode 0700), a file it writes for
//! the user is never written through a symbolic link, and drain deadlines count boot time,
//! which no change of the wall clock moves. The nodes are bare pin directories.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use netpage::{
    clock,
    node::Node,
    table::{Drain, PageTable},
};
use netpage_tests::{netns::output, pins::PinDirs, world::netpage_bin};
use serde_json::Value;

const VM: &str = "198.19.0.10";
const RA_A: &str = "198.18.10.100";
const RA_B: &str = "198.18.20.100";

fn node(pins: &mut PinDirs, name: &str) -> PathBuf {
    let dir = pins.mount(name);
    Node::new(&dir).load(Some(16)).expect("create the tables");
    dir
}

/// `netpage --pin-dir DIR ARGS`, run through `wrapper` (a command line that ends with
/// the program to run) if there is one.
fn netpage(wrapper: &[&str], dir: &Path, args: &[&str]) -> Output {
    let mut cmd = match wrapper.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(netpage_bin());
            c
        }
        None => Command::new(netpage_bin()),
    };
    output(cmd.arg("--pin-dir").arg(dir).args(args))
}

fn json(wrapper: &[&str], dir: &Path, args: &[&str]) -> Value {
    let out = netpage(wrapper, dir, &[&["--json"][..], args].concat());
    assert!(
        out.status.success(),
        "netpage {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `attach` in a network and mount namespace of its own: a bpffs netpage mounts itself
/// gets mode 0700, and a node made inside a bpffs open to all (mode 0777) gets private
/// directories all the same.
#[test]
fn pin_directories_are_private() {
    let base = std::env::temp_dir().join(format!("netpage-private-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    let own = base.join("own");
    let shared = base.join("shared");
    let inside = shared.join("netpage");
    let bin = netpage_bin();
    let script = format!(
        "set -e
        ip link add t0 type veth peer name t1
        ip link set t0 up; ip link set t1 up
        {bin} --pin-dir {own} attach t0 --side physical --hook xdp >/dev/null
        mkdir -p {shared}
        mount -t bpf -o mode=0777 bpf {shared}
        {bin} --pin-dir {inside} attach t1 --side physical --hook xdp >/dev/null
        stat -f -c %T {own}
        stat -c %a {own} {own}/maps {shared} {inside} {inside}/maps {inside}/links",
        bin = bin.display(),
        own = own.display(),
        shared = shared.display(),
        inside = inside.display(),
    );
    let out = output(
        Command::new("unshare")
            .args(["--net", "--mount", "--propagation", "private", "sh", "-c"])
            .arg(&script),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        ["bpf_fs", "1700", "700", "1777", "700", "700", "700"],
        "fs type of the own mount, then the modes of: own (a bpffs root is sticky), \
         own/maps, the open bpffs, the node inside it, its maps and links"
    );
    // The mounts died with their namespace; the directories are left.
    std::fs::remove_dir_all(&base).unwrap();
}

/// `--timeline` naming a symbolic link (as one planted in a shared directory would be) is
/// refused before the migration starts: nothing is written through it, no migration is
/// recorded, and the error says why.
#[test]
fn the_timeline_is_never_written_through_a_link() {
    let mut pins = PinDirs::new("netpage-test", "timeline");
    let dir = node(&mut pins, "n");
    json(&[], &dir, &["map", "add", "--vm", VM, "--real", RA_A]);
    let work = dir.with_file_name("work");
    std::fs::create_dir_all(&work).unwrap();
    let precious = work.join("precious");
    std::fs::write(&precious, "keep me").unwrap();
    let link = work.join("timeline.svg");
    std::os::unix::fs::symlink(&precious, &link).unwrap();
    let state = work.join("state");
    let args = [
        "--json",
        "migrate",
        "--vm",
        VM,
        "--to",
        RA_B,
        "--src-qmp",
        "/nonexistent/src.sock",
        "--dst-qmp",
        "/nonexistent/dst.sock",
        "--uri",
        "tcp:127.0.0.1:1",
        "--timeline",
        link.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
    ];
    let out = netpage(&[], &dir, &args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("is a symbolic link"), "{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["error"]["kind"], "bad_input", "{report:#}");
    assert_eq!(report["error"]["path"], link.to_str().unwrap());
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me");
    assert!(!state.exists(), "a migration was recorded");
    let list = json(&[], &dir, &["map", "list"]);
    assert_eq!(list["mapping"][0]["real"], RA_A, "{list:#}");
    std::fs::remove_dir_all(&work).unwrap();
}

/// `netpage` in a time namespace whose boot clock is `ahead_s` seconds ahead.
fn ahead(ahead_s: u64) -> Vec<String> {
    vec![
        "unshare".into(),
        "--time".into(),
        "--boottime".into(),
        ahead_s.to_string(),
    ]
}

fn ended(dir: &Path, ahead_s: u64) -> Vec<Value> {
    let wrapper = ahead(ahead_s);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    json(&wrapper, dir, &["gc"])["ended"]
        .as_array()
        .unwrap()
        .clone()
}

/// A drain of ten minutes ends when the node's boot clock says so: not after 500 s of it,
/// after 700 s, whatever the wall clock says. (A time namespace moves the boot clock of
/// the commands run in it and nothing else; the wall clock is the same for both.) A
/// deadline an older build wrote in Unix time is read as the same moment on the boot clock.
#[test]
fn drain_deadlines_count_boot_time() {
    let mut pins = PinDirs::new("netpage-test", "boottime");
    let dir = node(&mut pins, "n");
    json(&[], &dir, &["map", "add", "--vm", VM, "--real", RA_A]);
    let switched = json(
        &[],
        &dir,
        &["switch", "--vm", VM, "--to", RA_B, "--drain", "600"],
    );
    let until = switched["drain_until_ms"].as_u64().unwrap();
    let boot = clock::node_ms();
    assert!(
        until.abs_diff(boot + 600_000) < 5_000,
        "the deadline {until} is not ten minutes of boot time after {boot}"
    );
    let list = json(&[], &dir, &["map", "list", "--reverse"]);
    assert_eq!(list["clock"], "boot", "{list:#}");
    assert!(list["now_ms"].as_u64().unwrap().abs_diff(boot) < 5_000);

    assert_eq!(ended(&dir, 500), Vec::<Value>::new(), "ended early");
    let gone = ended(&dir, 700);
    assert_eq!(gone.len(), 1, "{gone:?}");
    assert_eq!(gone[0]["real"], RA_A);

    // An older build's deadlines, in Unix milliseconds: one ten minutes from now is read
    // as ten minutes from now on the boot clock (and so does not end), one a second ago as
    // over (and ends).
    let (vm, ra_a): (IpAddr, IpAddr) = (VM.parse().unwrap(), RA_A.parse().unwrap());
    let older = |deadline_ms| {
        let mut open = Node::new(&dir).open_for_write().unwrap();
        open.table.set_reverse(ra_a, vm).unwrap();
        open.table
            .set_drain(Drain {
                real: ra_a,
                virt: vm,
                deadline_ms,
            })
            .unwrap();
    };
    older(clock::unix_ms() + 600_000);
    let list = json(&[], &dir, &["map", "list", "--reverse"]);
    let read = list["drains"][0]["deadline_ms"].as_u64().unwrap();
    assert!(
        read.abs_diff(clock::node_ms() + 600_000) < 5_000,
        "an older deadline read as {read}: {list:#}"
    );
    assert_eq!(ended(&dir, 0), Vec::<Value>::new());
    older(clock::unix_ms() - 1_000);
    assert_eq!(ended(&dir, 0).len(), 1);
}
