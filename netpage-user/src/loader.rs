//! The embedded XDP object and how it is loaded with a chosen table size.

use aya::{Ebpf, EbpfError, EbpfLoader};
use netpage_common::maps::{PROG_PHYSICAL, PROG_VIRTUAL, SIZED_MAPS};

/// The compiled XDP program, built for the BPF target by the build script.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netpage"));

/// Loads the object with every page table (and its stats) sized to `capacity` entries.
pub fn load(capacity: u32) -> Result<Ebpf, EbpfError> {
    let mut loader = EbpfLoader::new();
    for name in SIZED_MAPS {
        loader.map_max_entries(name, capacity);
    }
    loader.load(EBPF_OBJECT)
}

/// Which network an interface faces, and so which direction the program translates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// Faces clients or VMs, which speak virtual addresses: VA -> RA.
    Virtual,
    /// Faces the network of real addresses: RA -> VA.
    Physical,
}

impl Side {
    /// The XDP program for this side.
    pub fn program(self) -> &'static str {
        match self {
            Side::Virtual => PROG_VIRTUAL,
            Side::Physical => PROG_PHYSICAL,
        }
    }
}
