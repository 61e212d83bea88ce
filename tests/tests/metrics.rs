//! `netpage metrics` on the world's gateway, scraped with a real HTTP client (Python's
//! urllib) and parsed with an OpenMetrics parser that shares no code with netpage
//! (Python's `prometheus_client`), while probes flow and the VM moves; once the traffic
//! stops, every counter of a scrape equals what `netpage stats` reads.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Stdio},
    time::Duration,
};

use netpage_tests::world::{Host, Node, Prober, V4, V6, Vm, World, netpage_bin};
use serde_json::Value;

/// Debian's Python, which has the `prometheus_client` package setup installs.
const PYTHON: &str = "/usr/bin/python3";

/// Fetches argv[1] and prints its content type, status and samples as JSON; the parser
/// raises on anything that is not valid OpenMetrics text (it requires `# EOF`, for one).
const SCRAPER: &str = r#"
import json, sys, urllib.request, urllib.error
from prometheus_client.openmetrics.parser import text_string_to_metric_families
try:
    r = urllib.request.urlopen(sys.argv[1], timeout=20)
except urllib.error.HTTPError as e:
    print(json.dumps({"status": e.code}))
    sys.exit(0)
text = r.read().decode()
samples = [
    {"name": s.name, "labels": s.labels, "value": s.value, "type": f.type}
    for f in text_string_to_metric_families(text)
    for s in f.samples
]
print(json.dumps({"status": r.status, "content_type": r.headers["Content-Type"], "samples": samples}))
"#;

const LISTEN: &str = "127.0.0.1:9560";

/// `netpage metrics` on the gateway, started and ready.
fn serve(world: &World) -> Child {
    let mut child = world
        .ns(Node::Gw)
        .command(netpage_bin())
        .arg("--pin-dir")
        .arg(world.pin_dir(Node::Gw))
        .args(["metrics", "--listen", LISTEN])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start netpage metrics");
    let mut line = String::new();
    BufReader::new(child.stderr.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.contains(&format!("at http://{LISTEN}/metrics")),
        "{line}"
    );
    child
}

fn scrape(world: &World, path: &str) -> Value {
    let url = format!("http://{LISTEN}{path}");
    let out = world.exec(Node::Gw, PYTHON, &["-c", SCRAPER, &url]);
    assert!(
        out.status.success(),
        "scraping {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A scrape's samples by name and sorted labels.
type Samples = BTreeMap<(String, Vec<(String, String)>), f64>;

/// The samples of a scrape.
fn samples(scrape: &Value) -> Samples {
    assert_eq!(scrape["status"], 200, "{scrape:#}");
    assert_eq!(
        scrape["content_type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    scrape["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let mut labels: Vec<(String, String)> = s["labels"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect();
            labels.sort();
            (
                (s["name"].as_str().unwrap().to_owned(), labels),
                s["value"].as_f64().unwrap(),
            )
        })
        .collect()
}

fn get(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut labels: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    labels.sort();
    samples.get(&(name.to_owned(), labels)).copied()
}

fn translated_v4(world: &World) -> f64 {
    let s = samples(&scrape(world, "/metrics"));
    get(
        &s,
        "netpage_packets_total",
        &[("outcome", "translated_v4_to_real")],
    )
    .expect("the outcome counter")
}

#[test]
fn scrapes_follow_the_traffic_and_equal_the_stats() {
    let world = World::new();
    world.attach_all();
    for f in [V4, V6] {
        world.map_all(f.va, f.ra_a);
    }
    let mut server = serve(&world);

    let echo = world.udp_echo(Node::Vm, SocketAddr::new(V4.va, 7));
    let socket = world.udp_socket(Node::Client, SocketAddr::new([0, 0, 0, 0].into(), 0));
    let probes = Prober::spawn(
        socket,
        echo.addr(),
        Duration::from_millis(2),
        Duration::from_secs(60),
    );
    // While probes flow, the translated count only grows.
    let mut last = 0.0;
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(300));
        let now = translated_v4(&world);
        assert!(
            now > last,
            "translated_v4_to_real went from {last} to {now}"
        );
        last = now;
    }
    // The VM moves, and the mapping's series with it.
    world.migrate(Vm::One, Host::B);
    world.switch_all(V4.va, V4.ra_b);
    std::thread::sleep(Duration::from_millis(300));
    let report = probes.stop();
    assert!(report.received > 0, "{report}");

    // Quiet: a scrape between two equal reads of `netpage stats` must equal them.
    let (stats, scraped) = (0..10)
        .find_map(|_| {
            let before = world.netpage_json(Node::Gw, &["stats"]);
            let scraped = samples(&scrape(&world, "/metrics"));
            let after = world.netpage_json(Node::Gw, &["stats"]);
            (before == after).then_some((before, scraped))
        })
        .expect("the gateway never stood still for a scrape");
    for (outcome, value) in stats["counters"].as_object().unwrap() {
        assert_eq!(
            get(&scraped, "netpage_packets_total", &[("outcome", outcome)]),
            Some(value.as_f64().unwrap()),
            "outcome {outcome}"
        );
    }
    let mappings = stats["mappings"].as_array().unwrap();
    assert_eq!(mappings.len(), 2, "{stats:#}");
    for m in mappings {
        let labels = [
            ("vm", m["vm"].as_str().unwrap()),
            ("real", m["real"].as_str().unwrap()),
        ];
        for what in ["packets", "bytes"] {
            assert_eq!(
                get(&scraped, &format!("netpage_mapping_{what}_total"), &labels),
                Some(m[what].as_f64().unwrap()),
                "{what} of {labels:?}"
            );
        }
    }
    let moved = [("vm", &*V4.va.to_string()), ("real", &*V4.ra_b.to_string())];
    assert!(
        get(&scraped, "netpage_mapping_packets_total", &moved).unwrap() > 0.0,
        "no packets counted for the VM at host B"
    );
    let old = [("vm", &*V4.va.to_string()), ("real", &*V4.ra_a.to_string())];
    assert_eq!(get(&scraped, "netpage_mapping_packets_total", &old), None);
    for (map, family, n) in [("v2r", "ipv4", 1.0), ("v2r", "ipv6", 1.0)] {
        assert_eq!(
            get(
                &scraped,
                "netpage_table_entries",
                &[("map", map), ("family", family)]
            ),
            Some(n)
        );
    }
    let drains = world.netpage_json(Node::Gw, &["map", "list", "--reverse"])["drains"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(get(&scraped, "netpage_drains", &[]), Some(drains as f64));
    let capacity = world.netpage_json(Node::Gw, &["status"])["capacity"].as_f64();
    assert_eq!(get(&scraped, "netpage_table_capacity", &[]), capacity);

    assert_eq!(scrape(&world, "/other")["status"], 404);
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(server.id() as libc::pid_t, libc::SIGTERM) };
    let status = server.wait().unwrap();
    assert!(status.success(), "netpage metrics exited {status}");
}
