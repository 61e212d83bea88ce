//! Named network namespaces made with `ip netns`, and running code or commands inside them.
//!
//! A namespace is deleted when its [`NetNs`] is dropped, during a panic too. Code runs inside
//! one on a fresh thread that has entered it with `setns(2)`: only that thread changes
//! namespace, so tests in one process can each use their own namespaces in parallel, and a
//! socket made there stays in the namespace wherever it is used afterwards.

use std::{
    ffi::OsStr,
    fs::File,
    io::Write,
    os::fd::AsRawFd,
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

/// A network namespace named in /run/netns, deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates the namespace `name` with its loopback up.
    pub fn create(name: &str) -> Self {
        check(Command::new("ip").args(["netns", "add", name]));
        let ns = Self {
            name: name.to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// The name under /run/netns.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `f` on a fresh thread inside the namespace and returns what it returns.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        let path = format!("/run/netns/{}", self.name);
        thread::scope(|s| {
            s.spawn(|| {
                enter(&path);
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    /// Creates a veth pair: `name` in this namespace, `peer` in `peer_ns` (or in this one).
    pub fn veth(&self, name: &str, peer: &str, peer_ns: Option<&NetNs>) {
        let mut args = vec!["link", "add", name, "type", "veth", "peer", "name", peer];
        if let Some(ns) = peer_ns {
            args.extend(["netns", ns.name()]);
        }
        self.ip(&args);
    }

    /// Runs `ip -n NAME ARGS`, panicking with its output if it fails.
    pub fn ip(&self, args: &[&str]) -> String {
        check(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// Bytes and packets interface `ifname` has received so far (`ip -s -j link show`).
    pub fn rx_counts(&self, ifname: &str) -> (u64, u64) {
        let json = self.ip(&["-s", "-j", "link", "show", ifname]);
        let v: serde_json::Value = serde_json::from_str(&json).expect("ip -j output");
        let rx = &v[0]["stats64"]["rx"];
        let count = |what: &str| {
            rx[what]
                .as_u64()
                .unwrap_or_else(|| panic!("no rx {what} of {ifname}: {json}"))
        };
        (count("bytes"), count("packets"))
    }

    /// Waits until every interface but loopback is operationally up with its queue
    /// running (the kernel finishes raising a veth asynchronously, and drops what is sent
    /// before that).
    pub fn wait_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let links = self.ip(&["-o", "link", "show"]);
            let down: Vec<&str> = links
                .lines()
                .filter(|l| !l.contains("LOOPBACK"))
                .filter(|l| !l.contains("state UP") || l.contains("qdisc noop"))
                .collect();
            if down.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "links of {} not up:\n{}",
                self.name,
                down.join("\n")
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Runs many `ip` commands (one per line, without the leading `ip`) in one batch.
    pub fn ip_batch(&self, lines: &[String]) {
        let mut child = Command::new("ip")
            .args(["-n", &self.name, "-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ip -batch");
        let script = lines.join("\n") + "\n";
        let mut stdin = child.stdin.take().expect("ip stdin");
        stdin.write_all(script.as_bytes()).expect("feed ip -batch");
        drop(stdin);
        let out = child.wait_with_output().expect("wait for ip -batch");
        assert_ok(&out, &format!("ip -n {} -batch:\n{script}", self.name));
    }

    /// `ip netns exec NAME PROGRAM ARGS`, not yet run.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs `PROGRAM ARGS` inside the namespace and returns its output, failed or not.
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        output(self.command(program).args(args))
    }

    /// Sets sysctls (`net.ipv4.ip_forward`-style keys) inside the namespace.
    pub fn sysctls(&self, settings: &[(String, &str)]) {
        self.run(|| {
            for (key, value) in settings {
                let path = format!("/proc/sys/{}", key.replace('.', "/"));
                std::fs::write(&path, value)
                    .unwrap_or_else(|e| panic!("sysctl {key}={value} in {}: {e}", self.name));
            }
        });
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let out = output(Command::new("ip").args(["netns", "del", &self.name]));
        if !out.status.success() && !thread::panicking() {
            eprintln!(
                "ip netns del {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// Moves the calling thread into the network namespace bound at `path`.
fn enter(path: &str) {
    let file = File::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    // SAFETY: a valid namespace file descriptor; setns only changes this thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        panic!("setns {path}: {}", std::io::Error::last_os_error());
    }
}

/// Runs a command and returns its output, panicking only if it cannot be started.
pub fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs a command, panicking with its output unless it succeeds; returns its stdout.
pub fn check(cmd: &mut Command) -> String {
    let out = output(cmd);
    assert_ok(&out, &format!("{cmd:?}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Panics with stdout and stderr unless `out` is a success.
pub fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
