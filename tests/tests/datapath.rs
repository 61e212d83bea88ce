//! In-kernel fixture tests of the XDP datapath, through BPF_PROG_TEST_RUN.
//!
//! Each case builds its input with the original addresses and its expected output with the
//! translated ones, both from scratch (every checksum computed anew), then runs the program
//! and compares verdict, bytes and counters. Translated outputs are also re-verified by an
//! independent checksum walk.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use netpage::{
    counters::Totals,
    loader::Side,
    table::{Drain, PageTable},
};
use netpage_common::{counters::Counter, maps::MappingStats};
use netpage_tests::{
    build::{
        TPID_8021AD, TPID_8021Q, V4Opts, Xlate, ether, ext, frame4, frame6, icmp4, icmp6, ipv4,
        ipv6, tcp, udp,
    },
    datapath::{Datapath, Hook, LOOPBACK, XDP_PASS, gso_context},
    verify,
};

fn ip4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn ip6(s: &str) -> IpAddr {
    IpAddr::V6(s.parse::<Ipv6Addr>().unwrap())
}

/// The addresses of one family in the fixture world.
#[derive(Clone, Copy)]
struct World {
    client: IpAddr,
    router: IpAddr,
    va_a: IpAddr,
    ra_a: IpAddr,
    va_b: IpAddr,
    ra_b: IpAddr,
    /// A mapping whose VM no port of the node owns.
    va_c: IpAddr,
    ra_c: IpAddr,
    v6: bool,
}

const W4: fn() -> World = || World {
    client: ip4(203, 0, 113, 5),
    router: ip4(192, 0, 2, 1),
    va_a: ip4(10, 0, 0, 10),
    ra_a: ip4(192, 0, 2, 10),
    va_b: ip4(10, 0, 0, 20),
    ra_b: ip4(198, 51, 100, 20),
    va_c: ip4(10, 0, 0, 90),
    ra_c: ip4(198, 51, 100, 90),
    v6: false,
};

const W6: fn() -> World = || World {
    client: ip6("2001:db8:c::5"),
    router: ip6("2001:db8:a::1"),
    va_a: ip6("fd00::10"),
    ra_a: ip6("2001:db8:a::10"),
    va_b: ip6("fd00::20"),
    ra_b: ip6("2001:db8:b::20"),
    va_c: ip6("fd00::90"),
    ra_c: ip6("2001:db8:b::90"),
    v6: true,
};

type Build = Box<dyn Fn(Xlate) -> Vec<u8>>;

struct Case {
    name: String,
    side: Side,
    build: Build,
    outcome: Counter,
}

fn case(name: impl Into<String>, side: Side, outcome: Counter, build: Build) -> Case {
    Case {
        name: name.into(),
        side,
        build,
        outcome,
    }
}

fn translated(w: &World, side: Side) -> Counter {
    Counter::translated(w.v6, side == Side::Physical)
}

const PAYLOAD: &[u8] = b"network paging: the page table is at the edge";

/// The transports every address pattern is tried with.
#[derive(Clone, Copy, Debug)]
enum L4 {
    Tcp,
    Udp,
    Echo,
}

fn segment(l4: L4, v6: bool, s: IpAddr, d: IpAddr) -> (u8, Vec<u8>) {
    match (l4, v6) {
        (L4::Tcp, _) => (6, tcp(s, d, PAYLOAD)),
        (L4::Udp, _) => (17, udp(s, d, PAYLOAD)),
        (L4::Echo, false) => (1, icmp4(8, 0, [0x12, 0x34, 0, 1], PAYLOAD)),
        (L4::Echo, true) => (58, icmp6(s, d, 128, 0, [0x12, 0x34, 0, 1], PAYLOAD)),
    }
}

/// A frame of transport `l4` from `src` to `dst`, with `tpids` VLAN tags.
fn frame(w: World, tpids: &'static [u16], l4: L4, src: IpAddr, dst: IpAddr) -> Build {
    Box::new(move |x: Xlate| {
        let (s, d) = (x(src), x(dst));
        let (proto, seg) = segment(l4, w.v6, s, d);
        if w.v6 {
            ether(tpids, 0x86DD, &ipv6(s, d, proto, &[], &seg))
        } else {
            ether(tpids, 0x0800, &ipv4(s, d, proto, &V4Opts::default(), &seg))
        }
    })
}

/// Address patterns on both sides, for every transport, with and without VLAN tags.
///
/// The test run's packets arrive on the loopback ([`LOOPBACK`]), which owns VM A; VM B is
/// owned by another port ([`OTHER_PORT`]), VM C by none.
fn address_cases(w: World) -> Vec<Case> {
    let f = if w.v6 { "v6" } else { "v4" };
    let mut cases = Vec::new();
    for l4 in [L4::Tcp, L4::Udp, L4::Echo] {
        let patterns = [
            (Side::Virtual, "client->VA", w.client, w.va_a),
            (Side::Virtual, "VA->client", w.va_a, w.client),
            (Side::Virtual, "VA->VA from the VM's port", w.va_a, w.va_b),
            // The VM's own real address as source passes untouched; the destination is
            // translated.
            (Side::Virtual, "own RA->VA", w.ra_a, w.va_b),
            (Side::Physical, "client->RA", w.client, w.ra_a),
            (Side::Physical, "RA->client", w.ra_a, w.client),
            (Side::Physical, "RA->RA", w.ra_a, w.ra_b),
            // The physical side checks no source.
            (Side::Physical, "unowned VM's RA->RA", w.ra_c, w.ra_a),
        ];
        for (side, what, s, d) in patterns {
            let t = translated(&w, side);
            cases.push(case(
                format!("{f} {l4:?} {side:?} {what}"),
                side,
                t,
                frame(w, &[], l4, s, d),
            ));
        }
        // A mapping's address as source from a port that does not own its VM: dropped,
        // whatever the destination.
        let spoofed = [
            ("VA->VA from another VM's port", w.va_b, w.va_a),
            ("VA->client from another VM's port", w.va_b, w.client),
            ("unowned VA->VA", w.va_c, w.va_a),
            ("unowned VA->client", w.va_c, w.client),
            ("another VM's RA->VA", w.ra_b, w.va_a),
            ("another VM's RA->client", w.ra_b, w.client),
            ("unowned RA->client", w.ra_c, w.client),
        ];
        for (what, s, d) in spoofed {
            cases.push(case(
                format!("{f} {l4:?} Virtual spoofed {what}"),
                Side::Virtual,
                Counter::Spoofed,
                frame(w, &[], l4, s, d),
            ));
        }
        // The own RA as source, to an unmapped destination: a miss, as before.
        cases.push(case(
            format!("{f} {l4:?} Virtual own RA->client is a miss"),
            Side::Virtual,
            Counter::PassMiss,
            frame(w, &[], l4, w.ra_a, w.client),
        ));
        for side in [Side::Virtual, Side::Physical] {
            cases.push(case(
                format!("{f} {l4:?} {side:?} miss"),
                side,
                Counter::PassMiss,
                frame(w, &[], l4, w.client, w.router),
            ));
            // A real address arriving on the virtual side is not a virtual address.
            let other = if side == Side::Virtual {
                w.ra_a
            } else {
                w.va_a
            };
            cases.push(case(
                format!("{f} {l4:?} {side:?} other side's address is a miss"),
                side,
                Counter::PassMiss,
                frame(w, &[], l4, w.client, other),
            ));
        }
    }
    for (tags, tpids) in [
        ("802.1Q", &[TPID_8021Q][..]),
        ("802.1ad+802.1Q", &[TPID_8021AD, TPID_8021Q][..]),
        ("802.1Q+802.1Q", &[TPID_8021Q, TPID_8021Q][..]),
    ] {
        for side in [Side::Virtual, Side::Physical] {
            let (s, d) = if side == Side::Virtual {
                (w.client, w.va_a)
            } else {
                (w.ra_a, w.client)
            };
            cases.push(case(
                format!("{f} TCP {tags} {side:?}"),
                side,
                translated(&w, side),
                frame(w, tpids, L4::Tcp, s, d),
            ));
        }
    }
    cases.push(case(
        format!("{f} spoofed VA on a VLAN"),
        Side::Virtual,
        Counter::Spoofed,
        frame(w, &[TPID_8021Q], L4::Udp, w.va_b, w.client),
    ));
    cases.push(case(
        format!("{f} three VLAN tags"),
        Side::Virtual,
        Counter::PassVlanDepth,
        frame(
            w,
            &[TPID_8021AD, TPID_8021Q, TPID_8021Q],
            L4::Tcp,
            w.client,
            w.va_a,
        ),
    ));
    cases
}

