//! The fuzzer behind `cargo xtask fuzz`: runs generated and mutated frames through the
//! loaded programs (BPF_PROG_TEST_RUN) and judges each by an independent oracle; prints
//! packets/s, the kinds covered and every counterexample as a fixture to paste into a test.
//! Needs root: it loads the programs. Exits 1 if any counterexample was found.
//!
//! Usage: `netpage-fuzz [--packets N] [--seed S] [--hook xdp|tc|both] [--json] [--only I]
//! [--strict] [--mapped-virtual-sources]`. Known defects (each a fixture) are counted apart
//! and fail the run only with `--strict`.

use std::process::ExitCode;

use netpage_tests::{
    datapath::{Datapath, Hook},
    fuzz::{report, run, table::Table},
};

fn usage(why: &str) -> ExitCode {
    eprintln!("netpage-fuzz: {why}");
    eprintln!(
        "usage: netpage-fuzz [--packets N] [--seed S] [--hook xdp|tc|both] [--json] [--only I] \
         [--strict] [--mapped-virtual-sources]"
    );
    ExitCode::from(2)
}

fn number(v: Option<String>, what: &str) -> Result<u64, String> {
    v.ok_or_else(|| format!("{what} needs a number"))?
        .replace('_', "")
        .parse()
        .map_err(|e| format!("{what}: {e}"))
}

fn main() -> ExitCode {
    let mut cfg = run::Config::new(100_000, 1);
    let mut json = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let r = match arg.as_str() {
            "--packets" => number(args.next(), "--packets").map(|n| cfg.packets = n),
            "--seed" => number(args.next(), "--seed").map(|n| cfg.seed = n),
            "--only" => number(args.next(), "--only").map(|n| cfg.only = Some(n)),
            "--json" => {
                json = true;
                Ok(())
            }
            "--strict" => {
                cfg.strict = true;
                Ok(())
            }
            "--mapped-virtual-sources" => {
                cfg.policy.mapped_virtual_sources = true;
                Ok(())
            }
            "--hook" => match args.next().as_deref() {
                Some("xdp") => Ok(vec![Hook::Xdp]),
                Some("tc") => Ok(vec![Hook::Tc]),
                Some("both") => Ok(Hook::ALL.to_vec()),
                _ => Err("--hook takes xdp, tc or both".into()),
            }
            .map(|hooks| cfg.hooks = hooks),
            other => Err(format!("unknown argument {other}")),
        };
        if let Err(e) = r {
            return usage(&e);
        }
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return usage("must run as root: it loads the eBPF programs");
    }
    let table = Table::standard();
    let mut dp = Datapath::load(1024);
    table.install(&mut dp);
    let summary = run::run(&dp, &table, &cfg, |s| {
        eprintln!(
            "fuzz: {} packets, {:.0}/s, {} failed runs",
            s.packets,
            s.packets_per_second(),
            s.failures
        );
    });
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report::json(&summary, cfg.seed, &cfg.hooks))
                .expect("JSON of a summary")
        );
    } else {
        for c in &summary.counterexamples {
            println!("{}", report::fixture(c));
        }
        print!("{}", report::text(&summary, cfg.seed, &cfg.hooks));
    }
    if summary.clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
