//! Bulk access to the page table's maps: updates with one BPF_MAP_UPDATE_BATCH call per
//! family, and whole reads (of a table, of a counter array) with BPF_MAP_LOOKUP_BATCH,
//! thousands of entries a call, instead of two calls an entry.

use std::{
    io,
    os::fd::{AsFd, AsRawFd},
};

use aya::maps::{IterableMap, MapError};

use netpage_common::maps::MappingStats;

use super::{Family, ReadError, Stats, Table, TableError};

/// `BPF_MAP_LOOKUP_BATCH` and `BPF_MAP_UPDATE_BATCH` (uapi/linux/bpf.h, `enum bpf_cmd`).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
/// Entries asked for per lookup call.
const CHUNK: usize = 4096;

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
    /// Every entry, read in batches.
    pub(super) fn all(&self) -> Result<Vec<(A, A::Entry)>, TableError> {
        let fd = self.map.map().fd().as_fd().as_raw_fd() as u32;
        let size = std::mem::size_of::<A::Entry>();
        let (keys, values) = lookup_all::<A>(fd, size, 4).map_err(|e| read_error(self.name, e))?;
        Ok(keys
            .into_iter()
            .zip(values.chunks_exact(size))
            // SAFETY: each chunk holds one `A::Entry` as the kernel wrote it; `Pod` types
            // have no invalid bit patterns.
            .map(|(k, v)| (k, unsafe { std::ptr::read_unaligned(v.as_ptr().cast()) }))
            .collect())
    }

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

impl Stats {
    /// The counters of every slot, summed over CPUs, in slot order.
    pub(super) fn all(&self) -> Result<Vec<MappingStats>, TableError> {
        let cpus =
            aya::util::nr_cpus().map_err(|(what, e)| TableError::Cpus(format!("{what}: {e}")))?;
        let one = std::mem::size_of::<MappingStats>().next_multiple_of(8);
        let fd = self.map.map().fd().as_fd().as_raw_fd() as u32;
        let (slots, values) =
            lookup_all::<u32>(fd, one * cpus, 4).map_err(|e| read_error(self.name, e))?;
        let mut out = vec![MappingStats::default(); self.map.len() as usize];
        for (slot, per_cpu) in slots.into_iter().zip(values.chunks_exact(one * cpus)) {
            let total = per_cpu
                .chunks_exact(one)
                .fold(MappingStats::default(), |t, c| {
                    // SAFETY: each chunk holds one `MappingStats` as the kernel wrote it.
                    let s: MappingStats = unsafe { std::ptr::read_unaligned(c.as_ptr().cast()) };
                    MappingStats {
                        packets: t.packets + s.packets,
                        bytes: t.bytes + s.bytes,
                    }
                });
            if let Some(o) = out.get_mut(slot as usize) {
                *o = total;
            }
        }
        Ok(out)
    }
}

fn read_error(map: &'static str, io_error: io::Error) -> TableError {
    TableError::Read(ReadError::of(map)(MapError::SyscallError(
        aya::sys::SyscallError {
            call: "bpf_map_lookup_batch",
            io_error,
        },
    )))
}

/// Reads every entry of the map `fd` (keys of `K`, values of `value_size` bytes each) with
/// BPF_MAP_LOOKUP_BATCH; the values come back as raw bytes, `value_size` apart. `token`
/// is the size of the kernel's position marker (4 for hash maps, the key's size for arrays).
pub(super) fn lookup_all<K: Copy + Default>(
    fd: u32,
    value_size: usize,
    token: usize,
) -> io::Result<(Vec<K>, Vec<u8>)> {
    let mut keys = Vec::new();
    let mut values = Vec::new();
    let mut chunk_keys = vec![K::default(); CHUNK];
    let mut chunk_values = vec![0u8; CHUNK * value_size];
    // Position markers, aligned for the kernel's u32 or key-sized copies.
    let mut marks = [[0u64; 2]; 2];
    let mut first = true;
    loop {
        let (in_mark, out_mark) = marks.split_at_mut(1);
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { in_mark[0].as_ptr() as u64 },
            out_batch: out_mark[0].as_mut_ptr() as u64,
            keys: chunk_keys.as_mut_ptr() as u64,
            values: chunk_values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: fd,
            ..BatchAttr::default()
        };
        debug_assert!(token <= std::mem::size_of_val(&marks[0]));
        // SAFETY: `attr` is a valid `bpf_attr` prefix of the size passed; the key, value
        // and marker buffers hold `count` entries (and a marker of `token` bytes) and
        // outlive the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>(),
            )
        };
        let err = (r != 0).then(io::Error::last_os_error);
        let got = attr.count as usize;
        keys.extend_from_slice(&chunk_keys[..got]);
        values.extend_from_slice(&chunk_values[..got * value_size]);
        match err {
            None => {}
            // The last entries came with this call, or there were none.
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok((keys, values)),
            Some(e) => return Err(e),
        }
        marks[0] = marks[1];
        first = false;
    }
}