/// IPv4 header variants: options, malformed headers, fragments, UDP checksum rules,
/// protocols, padding.
fn ipv4_cases() -> Vec<Case> {
    let w = W4();
    let mut cases = Vec::new();
    for ihl in [6u8, 10, 15] {
        let opts = V4Opts {
            options: vec![1; usize::from(ihl - 5) * 4],
            ..V4Opts::default()
        };
        for side in [Side::Virtual, Side::Physical] {
            let (src, dst) = if side == Side::Virtual {
                (w.client, w.va_a)
            } else {
                (w.ra_a, w.client)
            };
            let o = opts.clone();
            cases.push(case(
                format!("v4 IHL {ihl} UDP {side:?}"),
                side,
                translated(&w, side),
                Box::new(move |x| {
                    let (s, d) = (x(src), x(dst));
                    ether(&[], 0x0800, &ipv4(s, d, 17, &o, &udp(s, d, PAYLOAD)))
                }),
            ));
        }
    }
    // Raw header edits make malformed packets; they must pass untouched.
    let patched = |what: &'static str, patch: fn(&mut Vec<u8>), outcome| {
        case(
            format!("v4 {what}"),
            Side::Virtual,
            outcome,
            Box::new(move |x| {
                let mut f = frame4(x, w.client, w.va_a, 6, |s, d| tcp(s, d, PAYLOAD));
                patch(&mut f);
                f
            }),
        )
    };
    cases.push(patched("IHL 4", |f| f[14] = 0x44, Counter::PassMalformed));
    cases.push(patched("IHL 0", |f| f[14] = 0x40, Counter::PassMalformed));
    cases.push(patched(
        "version 5",
        |f| f[14] = 0x55,
        Counter::PassMalformed,
    ));
    cases.push(patched(
        "total length below IHL",
        |f| f[16..18].copy_from_slice(&[0, 12]),
        Counter::PassMalformed,
    ));
    cases.push(patched(
        "total length beyond the frame",
        |f| f[16..18].copy_from_slice(&[0x05, 0xDC]),
        Counter::PassTruncated,
    ));
    cases.push(patched(
        "total length too short for TCP",
        |f| {
            f[16..18].copy_from_slice(&[0, 30]);
            f.truncate(14 + 30);
        },
        Counter::PassMalformed,
    ));

    // Ethernet padding after the IP packet is left alone.
    cases.push(case(
        "v4 UDP with Ethernet padding",
        Side::Virtual,
        Counter::V4ToReal,
        Box::new(move |x| {
            let (s, d) = (x(w.client), x(w.va_a));
            let mut f = ether(
                &[],
                0x0800,
                &ipv4(s, d, 17, &V4Opts::default(), &udp(s, d, b"hi")),
            );
            f.extend([0xEE; 14]);
            f
        }),
    ));

    // UDP: a 0 checksum means none and stays 0.
    for side in [Side::Virtual, Side::Physical] {
        let (src, dst) = if side == Side::Virtual {
            (w.client, w.va_a)
        } else {
            (w.ra_a, w.client)
        };
        cases.push(case(
            format!("v4 UDP checksum 0 {side:?}"),
            side,
            translated(&w, side),
            Box::new(move |x| {
                let (s, d) = (x(src), x(dst));
                let mut seg = udp(s, d, PAYLOAD);
                seg[6..8].copy_from_slice(&[0, 0]);
                ether(&[], 0x0800, &ipv4(s, d, 17, &V4Opts::default(), &seg))
            }),
        ));
    }
    // UDP: a translation that computes to 0 is sent as 0xFFFF. Find the payload for which the
    // checksum with the translated addresses is 0xFFFF (a computed 0).
    let zero_payload = (0..=u16::MAX)
        .map(|v| {
            let mut p = PAYLOAD.to_vec();
            p.extend(v.to_be_bytes());
            p
        })
        .find(|p| udp(w.client, w.ra_a, p)[6..8] == [0xFF, 0xFF])
        .expect("a payload whose translated UDP checksum computes to zero");
    cases.push(case(
        "v4 UDP checksum computing to 0 is sent as 0xFFFF",
        Side::Virtual,
        Counter::V4ToReal,
        Box::new(move |x| {
            let (s, d) = (x(w.client), x(w.va_a));
            ether(
                &[],
                0x0800,
                &ipv4(s, d, 17, &V4Opts::default(), &udp(s, d, &zero_payload)),
            )
        }),
    ));

    // Fragments: all are translated; only the first carries the UDP checksum to fix.
    let big: Vec<u8> = (0..64u8).collect();
    for (name, more, offset) in [
        ("first", true, 0u16),
        ("middle", true, 3),
        ("last", false, 6),
    ] {
        for side in [Side::Virtual, Side::Physical] {
            let (src, dst) = if side == Side::Virtual {
                (w.va_a, w.client)
            } else {
                (w.client, w.ra_a)
            };
            let big = big.clone();
            cases.push(case(
                format!("v4 UDP {name} fragment {side:?}"),
                side,
                translated(&w, side),
                Box::new(move |x| {
                    let (s, d) = (x(src), x(dst));
                    let whole = udp(s, d, &big);
                    let start = usize::from(offset) * 8;
                    let piece = &whole[start..(start + 24).min(whole.len())];
                    let o = V4Opts {
                        options: vec![],
                        more_fragments: more,
                        offset,
                    };
                    ether(&[], 0x0800, &ipv4(s, d, 17, &o, piece))
                }),
            ));
        }
    }
    // A non-first fragment of an unknown protocol is as unknown as its first.
    cases.push(case(
        "v4 DCCP non-first fragment",
        Side::Virtual,
        Counter::PassUnknownProto,
        Box::new(move |x| {
            let o = V4Opts {
                options: vec![],
                more_fragments: false,
                offset: 2,
            };
            ether(&[], 0x0800, &ipv4(x(w.client), x(w.va_a), 33, &o, PAYLOAD))
        }),
    ));
    for (proto, name, outcome) in [
        (33u8, "DCCP", Counter::PassUnknownProto),
        (253, "experimental 253", Counter::PassUnknownProto),
        // ESP in transport mode encrypts a transport checksum over the original addresses.
        (50, "ESP", Counter::PassUnknownProto),
        (47, "GRE", Counter::V4ToReal),
        (132, "SCTP", Counter::V4ToReal),
    ] {
        cases.push(case(
            format!("v4 protocol {name}"),
            Side::Virtual,
            outcome,
            Box::new(move |x| {
                ether(
                    &[],
                    0x0800,
                    &ipv4(x(w.client), x(w.va_a), proto, &V4Opts::default(), PAYLOAD),
                )
            }),
        ));
    }
    for side in [Side::Virtual, Side::Physical] {
        let (src, dst) = if side == Side::Virtual {
            (w.va_a, w.client)
        } else {
            (w.client, w.ra_a)
        };
        cases.push(case(
            format!("v4 ESP {side:?}"),
            side,
            Counter::PassUnknownProto,
            Box::new(move |x| ether(&[], 0x0800, &esp4(x(src), x(dst), &V4Opts::default()))),
        ));
        let o = V4Opts {
            options: vec![],
            more_fragments: false,
            offset: 4,
        };
        cases.push(case(
            format!("v4 ESP non-first fragment {side:?}"),
            side,
            Counter::PassUnknownProto,
            Box::new(move |x| ether(&[], 0x0800, &esp4(x(src), x(dst), &o))),
        ));
    }

    // A first fragment too short for its TCP header passes untouched, not half rewritten:
    // 12 bytes end before the checksum, 17 cut through it.
    for (cut, side) in [
        (12, Side::Virtual),
        (12, Side::Physical),
        (17, Side::Virtual),
    ] {
        let (src, dst) = if side == Side::Virtual {
            (w.client, w.va_a)
        } else {
            (w.ra_a, w.client)
        };
        cases.push(case(
            format!("v4 TCP first fragment of {cut} bytes {side:?}"),
            side,
            Counter::PassMalformed,
            Box::new(move |x| {
                let (s, d) = (x(src), x(dst));
                let o = V4Opts {
                    options: vec![],
                    more_fragments: true,
                    offset: 0,
                };
                ether(&[], 0x0800, &ipv4(s, d, 6, &o, &tcp(s, d, PAYLOAD)[..cut]))
            }),
        ));
    }
    cases
}

/// An ESP packet (SPI, sequence number, then ciphertext) from `src` to `dst`.
fn esp4(src: IpAddr, dst: IpAddr, o: &V4Opts) -> Vec<u8> {
    ipv4(src, dst, 50, o, &esp_body())
}

/// The body of an ESP packet: SPI, sequence number, opaque payload.
fn esp_body() -> Vec<u8> {
    [&[0, 0, 0x10, 0x01, 0, 0, 0, 7][..], PAYLOAD].concat()
}

/// An IPv4 source route option of `kind` (loose 131, strict 137) through `hops`, with
/// pointer `ptr` (4 points at the first hop), after a NOP: 12 bytes of options.
fn source_route(kind: u8, ptr: u8, hops: [IpAddr; 2]) -> Vec<u8> {
    let mut o = vec![1, kind, 11, ptr];
    for h in hops {
        match h {
            IpAddr::V4(a) => o.extend(a.octets()),
            IpAddr::V6(_) => panic!("{h} in an IPv4 source route"),
        }
    }
    o
}

/// IPv4 options that keep the header's destination out of the transport pseudo-header:
/// a source route with hops left passes untouched; a completed one translates.
fn source_route_cases() -> Vec<Case> {
    let w = W4();
    let mut cases = Vec::new();
    let hop = ip4(198, 51, 100, 1);
    // With hops left the header's destination is the next hop and the pseudo-header holds
    // the final destination, the last hop: the sender's checksum is over `final_dst`.
    let routed = |name: String,
                  side: Side,
                  outcome: Counter,
                  l4: L4,
                  (src, dst): (IpAddr, IpAddr),
                  pseudo_dst: IpAddr,
                  options: Vec<u8>| {
        case(
            name,
            side,
            outcome,
            Box::new(move |x: Xlate| {
                let (s, d) = (x(src), x(dst));
                let (proto, seg) = segment(l4, false, s, x(pseudo_dst));
                let o = V4Opts {
                    options: options.clone(),
                    ..V4Opts::default()
                };
                ether(&[], 0x0800, &ipv4(s, d, proto, &o, &seg))
            }),
        )
    };
    for (kind, name) in [(131u8, "LSRR"), (137, "SSRR")] {
        for l4 in [L4::Tcp, L4::Udp] {
            // The VM sends through a router, to a client.
            cases.push(routed(
                format!("v4 {name} {l4:?} with hops left from a VA, virtual"),
                Side::Virtual,
                Counter::PassSourceRoute,
                l4,
                (w.va_a, w.router),
                w.client,
                source_route(kind, 4, [w.router, w.client]),
            ));
            // A client reaches the VM through its real address as the next hop.
            cases.push(routed(
                format!("v4 {name} {l4:?} with the last hop left to an RA, physical"),
                Side::Physical,
                Counter::PassSourceRoute,
                l4,
                (w.client, w.ra_a),
                hop,
                source_route(kind, 8, [w.ra_a, hop]),
            ));
            // Hops all used: the header's destination is the final one.
            cases.push(routed(
                format!("v4 {name} {l4:?} completed, virtual"),
                Side::Virtual,
                Counter::V4ToReal,
                l4,
                (w.va_a, w.client),
                w.client,
                source_route(kind, 12, [w.router, w.client]),
            ));
            cases.push(routed(
                format!("v4 {name} {l4:?} completed, physical"),
                Side::Physical,
                Counter::V4ToVirtual,
                l4,
                (w.client, w.ra_a),
                w.ra_a,
                source_route(kind, 12, [w.router, w.ra_a]),
            ));
        }
    }
    cases.push(routed(
        "v4 LSRR with hops left, unmapped".into(),
        Side::Virtual,
        Counter::PassMiss,
        L4::Tcp,
        (w.client, w.router),
        hop,
        source_route(131, 4, [w.router, hop]),
    ));
    // A route behind a record route (7 bytes) and a route without hops (3 bytes).
    let mut late = vec![7, 7, 4, 0, 0, 0, 0, 1, 1, 1, 1, 1, 131, 3, 4, 1];
    late.extend(source_route(131, 4, [w.router, w.client]));
    cases.push(routed(
        "v4 LSRR after other options, virtual".into(),
        Side::Virtual,
        Counter::PassSourceRoute,
        L4::Udp,
        (w.va_a, w.router),
        w.client,
        late,
    ));
    // The end of the option list: what follows is not an option.
    let mut ended = vec![0; 4];
    ended.extend(source_route(131, 4, [w.router, w.client]));
    cases.push(routed(
        "v4 LSRR after the end of the option list, virtual".into(),
        Side::Virtual,
        Counter::V4ToReal,
        L4::Tcp,
        (w.va_a, w.client),
        w.client,
        ended,
    ));
    // Options the walk cannot step over.
    for (what, options) in [
        ("an option of length 1", vec![148, 1, 0, 0]),
        (
            "a timestamp past the header",
            vec![1, 68, 12, 5, 0, 0, 0, 0],
        ),
        ("a source route without pointer", vec![137, 2, 0, 0]),
    ] {
        cases.push(routed(
            format!("v4 {what}, virtual"),
            Side::Virtual,
            Counter::PassMalformed,
            L4::Tcp,
            (w.va_a, w.client),
            w.client,
            options,
        ));
    }
    // 40 bytes of options, the route at their end.
    let mut full = vec![1; 28];
    full.extend(source_route(137, 8, [w.router, w.client]));
    cases.push(routed(
        "v4 SSRR at the end of 40 bytes of options, physical".into(),
        Side::Physical,
        Counter::PassSourceRoute,
        L4::Udp,
        (w.ra_a, w.router),
        w.client,
        full,
    ));
    cases
}

