//! Bulk updates of a page table map with one BPF_MAP_UPDATE_BATCH call per family.

use std::{
    io,
    net::IpAddr,
    os::fd::{AsFd, AsRawFd},
};

use aya::maps::{IterableMap, MapError};

use super::{Addr4, Addr6, Family, Table, TableError, same_family};

/// `BPF_MAP_UPDATE_BATCH` (uapi/linux/bpf.h, `enum bpf_cmd`).
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Sets `key -> value` for every entry, in the map of its family. Every pair is checked
/// for a family mismatch before anything is written.
pub(super) fn update(
    t4: &Table<Addr4>,
    t6: &Table<Addr6>,
    entries: &[(IpAddr, IpAddr)],
) -> Result<(), TableError> {
    let (mut k4, mut v4, mut k6, mut v6) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for &(k, v) in entries {
        match k {
            IpAddr::V4(_) => {
                k4.push(Addr4::from_ip(k).expect("IPv4"));
                v4.push(same_family::<Addr4>(k, v)?);
            }
            IpAddr::V6(_) => {
                k6.push(Addr6::from_ip(k).expect("IPv6"));
                v6.push(same_family::<Addr6>(k, v)?);
            }
        }
    }
    t4.update_batch(&k4, &v4)?;
    t6.update_batch(&k6, &v6)
}

impl<A: Family> Table<A> {
    fn update_batch(&self, keys: &[A], values: &[A]) -> Result<(), TableError> {
        if keys.is_empty() {
            return Ok(());
        }
        let fd = self.map.map().fd().as_fd();
        let mut attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            values: values.as_ptr() as u64,
            count: u32::try_from(keys.len()).expect("batch fits in u32"),
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` is a valid `bpf_attr` prefix of the size passed; `keys` and
        // `values` hold `count` elements of the map's key and value size and outlive the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_UPDATE_BATCH,
                &mut attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>(),
            )
        };
        if r == 0 {
            return Ok(());
        }
        let io_error = io::Error::last_os_error();
        let source = MapError::SyscallError(aya::sys::SyscallError {
            call: "bpf_map_update_batch",
            io_error,
        });
        // The kernel counts the entries it set before the one that failed.
        let done = attr.count as usize;
        let failed = keys[done.min(keys.len() - 1)];
        Err(TableError::Batch {
            map: self.name,
            addr: failed.to_ip(),
            done,
            total: keys.len(),
            source: Box::new(source),
        })
    }
}
