//! Bulk updates of a page table map with one BPF_MAP_UPDATE_BATCH call per family.

use std::{
    io,
    os::fd::{AsFd, AsRawFd},
};

use aya::maps::{IterableMap, MapError};

use super::{Family, Table, TableError};

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

impl<A: Family> Table<A> {
    /// Sets `keys[i] -> values[i]` with one BPF_MAP_UPDATE_BATCH call.
    pub(super) fn update_batch(&self, keys: &[A], values: &[A::Entry]) -> Result<(), TableError> {
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