/// An ICMP error from `src` to `dst`, quoting the first `quote` bytes of a packet of
/// transport `l4` from `qsrc` to `qdst` (with quoted IP options `qopts`).
#[expect(
    clippy::too_many_arguments,
    reason = "a fixture names every address of the error and of its quote"
)]
fn icmp4_error(
    ty: u8,
    code: u8,
    src: IpAddr,
    dst: IpAddr,
    l4: L4,
    qsrc: IpAddr,
    qdst: IpAddr,
    quote: usize,
    qopts: V4Opts,
) -> Build {
    Box::new(move |x| {
        let (qs, qd) = (x(qsrc), x(qdst));
        let (proto, seg) = segment(l4, false, qs, qd);
        let inner = ipv4(qs, qd, proto, &qopts, &seg);
        let body = &inner[..quote.min(inner.len())];
        let (s, d) = (x(src), x(dst));
        ether(
            &[],
            0x0800,
            &ipv4(
                s,
                d,
                1,
                &V4Opts::default(),
                &icmp4(ty, code, [0, 0, 0x05, 0xDC], body),
            ),
        )
    })
}

/// An ICMPv6 error from `src` to `dst`, quoting the first `quote` bytes of a packet of
/// transport `l4` from `qsrc` to `qdst`.
#[expect(
    clippy::too_many_arguments,
    reason = "a fixture names every address of the error and of its quote"
)]
fn icmp6_error(
    ty: u8,
    code: u8,
    src: IpAddr,
    dst: IpAddr,
    l4: L4,
    qsrc: IpAddr,
    qdst: IpAddr,
    quote: usize,
) -> Build {
    Box::new(move |x| {
        let (qs, qd) = (x(qsrc), x(qdst));
        let (proto, seg) = segment(l4, true, qs, qd);
        let inner = ipv6(qs, qd, proto, &[], &seg);
        let body = &inner[..quote.min(inner.len())];
        let (s, d) = (x(src), x(dst));
        ether(
            &[],
            0x86DD,
            &ipv6(
                s,
                d,
                58,
                &[],
                &icmp6(s, d, ty, code, [0, 0, 0x05, 0x00], body),
            ),
        )
    })
}

fn icmp_error_cases() -> Vec<Case> {
    let (w, v) = (W4(), W6());
    let none = V4Opts::default;
    vec![
        // Physical side: a router's error to a real address about the VM's packet.
        case(
            "v4 port unreachable quoting UDP, physical",
            Side::Physical,
            Counter::V4ToVirtual,
            icmp4_error(
                3,
                3,
                w.router,
                w.ra_a,
                L4::Udp,
                w.ra_a,
                w.client,
                28,
                none(),
            ),
        ),
        case(
            "v4 time exceeded quoting whole TCP, physical",
            Side::Physical,
            Counter::V4ToVirtual,
            icmp4_error(
                11,
                0,
                w.router,
                w.ra_a,
                L4::Tcp,
                w.ra_a,
                w.client,
                1000,
                none(),
            ),
        ),
        case(
            "v4 fragmentation needed quoting TCP cut at 8 bytes, physical",
            Side::Physical,
            Counter::V4ToVirtual,
            icmp4_error(
                3,
                4,
                w.router,
                w.ra_a,
                L4::Tcp,
                w.ra_a,
                w.client,
                28,
                none(),
            ),
        ),
        case(
            "v4 parameter problem quoting ICMP echo, physical",
            Side::Physical,
            Counter::V4ToVirtual,
            icmp4_error(
                12,
                0,
                w.router,
                w.ra_a,
                L4::Echo,
                w.ra_a,
                w.client,
                1000,
                none(),
            ),
        ),
        case(
            "v4 error between two VMs quoting UDP, physical",
            Side::Physical,
            Counter::V4ToVirtual,
            icmp4_error(3, 3, w.ra_b, w.ra_a, L4::Udp, w.ra_a, w.ra_b, 1000, none()),
        ),
        case(
            "v4 error quoting a header with options, physical",
            Side::Physical,
            Counter::V4ToVirtual,
            icmp4_error(
                11,
                0,
                w.router,
                w.ra_a,
                L4::Tcp,
                w.ra_a,
                w.client,
                1000,
                V4Opts {
                    options: vec![1; 8],
                    ..none()
                },
            ),
        ),
        // Virtual side: the VM's error to a client about the client's packet.
        case(
            "v4 port unreachable quoting UDP, virtual",
            Side::Virtual,
            Counter::V4ToReal,
            icmp4_error(
                3,
                3,
                w.va_a,
                w.client,
                L4::Udp,
                w.client,
                w.va_a,
                1000,
                none(),
            ),
        ),
        case(
            "v4 time exceeded quoting TCP cut at 8 bytes, virtual",
            Side::Virtual,
            Counter::V4ToReal,
            icmp4_error(
                11,
                0,
                w.va_a,
                w.client,
                L4::Tcp,
                w.client,
                w.va_a,
                28,
                none(),
            ),
        ),
        case(
            "v4 error quoting only the IP header, virtual",
            Side::Virtual,
            Counter::V4ToReal,
            icmp4_error(
                3,
                1,
                w.va_a,
                w.client,
                L4::Udp,
                w.client,
                w.va_a,
                20,
                none(),
            ),
        ),
        case(
            "v4 error too short to quote an IP header",
            Side::Virtual,
            Counter::PassMalformed,
            icmp4_error(
                3,
                1,
                w.va_a,
                w.client,
                L4::Udp,
                w.client,
                w.va_a,
                12,
                none(),
            ),
        ),
        case(
            "v4 error quoting unmapped addresses, virtual",
            Side::Virtual,
            Counter::V4ToReal,
            icmp4_error(
                3,
                3,
                w.va_a,
                w.client,
                L4::Udp,
                w.client,
                w.router,
                1000,
                none(),
            ),
        ),
        // Source quench and redirect quote the offending header too.
        case(
            "v4 source quench quoting TCP, physical",
            Side::Physical,
            Counter::V4ToVirtual,
            icmp4_error(
                4,
                0,
                w.router,
                w.ra_a,
                L4::Tcp,
                w.ra_a,
                w.client,
                1000,
                none(),
            ),
        ),
        case(
            "v4 source quench quoting UDP, virtual",
            Side::Virtual,
            Counter::V4ToReal,
            icmp4_error(
                4,
                0,
                w.va_a,
                w.client,
                L4::Udp,
                w.client,
                w.va_a,
                28,
                none(),
            ),
        ),
        case(
            "v4 redirect quoting UDP, physical",
            Side::Physical,
            Counter::V4ToVirtual,
            icmp4_error(
                5,
                1,
                w.router,
                w.ra_a,
                L4::Udp,
                w.ra_a,
                w.client,
                1000,
                none(),
            ),
        ),
        case(
            "v4 redirect quoting TCP cut at 8 bytes, virtual",
            Side::Virtual,
            Counter::V4ToReal,
            icmp4_error(
                5,
                0,
                w.va_a,
                w.client,
                L4::Tcp,
                w.client,
                w.va_a,
                28,
                none(),
            ),
        ),
        case(
            "v4 redirect between two VMs, physical",
            Side::Physical,
            Counter::V4ToVirtual,
            icmp4_error(5, 1, w.ra_b, w.ra_a, L4::Echo, w.ra_a, w.ra_b, 1000, none()),
        ),
        case(
            "v6 packet too big quoting TCP, physical",
            Side::Physical,
            Counter::V6ToVirtual,
            icmp6_error(2, 0, v.router, v.ra_a, L4::Tcp, v.ra_a, v.client, 1000),
        ),
        case(
            "v6 unreachable quoting UDP, physical",
            Side::Physical,
            Counter::V6ToVirtual,
            icmp6_error(1, 4, v.router, v.ra_a, L4::Udp, v.ra_a, v.client, 1000),
        ),
        case(
            "v6 time exceeded quoting echo, physical",
            Side::Physical,
            Counter::V6ToVirtual,
            icmp6_error(3, 0, v.router, v.ra_a, L4::Echo, v.ra_a, v.client, 1000),
        ),
        case(
            "v6 parameter problem quoting TCP cut in its header, physical",
            Side::Physical,
            Counter::V6ToVirtual,
            icmp6_error(4, 0, v.router, v.ra_a, L4::Tcp, v.ra_a, v.client, 52),
        ),
        case(
            "v6 error between two VMs, physical",
            Side::Physical,
            Counter::V6ToVirtual,
            icmp6_error(1, 4, v.ra_b, v.ra_a, L4::Udp, v.ra_a, v.ra_b, 1000),
        ),
        case(
            "v6 unreachable quoting UDP, virtual",
            Side::Virtual,
            Counter::V6ToReal,
            icmp6_error(1, 4, v.va_a, v.client, L4::Udp, v.client, v.va_a, 1000),
        ),
        case(
            "v6 packet too big quoting TCP, virtual",
            Side::Virtual,
            Counter::V6ToReal,
            icmp6_error(2, 0, v.va_a, v.client, L4::Tcp, v.client, v.va_a, 1000),
        ),
        case(
            "v6 error too short to quote an IPv6 header",
            Side::Virtual,
            Counter::PassMalformed,
            icmp6_error(1, 4, v.va_a, v.client, L4::Udp, v.client, v.va_a, 30),
        ),
        // Physical side, the error's own addresses unmapped: a router inside the network
        // tells a client that its packet to a real address does not fit (path MTU
        // discovery); only the quote and the ICMP checksum over it are translated.
        case(
            "v4 fragmentation needed to a client quoting TCP to an RA, physical",
            Side::Physical,
            Counter::QuoteOnly,
            icmp4_error(
                3,
                4,
                w.router,
                w.client,
                L4::Tcp,
                w.client,
                w.ra_a,
                576,
                none(),
            ),
        ),
        case(
            "v4 time exceeded to a client quoting UDP cut at 8 bytes, physical",
            Side::Physical,
            Counter::QuoteOnly,
            icmp4_error(
                11,
                0,
                w.router,
                w.client,
                L4::Udp,
                w.client,
                w.ra_a,
                28,
                none(),
            ),
        ),
        case(
            "v6 packet too big to a client quoting TCP to an RA, physical",
            Side::Physical,
            Counter::QuoteOnly,
            icmp6_error(2, 0, v.router, v.client, L4::Tcp, v.client, v.ra_a, 1000),
        ),
        case(
            "v6 unreachable to a client quoting UDP to an RA, physical",
            Side::Physical,
            Counter::QuoteOnly,
            icmp6_error(1, 3, v.router, v.client, L4::Udp, v.client, v.ra_a, 1000),
        ),
        // Nothing of it mapped, or a quote only the other side maps: passed.
        case(
            "v4 fragmentation needed quoting unmapped addresses, physical",
            Side::Physical,
            Counter::PassMiss,
            icmp4_error(
                3,
                4,
                w.router,
                w.client,
                L4::Tcp,
                w.client,
                w.router,
                576,
                none(),
            ),
        ),
        case(
            "v6 packet too big to a client quoting TCP to a VA, physical",
            Side::Physical,
            Counter::PassMiss,
            icmp6_error(2, 0, v.router, v.client, L4::Tcp, v.client, v.va_a, 1000),
        ),
        case(
            "v4 fragmentation needed to a client quoting TCP to an RA, virtual",
            Side::Virtual,
            Counter::PassMiss,
            icmp4_error(
                3,
                4,
                w.router,
                w.client,
                L4::Tcp,
                w.client,
                w.ra_a,
                576,
                none(),
            ),
        ),
    ]
}

