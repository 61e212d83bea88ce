//! libvirt integration: a hook that reserves a VM's new real address when libvirt starts
//! an incoming migration, and a follower of libvirt's domain events that switches the VM
//! at the moment chosen (the source's pause or the destination's resume).
//!
//! The VM's addresses come from its domain XML (see [`domain`]); the page tables are this
//! machine's nodes or the directory on etcd ([`tables`]).

pub mod domain;
pub mod event;
pub mod follow;
pub mod hook;
pub mod tables;

/// This machine's host name, as libvirt's domain metadata names hosts by default.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}
