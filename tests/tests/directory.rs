//! The mapping directory on etcd with real etcd processes and real `netpage agent`s: a
//! world switched through the directory, 16 agents, concurrent writers, and the faults
//! (an agent killed, etcd stopped, a leader killed, an agent partitioned, compaction,
//! a client without a certificate); mappings of method encap added, switched and deleted
//! through the directory, and the world under segmentation switched through it.

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use netpage::{
    directory::{DirError, Directory},
    ops::{self, Mapping, OpError},
};
use netpage_tests::{
    directory::{
        Agents, dir_options, directory_tables, map_add, netpage_etcd, netpage_etcd_json,
        node_tables, wait_converged,
    },
    etcd::{self, Access, Etcd, EtcdCluster, EtcdOptions, Members},
    netns::{NetNs, output},
    openmetrics::Scrape,
    pins::PinDirs,
    world::{Host, Node, Options, Prober, V4, Vm, World, netpage_bin},
};

const CONVERGE: Duration = Duration::from_secs(20);
/// Entries per table of the agents' nodes: small, so that 16 nodes stay light.
const CAPACITY: &str = "4096";

/// Skips (printing why) where etcd cannot run.
fn etcd_missing() -> bool {
    if let Some(why) = etcd::missing_prerequisites() {
        println!("skipped: {why}");
        return true;
    }
    false
}

/// `n` nodes (`n0`, `n1`, ...), each on a bpffs of its own, and an agent for each
/// (with `args` besides `--capacity`), registered in the directory `etcd` serves.
struct Nodes {
    agents: Agents,
    nodes: Vec<(String, PathBuf)>,
    _pins: PinDirs,
}

fn agents_on(etcd: &Members, n: usize, args: &[&str]) -> Nodes {
    static SET: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let set = SET.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut pins = PinDirs::new("netpage-dirtest", &set.to_string());
    let nodes: Vec<(String, PathBuf)> = (0..n)
        .map(|i| (format!("n{i}"), pins.mount(&format!("n{i}"))))
        .collect();
    let mut agents = Agents::start(etcd, &nodes, &[&["--capacity", CAPACITY], args].concat());
    agents.wait_applied(etcd, 0);
    Nodes {
        agents,
        nodes,
        _pins: pins,
    }
}