/// IPv6 extension headers: the bounded walk, fragments, routing headers.
fn ipv6_ext_cases() -> Vec<Case> {
    let w = W6();
    let final_dst = ip6("2001:db8:f::1");
    let mut cases = Vec::new();
    // `pseudo_dst`: the destination in the transport pseudo-header, if not the header's.
    // A non-first fragment carries bytes, not a transport header: build it once, untranslated.
    let chain = |name: &str,
                 hdrs: Vec<(u8, Vec<u8>)>,
                 l4: L4,
                 pseudo_dst: Option<IpAddr>,
                 outcome: Counter| {
        let raw = name.contains("non-first");
        let (side, src, dst) = if outcome == Counter::V6ToVirtual {
            (Side::Physical, w.ra_a, w.client)
        } else {
            (Side::Virtual, w.client, w.va_a)
        };
        case(
            format!("v6 {name}"),
            side,
            outcome,
            Box::new(move |x: Xlate| {
                let (s, d) = (x(src), x(dst));
                let (proto, seg) = if raw {
                    segment(l4, true, src, dst)
                } else {
                    segment(l4, true, s, pseudo_dst.unwrap_or(d))
                };
                let mut bytes = Vec::new();
                for (i, (kind, body)) in hdrs.iter().enumerate() {
                    let next = hdrs.get(i + 1).map_or(proto, |h| h.0);
                    bytes.extend(ext(*kind, next, body));
                }
                let first = hdrs.first().map_or(proto, |h| h.0);
                ether(&[], 0x86DD, &ipv6(s, d, first, &bytes, &seg))
            }),
        )
    };
    let opts = vec![1, 4, 0, 0, 0, 0]; // PadN
    let routing = |left: u8, seg: IpAddr| {
        let mut b = vec![0, left, 0, 0, 0, 0]; // type 0, segments left, reserved
        if let IpAddr::V6(a) = seg {
            b.extend(a.octets());
        }
        b
    };
    for outcome in [Counter::V6ToReal, Counter::V6ToVirtual] {
        cases.push(chain(
            "hop-by-hop + TCP",
            vec![(0, opts.clone())],
            L4::Tcp,
            None,
            outcome,
        ));
        cases.push(chain(
            "hop-by-hop + routing (0 left) + destination options + UDP",
            vec![
                (0, opts.clone()),
                (43, routing(0, final_dst)),
                (60, opts.clone()),
            ],
            L4::Udp,
            None,
            outcome,
        ));
        cases.push(chain(
            "destination options + ICMPv6 echo",
            vec![(60, opts.clone())],
            L4::Echo,
            None,
            outcome,
        ));
        // With segments left, the pseudo-header holds the final destination, not the header's.
        cases.push(chain(
            "routing (1 left) + UDP",
            vec![(43, routing(1, final_dst))],
            L4::Udp,
            Some(final_dst),
            outcome,
        ));
        cases.push(chain(
            "first fragment + TCP",
            vec![(44, vec![0, 1, 0, 0, 0, 7])],
            L4::Tcp,
            None,
            outcome,
        ));
        cases.push(chain(
            "non-first fragment",
            vec![(44, vec![0, 0x19, 0, 0, 0, 7])],
            L4::Tcp,
            None,
            outcome,
        ));
        // A later fragment is judged by its fragment header alone, whatever it names: here
        // a destination options header, whose bytes are data (the first fragment has it).
        cases.push(chain(
            "non-first fragment naming destination options",
            vec![
                (44, vec![0, 0x19, 0, 0, 0, 7]),
                (60, vec![1, 200, 0, 0, 0, 0]),
            ],
            L4::Tcp,
            None,
            outcome,
        ));
        cases.push(chain(
            "six extension headers + TCP",
            vec![(60, opts.clone()); 6],
            L4::Tcp,
            None,
            outcome,
        ));
    }
    cases.push(chain(
        "seven extension headers",
        vec![(60, opts.clone()); 7],
        L4::Tcp,
        None,
        Counter::PassExtLimit,
    ));
    // A home address option (RFC 6275 6.3): the pseudo-header holds the home address.
    let mut home = vec![1, 2, 0, 0, 0xC9, 16];
    if let IpAddr::V6(a) = final_dst {
        home.extend(a.octets());
    }
    cases.push(chain(
        "destination options with a home address + TCP",
        vec![(60, home)],
        L4::Tcp,
        None,
        Counter::PassHomeAddress,
    ));
    let mut long = vec![1, 44];
    long.extend([0; 44]);
    cases.push(chain(
        "destination options longer than scanned + TCP",
        vec![(60, long)],
        L4::Tcp,
        None,
        Counter::PassExtLimit,
    ));
    cases.push(chain(
        "destination options running past their header + TCP",
        vec![(60, vec![1, 5, 0, 0, 0, 0])],
        L4::Tcp,
        None,
        Counter::PassMalformed,
    ));
    cases.push(chain(
        "AH (not walked)",
        vec![(51, vec![0; 10])],
        L4::Tcp,
        None,
        Counter::PassUnknownProto,
    ));
    // An extension header that runs past the payload.
    cases.push(case(
        "v6 extension header past the payload",
        Side::Virtual,
        Counter::PassMalformed,
        Box::new(move |x| {
            let mut e = ext(60, 6, &opts);
            e[1] = 20;
            ether(&[], 0x86DD, &ipv6(x(w.client), x(w.va_a), 60, &e, &[0; 8]))
        }),
    ));
    cases.push(case(
        "v6 version 4 in an IPv6 EtherType",
        Side::Virtual,
        Counter::PassMalformed,
        Box::new(move |x| {
            let mut f = frame6(x, w.client, w.va_a, 6, |s, d| tcp(s, d, PAYLOAD));
            f[14] = 0x40;
            f
        }),
    ));
    // Neighbour discovery belongs to the link: a VM resolving its gateway from its VA, or
    // a router answering at an RA, is never translated.
    for (ty, name, side, src, dst) in [
        (
            133u8,
            "router solicitation",
            Side::Virtual,
            w.va_a,
            ip6("ff02::2"),
        ),
        (
            135,
            "neighbour solicitation",
            Side::Virtual,
            w.va_a,
            ip6("ff02::1:ff00:1"),
        ),
        (
            136,
            "neighbour advertisement",
            Side::Physical,
            w.router,
            w.ra_a,
        ),
        (137, "redirect", Side::Physical, w.router, w.ra_a),
    ] {
        cases.push(case(
            format!("v6 {name}"),
            side,
            Counter::PassNeighborDiscovery,
            Box::new(move |x| {
                let (s, d) = (x(src), x(dst));
                let target = match w.router {
                    IpAddr::V6(a) => a.octets(),
                    IpAddr::V4(_) => unreachable!("an IPv6 world"),
                };
                let m = icmp6(s, d, ty, 0, [0; 4], &target);
                ether(&[], 0x86DD, &ipv6(s, d, 58, &[], &m))
            }),
        ));
    }
    for side in [Side::Virtual, Side::Physical] {
        let (src, dst) = if side == Side::Virtual {
            (w.client, w.va_a)
        } else {
            (w.ra_a, w.client)
        };
        cases.push(case(
            format!("v6 ESP {side:?}"),
            side,
            Counter::PassUnknownProto,
            Box::new(move |x| ether(&[], 0x86DD, &ipv6(x(src), x(dst), 50, &[], &esp_body()))),
        ));
        cases.push(case(
            format!("v6 ESP behind a destination options header {side:?}"),
            side,
            Counter::PassUnknownProto,
            Box::new(move |x| {
                let e = ext(60, 50, &[1, 4, 0, 0, 0, 0]);
                ether(&[], 0x86DD, &ipv6(x(src), x(dst), 60, &e, &esp_body()))
            }),
        ));
        // A first fragment (M set) with 12 bytes of TCP, before its checksum.
        cases.push(case(
            format!("v6 TCP first fragment of 12 bytes {side:?}"),
            side,
            Counter::PassMalformed,
            Box::new(move |x| {
                let (s, d) = (x(src), x(dst));
                let frag = ext(44, 6, &[0, 1, 0, 0, 0, 7]);
                ether(
                    &[],
                    0x86DD,
                    &ipv6(s, d, 44, &frag, &tcp(s, d, PAYLOAD)[..12]),
                )
            }),
        ));
    }
    cases.push(case(
        "v6 TCP of 17 bytes",
        Side::Virtual,
        Counter::PassMalformed,
        Box::new(move |x| {
            let (s, d) = (x(w.client), x(w.va_a));
            ether(&[], 0x86DD, &ipv6(s, d, 6, &[], &tcp(s, d, PAYLOAD)[..17]))
        }),
    ));
    cases.push(case(
        "v6 UDP-Lite",
        Side::Virtual,
        Counter::PassUnknownProto,
        Box::new(move |x| {
            ether(
                &[],
                0x86DD,
                &ipv6(x(w.client), x(w.va_a), 136, &[], PAYLOAD),
            )
        }),
    ));
    cases
}

