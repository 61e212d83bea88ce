//! The node's segmentation settings: its own locators (the outer source of what it
//! encapsulates, and the addresses it decapsulates at), the default locator for
//! destinations that are not VMs of the table, and the tunnel MTU. One slot of the pinned
//! map `NP_SEGCFG`, which the programs read per packet the page table missed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::maps::{Array, MapData};
use netpage_common::{
    maps::SEG_CONFIG,
    segment::{DEFAULT_TUNNEL_MTU, MIN_TUNNEL_MTU, SEG_ON, SegConfig},
};
use serde::Serialize;

use crate::{
    ops::unusable,
    table::{padded, unpadded},
};

/// The settings as a person reads them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Settings {
    /// The node's IPv4 and IPv6 locators; none: the node does not take part.
    pub locators: Vec<IpAddr>,
    /// Where packets of a VM of method encap go when their destination is not a VM of the
    /// table (the site's gateway).
    pub default_locator: Option<IpAddr>,
    /// The largest outer packet the physical network carries.
    pub tunnel_mtu: u32,
}

/// A change of the settings: what is not given stays.
#[derive(Clone, Debug, Default)]
pub struct Change {
    pub locators: Vec<IpAddr>,
    pub default_locator: Option<IpAddr>,
    pub no_default: bool,
    pub tunnel_mtu: Option<u32>,
    /// Forget every setting first (the node leaves segmentation).
    pub clear: bool,
}

/// Why the settings cannot be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum SegError {
    #[error(
        "this node has no segmentation settings yet (its maps predate them): attach an interface again first"
    )]
    Missing,
    #[error("reading or writing map {SEG_CONFIG}")]
    Map(#[source] Box<aya::maps::MapError>),
    #[error("two {family} locators given ({a} and {b}): a node has one of each family")]
    TwoLocators {
        family: &'static str,
        a: IpAddr,
        b: IpAddr,
    },
    #[error("{addr} cannot be a locator: it is {why}")]
    Unusable {
        addr: IpAddr,
        why: crate::ops::Unusable,
    },
    #[error(
        "a tunnel MTU of {mtu} is below {MIN_TUNNEL_MTU}, the least that carries an IPv6 packet of 1280 bytes"
    )]
    SmallMtu { mtu: u32 },
}

/// The node's settings map.
pub struct SegSettings {
    map: Array<MapData, SegConfig>,
}

impl SegSettings {
    /// Over the opened map.
    pub fn new(map: Array<MapData, SegConfig>) -> Self {
        Self { map }
    }

    /// The raw settings.
    pub fn config(&self) -> Result<SegConfig, SegError> {
        self.map.get(&0, 0).map_err(|e| SegError::Map(Box::new(e)))
    }

    /// The settings as a person reads them.
    pub fn read(&self) -> Result<Settings, SegError> {
        Ok(settings(&self.config()?))
    }

    /// Writes `c` (made by [`changed`]) with one map update.
    pub fn store(&mut self, c: SegConfig) -> Result<Settings, SegError> {
        self.map
            .set(0, c, 0)
            .map_err(|e| SegError::Map(Box::new(e)))?;
        Ok(settings(&c))
    }
}

/// The settings that `change` makes of `old`, checked.
pub fn changed(old: SegConfig, change: &Change) -> Result<SegConfig, SegError> {
    let mut c = if change.clear {
        SegConfig::default()
    } else {
        old
    };
    let (mut four, mut six) = (None, None);
    for &addr in change.locators.iter().chain(&change.default_locator) {
        if let Some(why) = unusable(addr) {
            return Err(SegError::Unusable { addr, why });
        }
    }
    for &l in &change.locators {
        let (slot, family) = match l {
            IpAddr::V4(_) => (&mut four, "IPv4"),
            IpAddr::V6(_) => (&mut six, "IPv6"),
        };
        if let Some(a) = *slot {
            return Err(SegError::TwoLocators { family, a, b: l });
        }
        *slot = Some(l);
        match l {
            IpAddr::V4(a) => c.own4 = a.octets(),
            IpAddr::V6(a) => c.own6 = a.octets(),
        }
    }
    if change.no_default {
        c.default_family = 0;
        c.default_addr = [0; 16];
    }
    if let Some(d) = change.default_locator {
        (c.default_family, c.default_addr) = padded(d);
    }
    if let Some(mtu) = change.tunnel_mtu {
        if mtu < MIN_TUNNEL_MTU {
            return Err(SegError::SmallMtu { mtu });
        }
        c.mtu = mtu;
    }
    if c.mtu == 0 {
        c.mtu = DEFAULT_TUNNEL_MTU;
    }
    let has_locator = c.own4 != [0; 4] || c.own6 != [0; 16];
    c.flags = if has_locator { SEG_ON } else { 0 };
    Ok(c)
}

