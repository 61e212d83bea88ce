//! `netpage metrics` on the world's gateway, scraped as Prometheus would (see
//! `openmetrics`) while probes flow and the VM moves; once the traffic stops, every
//! counter of a scrape equals what `netpage stats` reads.

use std::{net::SocketAddr, process::Child, time::Duration};

use netpage_tests::{
    openmetrics::Scrape,
    world::{Host, Node, Prober, V4, V6, Vm, World},
};

const LISTEN: &str = "127.0.0.1:9560";

/// `netpage metrics` on the gateway, started and ready.
fn serve(world: &World) -> Child {
    world.serve_metrics(Node::Gw, LISTEN, &[])
}

fn scrape(world: &World, path: &str) -> Scrape {
    Scrape::get(Some(world.ns(Node::Gw)), &format!("http://{LISTEN}{path}"))
}

fn translated_v4(world: &World) -> f64 {
    scrape(world, "/metrics")
        .ok()
        .value(
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
            let scraped = scrape(&world, "/metrics").ok();
            let after = world.netpage_json(Node::Gw, &["stats"]);
            (before == after).then_some((before, scraped))
        })
        .expect("the gateway never stood still for a scrape");
    for (outcome, value) in stats["counters"].as_object().unwrap() {
        assert_eq!(
            scraped.value("netpage_packets_total", &[("outcome", outcome)]),
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
                scraped.value(&format!("netpage_mapping_{what}_total"), &labels),
                Some(m[what].as_f64().unwrap()),
                "{what} of {labels:?}"
            );
        }
    }
    let moved = [("vm", &*V4.va.to_string()), ("real", &*V4.ra_b.to_string())];
    assert!(
        scraped
            .value("netpage_mapping_packets_total", &moved)
            .unwrap()
            > 0.0,
        "no packets counted for the VM at host B"
    );
    let old = [("vm", &*V4.va.to_string()), ("real", &*V4.ra_a.to_string())];
    assert_eq!(scraped.value("netpage_mapping_packets_total", &old), None);
    for (map, family, n) in [("v2r", "ipv4", 1.0), ("v2r", "ipv6", 1.0)] {
        assert_eq!(
            scraped.value("netpage_table_entries", &[("map", map), ("family", family)]),
            Some(n)
        );
    }
    let drains = world.netpage_json(Node::Gw, &["map", "list", "--reverse"])["drains"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(scraped.value("netpage_drains", &[]), Some(drains as f64));
    let capacity = world.netpage_json(Node::Gw, &["status"])["capacity"].as_f64();
    assert_eq!(scraped.value("netpage_table_capacity", &[]), capacity);

    assert_eq!(scrape(&world, "/other").status, 404);
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(server.id() as libc::pid_t, libc::SIGTERM) };
    let status = server.wait().unwrap();
    assert!(status.success(), "netpage metrics exited {status}");
}