fn non_ip_cases() -> Vec<Case> {
    let arp: Vec<u8> = [
        &[0, 1, 8, 0, 6, 4, 0, 1][..],
        &[2, 0, 0, 0, 0, 0x0A, 10, 0, 0, 10],
        &[0; 6],
        &[10, 0, 0, 20],
    ]
    .concat();
    let arp2 = arp.clone();
    vec![
        case(
            "ARP",
            Side::Virtual,
            Counter::PassNotIp,
            Box::new(move |_| ether(&[], 0x0806, &arp)),
        ),
        case(
            "ARP on a VLAN",
            Side::Physical,
            Counter::PassNotIp,
            Box::new(move |_| ether(&[TPID_8021Q], 0x0806, &arp2)),
        ),
        case(
            "unknown EtherType",
            Side::Virtual,
            Counter::PassNotIp,
            Box::new(|_| ether(&[], 0x88B5, PAYLOAD)),
        ),
    ]
}

/// The translation each side applies, as a lookup in the tables the fixture installs.
fn xlate_for(side: Side, maps: &[(IpAddr, IpAddr)]) -> impl Fn(IpAddr) -> IpAddr {
    let table: HashMap<IpAddr, IpAddr> = maps
        .iter()
        .map(|&(va, ra)| {
            if side == Side::Virtual {
                (va, ra)
            } else {
                (ra, va)
            }
        })
        .collect();
    move |a| table.get(&a).copied().unwrap_or(a)
}

fn fixture_maps() -> Vec<(IpAddr, IpAddr)> {
    let (w, v) = (W4(), W6());
    vec![
        (w.va_a, w.ra_a),
        (w.va_b, w.ra_b),
        (w.va_c, w.ra_c),
        (v.va_a, v.ra_a),
        (v.va_b, v.ra_b),
        (v.va_c, v.ra_c),
    ]
}

/// The owner of VM B in the fixtures: a port other than the one test runs arrive on.
const OTHER_PORT: u32 = 1000;

/// The fixture datapath: every mapping, VM A owned by the port test runs arrive on, VM B
/// by another, VM C by none.
fn loaded(capacity: u32) -> Datapath {
    let mut dp = Datapath::load(capacity);
    for (va, ra) in fixture_maps() {
        dp.map(va, ra);
    }
    for w in [W4(), W6()] {
        dp.own(w.va_a, LOOPBACK);
        dp.own(w.va_b, OTHER_PORT);
    }
    dp
}

/// Asserts that the program's output is `expected`, byte for byte.
fn assert_output(name: &str, input: &[u8], out: &[u8], expected: &[u8]) {
    assert_eq!(
        out, expected,
        "{name}: output bytes\n in  {input:02x?}\n out {out:02x?}\n exp {expected:02x?}"
    );
}

/// Asserts that each counter of `counted` moved by one and no other counter moved.
fn assert_counted(name: &str, delta: &Totals, counted: &[Counter]) {
    for counter in Counter::ALL {
        let want = counted.iter().filter(|c| **c == counter).count() as u64;
        assert_eq!(
            delta.get(counter),
            want,
            "{name}: counter {}",
            counter.name()
        );
    }
}

/// Runs one case at every hook (XDP and tc) and checks verdict, bytes, counters and
/// checksums. Returns what the independent checksum walk verified of a translated output.
fn check(dp: &Datapath, c: &Case) -> verify::Verified {
    let identity = |a| a;
    let input = (c.build)(&identity);
    let translates = c.outcome.is_translated();
    let expected = if translates {
        (c.build)(&xlate_for(c.side, &fixture_maps()))
    } else {
        input.clone()
    };
    if translates {
        assert_ne!(
            input, expected,
            "{}: a translating case must change the packet",
            c.name
        );
    }
    let mut out = Vec::new();
    for hook in Hook::ALL {
        let name = format!("{} ({hook:?})", c.name);
        let before = dp.counters();
        let verdict;
        (verdict, out) = dp.run_at(hook, c.side, &input, None);
        let delta = dp.counters().since(&before);
        let want = if c.outcome.is_dropped() {
            hook.drop()
        } else {
            hook.pass()
        };
        assert_eq!(verdict, want, "{name}: verdict");
        assert_output(&name, &input, &out, &expected);
        assert_counted(&name, &delta, &[c.outcome]);
    }
    if translates {
        verify::frame(&out).unwrap_or_else(|e| panic!("{}: {e}", c.name))
    } else {
        verify::Verified::default()
    }
}

fn run_all(cases: Vec<Case>) {
    let dp = loaded(1024);
    assert!(!cases.is_empty());
    let (mut ip, mut l4) = (0, 0);
    for c in &cases {
        let v = check(&dp, c);
        ip += v.ip_headers;
        l4 += v.transport;
    }
    let translating = cases.iter().any(|c| c.outcome.is_translated());
    assert!(
        !translating || ip + l4 > 0,
        "the checksum walk verified nothing"
    );
    println!(
        "{} fixture cases passed; independently verified {ip} IPv4 header and {l4} transport checksums",
        cases.len()
    );
}

#[test]
fn ipv4_address_patterns() {
    run_all(address_cases(W4()));
}

#[test]
fn ipv6_address_patterns() {
    run_all(address_cases(W6()));
}

#[test]
fn ipv4_headers_fragments_and_protocols() {
    run_all(ipv4_cases());
}

#[test]
fn icmp_errors_translate_the_quoted_header() {
    run_all(icmp_error_cases());
}

#[test]
fn ipv4_source_routes() {
    run_all(source_route_cases());
}

#[test]
fn ipv6_extension_headers() {
    run_all(ipv6_ext_cases());
}

#[test]
fn non_ip_passes_untouched() {
    run_all(non_ip_cases());
}

/// Every prefix of translatable packets (from the Ethernet header on, as far as the kernel
/// takes test input: from 14 bytes for XDP, from the whole IP header for tc) passes
/// untouched and counts as truncated, at both hooks.
#[test]
fn truncated_packets_pass_untouched_at_every_offset() {
    let dp = loaded(1024);
    let (w, v) = (W4(), W6());
    let opts = vec![1, 4, 0, 0, 0, 0];
    let identity = |a| a;
    let packets: Vec<(Side, Vec<u8>)> = vec![
        (
            Side::Virtual,
            frame(w, &[], L4::Tcp, w.client, w.va_a)(&identity),
        ),
        (
            Side::Physical,
            frame(v, &[TPID_8021AD, TPID_8021Q], L4::Udp, v.ra_a, v.client)(&identity),
        ),
        (
            Side::Physical,
            icmp4_error(
                11,
                0,
                w.router,
                w.ra_a,
                L4::Tcp,
                w.ra_a,
                w.client,
                1000,
                V4Opts::default(),
            )(&identity),
        ),
        (
            Side::Physical,
            icmp6_error(2, 0, v.router, v.ra_a, L4::Tcp, v.ra_a, v.client, 1000)(&identity),
        ),
        (
            Side::Virtual,
            ether(
                &[],
                0x86DD,
                &ipv6(
                    v.client,
                    v.va_a,
                    0,
                    &[ext(0, 60, &opts), ext(60, 6, &opts)].concat(),
                    &tcp(v.client, v.va_a, PAYLOAD),
                ),
            ),
        ),
    ];
    let (mut runs, mut refused) = (0, 0);
    for ((side, full), hook) in packets.iter().flat_map(|p| Hook::ALL.map(|h| (p, h))) {
        // The whole packet translates: the prefixes below are cut from a real case.
        assert_ne!(dp.run_at(hook, *side, full, None).1, *full);
        for len in 14..full.len() {
            let cut = &full[..len];
            let before = dp.counters();
            let Some((verdict, out)) = dp.try_run_at(hook, *side, cut) else {
                // The kernel builds a socket buffer only around a whole IP header.
                assert!(
                    hook == Hook::Tc && len < 14 + 8 + 40,
                    "{hook:?}: test_run refused a cut at {len}"
                );
                refused += 1;
                continue;
            };
            let delta = dp.counters().since(&before);
            assert_eq!(verdict, hook.pass());
            assert_eq!(out, cut, "{hook:?}: cut at {len} of {}", full.len());
            assert_eq!(
                delta.get(Counter::PassTruncated),
                1,
                "cut at {len}: {:?}",
                delta.named().filter(|c| c.1 > 0).collect::<Vec<_>>()
            );
            runs += 1;
        }
    }
    println!(
        "{runs} truncated packets passed untouched; {refused} cuts inside the Ethernet or IP \
         header could not be run under tc (test_run builds a socket buffer only around a whole \
         IP header)"
    );
}

