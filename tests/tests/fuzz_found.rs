//! Defects the differential fuzzer (`cargo xtask fuzz`) found, each as a fixture. One not
//! fixed yet fails, and is ignored meanwhile so that the suite stays green (run those with
//! `cargo xtask test fuzz_found -- --ignored`); the fuzzer counts its counterexamples apart
//! (`KNOWN` in tests/src/fuzz/run.rs). Once it is fixed, its `#[ignore]` and its entry
//! there go, and the fixture stays as a regression test. Every fixture here is fixed.
//!
//! The fuzzer's table is installed: among others 10.0.0.10 <-> 192.0.2.10 and
//! fd00::10 <-> 2001:db8:a::10.

use std::net::IpAddr;

use netpage::loader::Side;
use netpage_common::counters::Counter;
use netpage_tests::{
    build::{V4Opts, ether, ipv4, ipv6, udp},
    datapath::{Datapath, Hook},
    fuzz::{fixture, table::Table},
};

fn loaded() -> Datapath {
    let mut dp = Datapath::load(64);
    Table::standard().install(&mut dp);
    dp
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Later fragments of one IPv6 datagram whose fragmentable part begins with a destination
/// options header carry data where the extension headers were, not headers; the walk
/// reads that data as headers anyway. So two later fragments of one datagram, with the
/// same headers, are translated or passed depending on their payload bytes (here: a first
/// data byte of 6 reads as "next: TCP" and translates, 50 reads as ESP and passes). The
/// receiver then cannot reassemble the datagram: its fragments arrive with different
/// addresses. A later fragment is judged by its fragment header alone: both are
/// translated at the IP layer (the walk once read on into the data).
#[test]
fn ipv6_later_fragments_of_one_datagram_are_treated_alike() {
    let dp = loaded();
    let (client, ra) = (ip("2001:db8:c::5"), ip("2001:db8:a::10"));
    // Fragment header: next header destination options (60), offset 1 (8 bytes), M set.
    let later = |first_data_byte: u8| {
        let mut payload = vec![60, 0, 0x00, 0x09, 0, 0, 0x12, 0x34];
        let mut data = vec![first_data_byte, 0];
        data.extend([0xAB; 14]);
        payload.extend(data);
        ether(&[], 0x86DD, &ipv6(client, ra, 44, &[], &payload))
    };
    let mut translated = Vec::new();
    for hook in Hook::ALL {
        for byte in [6u8, 50] {
            let input = later(byte);
            let (verdict, out) = dp.run_at(hook, Side::Physical, &input, None);
            assert_eq!(verdict, hook.pass());
            translated.push((hook, byte, out != input));
        }
    }
    for pair in translated.chunks(2) {
        assert_eq!(
            pair[0].2, pair[1].2,
            "later fragments of one datagram treated differently: {translated:?}"
        );
        assert!(pair[0].2, "a later fragment is translated: {translated:?}");
    }
}

/// An ICMP error whose outer IPv4 options are malformed (here a record route of length 1)
/// is malformed: with a mapped outer address it passes untouched, as the datapath
/// documents for malformed packets. With the outer addresses unmapped (a router's error to
/// a client about its packet to a real address) it passes untouched too: the quote-only
/// path on the physical side judges the options as the translation does (it once did not),
/// source routes with hops left included.
#[test]
fn icmp_error_with_malformed_ipv4_options_passes_untouched_on_a_miss() {
    let dp = loaded();
    let (router, client, ra) = (ip("192.0.2.1"), ip("203.0.113.5"), ip("192.0.2.10"));
    let quote = ipv4(
        client,
        ra,
        17,
        &V4Opts::default(),
        &udp(client, ra, b"quoted"),
    );
    let bad = V4Opts {
        options: vec![7, 1, 1, 1],
        ..V4Opts::default()
    };
    let error = |dst| {
        let mut m = vec![11, 0, 0, 0, 0, 0, 0, 0];
        m.extend(&quote);
        let c = !netpage_tests::verify::sum(&[&m]);
        m[2..4].copy_from_slice(&c.to_be_bytes());
        ether(&[], 0x0800, &ipv4(router, dst, 1, &bad, &m))
    };
    for hook in Hook::ALL {
        // The translate path: the error's destination is mapped. Passes untouched.
        let mapped = error(ra);
        assert_eq!(dp.run_at(hook, Side::Physical, &mapped, None).1, mapped);
        // The quote-only path: the same error to an unmapped client.
        let miss = error(client);
        let (verdict, out) = dp.run_at(hook, Side::Physical, &miss, None);
        assert_eq!(verdict, hook.pass());
        assert_eq!(
            out, miss,
            "{hook:?}: the quote of a malformed packet was translated"
        );
    }
}

/// The same defect as the fuzzer printed it (a NOP-padded header whose byte flip made an
/// option of length 1), pasted as is.
/// `cargo xtask fuzz --seed 2 --only 12791` (xdp): changed a frame that must pass untouched (an IPv4 option of a wrong length)
/// Kinds: physical side, two VLAN tags, IPv4, IPv4 options: NOPs, ICMP time exceeded, quoting ICMP echo, mutated: flipped bytes, mutated: Ethernet padding.
#[test]
fn fuzz_seed_2_packet_12791_xdp() {
    fixture::check(
        Side::Physical,
        Hook::Xdp,
        false,
        concat!(
            "02000000000b02000000000a810005e988a803bb08004b5c004817d140002d01",
            "eed1c63364630a00001401010101010101010101010101010101010103010101",
            "05010b0da50ae9c2662545e80028dedb4000b2019428c6336463c633641eb27e",
            "7381241ae99954e0c520d3",
        ),
        concat!(
            "02000000000b02000000000a810005e988a803bb08004b5c004817d140002d01",
            "eed1c63364630a00001401010101010101010101010101010101010103010101",
            "05010b0da50ae9c2662545e80028dedb4000b2019428c6336463c633641eb27e",
            "7381241ae99954e0c520d3",
        ),
    );
}

/// An ICMP error on a miss whose outer IPv4 options hold a source route with hops left and,
/// behind it, an option cut after its type: the option walk stops at the route, so the
/// error passes for the route (as a mapped one would), never with its quote translated.
/// `cargo xtask fuzz --seed 1 --only 56269` (xdp): changed a frame that must pass untouched (an IPv4 option cut after its type)
/// Kinds: physical side, one VLAN tag, IPv4, IPv4 options: source route, last hop left, ICMP parameter problem, quoting ICMP echo, mutated: wrong checksum, mutated: flipped bytes.
#[test]
fn fuzz_seed_1_packet_56269_xdp() {
    fixture::check(
        Side::Physical,
        Hook::Xdp,
        false,
        concat!(
            "02000000000b02000000000a810003fd080048a8004f02214000bc010927c633",
            "64631000000001830a08cb00714dcb00714d0c0f16e13bfb6792454c00b0b135",
            "4000c801142ac6336463c000020a0800fcf90001000254220d64c89a62ca27d9",
            "b2",
        ),
        concat!(
            "02000000000b02000000000a810003fd080048a8004f02214000bc010927c633",
            "64631000000001830a08cb00714dcb00714d0c0f16e13bfb6792454c00b0b135",
            "4000c801142ac6336463c000020a0800fcf90001000254220d64c89a62ca27d9",
            "b2",
        ),
    );
}

/// A Mobile IPv6 packet from a care-of address carries the mobile node's home address in
/// a home address option of a destination options header, and its transport checksum is
/// over the home address (RFC 6275 6.3 and 9.3.1: the receiver swaps the two before the
/// transport sees the packet). netpage once translated the header's source (an RA here)
/// and adjusted that checksum as if the pseudo-header held the source, and the receiver
/// dropped the segment. Such a packet now passes untouched, as `pass_home_address`.
#[test]
fn ipv6_home_address_option_keeps_the_transport_checksum() {
    use netpage_tests::build::{ext, tcp};
    let dp = loaded();
    let (ra, client, home) = (
        ip("2001:db8:a::10"),
        ip("2001:db8:c::5"),
        ip("2001:db8:c::99"),
    );
    // PadN of 2, then the home address option (type 201, 16 bytes) at 8n+6.
    let mut body = vec![1, 2, 0, 0, 0xC9, 16];
    if let IpAddr::V6(h) = home {
        body.extend(h.octets());
    }
    let dest_opts = ext(60, 6, &body);
    let segment = tcp(home, client, b"from the care-of address");
    let frame = |src| ether(&[], 0x86DD, &ipv6(src, client, 60, &dest_opts, &segment));
    let input = frame(ra);
    for hook in Hook::ALL {
        let before = dp.counters();
        let (verdict, out) = dp.run_at(hook, Side::Physical, &input, None);
        assert_eq!(verdict, hook.pass());
        assert_eq!(
            out, input,
            "{hook:?}: a home address option passes untouched"
        );
        let delta = dp.counters().since(&before);
        assert_eq!(delta.get(Counter::PassHomeAddress), 1, "{hook:?}");
    }
}
