//! The embedded XDP object and how it is loaded with a chosen table size.

use std::{path::PathBuf, sync::OnceLock};

use aya::{Ebpf, EbpfError, EbpfLoader, programs::ProgramError};
use netpage_common::maps::{
    PROG_PHYSICAL, PROG_TC_PHYSICAL, PROG_TC_VIRTUAL, PROG_VIRTUAL, SIDE_PHYSICAL, SIDE_VIRTUAL,
    SIZED_MAPS,
};

/// The compiled XDP program, built for the BPF target by the build script.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netpage"));

/// A hash of [`EBPF_OBJECT`] (64-bit FNV-1a) that tells builds of the program apart.
pub fn object_id() -> u64 {
    static ID: OnceLock<u64> = OnceLock::new();
    *ID.get_or_init(|| {
        EBPF_OBJECT.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    })
}

/// Loads the object with every page table (and its stats) sized to `capacity` entries.
pub fn load(capacity: u32) -> Result<Ebpf, EbpfError> {
    load_pinned(capacity, &[])
}

/// Loads the object with its maps pinned at the given paths: a map already pinned there
/// is reused with its contents, a missing one is created with `capacity` and pinned.
pub fn load_pinned(capacity: u32, pins: &[(&str, PathBuf)]) -> Result<Ebpf, EbpfError> {
    let mut loader = EbpfLoader::new();
    for name in SIZED_MAPS {
        loader.map_max_entries(name, capacity);
    }
    for (name, path) in pins {
        loader.map_pin_path(name, path.as_path());
    }
    loader.load(EBPF_OBJECT)
}

/// How many times a program's load is tried when the verifier was interrupted.
const LOAD_TRIES: usize = 5;

/// Runs `load` (a program's `load()`), again when the kernel answered EAGAIN: the verifier
/// stops when a signal arrives for the loading process and asks to be called again, as
/// libbpf does up to five times.
pub fn load_retrying(
    mut load: impl FnMut() -> Result<(), ProgramError>,
) -> Result<(), ProgramError> {
    let mut tries = 1;
    loop {
        match load() {
            Err(ProgramError::LoadError { ref io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && tries < LOAD_TRIES =>
            {
                tries += 1;
            }
            done => return done,
        }
    }
}

/// Which network an interface faces, and so which direction the program translates.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
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

    /// The tc program for this side.
    pub fn tc_program(self) -> &'static str {
        match self {
            Side::Virtual => PROG_TC_VIRTUAL,
            Side::Physical => PROG_TC_PHYSICAL,
        }
    }

    /// The side as recorded in the interface registry.
    pub fn code(self) -> u32 {
        match self {
            Side::Virtual => SIDE_VIRTUAL,
            Side::Physical => SIDE_PHYSICAL,
        }
    }

    /// The side recorded as `code`.
    pub fn from_code(code: u32) -> Option<Self> {
        match code {
            SIDE_VIRTUAL => Some(Side::Virtual),
            SIDE_PHYSICAL => Some(Side::Physical),
            _ => None,
        }
    }
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Virtual => "virtual",
            Side::Physical => "physical",
        })
    }
}
