//! `netpage libvirt-hook`: libvirt's QEMU hook (`/etc/libvirt/hooks/qemu` or a script in
//! `/etc/libvirt/hooks/qemu.d/`). libvirt runs it as `qemu DOMAIN OPERATION SUB-OPERATION
//! EXTRA` with the domain XML on stdin.
//!
//! At `migrate begin`, which libvirt runs on the destination host only, before the
//! incoming QEMU starts, it reserves the VM's real address on this host (R2V[RA] = VA),
//! as `netpage migrate` does first. With `--neigh`, at `started begin` (QEMU runs, its
//! tap exists, the migration has not switched over yet) it also sets this host's
//! neighbour entry for the VA on the VM's tap (`ip neigh replace VA lladdr MAC nud
//! permanent dev TAP`), as `netpage migrate --dst-neigh` does, so that packets switched
//! here while the guest is paused wait in the tap's queue rather than for ARP. Every
//! other call returns at once, doing nothing.
//!
//! Exit code policy: libvirt aborts `migrate`, `prepare` and `start` when the hook exits
//! non-zero, so the hook exits 0 whatever happens, reporting a failure on stderr and in
//! its log; the follower's switch installs the reverse entry itself if the reservation
//! is missing. With `--strict` a failed reservation exits non-zero, and so refuses the
//! migration, deliberately. The work is bounded by a timeout (then exit 0, or 1 with
//! `--strict`): a hook never holds libvirt for long. The hook prints nothing on stdout:
//! libvirt takes the stdout of `migrate` as a replacement domain XML.

use std::{
    io::Write,
    net::IpAddr,
    path::PathBuf,
    sync::mpsc,
    time::{Duration, Instant},
};

use serde::Serialize;

use super::{
    domain::{self, Nic},
    tables::{TableSpec, Tables},
};

/// What the hook does for an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookAction {
    /// Reserve the VM's real address on this host: an incoming migration begins.
    Reserve,
    /// Set the neighbour entry for the VA on the VM's tap (with `--neigh`).
    Neighbour,
    /// Nothing.
    Nothing,
}

/// The action for libvirt's `OPERATION SUB-OPERATION`, `neighbour` if `--neigh` was
/// given. `prepare` and `start` also run for a domain started here without a migration,
/// so only `migrate` reserves.
pub fn action(operation: &str, sub_operation: &str, neighbour: bool) -> HookAction {
    match (operation, sub_operation) {
        ("migrate", "begin") => HookAction::Reserve,
        ("started", "begin") if neighbour => HookAction::Neighbour,
        _ => HookAction::Nothing,
    }
}

/// How the hook runs.
#[derive(Clone, Debug)]
pub struct HookOptions {
    /// This host's name in the domains' metadata.
    pub host: String,
    pub tables: TableSpec,
    /// The longest the hook works before giving up (and exiting).
    pub timeout: Duration,
    /// Whether to set the neighbour entry for the VA at `started begin`.
    pub neighbour: bool,
}

/// What one call of the hook did, for its log.
#[derive(Clone, Debug, Serialize)]
pub struct HookOutcome {
    pub domain: String,
    pub operation: String,
    pub sub_operation: String,
    /// `nothing`, `unmanaged` (no netpage metadata), `reserved`, `already-there`,
    /// `neighbour-set`, `failed` or `timed-out`.
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub ms: f64,
}

impl HookOutcome {
    /// Whether the reservation it had to make failed (or timed out).
    pub fn failed(&self) -> bool {
        matches!(self.outcome, "failed" | "timed-out")
    }
}

/// Runs the hook for `domain operation sub_operation` with the domain XML `xml`.
pub fn run(
    domain_name: &str,
    operation: &str,
    sub_operation: &str,
    xml: &str,
    opts: &HookOptions,
) -> HookOutcome {
    let start = Instant::now();
    let mut out = HookOutcome {
        domain: domain_name.to_owned(),
        operation: operation.to_owned(),
        sub_operation: sub_operation.to_owned(),
        outcome: "nothing",
        vm: None,
        from: None,
        to: None,
        error: None,
        ms: 0.0,
    };
    match action(operation, sub_operation, opts.neighbour) {
        HookAction::Reserve => reserve(xml, opts, &mut out),
        HookAction::Neighbour => neighbour(xml, &mut out),
        HookAction::Nothing => {}
    }
    out.ms = start.elapsed().as_secs_f64() * 1e3;
    out
}

/// The VM the domain XML describes, noted in `out`; `None` (and `out` says why) for a
/// domain netpage does not manage or XML it cannot read.
fn managed_vm(xml: &str, out: &mut HookOutcome) -> Option<domain::DomainVm> {
    match domain::parse(xml) {
        Ok(Some(vm)) => {
            out.vm = Some(vm.va);
            Some(vm)
        }
        Ok(None) => {
            out.outcome = "unmanaged";
            None
        }
        Err(e) => {
            out.outcome = "failed";
            out.error = Some(e.to_string());
            None
        }
    }
}