/// Runs `netpage --etcd URLS ARGS` as it is.
fn netpage(etcd: &Members, args: &[&str]) -> std::process::Output {
    output(netpage_etcd(etcd).args(args))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn va(i: u32) -> IpAddr {
    IpAddr::from([198, 19, (i / 250) as u8, (i % 250 + 1) as u8])
}

fn ra(site: u8, i: u32) -> IpAddr {
    IpAddr::from([198, 18, site * 10 + (i / 250) as u8, (i % 250 + 1) as u8])
}

/// The namespace world (with the host link) attached on every edge, with locators if
/// `segmented`, and an agent per edge that has applied the empty directory; with the
/// edges' names and pin directories.
fn world_with_agents(etcd: &Members, segmented: bool) -> (World, Vec<(String, PathBuf)>, Agents) {
    let world = World::with(Options {
        host_link: true,
        ..Options::default()
    });
    if segmented {
        world.set_locators();
    }
    world.attach_all();
    let edges: Vec<(String, PathBuf)> = Node::EDGES
        .iter()
        .map(|n| (n.name().to_owned(), world.pin_dir(*n)))
        .collect();
    let mut agents = Agents::start(etcd, &edges, &[]);
    agents.wait_applied(etcd, 0);
    (world, edges, agents)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Adds `n` mappings VM i -> RA (site 1, i) in one `apply` (many transactions: etcd takes
/// 128 operations per transaction).
fn apply_mappings(etcd: &Members, n: u32) {
    // One file per call: the tests of this binary run in parallel in one process.
    static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let file =
        std::env::temp_dir().join(format!("np-dir-apply-{}-{call}.json", std::process::id()));
    let mapping: Vec<serde_json::Value> = (0..n)
        .map(|i| serde_json::json!({"vm": va(i).to_string(), "real": ra(1, i).to_string()}))
        .collect();
    std::fs::write(&file, serde_json::json!({ "mapping": mapping }).to_string()).unwrap();
    let out = netpage_etcd_json(etcd, &["apply", "-f", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    assert_eq!(out["added"].as_array().unwrap().len(), n as usize, "{out}");
}

/// The segment entries (VA, locator) of the node at `pin`, as `map list --json` prints them.
fn node_segments(pin: &Path) -> Vec<(IpAddr, IpAddr)> {
    let out = output(
        std::process::Command::new(netpage_bin())
            .arg("--pin-dir")
            .arg(pin)
            .args(["--json", "map", "list"]),
    );
    assert!(out.status.success(), "map list on {}", pin.display());
    segments(&serde_json::from_slice(&out.stdout).unwrap())
}

/// The `segment` entries of a `map list --json`.
fn segments(list: &serde_json::Value) -> Vec<(IpAddr, IpAddr)> {
    list["segment"].as_array().map_or(Vec::new(), |all| {
        all.iter()
            .map(|s| {
                let at = |k: &str| ip(s[k].as_str().unwrap());
                (at("vm"), at("locator"))
            })
            .collect()
    })
}

/// A mapping of method encap goes through the directory to every node's segment table,
/// moves on every node with a switch (one transaction), and leaves with a delete; a VA
/// mapped one way cannot be mapped the other, and a `migrate --etcd` that cannot reach its
/// QEMUs changes nothing.
#[test]
fn encap_mappings_reach_every_node_through_the_directory() {
    if etcd_missing() {
        return;
    }
    let etcd = Etcd::new();
    let mut set = agents_on(&etcd, 3, &[]);
    let (vm, loc_a, loc_b) = (ip("198.19.0.20"), ip("2001:db8:a::1"), ip("192.0.2.2"));
    let everywhere = |set: &Nodes, want: Vec<(IpAddr, IpAddr)>| {
        for (name, pin) in &set.nodes {
            assert_eq!(node_segments(pin), want, "node {name}");
        }
    };

    let added = netpage_etcd_json(
        &etcd,
        &[
            "map",
            "add",
            "--vm",
            "198.19.0.20",
            "--locator",
            "2001:db8:a::1",
        ],
    );
    println!("{added}");
    let rev = etcd
        .mod_revision("/netpage/v1/map/seg/198.19.0.20")
        .expect("the segment key");
    set.agents.wait_applied(&etcd, rev);
    everywhere(&set, vec![(vm, loc_a)]);
    assert_eq!(
        segments(&netpage_etcd_json(&etcd, &["map", "list"])),
        vec![(vm, loc_a)]
    );
    assert_eq!(netpage_etcd_json(&etcd, &["status"])["segments"], 1);

    // One VA, one method: refused both ways, with the conflict's exit code.
    map_add(&etcd, ip("198.19.0.10"), ip("198.18.10.100"));
    for (args, what) in [
        (["--vm", "198.19.0.20", "--real", "198.18.10.101"], "paging"),
        (
            ["--vm", "198.19.0.10", "--locator", "2001:db8:a::1"],
            "encap",
        ),
    ] {
        let out = netpage(&etcd, &[&["map", "add"][..], &args].concat());
        let err = String::from_utf8_lossy(&out.stderr);
        println!("{what}: {err}");
        assert_eq!(out.status.code(), Some(3), "{what}: {err}");
        assert!(err.contains("is already mapped"), "{what}: {err}");
    }
    assert_eq!(
        segments(&netpage_etcd_json(&etcd, &["map", "list"])),
        vec![(vm, loc_a)]
    );
    assert_eq!(netpage_etcd_json(&etcd, &["status"])["mappings_v4"], 1);

    let s = netpage_etcd_json(
        &etcd,
        &["switch", "--vm", "198.19.0.20", "--to", "192.0.2.2"],
    );
    println!("{s}");
    assert_eq!(s["method"], "encap", "{s}");
    assert_eq!(s["from"], "2001:db8:a::1", "{s}");
    let confirmed = s["nodes"].as_array().unwrap();
    assert_eq!(confirmed.len(), 3, "{s}");
    assert!(confirmed.iter().all(|c| c["confirmed"] == true), "{s}");
    everywhere(&set, vec![(vm, loc_b)]);
    let again = netpage_etcd_json(
        &etcd,
        &["switch", "--vm", "198.19.0.20", "--to", "192.0.2.2"],
    );
    assert_eq!(again["revision"], 0, "already there: {again}");

    let out = netpage(
        &etcd,
        &[
            "migrate",
            "--vm",
            "198.19.0.20",
            "--to",
            "2001:db8:a::1",
            "--src-qmp",
            "/nonexistent",
            "--dst-qmp",
            "/nonexistent",
            "--uri",
            "tcp:127.0.0.1:1",
        ],
    );
    // A migration that cannot reach its QEMUs fails before it changes anything.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("/nonexistent"), "{err}");
    assert_eq!(
        segments(&netpage_etcd_json(&etcd, &["map", "list"])),
        vec![(vm, loc_b)]
    );
    everywhere(&set, vec![(vm, loc_b)]);

    netpage_etcd_json(&etcd, &["map", "del", "--vm", "198.19.0.20"]);
    let deadline = Instant::now() + CONVERGE;
    while set
        .nodes
        .iter()
        .any(|(_, pin)| !node_segments(pin).is_empty())
    {
        assert!(
            Instant::now() < deadline,
            "the delete did not reach every node"
        );
        thread::sleep(Duration::from_millis(50));
    }
    wait_converged(&dir_options(&etcd), &set.nodes, CONVERGE);
    assert!(segments(&netpage_etcd_json(&etcd, &["map", "list"])).is_empty());
}

/// Two writers that each find a VA free cannot map it by both methods: the one that
/// commits second conflicts, and on a fresh view is refused. A VA mapped both ways by a
/// writer that ignores segment entries is named by `check`.
#[test]
fn a_va_mapped_with_method_encap_meanwhile_fails_a_paging_add() {
    if etcd_missing() {
        return;
    }
    let etcd = Etcd::new();
    let rt = runtime();
    let mut dir = rt
        .block_on(Directory::connect(&dir_options(&etcd)))
        .unwrap();
    let m = Mapping {
        vm: ip("198.19.0.30"),
        real: ip("198.18.10.130"),
    };
    let mut views = 0;
    let added = rt.block_on(dir.change(|v| {
        views += 1;
        if views == 1 {
            // Another writer, between this view and its commit.
            etcd.put(
                "/netpage/v1/map/seg/198.19.0.30",
                br#"{"locator":"2001:db8:a::1"}"#,
            );
        }
        ops::add(v, m)
    }));
    assert!(
        matches!(added, Err(DirError::Op(OpError::VmExists { .. }))),
        "{added:?}"
    );
    assert_eq!(views, 2, "the first commit conflicted");
    assert_eq!(etcd.get("/netpage/v1/map/vm/198.19.0.30"), None);
    assert_eq!(etcd.get("/netpage/v1/map/ra/198.18.10.130"), None);
    // A writer that knows no segment entries could still do it: `check` names it.
    etcd.put(
        "/netpage/v1/map/ra/198.18.10.130",
        br#"{"vm":"198.19.0.30"}"#,
    );
    etcd.put(
        "/netpage/v1/map/vm/198.19.0.30",
        br#"{"real":"198.18.10.130"}"#,
    );
    let out = netpage(&etcd, &["--json", "check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(!out.status.success(), "{text}");
    let checked: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(checked["findings"][0]["kind"], "both_methods", "{text}");
    assert_eq!(checked["findings"][0]["other"], "2001:db8:a::1", "{text}");
}

#[test]
fn sixteen_agents_confirm_a_switch_and_refuse_local_writes() {
    if etcd_missing() {
        return;
    }
    let etcd = Etcd::new();
    let set = agents_on(&etcd, 16, &[]);
    map_add(&etcd, ip("198.19.0.10"), ip("198.18.10.100"));
    let s = netpage_etcd_json(
        &etcd,
        &["switch", "--vm", "198.19.0.10", "--to", "198.18.20.100"],
    );
    println!("{s}");
    let confirmed = s["nodes"].as_array().unwrap();
    assert_eq!(confirmed.len(), 16, "{s}");
    assert!(confirmed.iter().all(|c| c["confirmed"] == true), "{s}");
    assert_eq!(s["unconfirmed"].as_array().unwrap().len(), 0);
    assert_eq!(s["from"], "198.18.10.100");
    wait_converged(&dir_options(&etcd), &set.nodes, CONVERGE);
    let (fwd, rev) = node_tables(&set.nodes[7].1);
    assert_eq!(fwd, vec![(ip("198.19.0.10"), ip("198.18.20.100"))]);
    assert_eq!(rev.len(), 2, "the new RA and the draining old one: {rev:?}");
    // A node an agent manages refuses local writes, and says why.
    let out = output(
        std::process::Command::new(netpage_bin())
            .arg("--pin-dir")
            .arg(&set.nodes[0].1)
            .args([
                "map",
                "add",
                "--vm",
                "198.19.0.11",
                "--real",
                "198.18.10.101",
            ]),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("managed by `netpage agent`"), "{err}");
    assert_eq!(node_tables(&set.nodes[0].1).0.len(), 1, "nothing written");
    // The drain ends on time through its lease, with no command run.
    thread::sleep(Duration::from_secs(7));
    let (_, rev) = node_tables(&set.nodes[3].1);
    assert_eq!(rev, vec![(ip("198.18.20.100"), ip("198.19.0.10"))]);
}

/// `agent --metrics`: the node's metrics and the agent's own, scraped as Prometheus would,
/// follow the directory: the applied revision is the one the agent reports to it, every
/// applied revision was timed, and the table's series are those of the directory.
#[test]
fn an_agent_serves_its_metrics() {
    if etcd_missing() {
        return;
    }
    let etcd = Etcd::new();
    let listen = "127.0.0.1:9561";
    let mut set = agents_on(&etcd, 1, &["--metrics", listen]);
    let url = format!("http://{listen}/metrics");
    let first = Scrape::get(None, &url).ok();
    assert_eq!(first.value("netpage_agent_etcd_up", &[]), Some(1.0));
    assert_eq!(first.value("netpage_agent_syncs_total", &[]), Some(1.0));
    assert_eq!(
        first.value("netpage_agent_apply_seconds_count", &[]),
        Some(0.0)
    );

    map_add(&etcd, ip("198.19.0.10"), ip("198.18.10.100"));
    netpage_etcd_json(
        &etcd,
        &["switch", "--vm", "198.19.0.10", "--to", "198.18.20.100"],
    );
    let revision = etcd
        .mod_revision("/netpage/v1/map/vm/198.19.0.10")
        .expect("the switched mapping");
    set.agents.wait_applied(&etcd, revision);
    let applied = netpage_etcd_json(&etcd, &["nodes"])["nodes"][0]["applied_revision"]
        .as_f64()
        .unwrap();
    let s = Scrape::get(None, &url).ok();
    assert_eq!(
        s.value("netpage_agent_applied_revision", &[]),
        Some(applied)
    );
    assert_eq!(s.value("netpage_agent_lag_revisions", &[]), Some(0.0));
    assert_eq!(s.value("netpage_agent_syncs_total", &[]), Some(1.0));
    assert_eq!(
        s.value("netpage_agent_sessions_ended_total", &[]),
        Some(0.0)
    );
    assert!(
        s.value("netpage_agent_apply_seconds_count", &[]).unwrap() >= 2.0,
        "the add and the switch were applied from the watch"
    );
    assert_eq!(
        s.value(
            "netpage_mapping_packets_total",
            &[("vm", "198.19.0.10"), ("real", "198.18.20.100")]
        ),
        Some(0.0)
    );
    assert_eq!(
        s.value(
            "netpage_table_entries",
            &[("map", "r2v"), ("family", "ipv4")]
        ),
        Some(2.0),
        "the new real address and the draining old one"
    );
}

#[test]
fn concurrent_switches_land_and_one_vm_has_one_winner() {
    if etcd_missing() {
        return;
    }
    let etcd = Etcd::new();
    let set = agents_on(&etcd, 4, &[]);
    apply_mappings(&etcd, 200);
    let opts = dir_options(&etcd);
    let rt = runtime();
    // 200 concurrent switches of different VMs, each its own client.
    let results = rt.block_on(async {
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let opts = opts.clone();
                tokio::spawn(async move {
                    let mut d = Directory::connect(&opts).await?;
                    d.switch(
                        va(i),
                        ra(2, i),
                        Duration::from_secs(1),
                        Some(Duration::from_secs(10)),
                    )
                    .await
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    for (i, r) in results.iter().enumerate() {
        let s = r
            .as_ref()
            .unwrap_or_else(|e| panic!("switch of {}: {e} ({e:?})", va(i as u32)));
        assert_eq!(s.to, ra(2, i as u32));
        assert!(s.unconfirmed.is_empty(), "{s:?}");
    }
    wait_converged(&opts, &set.nodes, CONVERGE);
    let (fwd, _) = directory_tables(&opts);
    assert!((0..200).all(|i| fwd.contains(&(va(i), ra(2, i)))));
    // Two writers switch one VM at once, to different addresses: of those that read the
    // same location, exactly one wins; the loser changes nothing (its reservation goes).
    let mut conflicts = 0;
    for round in 0..10u32 {
        let targets = [ra(3, round * 2), ra(3, round * 2 + 1)];
        let r = rt.block_on(async {
            let both = targets.map(|to| {
                let opts = opts.clone();
                tokio::spawn(async move {
                    let mut d = Directory::connect(&opts).await?;
                    d.switch(va(0), to, Duration::ZERO, Some(Duration::from_secs(10)))
                        .await
                })
            });
            let [a, b] = both;
            [a.await.unwrap(), b.await.unwrap()]
        });
        let won: Vec<_> = r.iter().filter_map(|x| x.as_ref().ok()).collect();
        assert!(!won.is_empty(), "no winner: {r:?}");
        if won.len() == 2 {
            assert_ne!(
                won[0].from, won[1].from,
                "two winners from one state: {r:?}"
            );
        } else {
            conflicts += 1;
            let lost = r.iter().find_map(|x| x.as_ref().err()).unwrap();
            assert!(matches!(lost, DirError::Conflict { .. }), "{lost:#}");
        }
    }
    println!("{conflicts} of 10 rounds had a conflict");
    assert!(conflicts > 0, "the two writers never raced");
    let out = netpage(&etcd, &["check"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    wait_converged(&opts, &set.nodes, CONVERGE);
}

#[test]
fn an_agent_killed_during_a_burst_converges_after_its_restart() {
    if etcd_missing() {
        return;
    }
    let etcd = Etcd::new();
    let mut set = agents_on(&etcd, 3, &[]);
    apply_mappings(&etcd, 40);
    let opts = dir_options(&etcd);
    let burst = {
        let opts = opts.clone();
        thread::spawn(move || {
            runtime().block_on(async {
                let mut d = Directory::connect(&opts).await.unwrap();
                for i in 0..40 {
                    d.switch(
                        va(i),
                        ra(2, i),
                        Duration::from_secs(1),
                        Some(Duration::from_millis(300)),
                    )
                    .await
                    .unwrap();
                }
            })
        })
    };
    thread::sleep(Duration::from_millis(300));
    set.agents.kill("n1");
    burst.join().unwrap();
    assert_ne!(
        node_tables(&set.nodes[1].1),
        directory_tables(&opts),
        "n1 missed nothing?"
    );
    set.agents.restart("n1", None);
    wait_converged(&opts, &set.nodes, CONVERGE);
}

#[test]
fn compaction_while_an_agent_is_down_then_it_resyncs() {
    if etcd_missing() {
        return;
    }
    let etcd = Etcd::new();
    let mut set = agents_on(&etcd, 2, &[]);
    apply_mappings(&etcd, 5);
    set.agents.kill("n1");
    for i in 0..5 {
        netpage_etcd_json(
            &etcd,
            &[
                "switch",
                "--vm",
                &va(i).to_string(),
                "--to",
                &ra(2, i).to_string(),
                "--drain",
                "0",
                "--no-wait",
            ],
        );
    }
    etcd.compact(etcd.current_revision());
    set.agents.restart("n1", None);
    wait_converged(&dir_options(&etcd), &set.nodes, CONVERGE);
    assert!(
        set.agents.log("n1").contains("synced at revision"),
        "{}",
        set.agents.log("n1")
    );
}

#[test]
fn a_leader_killed_during_a_switch_leaves_it_whole() {
    if etcd_missing() {
        return;
    }
    let mut cluster = EtcdCluster::new();
    let set = agents_on(&cluster, 3, &[]);
    apply_mappings(&cluster, 1);
    let opts = dir_options(&cluster);
    let leader = cluster.wait_for_leader();
    let switch = {
        let opts = opts.clone();
        thread::spawn(move || {
            runtime().block_on(async {
                let mut d = Directory::connect(&opts).await?;
                d.switch(
                    va(0),
                    ra(2, 0),
                    Duration::ZERO,
                    Some(Duration::from_secs(5)),
                )
                .await
            })
        })
    };
    thread::sleep(Duration::from_millis(2));
    cluster.kill(leader);
    let result = switch.join().unwrap();
    println!("switch with the leader killed: {result:?}");
    cluster.wait_for_leader();
    wait_converged(&opts, &set.nodes, CONVERGE);
    let (fwd, rev) = directory_tables(&opts);
    let at = fwd[0].1;
    match &result {
        Ok(_) => assert_eq!(at, ra(2, 0)),
        Err(_) => assert!(at == ra(1, 0) || at == ra(2, 0), "{fwd:?}"),
    }
    assert_eq!(
        rev,
        vec![(at, va(0))],
        "no half-applied entry left: {rev:?}"
    );
    let out = netpage(&cluster, &["check"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_client_without_a_certificate_is_refused_and_changes_nothing() {
    if etcd_missing() {
        return;
    }
    let etcd = Etcd::start_tls();
    let set = agents_on(&etcd, 1, &[]);
    map_add(&etcd, ip("198.19.0.10"), ip("198.18.10.100"));
    let tls = etcd.tls().unwrap();
    let out = output(
        std::process::Command::new(netpage_bin())
            .args(["--etcd", &etcd.urls(), "--etcd-cacert"])
            .arg(tls.ca())
            .args(["switch", "--vm", "198.19.0.10", "--to", "198.18.20.100"]),
    );
    assert!(
        !out.status.success(),
        "a client without a certificate switched"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    println!("{err}");
    assert!(err.contains("did not answer"), "{err}");
    let (fwd, _) = directory_tables(&dir_options(&etcd));
    assert_eq!(fwd, vec![(ip("198.19.0.10"), ip("198.18.10.100"))]);
    wait_converged(&dir_options(&etcd), &set.nodes, CONVERGE);
}

/// etcd's users and roles as the README sets them up: a writer may change the mappings
/// under the prefix; an agent's user may only read them and write its node's record;
/// a client with no user or a wrong password is turned away. Every refused write
/// changes nothing.
#[test]
fn etcd_users_hold_writers_and_agents_to_their_part() {
    if etcd_missing() {
        return;
    }
    let mut etcd = Etcd::new();
    etcd.enable_auth("rootpw");
    etcd.add_user("ops", "opspw", "/netpage/", Access::ReadWrite);
    etcd.add_user("gw-a", "gwpw", "/netpage/", Access::Read);
    etcd.grant("gw-a", "/netpage/v1/nodes/", Access::ReadWrite);
    let mut pins = PinDirs::new("netpage-dirtest-auth", "0");
    let nodes = vec![("gw-a".to_owned(), pins.mount("gw-a"))];
    let mut agents = Agents::start_with(
        etcd.cli_args_as("gw-a", "gwpw"),
        &nodes,
        &["--capacity", CAPACITY],
    );
    agents.wait_applied(&etcd, 0);
    let as_user = |args: Vec<String>, cmd: &[&str]| {
        output(
            std::process::Command::new(netpage_bin())
                .args(args)
                .arg("--json")
                .args(cmd),
        )
    };
    let (vm, a, b) = ("198.19.0.10", "198.18.10.100", "198.18.20.100");
    let ops = etcd.cli_args_as("ops", "opspw");
    let out = as_user(ops.clone(), &["map", "add", "--vm", vm, "--real", a]);
    assert!(out.status.success(), "the writer's map add: {out:?}");
    let out = as_user(ops, &["switch", "--vm", vm, "--to", b]);
    assert!(out.status.success(), "the writer's switch: {out:?}");
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["nodes"][0]["node"], "gw-a", "{s}");
    assert_eq!(s["nodes"][0]["confirmed"], true, "{s}");
    wait_converged(&dir_options(&etcd), &nodes, CONVERGE);
    let before = directory_tables(&dir_options(&etcd));

    let refused = [
        (
            "the agent's user",
            etcd.cli_args_as("gw-a", "gwpw"),
            "permission denied",
        ),
        (
            "no user",
            etcd.cli_args_without_user(),
            "requires authentication",
        ),
        (
            "a wrong password",
            etcd.cli_args_as("ops", "wrong"),
            "authentication failed",
        ),
    ];
    for (who, args, why) in refused {
        let out = as_user(args, &["switch", "--vm", vm, "--to", a]);
        let err = String::from_utf8_lossy(&out.stderr);
        println!("{who}: {err}");
        assert!(!out.status.success(), "{who} switched");
        assert!(err.contains(why), "{who}: {err}");
        assert_eq!(
            directory_tables(&dir_options(&etcd)),
            before,
            "{who} changed the directory"
        );
    }
    assert_eq!(node_tables(&nodes[0].1).0, vec![(ip(vm), ip(b))]);
}

/// `netpage --etcd migrate` refuses what it cannot do with a clear error before it
/// reserves anything: `--node` beside `--etcd`, an unknown VM, a real address another
/// VM holds, QEMUs that are not there. The directory is unchanged after each.
#[test]
fn migrate_through_the_directory_refuses_bad_input_and_changes_nothing() {
    if etcd_missing() {
        return;
    }
    let etcd = Etcd::new();
    map_add(&etcd, ip("198.19.0.10"), ip("198.18.10.100"));
    map_add(&etcd, ip("198.19.0.11"), ip("198.18.10.101"));
    let before = directory_tables(&dir_options(&etcd));
    let absent = std::env::temp_dir().join(format!("netpage-absent-{}.sock", std::process::id()));
    let absent = absent.to_str().unwrap();
    let migrate = |vm: &str, to: &str, more: &[&str]| {
        let qmp = [
            "--src-qmp",
            absent,
            "--dst-qmp",
            absent,
            "--uri",
            "tcp:127.0.0.1:1",
        ];
        netpage(
            &etcd,
            &[&["migrate", "--vm", vm, "--to", to], &qmp[..], more].concat(),
        )
    };
    let cases = [
        (
            "--node beside --etcd",
            migrate("198.19.0.10", "198.18.20.100", &["--node", "/sys/fs/bpf/x"]),
            "drop --node",
        ),
        (
            "an unknown VM",
            migrate("198.19.0.99", "198.18.20.100", &[]),
            "198.19.0.99 is not in the page table",
        ),
        (
            "another VM's real address",
            migrate("198.19.0.10", "198.18.10.101", &[]),
            "already used by VM 198.19.0.11",
        ),
        (
            "no QEMU",
            migrate("198.19.0.10", "198.18.20.100", &[]),
            "no QMP socket",
        ),
    ];
    for (what, out, why) in cases {
        let err = String::from_utf8_lossy(&out.stderr);
        println!("{what}: {err}");
        assert!(!out.status.success(), "{what}: migrate succeeded");
        assert!(err.contains(why), "{what}: {err}");
        assert_eq!(
            directory_tables(&dir_options(&etcd)),
            before,
            "{what} changed the directory"
        );
    }
}

#[test]
fn a_partitioned_agent_is_named_and_converges_after_the_partition() {
    if etcd_missing() {
        return;
    }
    // etcd listens on an address the agent's namespace reaches through a veth.
    let (outside, inside) = (
        Ipv4Addr::new(198, 18, 250, 1),
        Ipv4Addr::new(198, 18, 250, 2),
    );
    let ns = NetNs::create(&format!("npp-{}", std::process::id()));
    let root_if = format!("npp{}", std::process::id() % 100000);
    let ip_root = |args: &[&str]| {
        let out = output(std::process::Command::new("ip").args(args));
        assert!(out.status.success(), "ip {args:?}: {out:?}");
    };
    ip_root(&[
        "link",
        "add",
        &root_if,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        ns.name(),
    ]);
    ns.ip(&["addr", "add", &format!("{inside}/30"), "dev", "eth0"]);
    ns.ip(&["link", "set", "eth0", "up"]);
    ns.ip(&["link", "set", "lo", "up"]);
    ip_root(&["addr", "add", &format!("{outside}/30"), "dev", &root_if]);
    ip_root(&["link", "set", &root_if, "up"]);
    let etcd = EtcdOptions::new()
        .listen_ip(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
        .advertise_ip(IpAddr::V4(outside))
        .start();
    let mut set = agents_on(&etcd, 2, &["--lease-ttl", "4"]);
    // n1 runs inside the namespace: its only way to etcd is the veth.
    set.agents.kill("n1");
    set.agents.restart("n1", Some(ns.name()));
    thread::sleep(Duration::from_millis(500));
    set.agents.wait_applied(&etcd, 0);
    apply_mappings(&etcd, 3);
    wait_converged(&dir_options(&etcd), &set.nodes, CONVERGE);
    ip_root(&["link", "set", &root_if, "down"]);
    let partitioned = Instant::now();
    let out = netpage(
        &etcd,
        &[
            "--json",
            "switch",
            "--vm",
            &va(0).to_string(),
            "--to",
            &ra(2, 0).to_string(),
            "--timeout",
            "2",
        ],
    );
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    println!("{s}");
    assert!(
        !out.status.success(),
        "an unconfirmed switch exits non-zero"
    );
    assert_eq!(s["unconfirmed"], serde_json::json!(["n1"]), "{s}");
    assert_eq!(s["to"], ra(2, 0).to_string());
    netpage_etcd_json(
        &etcd,
        &[
            "switch",
            "--vm",
            &va(1).to_string(),
            "--to",
            &ra(2, 1).to_string(),
            "--no-wait",
        ],
    );
    assert_ne!(
        node_tables(&set.nodes[1].1),
        directory_tables(&dir_options(&etcd))
    );
    thread::sleep(Duration::from_secs(10).saturating_sub(partitioned.elapsed()));
    ip_root(&["link", "set", &root_if, "up"]);
    wait_converged(&dir_options(&etcd), &set.nodes, Duration::from_secs(30));
    drop(set);
    let _ = output(std::process::Command::new("ip").args(["link", "del", &root_if]));
}

/// The world (client, gateway, hosts A and B) with an agent per edge: a switch through the
/// directory loses none of the client's 1 ms probes and keeps a TCP connection; with etcd
/// stopped the datapath keeps translating and a switch fails, changing nothing; when etcd
/// returns the agents sync again and the VM moves back.
#[test]
fn the_world_switched_through_the_directory_and_without_etcd() {
    if etcd_missing() {
        return;
    }
    let mut etcd = Etcd::new();
    // The hosts linked directly: what host A forwards to host B's real address, when its
    // agent applies the switch before the gateway's, must not cross the gateway's uplink.
    let (world, edges, mut agents) = world_with_agents(&etcd, false);
    let f = V4;
    map_add(&etcd, f.va, f.ra_a);
    wait_converged(&dir_options(&etcd), &edges, CONVERGE);
    let server = world.tcp_echo(Node::Vm, SocketAddr::new(f.va, 7001));
    let mut stream = world.in_ns(Node::Client, || {
        TcpStream::connect_timeout(&server.addr(), Duration::from_secs(2)).unwrap()
    });
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let echo = |stream: &mut TcpStream, line: &str| {
        stream.write_all(line.as_bytes()).unwrap();
        let mut buf = vec![0; line.len()];
        stream.read_exact(&mut buf).unwrap();
        assert_eq!(buf, line.as_bytes());
    };
    echo(&mut stream, "before\n");
    let udp = world.udp_echo(Node::Vm, SocketAddr::new(f.va, 7000));
    let socket = world.udp_socket(
        Node::Client,
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
    );
    let probes = Prober::spawn(
        socket,
        udp.addr(),
        Duration::from_millis(1),
        Duration::from_secs(60),
    );
    thread::sleep(Duration::from_millis(300));
    world.replug_vm(Vm::One, Host::B, || {
        let s = netpage_etcd_json(
            &etcd,
            &[
                "switch",
                "--vm",
                &f.va.to_string(),
                "--to",
                &f.ra_b.to_string(),
            ],
        );
        println!("{s}");
        assert_eq!(s["unconfirmed"].as_array().unwrap().len(), 0, "{s}");
        thread::sleep(Duration::from_millis(300));
    });
    thread::sleep(Duration::from_millis(300));
    let report = probes.stop();
    println!("through the directory: {report}");
    assert_eq!(report.lost, 0, "{report}\n{}", world.diagnostics());
    assert_eq!(report.strangers, 0, "{report}");
    echo(&mut stream, "after the switch\n");
    // etcd stops: the datapath keeps translating, a switch fails and changes nothing.
    etcd.stop();
    let before = node_tables(&edges[0].1);
    let socket = world.udp_socket(
        Node::Client,
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
    );
    let probes = Prober::spawn(
        socket,
        udp.addr(),
        Duration::from_millis(1),
        Duration::from_secs(60),
    );
    let out = netpage(
        &etcd,
        &[
            "switch",
            "--vm",
            &f.va.to_string(),
            "--to",
            &f.ra_a.to_string(),
            "--timeout",
            "1",
        ],
    );
    let report = probes.stop();
    println!("without etcd: {report}");
    assert_eq!(report.lost, 0, "{report}");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("did not answer"), "{err}");
    for (_, dir) in &edges {
        assert_eq!(node_tables(dir).0, before.0, "a node changed without etcd");
    }
    echo(&mut stream, "without etcd\n");
    // etcd returns: the agents sync again and follow the next switch.
    etcd.start();
    agents.wait_applied(&etcd, 0);
    world.replug_vm(Vm::One, Host::A, || {
        let s = netpage_etcd_json(
            &etcd,
            &[
                "switch",
                "--vm",
                &f.va.to_string(),
                "--to",
                &f.ra_a.to_string(),
            ],
        );
        assert_eq!(s["unconfirmed"].as_array().unwrap().len(), 0, "{s}");
    });
    wait_converged(&dir_options(&etcd), &edges, CONVERGE);
    echo(&mut stream, "back at host A\n");
    assert!(
        agents.log("gw").matches("synced at revision").count() >= 2,
        "{}",
        agents.log("gw")
    );
    assert!(agents.terminate("gw").success(), "{}", agents.log("gw"));
    assert!(agents.log("gw").contains("the table stays in place"));
    assert_eq!(
        node_tables(&edges[0].1).0,
        vec![(f.va, f.ra_a)],
        "SIGTERM keeps the table"
    );
}

/// Segmentation switched through the directory in the namespace world: every edge has its
/// locators (node-local settings), the VM is mapped with method encap by one `map add
/// --etcd`, and the demo's move is one `switch --etcd` to host B's locator. The agents
/// apply it each at its own moment: while host A has switched and host B has not, host A
/// forwards to host B, whose table still names host A; host B opens the packet because the
/// VM's port is there, and no probe is lost, whichever node applies first.
#[test]
fn the_world_under_segmentation_switched_through_the_directory() {
    if etcd_missing() {
        return;
    }
    let etcd = Etcd::new();
    let (world, edges, mut agents) = world_with_agents(&etcd, true);
    let f = V4;
    let (at_a, at_b) = (Node::HostA.locator(&V4), Node::HostB.locator(&V4));
    let (va, loc) = (f.va.to_string(), at_a.to_string());
    netpage_etcd_json(&etcd, &["map", "add", "--vm", &va, "--locator", &loc]);
    let rev = etcd
        .mod_revision(&format!("/netpage/v1/map/seg/{va}"))
        .expect("the segment key");
    agents.wait_applied(&etcd, rev);
    for (name, pin) in &edges {
        assert_eq!(node_segments(pin), vec![(f.va, at_a)], "node {name}");
    }
    let udp = world.udp_echo(Node::Vm, SocketAddr::new(f.va, 7200));
    let socket = world.udp_socket(Node::Client, SocketAddr::new(f.client, 0));
    let probes = Prober::spawn(
        socket,
        udp.addr(),
        Duration::from_millis(1),
        Duration::from_secs(60),
    );
    thread::sleep(Duration::from_millis(300));
    let mut switched = serde_json::Value::Null;
    world.replug_vm(Vm::One, Host::B, || {
        switched = netpage_etcd_json(&etcd, &["switch", "--vm", &va, "--to", &at_b.to_string()]);
        thread::sleep(Duration::from_millis(300));
    });
    thread::sleep(Duration::from_millis(300));
    let report = probes.stop();
    let s = &switched;
    println!("{s}\nsegmentation through the directory: {report}");
    assert_eq!(s["method"], "encap", "{s}");
    assert_eq!(s["unconfirmed"].as_array().unwrap().len(), 0, "{s}");
    let update_ms = |node: &str| {
        let all = s["nodes"].as_array().unwrap();
        let n = all.iter().find(|n| n["node"] == node).unwrap();
        n["propagation_ms"].as_f64().unwrap()
    };
    println!(
        "applied: host A after {:.1} ms, host B after {:.1} ms; forwarded by host A {}, by \
         host B {}",
        update_ms("hostA"),
        update_ms("hostB"),
        world.counter(Node::HostA, "forwarded"),
        world.counter(Node::HostB, "forwarded"),
    );
    assert_eq!(report.lost, 0, "{report}\n{}", world.diagnostics());
    assert_eq!(report.strangers, 0, "{report}");
    for (name, pin) in &edges {
        assert_eq!(node_segments(pin), vec![(f.va, at_b)], "node {name}");
    }
    assert!(world.counter(Node::HostB, "decapsulated") > 0);
}
