//! Which port of a node owns each VM: the records `attach --vm` keeps, by virtual address,
//! in the maps NP_OWNER4 and NP_OWNER6. The virtual side accepts a mapping's addresses
//! (virtual or real) as a packet's source only from the port that owns its VM, and drops
//! them from any other port as spoofed.

use std::net::IpAddr;

use aya::maps::{HashMap, Map, MapData, MapError};
use netpage_common::maps::{Addr4, Addr6, OWNER4, OWNER6};

use crate::table::{ReadError, absent};

/// A failed operation on the owner records, with the map and address it concerned.
#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    #[error("{op} the owner of {va} in map {map}")]
    Map {
        op: &'static str,
        map: &'static str,
        va: IpAddr,
        #[source]
        source: Box<MapError>,
    },
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("map {map} is missing or not of the expected type")]
    Open { map: &'static str },
}

/// The owner records of one node: virtual address -> index of the owning port.
pub struct Owners {
    v4: HashMap<MapData, Addr4, u32>,
    v6: HashMap<MapData, Addr6, u32>,
}

impl Owners {
    /// Takes the owner maps from `take` (by name).
    pub fn from_maps(mut take: impl FnMut(&str) -> Option<Map>) -> Result<Self, OwnerError> {
        fn open<K: aya::Pod>(
            map: &'static str,
            m: Option<Map>,
        ) -> Result<HashMap<MapData, K, u32>, OwnerError> {
            m.and_then(|m| HashMap::try_from(m).ok())
                .ok_or(OwnerError::Open { map })
        }
        Ok(Self {
            v4: open(OWNER4, take(OWNER4))?,
            v6: open(OWNER6, take(OWNER6))?,
        })
    }

    /// The index of the port that owns the VM of `va`, if one does.
    pub fn get(&self, va: IpAddr) -> Result<Option<u32>, OwnerError> {
        let r = match va {
            IpAddr::V4(a) => self.v4.get(&Addr4 { octets: a.octets() }, 0),
            IpAddr::V6(a) => self.v6.get(&Addr6 { octets: a.octets() }, 0),
        };
        match r {
            Ok(i) => Ok(Some(i)),
            Err(e) if absent(&e) => Ok(None),
            Err(e) => Err(err("reading", va, e)),
        }
    }

    /// Records the port with index `ifindex` as the owner of the VM of `va`.
    pub fn set(&mut self, va: IpAddr, ifindex: u32) -> Result<(), OwnerError> {
        match va {
            IpAddr::V4(a) => self.v4.insert(Addr4 { octets: a.octets() }, ifindex, 0),
            IpAddr::V6(a) => self.v6.insert(Addr6 { octets: a.octets() }, ifindex, 0),
        }
        .map_err(|e| err("setting", va, e))
    }

    /// Forgets the owner of `va`; forgetting an absent record is not an error.
    pub fn remove(&mut self, va: IpAddr) -> Result<(), OwnerError> {
        match match va {
            IpAddr::V4(a) => self.v4.remove(&Addr4 { octets: a.octets() }),
            IpAddr::V6(a) => self.v6.remove(&Addr6 { octets: a.octets() }),
        } {
            Err(e) if !absent(&e) => Err(err("removing", va, e)),
            _ => Ok(()),
        }
    }

    /// Every record, sorted by address (IPv4 first).
    pub fn entries(&self) -> Result<Vec<(IpAddr, u32)>, OwnerError> {
        let mut out = Vec::new();
        for kv in self.v4.iter() {
            let (k, v) = kv.map_err(ReadError::of(OWNER4))?;
            out.push((IpAddr::from(k.octets), v));
        }
        for kv in self.v6.iter() {
            let (k, v) = kv.map_err(ReadError::of(OWNER6))?;
            out.push((IpAddr::from(k.octets), v));
        }
        out.sort();
        Ok(out)
    }

    /// The virtual addresses that the port with index `ifindex` owns, sorted.
    pub fn owned_by(&self, ifindex: u32) -> Result<Vec<IpAddr>, OwnerError> {
        Ok(self
            .entries()?
            .into_iter()
            .filter(|&(_, i)| i == ifindex)
            .map(|(va, _)| va)
            .collect())
    }
}

fn err(op: &'static str, va: IpAddr, source: MapError) -> OwnerError {
    OwnerError::Map {
        op,
        map: if va.is_ipv4() { OWNER4 } else { OWNER6 },
        va,
        source: Box::new(source),
    }
}