fn reserve(xml: &str, opts: &HookOptions, out: &mut HookOutcome) {
    let Some(vm) = managed_vm(xml, out) else {
        return;
    };
    let Some(to) = vm.real_on(&opts.host) else {
        out.outcome = "failed";
        out.error = Some(format!(
            "domain {}: its netpage metadata gives no real address for host {:?} (hosts: {})",
            vm.name,
            opts.host,
            vm.reals
                .iter()
                .map(|(h, _)| h.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        return;
    };
    out.to = Some(to);
    // In a thread, so that a node's lock or etcd cannot hold libvirt past the timeout:
    // the process exits then, abandoning it.
    let (tx, rx) = mpsc::channel();
    let spec = opts.tables.clone();
    let va = vm.va;
    std::thread::spawn(move || {
        let r = Tables::open(&spec).and_then(|mut t| t.reserve(va, to));
        let _ = tx.send(r.map_err(|e| format!("{:#}", anyhow::Error::from(e))));
    });
    match rx.recv_timeout(opts.timeout) {
        Ok(Ok(r)) => {
            out.from = Some(r.from);
            out.outcome = if r.already_there {
                "already-there"
            } else {
                "reserved"
            };
        }
        Ok(Err(e)) => {
            out.outcome = "failed";
            out.error = Some(e);
        }
        Err(_) => {
            out.outcome = "timed-out";
            out.error = Some(format!(
                "reserving {to} for {va} took longer than {:?}",
                opts.timeout
            ));
        }
    }
}

fn neighbour(xml: &str, out: &mut HookOutcome) {
    let Some(vm) = managed_vm(xml, out) else {
        return;
    };
    let set = match vm.nics.as_slice() {
        [
            Nic {
                mac: Some(mac),
                dev: Some(dev),
            },
        ] => set_neighbour(vm.va, mac, dev),
        nics => Err(format!(
            "domain {}: {} network interfaces, not one with a MAC and a target device",
            vm.name,
            nics.len()
        )),
    };
    match set {
        Ok(()) => out.outcome = "neighbour-set",
        Err(e) => {
            out.outcome = "failed";
            out.error = Some(e);
        }
    }
}

/// `ip neigh replace VA lladdr MAC nud permanent dev DEV`.
fn set_neighbour(va: IpAddr, mac: &str, dev: &str) -> Result<(), String> {
    let out = std::process::Command::new("ip")
        .args(["neigh", "replace", &va.to_string(), "lladdr", mac])
        .args(["nud", "permanent", "dev", dev])
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip neigh replace {va} lladdr {mac} dev {dev}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Appends `out` as one JSON line to `log`.
pub fn log(log: &PathBuf, out: &HookOutcome) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut line = serde_json::to_string(out).map_err(std::io::Error::other)?;
    line.push('\n');
    f.write_all(line.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_migrate_begin_reserves() {
        assert_eq!(action("migrate", "begin", false), HookAction::Reserve);
        assert_eq!(action("started", "begin", true), HookAction::Neighbour);
        assert_eq!(action("started", "begin", false), HookAction::Nothing);
        for (op, sub) in [
            ("prepare", "begin"),
            ("start", "begin"),
            ("started", "begin"),
            ("stopped", "end"),
            ("release", "end"),
            ("reconnect", "begin"),
            ("restore", "begin"),
            ("attach", "begin"),
        ] {
            if (op, sub) != ("started", "begin") {
                assert_eq!(action(op, sub, true), HookAction::Nothing, "{op} {sub}");
            }
        }
    }

    fn opts(host: &str) -> HookOptions {
        HookOptions {
            host: host.into(),
            tables: TableSpec::Nodes(vec![crate::node::Node::new("/nonexistent/netpage")]),
            timeout: Duration::from_secs(2),
            neighbour: false,
        }
    }

    /// The XML libvirt 9.0 gave the destination's hook at `migrate begin`.
    const XML: &str = include_str!("testdata/migrate-begin.xml");

    #[test]
    fn other_operations_do_nothing_even_with_bad_xml() {
        let out = run("vm1", "release", "end", "not xml", &opts("A"));
        assert_eq!(out.outcome, "nothing");
        assert!(!out.failed());
    }

    #[test]
    fn an_unmanaged_domain_is_left_alone() {
        let xml = "<domain><name>x</name></domain>";
        assert_eq!(
            run("x", "migrate", "begin", xml, &opts("A")).outcome,
            "unmanaged"
        );
    }

    #[test]
    fn an_unknown_host_fails_with_the_hosts_named() {
        let out = run("vm1", "migrate", "begin", XML, &opts("C"));
        assert!(out.failed());
        let e = out.error.unwrap();
        assert!(e.contains("\"C\"") && e.contains("A, B"), "{e}");
    }

    #[test]
    fn a_missing_node_fails_and_names_it() {
        let out = run("vm1", "migrate", "begin", XML, &opts("A"));
        assert_eq!(out.outcome, "failed");
        assert_eq!(out.to, Some("198.18.10.100".parse().unwrap()));
        assert!(out.error.unwrap().contains("/nonexistent/netpage"));
    }
}
