//! Running commands: each is printed before it runs, and a failure names the command.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::toolchain::BuildEnv;

/// Runs `cmd`, printing it first; fails if it cannot start or exits unsuccessfully.
pub fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {}", display(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {}", display(cmd)))?;
    if !status.success() {
        bail!("{} failed ({status})", display(cmd));
    }
    Ok(())
}

/// Whether `cmd` runs and succeeds, silently.
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The standard output of `cmd`, if it runs and succeeds.
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(std::process::Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs the workspace's cargo with the eBPF build environment.
pub fn cargo(env: &BuildEnv, args: &[&str]) -> Result<()> {
    let mut cmd = Command::new(env.cargo());
    cmd.args(args).envs(env.vars());
    run(&mut cmd)
}

/// Builds the release `netpage`, which the demo and the benchmark drive.
pub fn build_release_netpage(env: &BuildEnv) -> Result<()> {
    cargo(env, &["build", "--release", "-p", "netpage-user", "--bins"])
}

/// Runs the release binary `bin` of the test crate (the demo, the benchmark) with `args`.
pub fn run_release_tool(env: &BuildEnv, bin: &str, args: &[&str]) -> Result<()> {
    let mut all = vec![
        "run",
        "--release",
        "-p",
        "netpage-tests",
        "--bin",
        bin,
        "--",
    ];
    all.extend(args);
    cargo(env, &all)
}

/// Runs `cargo test` with `args`, passing its output through, and closes with one line
/// that totals every test binary's result (`tests: N passed, N failed, N skipped`).
pub fn cargo_test(env: &BuildEnv, args: &[&str]) -> Result<()> {
    let mut cmd = Command::new(env.cargo());
    cmd.arg("test").args(args).envs(env.vars());
    eprintln!("+ {}", display(&cmd));
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", display(&cmd)))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut totals = [0u64; 3];
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        if let Some(counts) = line.strip_prefix("test result: ") {
            for (total, word) in totals.iter_mut().zip(["passed", "failed", "ignored"]) {
                *total += count_before(counts, word);
            }
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    println!(
        "tests: {} passed, {} failed, {} skipped",
        totals[0], totals[1], totals[2]
    );
    if !status.success() {
        bail!("{} failed ({status})", display(&cmd));
    }
    Ok(())
}

/// The number written before `word` in a `test result:` line ("ok. 3 passed; 0 failed").
fn count_before(line: &str, word: &str) -> u64 {
    line.split([';', '.'])
        .filter_map(|part| part.trim().strip_suffix(word))
        .find_map(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Fails unless running as root, saying why root is needed.
pub fn require_root(why: &str) -> Result<()> {
    if output(Command::new("id").arg("-u")).is_none_or(|s| s.trim() != "0") {
        bail!("this task must run as root: {why} (try `sudo -E cargo xtask ...`)");
    }
    Ok(())
}

fn display(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}
