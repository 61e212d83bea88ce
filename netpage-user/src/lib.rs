//! netpage: the network page table at the edges of a data center network.
pub mod agent;
pub mod attach;
pub mod check;
pub mod counters;
pub mod directory;
pub mod failure;
pub mod loader;
pub mod migrate;
pub mod node;
pub mod ops;
pub mod outfile;
pub mod owner;
pub mod pause;
pub mod qmp;
pub mod table;
pub mod tablefile;
pub mod timeline;
