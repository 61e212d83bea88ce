//! The fuzzing loop: generates (and often mutates) frames, runs each through the loaded
//! programs with BPF_PROG_TEST_RUN at the chosen hooks, and judges every result by the
//! oracle, the documented expectation, the verdict, and (for the whole run) the outcome
//! counters.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use aya::programs::ProgramError;
use netpage::loader::Side;
use netpage_common::counters::Counter;

use super::{
    frames::{self, Expect, Policy},
    mutate,
    oracle::{self, Judged},
    rng::Rng,
    table::Table,
};
use crate::datapath::{Datapath, Hook, gso_context};

/// What to run.
#[derive(Clone, Debug)]
pub struct Config {
    pub packets: u64,
    pub seed: u64,
    pub hooks: Vec<Hook>,
    pub policy: Policy,
    /// Counterexamples kept in full, at most three of a kind (the rest are counted).
    pub keep: usize,
    /// Only this packet index (to replay a counterexample).
    pub only: Option<u64>,
    /// Whether the known defects ([`KNOWN`]) fail the run too.
    pub strict: bool,
}

/// A defect the fuzzer found that is not fixed yet: its fixture, and how to recognise
/// its counterexamples.
pub struct Known {
    pub name: &'static str,
    /// The failing (ignored) test that reproduces it, in tests/tests/fuzz_found.rs.
    pub fixture: &'static str,
    matches: fn(&Table, Side, &[u8], &[u8], &str) -> bool,
}

/// The known defects: none now. An entry names its fixture and recognises only the exact
/// output the defect makes (the oracle allowing that one deviation), so that it cannot
/// hide another.
pub const KNOWN: [Known; 0] = [];

impl Config {
    pub fn new(packets: u64, seed: u64) -> Self {
        Self {
            packets,
            seed,
            hooks: Hook::ALL.to_vec(),
            policy: Policy {
                mapped_virtual_sources: false,
            },
            keep: 20,
            only: None,
            strict: false,
        }
    }
}

/// A result the judges rejected.
#[derive(Clone, Debug)]
pub struct Counterexample {
    pub seed: u64,
    pub index: u64,
    pub hook: Hook,
    pub side: Side,
    pub kinds: Vec<&'static str>,
    pub input: Vec<u8>,
    pub output: Vec<u8>,
    /// What the output should have been.
    pub expected: Vec<u8>,
    /// Whether the run was under tc with a GSO context.
    pub gso: bool,
    pub problem: String,
}

/// What a run did.
#[derive(Debug, Default)]
pub struct Summary {
    pub packets: u64,
    /// test_run calls made and accepted.
    pub runs: u64,
    /// Frames the kernel would not build a test packet of (EINVAL: under tc, a frame cut
    /// inside its Ethernet or IP header); not the datapath's doing.
    pub refused: u64,
    pub translated: u64,
    pub quote_only: u64,
    /// Outputs forwarded to a draining address's current one.
    pub forwarded: u64,
    pub untouched: u64,
    pub mutated: u64,
    /// Runs of generated frames the documentation says must translate, and must pass.
    pub expected_translate: u64,
    pub expected_pass: u64,
    /// Packets seen of each kind.
    pub kinds: BTreeMap<&'static str, u64>,
    /// Outcome counters moved during the run, by name.
    pub counters: BTreeMap<&'static str, u64>,
    pub failures: u64,
    /// Failed runs by the kind of problem (numbers left out).
    pub problems: BTreeMap<String, u64>,
    /// Runs that met a known defect (not counted as failures unless strict), by defect.
    pub known: BTreeMap<&'static str, u64>,
    pub counterexamples: Vec<Counterexample>,
    /// A disagreement between the outcome counters and the judged outputs.
    pub counter_problem: Option<String>,
    pub elapsed: Duration,
}

