//! The pure part of the salvage: which descriptor is a tap, and which frame read from it
//! goes back, turned around.

use std::net::IpAddr;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

/// The interface a tun/tap descriptor is attached to, from its `/proc/PID/fdinfo` text
/// (the line `iff:\tNAME`); `None` for a descriptor that is not attached (a detached queue).
pub fn tap_name(fdinfo: &str) -> Option<&str> {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("iff:"))
        .map(str::trim)
        .filter(|n| !n.is_empty())
}

/// Turns `frame`, read from a guest's tap, around if it is an IP packet for `vm`: its
/// Ethernet addresses are swapped, so that written back into the tap it comes from the
/// guest's MAC to the one that sent it (the host's), as if the guest had sent it. Returns
/// whether it did; any other frame is left as it is.
pub fn turn_around(frame: &mut [u8], vm: IpAddr) -> bool {
    let Some(ethertype) = frame.get(12..ETH_HLEN) else {
        return false;
    };
    let ethertype = u16::from_be_bytes([ethertype[0], ethertype[1]]);
    let ip = &frame[ETH_HLEN..];
    let dst: Option<IpAddr> = match (ethertype, vm) {
        (ETH_P_IP, IpAddr::V4(_)) if ip.len() >= 20 && ip[0] >> 4 == 4 => {
            <[u8; 4]>::try_from(&ip[16..20]).ok().map(IpAddr::from)
        }
        (ETH_P_IPV6, IpAddr::V6(_)) if ip.len() >= 40 && ip[0] >> 4 == 6 => {
            <[u8; 16]>::try_from(&ip[24..40]).ok().map(IpAddr::from)
        }
        _ => None,
    };
    if dst != Some(vm) {
        return false;
    }
    let (dst_mac, rest) = frame.split_at_mut(6);
    dst_mac.swap_with_slice(&mut rest[..6]);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
    const GUEST: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    fn frame(ethertype: u16, ip: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend(GUEST);
        f.extend(HOST);
        f.extend(ethertype.to_be_bytes());
        f.extend(ip);
        f
    }

    fn ipv4(dst: [u8; 4]) -> Vec<u8> {
        let mut h = vec![0x45, 0, 0, 28, 0, 0, 0, 0, 63, 1, 0, 0, 198, 18, 0, 2];
        h.extend(dst);
        h.extend([8, 0, 0, 0, 0, 0, 0, 0]);
        h
    }

    fn ipv6(dst: [u8; 16]) -> Vec<u8> {
        let mut h = vec![0x60, 0, 0, 0, 0, 8, 58, 63];
        h.extend([0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        h.extend(dst);
        h.extend([128, 0, 0, 0, 0, 0, 0, 0]);
        h
    }

    #[test]
    fn a_packet_for_the_vm_is_turned_around_and_nothing_else_changes() {
        let vm: IpAddr = [198, 19, 0, 10].into();
        let mut f = frame(ETH_P_IP, &ipv4([198, 19, 0, 10]));
        let before = f.clone();
        assert!(turn_around(&mut f, vm));
        assert_eq!(&f[..6], &HOST);
        assert_eq!(&f[6..12], &GUEST);
        assert_eq!(&f[12..], &before[12..]);

        let vm6: IpAddr = "2001:db8:19::10".parse().unwrap();
        let IpAddr::V6(a) = vm6 else { unreachable!() };
        let mut f = frame(ETH_P_IPV6, &ipv6(a.octets()));
        let before = f.clone();
        assert!(turn_around(&mut f, vm6));
        assert_eq!(&f[..6], &HOST);
        assert_eq!(&f[6..12], &GUEST);
        assert_eq!(&f[12..], &before[12..]);
    }

    #[test]
    fn anything_else_is_left_as_it_is() {
        let vm: IpAddr = [198, 19, 0, 10].into();
        let cases = [
            // For another address.
            frame(ETH_P_IP, &ipv4([198, 19, 0, 11])),
            // ARP for the VM.
            frame(0x0806, &[0; 28]),
            // Cut short, in each header.
            frame(ETH_P_IP, &ipv4([198, 19, 0, 10])[..19]),
            GUEST[..5].to_vec(),
            // An IPv4 ethertype whose header says version 6.
            frame(ETH_P_IP, &{
                let mut h = ipv4([198, 19, 0, 10]);
                h[0] = 0x65;
                h
            }),
            // IPv6 when the VM's address is IPv4.
            frame(ETH_P_IPV6, &ipv6([0; 16])),
        ];
        for mut f in cases {
            let before = f.clone();
            assert!(!turn_around(&mut f, vm), "{before:02x?}");
            assert_eq!(f, before);
        }
    }

    #[test]
    fn the_tap_is_read_from_fdinfo() {
        let attached = "pos:\t0\nflags:\t0104002\nmnt_id:\t24\nino:\t1041\niff:\ttap0\n";
        assert_eq!(tap_name(attached), Some("tap0"));
        assert_eq!(tap_name("pos:\t0\nflags:\t0104002\n"), None);
        assert_eq!(tap_name("iff:\t\n"), None);
    }
}
