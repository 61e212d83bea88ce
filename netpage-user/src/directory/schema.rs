//! The directory's layout in etcd: which key holds what, and the JSON of each value.
//!
//! ```text
//! <prefix>/schema              {"version":1}
//! <prefix>/v1/map/vm/<VA>      {"real":"<RA>"}                        V2R: one per VM
//! <prefix>/v1/map/ra/<RA>      {"vm":"<VA>"}                          R2V: reserved or held
//! <prefix>/v1/map/ra/<RA>      {"vm":"<VA>","drain_until_ms":<ms>}    R2V of a drain (leased)
//! <prefix>/v1/map/seg/<VA>     {"locator":"<L>"}                      method encap: one per VM
//! <prefix>/v1/nodes/<NAME>     NodeRecord                              an agent (leased)
//! ```
//!
//! Agents watch `<prefix>/v1/map/` only, so the nodes' own reports do not wake them.
//! Addresses are written in their canonical text form (`Ipv6Addr`'s `Display`).
//!
//! A VA has a `vm` key (paging) or a `seg` key (segmentation: its locator, of either
//! family), never both. The `seg` keys came after version 1 was first written and did not
//! change it: an agent that predates them ignores a kind of key it does not know (it
//! decodes nothing from it), so it keeps mirroring the paging mappings as before. An older
//! writer does not see them either: once they are in use, writers must know them.

use std::{net::IpAddr, str::FromStr};

use serde::{Deserialize, Serialize};

/// The version of this layout; a directory of a newer version is refused.
pub const SCHEMA_VERSION: u32 = 1;

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "/netpage";

/// The keys under one prefix.
#[derive(Clone, Debug)]
pub struct Keys {
    root: String,
}

/// A key of the mapping range, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum MapKey {
    Vm(IpAddr),
    Ra(IpAddr),
    Seg(IpAddr),
}

impl MapKey {
    /// The other key a VA may have: a VM's `seg` key for its `vm` key and the reverse
    /// (a VA is mapped by one method only); `None` for a reverse entry.
    pub fn sibling(self) -> Option<MapKey> {
        match self {
            MapKey::Vm(va) => Some(MapKey::Seg(va)),
            MapKey::Seg(va) => Some(MapKey::Vm(va)),
            MapKey::Ra(_) => None,
        }
    }
}

impl Keys {
    /// The keys under `prefix` (a trailing `/` is ignored).
    pub fn new(prefix: &str) -> Self {
        Self {
            root: prefix.trim_end_matches('/').to_owned(),
        }
    }

    pub fn schema(&self) -> String {
        format!("{}/schema", self.root)
    }

    /// Every mapping key: what agents watch.
    pub fn map_prefix(&self) -> String {
        format!("{}/v{SCHEMA_VERSION}/map/", self.root)
    }

    pub fn vm(&self, va: IpAddr) -> String {
        format!("{}vm/{va}", self.map_prefix())
    }

    pub fn ra(&self, ra: IpAddr) -> String {
        format!("{}ra/{ra}", self.map_prefix())
    }

    pub fn seg(&self, va: IpAddr) -> String {
        format!("{}seg/{va}", self.map_prefix())
    }

    /// The key of `key`.
    pub fn map_key(&self, key: MapKey) -> String {
        match key {
            MapKey::Vm(va) => self.vm(va),
            MapKey::Ra(ra) => self.ra(ra),
            MapKey::Seg(va) => self.seg(va),
        }
    }

    pub fn nodes_prefix(&self) -> String {
        format!("{}/v{SCHEMA_VERSION}/nodes/", self.root)
    }

    pub fn node(&self, name: &str) -> String {
        format!("{}{name}", self.nodes_prefix())
    }

    /// Decodes a key of the mapping range; `None` for anything else (a newer writer's
    /// extra keys are ignored rather than misread).
    pub fn parse_map_key(&self, key: &[u8]) -> Option<MapKey> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key.strip_prefix(&self.map_prefix())?;
        let (kind, addr) = rest.split_once('/')?;
        let ip = canonical_ip(addr)?;
        match kind {
            "vm" => Some(MapKey::Vm(ip)),
            "ra" => Some(MapKey::Ra(ip)),
            "seg" => Some(MapKey::Seg(ip)),
            _ => None,
        }
    }

    /// The node name of a key under the nodes prefix.
    pub fn parse_node_key<'a>(&self, key: &'a [u8]) -> Option<&'a str> {
        std::str::from_utf8(key)
            .ok()?
            .strip_prefix(&self.nodes_prefix())
            .filter(|n| valid_node_name(n))
    }
}