/// A GSO packet (a TCP segment of 3,000 bytes that the stack will cut into three) is
/// translated under tc like any other, both ways and in both families: its addresses and
/// the checksums that cover them, with the payload untouched.
///
/// `test_run` builds its socket buffer with no checksum offload (CHECKSUM_NONE); packets
/// whose checksum is left to the device (CHECKSUM_PARTIAL) come from real senders with
/// offloads on, in the namespace tests.
#[test]
fn gso_packets_translate_under_tc() {
    let dp = loaded(1024);
    let payload: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    let ctx = gso_context(1000, 3);
    let mut runs = 0;
    for w in [W4(), W6()] {
        for (side, src, dst) in [
            (Side::Virtual, w.client, w.va_a),
            (Side::Physical, w.ra_a, w.client),
        ] {
            let build = |x: Xlate| {
                let (s, d) = (x(src), x(dst));
                let seg = tcp(s, d, &payload);
                if w.v6 {
                    ether(&[], 0x86DD, &ipv6(s, d, 6, &[], &seg))
                } else {
                    ether(&[], 0x0800, &ipv4(s, d, 6, &V4Opts::default(), &seg))
                }
            };
            let identity = |a| a;
            let input = build(&identity);
            let expected = build(&xlate_for(side, &fixture_maps()));
            let before = dp.counters();
            let (verdict, out) = dp.run_at(Hook::Tc, side, &input, Some(&ctx));
            let delta = dp.counters().since(&before);
            let name = format!("GSO {} {side:?}", if w.v6 { "v6" } else { "v4" });
            assert_eq!(verdict, Hook::Tc.pass(), "{name}");
            assert_output(&name, &input, &out, &expected);
            assert_counted(&name, &delta, &[translated(&w, side)]);
            verify::frame(&out).unwrap_or_else(|e| panic!("{name}: {e}"));
            runs += 1;
        }
    }
    println!("{runs} GSO packets translated under tc");
}

/// Translated packets are counted per mapping, in the counter slot its entries carry.
#[test]
fn per_mapping_counters() {
    let mut dp = loaded(1024);
    let w = W4();
    let identity = |a| a;
    let to_a = frame(w, &[], L4::Udp, w.client, w.va_a)(&identity);
    let a_to_b = frame(w, &[], L4::Udp, w.ra_a, w.ra_b)(&identity);
    let miss = frame(w, &[], L4::Udp, w.client, w.router)(&identity);
    dp.run(Side::Virtual, &to_a);
    dp.run(Side::Virtual, &to_a);
    dp.run(Side::Physical, &a_to_b);
    dp.run(Side::Virtual, &miss);
    let a = dp.stats(w.va_a);
    let b = dp.stats(w.va_b);
    assert_eq!(
        (a.packets, a.bytes),
        (3, 2 * to_a.len() as u64 + a_to_b.len() as u64)
    );
    assert_eq!((b.packets, b.bytes), (1, a_to_b.len() as u64));
    // Deleted, the mapping has no counters; mapped again, it gets a slot counted from
    // zero (the freed one, which still held its old traffic).
    use netpage::table::PageTable;
    let t = dp.table();
    t.remove_forward(w.va_a).unwrap();
    t.remove_reverse(w.ra_a).unwrap();
    t.remove_stats(w.va_a).unwrap();
    assert_eq!(dp.table().stats(w.va_a).unwrap(), None);
    assert_eq!(
        dp.stats(w.va_b).packets,
        1,
        "another mapping keeps its slot"
    );
    dp.map(w.va_a, w.ra_a);
    assert_eq!(dp.stats(w.va_a), MappingStats::default());
    assert_ne!(dp.run(Side::Virtual, &to_a).1, to_a);
    assert_eq!(dp.stats(w.va_a).packets, 1);
    // A switch keeps the slot: V2R and the new reverse entry carry it, and so does the old
    // reverse entry while it drains.
    let moved: IpAddr = "203.0.113.77".parse().unwrap();
    dp.table().set_reverse(moved, w.va_b).unwrap();
    dp.table().set_forward(w.va_b, moved).unwrap();
    assert_eq!(
        dp.stats(w.va_b).packets,
        1,
        "counters kept across the switch"
    );
    let from_new = frame(w, &[], L4::Udp, moved, w.client)(&identity);
    let from_old = frame(w, &[], L4::Udp, w.ra_b, w.client)(&identity);
    dp.run(Side::Physical, &from_new);
    dp.run(Side::Physical, &from_old);
    assert_eq!(dp.stats(w.va_b).packets, 3);
    let slots = dp.table().slot_problems().unwrap();
    assert!(slots.is_empty(), "{slots:?}");
}

/// The source check compares the VM's owner with the port the packet arrives on, as each
/// hook's context names it (`xdp_md.ingress_ifindex`, `__sk_buff.ifindex`): two VM ports
/// (veths of a namespace), each the owner of one VM. A VM sending as itself is translated;
/// as the other VM, by its virtual or its real address, dropped; the loopback, which owns
/// nothing here, is a client's port.
#[test]
fn sources_are_checked_against_the_port_they_arrive_on() {
    use netpage_tests::netns::NetNs;
    let ns = NetNs::create(&format!("np-own-{}", std::process::id()));
    ns.ip_batch(&[
        "link add tapa type veth peer name tapb".into(),
        "link set tapa up".into(),
        "link set tapb up".into(),
    ]);
    ns.run(|| {
        let index = |i| netpage::attach::if_index(i).expect("fixture interface");
        let (tap_a, tap_b) = (index("tapa"), index("tapb"));
        let mut dp = loaded(1024);
        let identity = |a| a;
        let mut runs = 0;
        for w in [W4(), W6()] {
            dp.own(w.va_a, tap_a);
            dp.own(w.va_b, tap_b);
            let t = translated(&w, Side::Virtual);
            let cases = [
                ("A as itself", tap_a, w.va_a, w.va_b, t),
                ("B as itself", tap_b, w.va_b, w.va_a, t),
                ("A from its own RA", tap_a, w.ra_a, w.va_b, t),
                ("a client to B", LOOPBACK, w.client, w.va_b, t),
                ("B as A", tap_b, w.va_a, w.va_b, Counter::Spoofed),
                ("A as B's RA", tap_a, w.ra_b, w.client, Counter::Spoofed),
                ("a client as A", LOOPBACK, w.va_a, w.va_b, Counter::Spoofed),
                (
                    "a client as A's RA",
                    LOOPBACK,
                    w.ra_a,
                    w.va_b,
                    Counter::Spoofed,
                ),
                ("A as unowned C", tap_a, w.va_c, w.client, Counter::Spoofed),
            ];
            for (what, port, s, d, outcome) in cases {
                let build = frame(w, &[], L4::Udp, s, d);
                let input = build(&identity);
                let expected = if outcome.is_translated() {
                    build(&xlate_for(Side::Virtual, &fixture_maps()))
                } else {
                    input.clone()
                };
                for hook in Hook::ALL {
                    let name = format!("{what} (v6={}, {hook:?}, port {port})", w.v6);
                    let ctx = hook.arriving_on(port, input.len());
                    let before = dp.counters();
                    let (verdict, out) = dp.run_at(hook, Side::Virtual, &input, Some(&ctx));
                    let delta = dp.counters().since(&before);
                    let want = if outcome.is_dropped() {
                        hook.drop()
                    } else {
                        hook.pass()
                    };
                    assert_eq!(verdict, want, "{name}: verdict");
                    assert_output(&name, &input, &out, &expected);
                    assert_counted(&name, &delta, &[outcome]);
                    runs += 1;
                }
            }
        }
        println!("{runs} runs checked against the port they arrived on");
    });
}

/// A table of 1,000,000 mappings per direction translates its entries and misses others.
#[test]
fn million_entry_table() {
    use netpage::table::PageTable;
    const N: u32 = 1_000_000;
    let mut dp = Datapath::load(N);
    let w = W4();
    // Fill all but one entry with other mappings, then add the fixture's own.
    for i in 0..N - 1 {
        let va = IpAddr::V4(Ipv4Addr::from(0x0B00_0000 + i));
        let ra = IpAddr::V4(Ipv4Addr::from(0x6400_0000 + i));
        dp.table().set_reverse(ra, va).unwrap();
        dp.table().set_forward(va, ra).unwrap();
    }
    dp.map(w.va_a, w.ra_a);
    assert_eq!(dp.table().forward_entries().unwrap().len(), N as usize);
    // The table is full: one more entry is refused, and nothing is lost.
    let extra = dp.table().set_forward(w.va_b, w.ra_b);
    assert!(extra.is_err(), "a full table refuses a new entry");
    let identity = |a| a;
    for (side, s, d) in [
        (Side::Virtual, w.client, w.va_a),
        (Side::Physical, w.ra_a, w.client),
    ] {
        let c = case(
            "1M",
            side,
            translated(&w, side),
            frame(w, &[], L4::Tcp, s, d),
        );
        let input = (c.build)(&identity);
        let table = vec![(w.va_a, w.ra_a)];
        let expected = (c.build)(&xlate_for(side, &table));
        assert_eq!(dp.run(side, &input).1, expected);
    }
    // One of the bulk entries, deep in the table.
    let i = N - 2;
    let far = frame(
        w,
        &[],
        L4::Tcp,
        w.client,
        IpAddr::V4(Ipv4Addr::from(0x0B00_0000 + i)),
    )(&identity);
    let mapped = dp.run(Side::Virtual, &far).1;
    assert_eq!(mapped[14 + 16..14 + 20], (0x6400_0000 + i).to_be_bytes());
    let miss = frame(w, &[], L4::Tcp, w.client, w.router)(&identity);
    assert_eq!(dp.run(Side::Virtual, &miss).1, miss);
}

