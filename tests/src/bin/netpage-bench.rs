//! The benchmark behind `cargo xtask bench`: measures netpage's per-packet cost, switch
//! latency (map updates and the whole command), forwarding throughput through a gateway
//! namespace, the gap a VM's move leaves in a stream and a switch's propagation through the
//! directory on etcd to N agents, and the accuracy of the test world's WAN delay line; writes
//! `report.json` and
//! `report.md`, and prints the report (progress goes to stderr). Needs root: it loads XDP
//! programs and builds network namespaces.
//!
//! Usage: `netpage-bench [--smoke] [--out DIR] [--only PART,...] [--rounds N]` (default DIR:
//! `target/bench`; parts: per-packet, switch, command, forward, wire, gap, directory, wan by default, and
//! migration — live migrations of a QEMU guest, minutes under TCG, in the plain world and
//! over the WAN — only when named; migration-wan runs the WAN's migrations alone; `--rounds`
//! sets how many rounds of each live migration both run).

use std::{ffi::CStr, path::PathBuf, process::ExitCode, time::Instant};

use netpage_tests::bench::{
    Config, about, command, directory, forward, gap, leftovers, migration, note, per_packet,
    report, show_progress, switch, targets, wan, wire,
};

/// Every part, in the order it runs.
const PARTS: [&str; 10] = [
    "per-packet",
    "switch",
    "command",
    "forward",
    "wire",
    "gap",
    "directory",
    "wan",
    "migration",
    "migration-wan",
];
/// The parts a run without `--only` measures.
const DEFAULT_PARTS: usize = 8;

fn main() -> ExitCode {
    let mut smoke = false;
    let mut out = PathBuf::from("target/bench");
    let mut only: Vec<String> = PARTS[..DEFAULT_PARTS]
        .iter()
        .map(|p| (*p).to_owned())
        .collect();
    let mut rounds: Option<usize> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--smoke" => smoke = true,
            "--out" => match args.next() {
                Some(dir) => out = dir.into(),
                None => return usage("--out needs a directory"),
            },
            "--only" => match args.next() {
                Some(list) => only = list.split(',').map(str::to_owned).collect(),
                None => return usage("--only needs a list of parts"),
            },
            "--rounds" => match args.next().and_then(|n| n.parse().ok()).filter(|&n| n > 0) {
                Some(n) => rounds = Some(n),
                None => return usage("--rounds needs a number of rounds (1 or more)"),
            },
            other => return usage(&format!("unknown argument {other}")),
        }
    }
    if let Some(p) = only.iter().find(|p| !PARTS.contains(&p.as_str())) {
        return usage(&format!("unknown part {p}"));
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return usage("must run as root: it loads XDP programs and builds network namespaces");
    }
    let mut cfg = if smoke {
        Config::smoke()
    } else {
        Config::full()
    };
    if let Some(n) = rounds {
        cfg.migration_rounds = n;
        cfg.migration_wan_rounds = n;
    }

    leftovers::sweep();
    let start = Instant::now();
    let mut rows = Vec::new();
    let parts: Vec<&str> = PARTS
        .iter()
        .copied()
        .filter(|p| only.iter().any(|o| o == p))
        .collect();
    let progress = show_progress(parts.len() as u64);
    for part in parts {
        progress.stage(format!("part {part}"));
        let t = Instant::now();
        rows.extend(match part {
            "per-packet" => per_packet::run(&cfg),
            "switch" => switch::run(&cfg),
            "command" => command::run(&cfg),
            "forward" => forward::run(&cfg),
            "wire" => wire::run(&cfg),
            "gap" => gap::run(&cfg),
            "directory" => directory::run(&cfg),
            "wan" => wan::run(&cfg),
            "migration" => migration::run(&cfg),
            "migration-wan" => migration::run_wan(&cfg),
            _ => unreachable!("checked above"),
        });
        progress.inc(1);
        note(format_args!(
            "{part} took {:.0} s",
            t.elapsed().as_secs_f64()
        ));
    }

    progress.finish();
    let goals = targets::notes(&rows);
    let notes = targets::diagnose(&rows);
    let preamble = preamble(smoke, start.elapsed().as_secs_f64());
    let md = report::markdown(&rows, &preamble, &about::sections(&cfg), &goals, &notes);
    if let Err(e) = report::write(&out, &rows, &md) {
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
    print!("{md}");
    ExitCode::SUCCESS
}

fn usage(problem: &str) -> ExitCode {
    eprintln!(
        "netpage-bench: {problem}\nusage: netpage-bench [--smoke] [--out DIR] [--only {}] [--rounds N]",
        PARTS.join(",")
    );
    ExitCode::from(2)
}

/// Where and how the numbers were taken, and how to read the tables.
fn preamble(smoke: bool, secs: f64) -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mode = if smoke {
        "**Smoke run: small tables, short runs and few repeats; the numbers mean nothing.**\n\n"
    } else {
        ""
    };
    format!(
        "{mode}Kernel {}, {cpus} CPUs; the run took {secs:.0} s.\n\n\
         Every row is one measured value: `measure` says what, `variant` and `params` which \
         case, `value` and `unit` the number (a median unless `params` names another \
         statistic), `repeats` how many samples it summarises. `baseline` names the row it \
         is compared with, measured in the same run with the variants alternated, and \
         `ratio` is value / baseline. The same rows are in `report.json`.",
        kernel_release(),
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