/// An address in its canonical form only, so that one address has one key.
fn canonical_ip(s: &str) -> Option<IpAddr> {
    let ip = IpAddr::from_str(s).ok()?;
    (ip.to_string() == s).then_some(ip)
}

/// Whether `name` can name a node: 1 to 64 of `[A-Za-z0-9._-]`, not starting with a dot.
pub fn valid_node_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `<prefix>/schema`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaValue {
    pub version: u32,
}

/// `<prefix>/v1/map/vm/<VA>`: where the VM is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmValue {
    pub real: IpAddr,
}

/// `<prefix>/v1/map/ra/<RA>`: which VM a real address belongs to. With `drain_until_ms`
/// it is a drain: the VM has left the address, and the key's lease ends it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaValue {
    pub vm: IpAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_until_ms: Option<u64>,
}

/// `<prefix>/v1/map/seg/<VA>`: the locator of the node that hosts the VM (method encap).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegValue {
    pub locator: IpAddr,
}

/// `<prefix>/v1/nodes/<NAME>`: an agent's registration and progress, under its lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node: String,
    /// The sides of the node's attached interfaces (`virtual`, `physical`).
    pub sides: Vec<String>,
    /// The netpage version and program build that runs there.
    pub build: String,
    /// The directory revision the node's table equals.
    pub applied_revision: i64,
    /// When it was applied (µs since the Unix epoch, the node's clock).
    pub applied_at_us: u64,
    pub pid: u32,
}

/// Encodes a value as the directory stores it.
pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("directory values serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_in_canonical_form_only() {
        let k = Keys::new("/np/");
        let va: IpAddr = "2001:db8::10".parse().unwrap();
        assert_eq!(k.vm(va), "/np/v1/map/vm/2001:db8::10");
        assert_eq!(k.parse_map_key(k.vm(va).as_bytes()), Some(MapKey::Vm(va)));
        let ra: IpAddr = "198.18.10.100".parse().unwrap();
        assert_eq!(k.parse_map_key(k.ra(ra).as_bytes()), Some(MapKey::Ra(ra)));
        assert_eq!(k.seg(va), "/np/v1/map/seg/2001:db8::10");
        assert_eq!(k.parse_map_key(k.seg(va).as_bytes()), Some(MapKey::Seg(va)));
        for key in [MapKey::Vm(va), MapKey::Ra(ra), MapKey::Seg(va)] {
            assert_eq!(k.parse_map_key(k.map_key(key).as_bytes()), Some(key));
        }
        for bad in [
            "/np/v1/map/vm/2001:DB8::10",
            "/np/v1/map/vm/2001:db8:0::10",
            "/np/v1/map/xx/1.2.3.4",
            "/np/v1/map/seg/2001:DB8::10",
            "/np/v1/map/vm/1.2.3",
            "/other/v1/map/vm/1.2.3.4",
        ] {
            assert_eq!(k.parse_map_key(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn node_names_are_checked() {
        let k = Keys::new("/netpage");
        assert_eq!(k.parse_node_key(b"/netpage/v1/nodes/gw-1"), Some("gw-1"));
        for bad in ["", ".x", "a/b", "a b", &"x".repeat(65)] {
            assert!(!valid_node_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn values_have_a_stable_json_form() {
        let v = RaValue {
            vm: "198.19.0.10".parse().unwrap(),
            drain_until_ms: None,
        };
        assert_eq!(encode(&v), br#"{"vm":"198.19.0.10"}"#);
        let d = RaValue {
            drain_until_ms: Some(5),
            ..v
        };
        assert_eq!(encode(&d), br#"{"vm":"198.19.0.10","drain_until_ms":5}"#);
        let s = SegValue {
            locator: "2001:db8:b::1".parse().unwrap(),
        };
        assert_eq!(encode(&s), br#"{"locator":"2001:db8:b::1"}"#);
    }
}
