//! netpage: the network page table at the edges of a data center network.
pub mod counters;
pub mod loader;
pub mod table;
