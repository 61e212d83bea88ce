//! Helpers for netpage's integration tests: packet builders, independent checksum
//! verification, and the in-kernel fixture harness.
pub mod bench;
pub mod build;
pub mod bulk;
pub mod datapath;
pub mod demo;
pub mod directory;
pub mod etcd;
pub mod fuzz;
pub mod guest;
pub mod libvirtd;
pub mod netns;
pub mod openmetrics;
pub mod pins;
pub mod qemu;
pub mod verify;
pub mod vmworld;
pub mod wan;
pub mod world;
