//! Helpers for netpage's integration tests: packet builders, independent checksum
//! verification, and the in-kernel fixture harness.
pub mod build;
pub mod datapath;
pub mod verify;
