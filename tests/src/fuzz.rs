//! A differential fuzzer of the datapath: frames of every header kind the programs know,
//! generated and mutated from a seed, run through the loaded programs with
//! BPF_PROG_TEST_RUN at both hooks and judged by an oracle that shares no code with
//! netpage (`cargo xtask fuzz`).
pub mod fixture;
pub mod frames;
pub mod mutate;
pub mod oracle;
pub mod report;
pub mod rng;
pub mod run;
pub mod table;
