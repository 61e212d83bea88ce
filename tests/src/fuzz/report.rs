//! Reports of a fuzzing run: a text summary (rates, outcomes, kinds covered), the same as
//! JSON, and every counterexample as a fixture ready to paste into a test.

use std::fmt::Write as _;

use netpage::loader::Side;

use super::run::{Counterexample, Summary};
use crate::datapath::Hook;

/// The summary as text.
pub fn text(s: &Summary, seed: u64, hooks: &[Hook]) -> String {
    let mut o = String::new();
    let hooks: Vec<&str> = hooks.iter().map(|h| h.name()).collect();
    let _ = writeln!(
        o,
        "fuzz: seed {seed}, hooks {}: {} packets ({} mutated), {} runs in {:.1} s: {:.0} packets/s, {:.0} runs/s",
        hooks.join("+"),
        s.packets,
        s.mutated,
        s.runs,
        s.elapsed.as_secs_f64(),
        s.packets_per_second(),
        s.runs_per_second()
    );
    let _ = writeln!(
        o,
        "  outputs: {} translated ({} in the quote only, {} forwarded), {} untouched; {} refused by test_run (EINVAL)",
        s.translated, s.quote_only, s.forwarded, s.untouched, s.refused
    );
    let _ = writeln!(
        o,
        "  documented expectations met: {} translations, {} passes",
        s.expected_translate, s.expected_pass
    );
    let _ = writeln!(o, "  outcome counters:");
    for (name, n) in &s.counters {
        let _ = writeln!(o, "    {name:<34} {n}");
    }
    let _ = writeln!(o, "  kinds covered ({}):", s.kinds.len());
    for (k, n) in &s.kinds {
        let _ = writeln!(o, "    {k:<54} {n}");
    }
    if let Some(p) = &s.counter_problem {
        let _ = writeln!(o, "  COUNTERS DISAGREE: {p}");
    }
    for (name, n) in &s.known {
        let fixture = super::run::KNOWN
            .iter()
            .find(|k| k.name == *name)
            .map_or("", |k| k.fixture);
        let _ = writeln!(
            o,
            "  KNOWN DEFECT met {n} times: {name} (fixture fuzz_found::{fixture})"
        );
    }
    for (p, n) in &s.problems {
        let _ = writeln!(o, "  failed {n} times: {p}");
    }
    if s.failures == 0 {
        let _ = writeln!(o, "  no counterexample");
    } else {
        let _ = writeln!(
            o,
            "  {} failed runs; {} counterexamples follow as fixtures",
            s.failures,
            s.counterexamples.len()
        );
    }
    o
}

/// The summary as JSON.
pub fn json(s: &Summary, seed: u64, hooks: &[Hook]) -> serde_json::Value {
    serde_json::json!({
        "seed": seed,
        "hooks": hooks.iter().map(|h| h.name()).collect::<Vec<_>>(),
        "packets": s.packets,
        "mutated": s.mutated,
        "runs": s.runs,
        "refused": s.refused,
        "seconds": s.elapsed.as_secs_f64(),
        "packets_per_second": s.packets_per_second(),
        "runs_per_second": s.runs_per_second(),
        "translated": s.translated,
        "quote_only": s.quote_only,
        "forwarded": s.forwarded,
        "untouched": s.untouched,
        "expected_translate": s.expected_translate,
        "expected_pass": s.expected_pass,
        "counters": s.counters,
        "kinds": s.kinds,
        "failures": s.failures,
        "problems": s.problems,
        "known_defects": s.known,
        "counter_problem": s.counter_problem,
        "counterexamples": s.counterexamples.iter().map(|c| serde_json::json!({
            "index": c.index,
            "hook": c.hook.name(),
            "side": format!("{:?}", c.side),
            "gso": c.gso,
            "problem": c.problem,
            "kinds": c.kinds,
            "input": hex(&c.input),
            "output": hex(&c.output),
            "expected": hex(&c.expected),
        })).collect::<Vec<_>>(),
    })
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A hex string as Rust source: `concat!` of 32-byte lines.
fn hex_lines(b: &[u8], indent: &str) -> String {
    let mut o = String::from("concat!(\n");
    for c in b.chunks(32) {
        let _ = writeln!(o, "{indent}    \"{}\",", hex(c));
    }
    let _ = write!(o, "{indent})");
    o
}

/// A counterexample as a test to paste into `tests/tests/fuzz_found.rs`.
pub fn fixture(c: &Counterexample) -> String {
    let side = match c.side {
        Side::Virtual => "Side::Virtual",
        Side::Physical => "Side::Physical",
    };
    let hook = match c.hook {
        Hook::Xdp => "Hook::Xdp",
        Hook::Tc => "Hook::Tc",
    };
    let mut o = String::new();
    let _ = writeln!(
        o,
        "/// `cargo xtask fuzz --seed {} --only {}` ({}{}): {}",
        c.seed,
        c.index,
        c.hook.name(),
        if c.gso { ", GSO context" } else { "" },
        c.problem
    );
    let _ = writeln!(o, "/// Kinds: {}.", c.kinds.join(", "));
    let _ = writeln!(o, "/// Output was {}", hex(&c.output));
    let _ = writeln!(o, "#[test]");
    let _ = writeln!(
        o,
        "fn fuzz_seed_{}_packet_{}_{}() {{",
        c.seed,
        c.index,
        c.hook.name()
    );
    let _ = writeln!(o, "    fixture::check(");
    let _ = writeln!(o, "        {side},");
    let _ = writeln!(o, "        {hook},");
    let _ = writeln!(o, "        {},", c.gso);
    let _ = writeln!(o, "        {},", hex_lines(&c.input, "        "));
    let _ = writeln!(o, "        {},", hex_lines(&c.expected, "        "));
    let _ = writeln!(o, "    );");
    let _ = writeln!(o, "}}");
    o
}