/// The settings of `c` as a person reads them.
pub fn settings(c: &SegConfig) -> Settings {
    let mut locators = Vec::new();
    if c.own4 != [0; 4] {
        locators.push(IpAddr::V4(Ipv4Addr::from(c.own4)));
    }
    if c.own6 != [0; 16] {
        locators.push(IpAddr::V6(Ipv6Addr::from(c.own6)));
    }
    let default_locator =
        matches!(c.default_family, 4 | 6).then(|| unpadded(c.default_family, &c.default_addr));
    Settings {
        locators,
        default_locator,
        tunnel_mtu: if c.mtu == 0 {
            DEFAULT_TUNNEL_MTU
        } else {
            c.mtu
        },
    }
}

/// Lets `iface`, a virtual-side interface, take packets whose source is one of the node's
/// own IPv4 addresses (`accept_local`): the outer source of what the program encapsulates
/// there is the node's locator, and the kernel would drop it as a martian otherwise.
pub fn accept_local(iface: &str) -> std::io::Result<()> {
    std::fs::write(format!("/proc/sys/net/ipv4/conf/{iface}/accept_local"), "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn locators_default_and_mtu_are_set_and_kept() {
        let c = changed(
            SegConfig::default(),
            &Change {
                locators: vec![ip("192.0.2.1"), ip("2001:db8::1")],
                default_locator: Some(ip("192.0.2.254")),
                ..Change::default()
            },
        )
        .unwrap();
        assert!(c.on());
        assert_eq!(c.mtu, DEFAULT_TUNNEL_MTU);
        let s = settings(&c);
        assert_eq!(s.locators, vec![ip("192.0.2.1"), ip("2001:db8::1")]);
        assert_eq!(s.default_locator, Some(ip("192.0.2.254")));
        // A later change keeps what it does not name.
        let c2 = changed(
            c,
            &Change {
                tunnel_mtu: Some(9000),
                no_default: true,
                ..Change::default()
            },
        )
        .unwrap();
        let s2 = settings(&c2);
        assert_eq!(s2.locators, s.locators);
        assert_eq!((s2.default_locator, s2.tunnel_mtu), (None, 9000));
        assert!(
            !changed(SegConfig::default(), &Change::default())
                .unwrap()
                .on()
        );
        // --clear forgets everything: the node leaves segmentation.
        let cleared = Change {
            clear: true,
            ..Change::default()
        };
        let c3 = changed(c2, &cleared).unwrap();
        assert!(!c3.on());
        assert_eq!(
            settings(&c3),
            Settings {
                locators: Vec::new(),
                default_locator: None,
                tunnel_mtu: DEFAULT_TUNNEL_MTU,
            }
        );
    }

    #[test]
    fn bad_settings_are_refused() {
        let two = Change {
            locators: vec![ip("192.0.2.1"), ip("192.0.2.2")],
            ..Change::default()
        };
        assert!(matches!(
            changed(SegConfig::default(), &two),
            Err(SegError::TwoLocators { .. })
        ));
        let small = Change {
            tunnel_mtu: Some(1300),
            ..Change::default()
        };
        assert!(matches!(
            changed(SegConfig::default(), &small),
            Err(SegError::SmallMtu { mtu: 1300 })
        ));
        let bad = Change {
            locators: vec![ip("224.0.0.1")],
            ..Change::default()
        };
        assert!(matches!(
            changed(SegConfig::default(), &bad),
            Err(SegError::Unusable { .. })
        ));
    }
}