// The fast path: after translating, the program looks up the route (bpf_fib_lookup) and,
// for a plain forward, rewrites the Ethernet addresses and TTL or hop limit and redirects
// the frame. The FIB lookup needs interfaces, routes and neighbours, so these fixtures run
// in a namespace built for them, with the ingress interface passed in the `xdp_md`:
//
//   fin   203.0.113.1/24  2001:db8:c::1/64   client 203.0.113.5 / 2001:db8:c::5 (resolved)
//   fout  192.0.2.1/24    2001:db8:a::1/64   RA A 192.0.2.10 / 2001:db8:a::10 (resolved),
//                                            RA B's site via 192.0.2.254 / 2001:db8:a::fe
//                                            (unresolved), MTU 1400
//   foth  100.65.0.1/24   2001:db8:65::1/64  not attached: a resolved neighbour .50 / ::50
//   blackhole 100.64.0.0/24, 2001:db8:64::/64
//
// fin and fout are attached (in the port map) with the fast path, and in the device map
// (they take XDP frames); foth is not attached.

mod fast {
    use super::*;
    use netpage_common::maps::{PORT_FAST_PATH, PortRecord};
    use netpage_tests::{datapath::XDP_REDIRECT, netns::NetNs};

    pub const MAC_FIN: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0B];
    pub const MAC_FOUT: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];
    pub const MAC_FOTH: [u8; 6] = [0x02, 0, 0, 0, 0x02, 0x01];
    pub const MAC_CLIENT: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0C];
    pub const MAC_RA_A: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x0A];
    pub const MAC_OTHER: [u8; 6] = [0x02, 0, 0, 0, 0x02, 0x0A];
    /// A frame for some other host on the segment.
    pub const MAC_STRANGER: [u8; 6] = [0x02, 0, 0, 0, 0, 0xEE];

    /// Addresses beyond the fixture world's: one VA per kind of route.
    #[derive(Clone, Copy)]
    pub struct Extra {
        /// Its RA is an address of the namespace itself: local delivery.
        pub va_local: IpAddr,
        pub ra_local: IpAddr,
        /// Its RA is in a blackhole route.
        pub va_hole: IpAddr,
        pub ra_hole: IpAddr,
        /// Its RA is behind the interface without netpage.
        pub va_other: IpAddr,
        pub ra_other: IpAddr,
    }

    pub fn extra(v6: bool) -> Extra {
        if v6 {
            Extra {
                va_local: ip6("fd00::30"),
                ra_local: ip6("2001:db8:a::1"),
                va_hole: ip6("fd00::40"),
                ra_hole: ip6("2001:db8:64::40"),
                va_other: ip6("fd00::50"),
                ra_other: ip6("2001:db8:65::50"),
            }
        } else {
            Extra {
                va_local: ip4(10, 0, 0, 30),
                ra_local: ip4(192, 0, 2, 1),
                va_hole: ip4(10, 0, 0, 40),
                ra_hole: ip4(100, 64, 0, 40),
                va_other: ip4(10, 0, 0, 50),
                ra_other: ip4(100, 65, 0, 50),
            }
        }
    }

    pub fn maps() -> Vec<(IpAddr, IpAddr)> {
        let mut m = fixture_maps();
        for e in [extra(false), extra(true)] {
            m.push((e.va_local, e.ra_local));
            m.push((e.va_hole, e.ra_hole));
            m.push((e.va_other, e.ra_other));
        }
        m
    }

    fn mac(m: [u8; 6]) -> String {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }

    /// The namespace of the fast-path fixtures.
    pub fn namespace() -> NetNs {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ns = NetNs::create(&format!("np-fib-{}-{n}", std::process::id()));
        ns.sysctls(&[
            ("net.ipv4.ip_forward".into(), "1"),
            ("net.ipv4.conf.default.forwarding".into(), "1"),
            ("net.ipv6.conf.all.forwarding".into(), "1"),
            ("net.ipv6.conf.default.forwarding".into(), "1"),
            ("net.ipv6.conf.all.accept_dad".into(), "0"),
            ("net.ipv6.conf.default.accept_dad".into(), "0"),
        ]);
        let mut lines = Vec::new();
        for (name, m, v4, v6) in [
            ("fin", MAC_FIN, "203.0.113.1/24", "2001:db8:c::1/64"),
            ("fout", MAC_FOUT, "192.0.2.1/24", "2001:db8:a::1/64"),
            ("foth", MAC_FOTH, "100.65.0.1/24", "2001:db8:65::1/64"),
        ] {
            lines.push(format!(
                "link add {name} address {} type veth peer name {name}-p",
                mac(m)
            ));
            lines.push(format!("link set {name}-p up"));
            lines.push(format!("link set {name} up"));
            lines.push(format!("addr add {v4} dev {name}"));
            lines.push(format!("addr add {v6} dev {name} nodad"));
        }
        lines.push("link set fout mtu 1400".into());
        for (addr, m, dev) in [
            ("203.0.113.5", MAC_CLIENT, "fin"),
            ("2001:db8:c::5", MAC_CLIENT, "fin"),
            ("192.0.2.10", MAC_RA_A, "fout"),
            ("2001:db8:a::10", MAC_RA_A, "fout"),
            ("100.65.0.50", MAC_OTHER, "foth"),
            ("2001:db8:65::50", MAC_OTHER, "foth"),
        ] {
            lines.push(format!(
                "neigh replace {addr} lladdr {} dev {dev} nud permanent",
                mac(m)
            ));
        }
        lines.extend(
            [
                "route add 198.51.100.0/24 via 192.0.2.254",
                "route add 2001:db8:b::/64 via 2001:db8:a::fe",
                "route add blackhole 100.64.0.0/24",
                "route add blackhole 2001:db8:64::/64",
            ]
            .map(String::from),
        );
        ns.ip_batch(&lines);
        ns.wait_up();
        ns
    }

    /// Sets the destination MAC of a frame.
    pub fn to_mac(f: &mut [u8], m: [u8; 6]) {
        f[..6].copy_from_slice(&m);
    }

    /// Sets the TTL or hop limit of an untagged frame, with the IPv4 header checksum
    /// computed from scratch.
    pub fn set_ttl(f: &mut [u8], ttl: u8) {
        if f[12..14] == [0x08, 0x00] {
            let ihl = usize::from(f[14] & 0x0F) * 4;
            f[14 + 8] = ttl;
            f[24..26].copy_from_slice(&[0, 0]);
            let c = !verify::sum(&[&f[14..14 + ihl]]);
            f[24..26].copy_from_slice(&c.to_be_bytes());
        } else {
            f[14 + 7] = ttl;
        }
    }

    pub fn ttl(f: &[u8]) -> u8 {
        if f[12..14] == [0x08, 0x00] {
            f[14 + 8]
        } else {
            f[14 + 7]
        }
    }

    /// What the fast path should do with a case.
    #[derive(Clone, Copy)]
    pub enum Then {
        /// Redirect to `egress`, addressed from its MAC to `dmac`.
        Redirect { egress: &'static str, dmac: [u8; 6] },
        /// Pass to the kernel, counted under this reason (`None`: no fast-path count).
        Pass(Option<Counter>),
    }

    pub struct FastCase {
        pub name: String,
        pub side: Side,
        pub ingress: &'static str,
        /// The destination MAC of the input frame.
        pub dst_mac: [u8; 6],
        pub build: Build,
        /// A raw edit made to input and expected output alike.
        pub patch: Option<fn(&mut Vec<u8>)>,
        pub outcome: Counter,
        pub then: Then,
    }

    pub fn interface_mac(iface: &str) -> [u8; 6] {
        match iface {
            "fin" => MAC_FIN,
            "fout" => MAC_FOUT,
            "foth" => MAC_FOTH,
            _ => panic!("no interface {iface}"),
        }
    }

    /// Runs one case: verdict, bytes (with the IPv4 checksum verified independently) and
    /// both counter dimensions.
    pub fn check(dp: &Datapath, c: &FastCase) -> bool {
        let identity = |a| a;
        let translates = c.outcome.is_translated();
        let mut input = (c.build)(&identity);
        let mut expected = if translates {
            (c.build)(&xlate_for(c.side, &maps()))
        } else {
            input.clone()
        };
        for f in [&mut input, &mut expected] {
            to_mac(f, c.dst_mac);
            if let Some(p) = c.patch {
                p(f);
            }
        }
        let (want_verdict, fast) = match c.then {
            Then::Redirect { egress, dmac } => {
                expected[..6].copy_from_slice(&dmac);
                expected[6..12].copy_from_slice(&interface_mac(egress));
                let t = ttl(&expected);
                set_ttl(&mut expected, t - 1);
                (XDP_REDIRECT, Some(Counter::FastRedirected))
            }
            Then::Pass(reason) => (XDP_PASS, reason),
        };
        let ingress = netpage::attach::if_index(c.ingress).expect("fixture interface");
        let before = dp.counters();
        let (verdict, out) = dp.run_on(c.side, &input, ingress);
        let delta = dp.counters().since(&before);
        assert_eq!(verdict, want_verdict, "{}: verdict", c.name);
        assert_output(&c.name, &input, &out, &expected);
        let counted: Vec<Counter> = std::iter::once(c.outcome).chain(fast).collect();
        assert_counted(&c.name, &delta, &counted);
        if translates {
            verify::frame(&out).unwrap_or_else(|e| panic!("{}: {e}", c.name));
        }
        want_verdict == XDP_REDIRECT
    }

    /// Cases of one family.
    pub fn cases(w: World) -> Vec<FastCase> {
        let f = if w.v6 { "v6" } else { "v4" };
        let x = extra(w.v6);
        let t = translated(&w, Side::Virtual);
        let tp = translated(&w, Side::Physical);
        let mut v = Vec::new();
        let mut push = |name: &str,
                        side: Side,
                        ingress: &'static str,
                        build: Build,
                        outcome: Counter,
                        then: Then| {
            v.push(FastCase {
                name: format!("{f} {name}"),
                side,
                ingress,
                dst_mac: interface_mac(ingress),
                build,
                patch: None,
                outcome,
                then,
            });
        };
        for l4 in [L4::Tcp, L4::Udp, L4::Echo] {
            push(
                &format!("{l4:?} client->VA redirected to the RA's neighbour"),
                Side::Virtual,
                "fin",
                frame(w, &[], l4, w.client, w.va_a),
                t,
                Then::Redirect {
                    egress: "fout",
                    dmac: MAC_RA_A,
                },
            );
            push(
                &format!("{l4:?} RA->client redirected to the client"),
                Side::Physical,
                "fout",
                frame(w, &[], l4, w.ra_a, w.client),
                tp,
                Then::Redirect {
                    egress: "fin",
                    dmac: MAC_CLIENT,
                },
            );
        }
        let pass = |c| Then::Pass(Some(c));
        let udp_to = |dst| frame(w, &[], L4::Udp, w.client, dst);
        push(
            "unresolved next hop",
            Side::Virtual,
            "fin",
            udp_to(w.va_b),
            t,
            pass(Counter::FastNoNeigh),
        );
        push(
            "RA local to the node",
            Side::Virtual,
            "fin",
            udp_to(x.va_local),
            t,
            pass(Counter::FastNotForwarded),
        );
        push(
            "blackhole route",
            Side::Virtual,
            "fin",
            udp_to(x.va_hole),
            t,
            pass(Counter::FastNotForwarded),
        );
        push(
            "egress without netpage",
            Side::Virtual,
            "fin",
            udp_to(x.va_other),
            t,
            pass(Counter::FastEgress),
        );
        push(
            "route back out of the ingress interface",
            Side::Physical,
            "fin",
            frame(w, &[], L4::Udp, w.ra_a, w.client),
            tp,
            pass(Counter::FastIneligible),
        );
        push(
            "802.1Q tagged",
            Side::Virtual,
            "fin",
            frame(w, &[TPID_8021Q], L4::Udp, w.client, w.va_a),
            t,
            pass(Counter::FastIneligible),
        );
        push(
            "miss: untranslated packets stay off the fast path",
            Side::Virtual,
            "fin",
            udp_to(w.router),
            Counter::PassMiss,
            Then::Pass(None),
        );
        // Larger than the egress MTU (1400): the kernel fragments or answers.
        let (client, va) = (w.client, w.va_a);
        push(
            "larger than the egress MTU",
            Side::Virtual,
            "fin",
            Box::new(move |x: Xlate| {
                let (s, d) = (x(client), x(va));
                let big = vec![0x5A; 1400];
                if w.v6 {
                    ether(&[], 0x86DD, &ipv6(s, d, 17, &[], &udp(s, d, &big)))
                } else {
                    ether(
                        &[],
                        0x0800,
                        &ipv4(s, d, 17, &V4Opts::default(), &udp(s, d, &big)),
                    )
                }
            }),
            t,
            pass(Counter::FastFragNeeded),
        );
        if w.v6 {
            let opts = vec![1, 4, 0, 0, 0, 0];
            push(
                "hop-by-hop options",
                Side::Virtual,
                "fin",
                Box::new(move |x: Xlate| {
                    let (s, d) = (x(client), x(va));
                    ether(
                        &[],
                        0x86DD,
                        &ipv6(s, d, 0, &ext(0, 17, &opts), &udp(s, d, PAYLOAD)),
                    )
                }),
                t,
                pass(Counter::FastIneligible),
            );
        } else {
            push(
                "IPv4 options",
                Side::Virtual,
                "fin",
                Box::new(move |x: Xlate| {
                    let (s, d) = (x(client), x(va));
                    let o = V4Opts {
                        options: vec![1; 4],
                        ..V4Opts::default()
                    };
                    ether(&[], 0x0800, &ipv4(s, d, 17, &o, &udp(s, d, PAYLOAD)))
                }),
                t,
                pass(Counter::FastIneligible),
            );
        }
        let mut stranger = FastCase {
            name: format!("{f} frame for another host's MAC"),
            side: Side::Virtual,
            ingress: "fin",
            dst_mac: MAC_STRANGER,
            build: udp_to(w.va_a),
            patch: None,
            outcome: t,
            then: pass(Counter::FastIneligible),
        };
        v.push(FastCase {
            name: format!("{f} TTL 1"),
            side: Side::Virtual,
            ingress: "fin",
            dst_mac: MAC_FIN,
            build: udp_to(w.va_a),
            patch: Some(|f| set_ttl(f, 1)),
            outcome: t,
            then: pass(Counter::FastTtl),
        });
        v.push(FastCase {
            name: format!("{f} TTL 2 still forwarded"),
            side: Side::Virtual,
            ingress: "fin",
            dst_mac: MAC_FIN,
            build: udp_to(w.va_a),
            patch: Some(|f| set_ttl(f, 2)),
            outcome: t,
            then: Then::Redirect {
                egress: "fout",
                dmac: MAC_RA_A,
            },
        });
        stranger.dst_mac = MAC_STRANGER;
        v.push(stranger);
        v
    }

    /// The fixture datapath with its mappings and the two attached ports.
    pub fn loaded(fast_path: bool) -> Datapath {
        let mut dp = Datapath::load(1024);
        for (va, ra) in maps() {
            dp.map(va, ra);
        }
        for iface in ["fin", "fout"] {
            let index = netpage::attach::if_index(iface).expect("fixture interface");
            dp.set_port(
                index,
                PortRecord {
                    flags: if fast_path { PORT_FAST_PATH } else { 0 },
                    mac: interface_mac(iface),
                    reserved: [0; 2],
                },
            );
            dp.set_redirect_target(index, true);
        }
        dp
    }
}

