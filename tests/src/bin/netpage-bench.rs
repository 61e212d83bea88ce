//! The benchmark behind `cargo xtask bench`: measures netpage's per-packet cost and switch
//! latency, writes `report.json` and `report.md`, and prints the table (progress goes to
//! stderr). Needs root: it loads XDP programs.
//!
//! Usage: `netpage-bench [--smoke] [--out DIR]` (default DIR: `target/bench`).

use std::{ffi::CStr, path::PathBuf, process::ExitCode};

use netpage_tests::bench::{Config, note, per_packet, report, switch, targets};

fn main() -> ExitCode {
    let mut smoke = false;
    let mut out = PathBuf::from("target/bench");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--smoke" => smoke = true,
            "--out" => match args.next() {
                Some(dir) => out = dir.into(),
                None => return usage("--out needs a directory"),
            },
            other => return usage(&format!("unknown argument {other}")),
        }
    }
    let cfg = if smoke {
        Config::smoke()
    } else {
        Config::full()
    };

    let mut rows = per_packet::run(&cfg);
    rows.extend(switch::run(&cfg));
    // Part 3, the wall time of the `netpage switch` command, is added here.

    let notes = targets::notes(&rows);
    let preamble = preamble(&cfg, smoke);
    if let Err(e) = report::write(&out, &rows, &preamble, &notes) {
        eprintln!(
            "netpage-bench: writing the report to {}: {e}",
            out.display()
        );
        return ExitCode::FAILURE;
    }
    note(format_args!(
        "wrote {0}/report.json and {0}/report.md",
        out.display()
    ));
    print!("{}", report::markdown(&rows, &preamble, &notes));
    ExitCode::SUCCESS
}

fn usage(problem: &str) -> ExitCode {
    eprintln!("netpage-bench: {problem}\nusage: netpage-bench [--smoke] [--out DIR]");
    ExitCode::from(2)
}

/// Where and how the numbers were taken.
fn preamble(cfg: &Config, smoke: bool) -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mode = if smoke {
        "**smoke run: small tables and few repeats; the numbers mean nothing.**\n\n"
    } else {
        ""
    };
    format!(
        "{mode}Kernel {}, {cpus} CPUs.\n\n\
         - `per_packet`: CPU time of one BPF_PROG_TEST_RUN call of {} runs, per run; median \
         of {} repeats, variants alternated within each repeat. Packets go to the virtual \
         side; a table of N entries holds N mappings per family (V2R, R2V, counters), the \
         measured one among them. Baselines: the bare `XDP_PASS` program, and the same \
         packet at the smallest table (`per_packet_growth`).\n\
         - `v2r_update`, `switch_whole`: wall time of the map updates of {} switches per row, \
         idle and with a thread running the program on packets to the switched VM.",
        kernel_release(),
        cfg.runs,
        cfg.repeats,
        cfg.switches
    )
}

fn kernel_release() -> String {
    // SAFETY: an all-zero utsname is valid, and uname fills it with C strings.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid utsname to write to.
    if unsafe { libc::uname(&mut u) } != 0 {
        return "unknown".to_owned();
    }
    // SAFETY: `release` is NUL-terminated after a successful uname.
    unsafe { CStr::from_ptr(u.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}
