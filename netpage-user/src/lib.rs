//! netpage: the network page table at the edges of a data center network.
pub mod attach;
pub mod counters;
pub mod loader;
pub mod node;
pub mod ops;
pub mod table;
pub mod tablefile;