/// Translated packets whose route is a plain forward are redirected with new MACs and a
/// decremented TTL or hop limit; everything else passes as without the fast path, counted
/// by reason.
#[test]
fn fast_path_redirects_plain_forwards_and_falls_back_otherwise() {
    let ns = fast::namespace();
    ns.run(|| {
        let dp = fast::loaded(true);
        let mut cases = fast::cases(W4());
        cases.extend(fast::cases(W6()));
        let redirected = cases.iter().filter(|c| fast::check(&dp, c)).count();
        assert!(redirected >= 12, "only {redirected} cases were redirected");
        println!(
            "{} fast-path cases passed, {redirected} redirected",
            cases.len()
        );
    });
}

/// A packet forwarded to the current real address of its VM (its destination drains)
/// takes the fast path as a translated packet does: redirected to that address's
/// neighbour with new MACs, its TTL or hop limit one below the forwarding mark of 32.
#[test]
fn fast_path_redirects_forwarded_packets() {
    let ns = fast::namespace();
    ns.run(|| {
        let mut dp = fast::loaded(true);
        let identity = |a| a;
        let ingress = netpage::attach::if_index("fin").expect("fixture interface");
        for w in [W4(), W6()] {
            // VM A's old real address, which still drains to its VA.
            let drain = if w.v6 {
                ip6("2001:db8:d::10")
            } else {
                ip4(198, 18, 99, 10)
            };
            dp.table().set_reverse(drain, w.va_a).unwrap();
            dp.table()
                .set_drain(Drain {
                    real: drain,
                    virt: w.va_a,
                    deadline_ms: u64::MAX,
                })
                .unwrap();
            for l4 in [L4::Tcp, L4::Udp, L4::Echo] {
                let name = format!("v6={} {l4:?} forwarded and redirected", w.v6);
                let mut input = frame(w, &[], l4, w.client, drain)(&identity);
                fast::to_mac(&mut input, fast::MAC_FIN);
                let mut expected = frame(w, &[], l4, w.client, w.ra_a)(&identity);
                expected[..6].copy_from_slice(&fast::MAC_RA_A);
                expected[6..12].copy_from_slice(&fast::MAC_FOUT);
                fast::set_ttl(&mut expected, 31);
                let before = dp.counters();
                let (verdict, out) = dp.run_on(Side::Physical, &input, ingress);
                let delta = dp.counters().since(&before);
                assert_eq!(
                    verdict,
                    netpage_tests::datapath::XDP_REDIRECT,
                    "{name}: verdict"
                );
                assert_output(&name, &input, &out, &expected);
                assert_counted(
                    &name,
                    &delta,
                    &[Counter::Forwarded, Counter::FastRedirected],
                );
                verify::frame(&out).unwrap_or_else(|e| panic!("{name}: {e}"));
            }
        }
    });
}

/// An attached egress that is not in the device map (it takes no XDP frames) gets no
/// redirect: the packet goes to the kernel as it was translated (MACs and TTL untouched),
/// counted apart; the other direction is still redirected.
#[test]
fn fast_path_falls_back_where_the_egress_takes_no_xdp_frames() {
    let ns = fast::namespace();
    ns.run(|| {
        let mut dp = fast::loaded(true);
        let fout = netpage::attach::if_index("fout").expect("fixture interface");
        dp.set_redirect_target(fout, false);
        for w in [W4(), W6()] {
            for (side, ingress, s, d, then) in [
                (
                    Side::Virtual,
                    "fin",
                    w.client,
                    w.va_a,
                    fast::Then::Pass(Some(Counter::FastNoXdpXmit)),
                ),
                (
                    Side::Physical,
                    "fout",
                    w.ra_a,
                    w.client,
                    fast::Then::Redirect {
                        egress: "fin",
                        dmac: fast::MAC_CLIENT,
                    },
                ),
            ] {
                let c = fast::FastCase {
                    name: format!("egress out of the device map {side:?} v6={}", w.v6),
                    side,
                    ingress,
                    dst_mac: fast::interface_mac(ingress),
                    build: frame(w, &[], L4::Udp, s, d),
                    patch: None,
                    outcome: translated(&w, side),
                    then,
                };
                fast::check(&dp, &c);
            }
        }
    });
}

/// Without the fast-path flag on the ingress port, translated packets pass as before and
/// no fast-path counter moves, even where the route is a plain forward.
#[test]
fn fast_path_off_changes_nothing() {
    let ns = fast::namespace();
    ns.run(|| {
        let dp = fast::loaded(false);
        for w in [W4(), W6()] {
            for (side, ingress, s, d) in [
                (Side::Virtual, "fin", w.client, w.va_a),
                (Side::Physical, "fout", w.ra_a, w.client),
            ] {
                let c = fast::FastCase {
                    name: format!("fast path off {side:?} v6={}", w.v6),
                    side,
                    ingress,
                    dst_mac: fast::interface_mac(ingress),
                    build: frame(w, &[], L4::Tcp, s, d),
                    patch: None,
                    outcome: translated(&w, side),
                    then: fast::Then::Pass(None),
                };
                assert!(!fast::check(&dp, &c));
            }
        }
    });
}
