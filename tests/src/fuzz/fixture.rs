//! The harness of fixtures the fuzzer prints: one frame in, at one side and hook, with
//! the fuzzer's table installed; the verdict must be a pass and the output exactly the
//! expected bytes (which the oracle must accept, so a fixture cannot expect a wrong
//! translation).

use netpage::loader::Side;

use super::{oracle, run::tc_context, table::Table};
use crate::datapath::{Datapath, Hook, gso_context};

fn bytes(hex: &str) -> Vec<u8> {
    let hex: String = hex.chars().filter(|c| !c.is_whitespace()).collect();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex bytes"))
        .collect()
}

/// Runs `input` (hex) on `side` at `hook` (under tc with a GSO context if `gso`) and
/// asserts a pass verdict and the `expected` output (hex).
pub fn check(side: Side, hook: Hook, gso: bool, input: &str, expected: &str) {
    let (input, expected) = (bytes(input), bytes(expected));
    let table = Table::standard();
    if let Err(e) = oracle::judge(&input, &oracle::expect(&table, side, &input), &expected) {
        panic!("the fixture's expected output is not one the oracle accepts: {e}");
    }
    let mut dp = Datapath::load(64);
    table.install(&mut dp);
    // Under tc the packet arrives on the loopback, as in the fuzzer's runs.
    let ctx = match (hook, gso) {
        (Hook::Xdp, _) => None,
        (Hook::Tc, true) => Some(tc_context(gso_context(1000, 2))),
        (Hook::Tc, false) => Some(tc_context(vec![0; 192])),
    };
    let (verdict, out) = dp.run_at(hook, side, &input, ctx.as_deref());
    assert_eq!(verdict, hook.pass(), "verdict");
    if out != expected {
        let diff: Vec<String> = out
            .iter()
            .zip(&expected)
            .enumerate()
            .filter(|(_, (o, e))| o != e)
            .map(|(i, (o, e))| format!("byte {i}: {o:02x}, expected {e:02x}"))
            .collect();
        panic!(
            "output differs ({} bytes out, {} expected): {}",
            out.len(),
            expected.len(),
            diff.join("; ")
        );
    }
}