impl Summary {
    /// test_run calls per second.
    pub fn runs_per_second(&self) -> f64 {
        self.runs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Generated packets per second (each run at every chosen hook).
    pub fn packets_per_second(&self) -> f64 {
        self.packets as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn clean(&self) -> bool {
        self.failures == 0 && self.counter_problem.is_none()
    }
}

/// Runs the program of `side` at `hook` on `input`; `None` if the kernel refuses to build
/// a test packet of it.
fn test_run(
    dp: &Datapath,
    hook: Hook,
    side: Side,
    input: &[u8],
    ctx: Option<&[u8]>,
) -> Result<Option<(u32, Vec<u8>)>, String> {
    match dp.test_run_at(hook, side, input, ctx) {
        Ok(r) => Ok(Some(r)),
        Err(ProgramError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EINVAL) => {
            Ok(None)
        }
        Err(e) => Err(format!("test_run failed: {e:?}")),
    }
}

/// Runs `cfg` against `dp` (whose tables hold `table`); `progress` is called now and then.
pub fn run(
    dp: &Datapath,
    table: &Table,
    cfg: &Config,
    mut progress: impl FnMut(&Summary),
) -> Summary {
    let mut s = Summary::default();
    let before = dp.counters();
    let start = Instant::now();
    let mut last = start;
    // Under tc the packet arrives on the loopback (its device and ingress device), as at an
    // interface's ingress, where netpage forwards; sometimes as a GSO packet.
    let arrived = tc_context(vec![0; 192]);
    let gso = tc_context(gso_context(1000, 2));
    let range = match cfg.only {
        Some(i) => i..i + 1,
        None => 0..cfg.packets,
    };
    for index in range {
        let mut rng = Rng::for_packet(cfg.seed, index);
        let mut g = frames::generate(&mut rng, table, cfg.policy);
        if rng.chance(45) {
            mutate::mutate(&mut rng, &mut g, table, cfg.policy);
            s.mutated += 1;
        }
        // Under tc, sometimes as a GSO packet (the socket buffer's GSO fields set).
        let use_gso = rng.chance(10);
        s.packets += 1;
        for k in &g.kinds {
            *s.kinds.entry(k).or_default() += 1;
        }
        let expected = oracle::expect(table, g.side, &g.frame);
        for &hook in &cfg.hooks {
            let ctx = match (hook, use_gso) {
                (Hook::Xdp, _) => None,
                (Hook::Tc, true) => Some(&gso[..]),
                (Hook::Tc, false) => Some(&arrived[..]),
            };
            let result = test_run(dp, hook, g.side, &g.frame, ctx);
            let problem = match result {
                Ok(None) => {
                    s.refused += 1;
                    continue;
                }
                Err(e) => Some((e, Vec::new())),
                Ok(Some((verdict, out))) => {
                    s.runs += 1;
                    judge(&mut s, table, hook, &g, &expected, verdict, &out).map(|p| (p, out))
                }
            };
            if let Some((problem, output)) = problem {
                let known = KNOWN
                    .iter()
                    .find(|k| (k.matches)(table, g.side, &g.frame, &output, &problem));
                if let Some(k) = known {
                    *s.known.entry(k.name).or_default() += 1;
                    if !cfg.strict {
                        tally_known(&mut s, table, &g, &output);
                        continue;
                    }
                }
                s.failures += 1;
                let of_kind = s.problems.entry(problem_kind(&problem)).or_default();
                *of_kind += 1;
                // A few of each kind, so that one kind does not hide the others.
                if *of_kind <= 3 && s.counterexamples.len() < cfg.keep {
                    let want = match (&expected, g.expect) {
                        (Ok(t), Expect::Translate | Expect::Either) => t.bytes.clone(),
                        _ => g.frame.clone(),
                    };
                    s.counterexamples.push(Counterexample {
                        seed: cfg.seed,
                        index,
                        hook,
                        side: g.side,
                        kinds: g.kinds.clone(),
                        input: g.frame.clone(),
                        output,
                        expected: want,
                        gso: hook == Hook::Tc && use_gso,
                        problem,
                    });
                }
            }
        }
        if last.elapsed() > Duration::from_secs(5) {
            last = Instant::now();
            s.elapsed = start.elapsed();
            progress(&s);
        }
    }
    s.elapsed = start.elapsed();
    let delta = dp.counters().since(&before);
    check_counters(&mut s, &delta);
    s
}

/// A tc test run's `struct __sk_buff` `ctx` with the packet's ingress device set to the
/// loopback (ingress_ifindex at 36; the device, 0 here, is the loopback too).
pub fn tc_context(mut ctx: Vec<u8>) -> Vec<u8> {
    ctx[36..40].copy_from_slice(&crate::datapath::LOOPBACK.to_ne_bytes());
    ctx
}

/// Counts the output of a run that met a known defect, for the counter totals. (A defect
/// that translates the quote alone where the oracle would not needs its own count here.)
fn tally_known(s: &mut Summary, table: &Table, g: &frames::Generated, output: &[u8]) {
    if output == g.frame {
        s.untouched += 1;
        return;
    }
    s.translated += 1;
    let expected = oracle::expect(table, g.side, &g.frame);
    if expected.as_ref().is_ok_and(|t| t.quote_only) {
        s.quote_only += 1;
    }
    if expected.is_ok_and(|t| t.forwarded) {
        s.forwarded += 1;
    }
}

/// A problem with its numbers left out, to count problems of a kind.
fn problem_kind(p: &str) -> String {
    p.split(' ')
        .map(|w| {
            if w.starts_with(|c: char| c.is_ascii_digit()) {
                "#"
            } else {
                w
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Judges one run; the problem, if any.
fn judge(
    s: &mut Summary,
    table: &Table,
    hook: Hook,
    g: &frames::Generated,
    expected: &oracle::Expected,
    verdict: u32,
    out: &[u8],
) -> Option<String> {
    if verdict != hook.pass() {
        if documented_drop(table, g).is_some() {
            return None;
        }
        return Some(format!(
            "verdict {verdict:#x}, expected {:#x} (pass)",
            hook.pass()
        ));
    }
    let judged = match oracle::judge(&g.frame, expected, out) {
        Ok(j) => j,
        Err(e) => return Some(e),
    };
    match judged {
        Judged::Untouched => s.untouched += 1,
        Judged::Translated => {
            s.translated += 1;
            if expected.as_ref().is_ok_and(|t| t.quote_only) {
                s.quote_only += 1;
            }
            if expected.as_ref().is_ok_and(|t| t.forwarded) {
                s.forwarded += 1;
            }
        }
    }
    match (g.expect, judged) {
        (Expect::Translate, Judged::Translated) => s.expected_translate += 1,
        (Expect::Pass, Judged::Untouched) => s.expected_pass += 1,
        (Expect::Translate, Judged::Untouched) => {
            let why = match expected {
                Err(e) => format!(" (and the oracle says it must pass: {e})"),
                Ok(_) => String::new(),
            };
            return Some(format!(
                "passed untouched a frame the documentation says is translated{why}"
            ));
        }
        (Expect::Pass, Judged::Translated) => {
            return Some("translated a frame the documentation says passes untouched".into());
        }
        (Expect::Either, _) => {}
    }
    None
}

/// The drops netpage documents, which the judges accept instead of a pass: source
/// validation on the virtual side drops a packet whose outer source is a mapping's address
/// (virtual or real) that the ingress port does not own; the fuzzer's ports own nothing.
/// (The generator keeps such sources off the virtual side unless
/// `Policy::mapped_virtual_sources`, but mutations may swap them in.)
fn documented_drop(table: &Table, g: &frames::Generated) -> Option<&'static str> {
    let src = outer_source(&g.frame)?;
    let mapped = [Side::Virtual, Side::Physical]
        .iter()
        .any(|&side| table.lookup(side, src).is_some());
    (g.side == Side::Virtual && mapped).then_some("spoofed source on the virtual side")
}

/// The source address of the frame's outer IP header, behind up to four VLAN tags.
fn outer_source(f: &[u8]) -> Option<IpAddr> {
    let mut off = 12;
    for _ in 0..=4 {
        let et = u16::from_be_bytes(f.get(off..off + 2)?.try_into().ok()?);
        match et {
            0x8100 | 0x88A8 => off += 4,
            0x0800 => {
                let a: [u8; 4] = f.get(off + 14..off + 18)?.try_into().ok()?;
                return Some(IpAddr::from(a));
            }
            0x86DD => {
                let a: [u8; 16] = f.get(off + 10..off + 26)?.try_into().ok()?;
                return Some(IpAddr::from(a));
            }
            _ => return None,
        }
    }
    None
}

/// Every run counts one outcome; the translated outcomes are the changed outputs.
fn check_counters(s: &mut Summary, delta: &netpage::counters::Totals) {
    let outcomes: u64 = Counter::ALL
        .iter()
        .filter(|c| !c.is_fast_path())
        .map(|&c| delta.get(c))
        .sum();
    let translated: u64 = Counter::ALL
        .iter()
        .filter(|c| c.is_translated())
        .map(|&c| delta.get(c))
        .sum();
    for c in Counter::ALL {
        let n = delta.get(c);
        if n > 0 {
            s.counters.insert(c.name(), n);
        }
    }
    // Runs that failed the judges may have changed their output or not; only a clean run
    // is held to the exact totals.
    if s.failures > 0 {
        return;
    }
    if outcomes != s.runs {
        s.counter_problem = Some(format!("{outcomes} outcomes counted for {} runs", s.runs));
    } else if translated != s.translated {
        s.counter_problem = Some(format!(
            "{translated} translations counted, {} outputs translated",
            s.translated
        ));
    } else if delta.get(Counter::Forwarded) != s.forwarded {
        s.counter_problem = Some(format!(
            "{} forwards counted, {} outputs forwarded",
            delta.get(Counter::Forwarded),
            s.forwarded
        ));
    } else if delta.get(Counter::QuoteOnly) != s.quote_only {
        s.counter_problem = Some(format!(
            "{} quote-only translations counted, {} outputs translated in the quote alone",
            delta.get(Counter::QuoteOnly),
            s.quote_only
        ));
    }
}
