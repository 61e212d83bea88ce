//! Types and pure logic shared by the netpage XDP program and user space.
//!
//! Everything here is `no_std`, allocation-free and free of packet access, so that the
//! kernel side can call it and host unit tests can exercise it directly.
#![no_std]

pub mod counters;
pub mod csum;
pub mod fastpath;
pub mod forward;
pub mod ipv4_options;
pub mod ipv6_options;
pub mod maps;
pub mod proto;
pub mod segment;
pub mod source;
pub mod trace;
