//! `netpage libvirt-follow`: follows this host's libvirt domain events (`virsh event
//! --loop --all --timestamp`) and switches a migrating VM at the moment chosen, since
//! libvirt runs no hook at the switchover:
//!
//! - `--switch-at stop`: on the source, when the guest pauses for the last copy
//!   (`Suspended Migrated`), to the real address reserved for the VM (the destination's
//!   hook reserved it at `migrate begin`). If the migration then fails, libvirt resumes
//!   the guest on the source (`Resumed Migrated` there): the follower switches it back.
//! - `--switch-at resume`: on the destination, when the guest runs there (`Resumed
//!   Migrated`), to this host's real address. With `stop` the destination does the same,
//!   which changes nothing when the source switched at the pause and makes the guest
//!   reachable when it could not (no reservation, say).
//!
//! The decisions are [`Follower::on_event`], a pure function of the events; [`run`]
//! carries them out. Run one follower per host, with the same `--switch-at` everywhere.

use std::{
    collections::{HashMap, HashSet},
    io::{BufRead, BufReader},
    net::IpAddr,
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde::Serialize;

use super::{
    domain::{self, DomainVm},
    event::{self, Event, EventKind},
    tables::{TableSpec, Tables, TablesError},
};
use crate::migrate::SwitchAt;

/// Where a switch goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The one real address of the VM's (other than its current one) reserved for it:
    /// the source does not know the destination's name, the reservation says it.
    Reserved,
    /// This host's real address.
    Here,
}

/// What the follower does on an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Read the domain's metadata now, ahead of the switch (a migration is under way).
    Learn(String),
    Switch {
        domain: String,
        target: Target,
    },
    /// The migration failed after this host switched at the pause: the guest runs here
    /// again, and so must its mapping.
    SwitchBack(String),
    /// The domain left this host or ended: forget what was learnt.
    Forget(String),
}

/// The follower's decisions, from the events alone.
#[derive(Debug)]
pub struct Follower {
    at: SwitchAt,
    /// The domains this host switched away at their pause and has not seen stop since.
    switched_away: HashSet<String>,
}

impl Follower {
    pub fn new(at: SwitchAt) -> Self {
        Self {
            at,
            switched_away: HashSet::new(),
        }
    }

    /// The steps to take on `e`, in order.
    pub fn on_event(&mut self, e: &Event) -> Vec<Step> {
        let d = e.domain.clone();
        match &e.kind {
            EventKind::MigrationIteration(_) => vec![Step::Learn(d)],
            EventKind::Lifecycle { event, detail } => match (event.as_str(), detail.as_str()) {
                ("Started", "Migrated") => vec![Step::Learn(d)],
                ("Suspended", "Migrated") if self.at == SwitchAt::Stop => {
                    self.switched_away.insert(d.clone());
                    vec![
                        Step::Learn(d.clone()),
                        Step::Switch {
                            domain: d,
                            target: Target::Reserved,
                        },
                    ]
                }
                // The guest runs here again after this host switched it away at the
                // pause: whatever the detail, the migration failed.
                ("Resumed", _) if self.switched_away.remove(&d) => {
                    vec![Step::SwitchBack(d)]
                }
                // With `stop` too: the source switched at the pause already (and this
                // changes nothing), unless it could not, and then this is the switch
                // that makes the guest reachable.
                ("Resumed", "Migrated") => {
                    vec![
                        Step::Learn(d.clone()),
                        Step::Switch {
                            domain: d,
                            target: Target::Here,
                        },
                    ]
                }
                ("Stopped", _) | ("Undefined", _) => {
                    self.switched_away.remove(&d);
                    vec![Step::Forget(d)]
                }
                _ => Vec::new(),
            },
            EventKind::Other(_) => Vec::new(),
        }
    }
}

/// How the follower runs.
#[derive(Clone, Debug)]
pub struct FollowOptions {
    /// This host's name in the domains' metadata.
    pub host: String,
    /// libvirt's connection URI (`virsh -c`), or virsh's default.
    pub connect: Option<String>,
    pub at: SwitchAt,
    pub tables: TableSpec,
    /// How long the old real address keeps translating after a switch.
    pub drain: Duration,
    /// The virsh to run.
    pub virsh: PathBuf,
    /// One JSON object per line instead of text.
    pub json: bool,
    /// Stop after this many switches (and switches back); for tests.
    pub max_switches: Option<u64>,
}

/// Why the follower stopped.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error("opening the page tables")]
    Tables(#[from] TablesError),
    #[error("running {}", virsh.display())]
    Virsh {
        virsh: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One thing the follower did, as printed.
#[derive(Clone, Debug, Serialize)]
pub struct Action {
    pub domain: String,
    /// The event that caused it (`Suspended Migrated`, ...).
    pub event: String,
    /// virsh's timestamp of the event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_time: Option<String>,
    /// `switched`, `switched-back`, `already-there` (the destination's resume after the
    /// source's switch) or `failed`.
    pub action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<IpAddr>,
    /// From reading the event's line to the switch done, ms.
    pub ms: f64,
    /// When the switch was done, ms since the Unix epoch.
    pub switched_unix_ms: f64,
    /// The slowest node's V2R update (or the directory's transaction), µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Action {
    fn print(&self, json: bool) {
        if json {
            println!("{}", serde_json::to_string(self).unwrap_or_default());
        } else if let Some(e) = &self.error {
            println!("{} ({}): failed: {e}", self.domain, self.event);
        } else {
            println!(
                "{} ({}): {} {} {} -> {} in {:.1} ms",
                self.domain,
                self.event,
                self.action,
                self.vm.map(|v| v.to_string()).unwrap_or_default(),
                self.from.map(|v| v.to_string()).unwrap_or_default(),
                self.to.map(|v| v.to_string()).unwrap_or_default(),
                self.ms
            );
        }
    }
}

/// Follows the events until virsh cannot be started (it is restarted when it ends, as
/// when libvirtd restarts), or `max_switches` switches are done.
pub fn run(opts: &FollowOptions) -> Result<u64, FollowError> {
    let mut tables = Tables::open(&opts.tables)?;
    let mut follower = Follower::new(opts.at);
    let mut known: HashMap<String, DomainVm> = HashMap::new();
    let mut switches = 0u64;
    loop {
        let mut cmd = Command::new(&opts.virsh);
        if let Some(uri) = &opts.connect {
            cmd.args(["-c", uri]);
        }
        cmd.args(["event", "--loop", "--all", "--timestamp"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        // SAFETY: prctl is async-signal-safe and touches no memory of this process.
        unsafe {
            // virsh ends with the follower, however the follower ends.
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|source| FollowError::Virsh {
            virsh: opts.virsh.clone(),
            source,
        })?;
        let stdout = child.stdout.take().expect("piped above");
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let heard = Instant::now();
            let Some(e) = event::parse_line(&line) else {
                continue;
            };
            for step in follower.on_event(&e) {
                if let Some(action) = take(step, &e, heard, opts, &mut tables, &mut known) {
                    action.print(opts.json);
                    switches += 1;
                    if opts.max_switches.is_some_and(|m| switches >= m) {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Ok(switches);
                    }
                }
            }
        }
        let status = child.wait();
        eprintln!("netpage: virsh event ended ({status:?}); following again in 1 s");
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Takes one step; a switch's outcome is returned to print.
fn take(
    step: Step,
    e: &Event,
    heard: Instant,
    opts: &FollowOptions,
    tables: &mut Tables,
    known: &mut HashMap<String, DomainVm>,
) -> Option<Action> {
    let (domain, target, back) = match step {
        Step::Learn(d) => {
            if let std::collections::hash_map::Entry::Vacant(slot) = known.entry(d) {
                match learn(opts, slot.key()) {
                    Ok(Some(vm)) => {
                        slot.insert(vm);
                    }
                    Ok(None) => {}
                    Err(why) => eprintln!("netpage: domain {}: {why}", slot.key()),
                }
            }
            return None;
        }
        Step::Forget(d) => {
            known.remove(&d);
            return None;
        }
        Step::Switch { domain, target } => (domain, target, false),
        Step::SwitchBack(domain) => (domain, Target::Here, true),
    };
    let vm = known.get(&domain)?.clone();
    let mut action = Action {
        domain,
        event: match &e.kind {
            EventKind::Lifecycle { event, detail } => format!("{event} {detail}"),
            _ => String::new(),
        },
        event_time: e.timestamp.clone(),
        action: if back { "switched-back" } else { "switched" },
        vm: Some(vm.va),
        from: None,
        to: None,
        ms: 0.0,
        switched_unix_ms: 0.0,
        update_us: None,
        error: None,
    };
    let done = switch(&vm, target, opts, tables);
    action.ms = heard.elapsed().as_secs_f64() * 1e3;
    action.switched_unix_ms = crate::clock::unix_ms_f64();
    match done {
        Ok(s) => {
            if s.from == s.to {
                action.action = "already-there";
            }
            action.from = Some(s.from);
            action.to = Some(s.to);
            action.update_us = Some(s.update_us);
        }
        Err(why) => {
            action.action = "failed";
            action.error = Some(why);
        }
    }
    Some(action)
}

fn switch(
    vm: &DomainVm,
    target: Target,
    opts: &FollowOptions,
    tables: &mut Tables,
) -> Result<super::tables::SwitchDone, String> {
    let to = match target {
        Target::Here => vm.real_on(&opts.host).ok_or_else(|| {
            format!(
                "its netpage metadata gives no real address for host {:?}",
                opts.host
            )
        })?,
        Target::Reserved => {
            let candidates: Vec<IpAddr> = vm.reals.iter().map(|(_, ra)| *ra).collect();
            let state = tables
                .state(vm.va, &candidates)
                .map_err(|e| format!("{:#}", anyhow::Error::from(e)))?;
            match state.reserved.as_slice() {
                [one] => *one,
                [] => {
                    return Err(format!(
                        "no real address of {} is reserved for it besides {} (did the destination's `netpage libvirt-hook` run?)",
                        vm.va, state.at
                    ));
                }
                many => {
                    return Err(format!(
                        "several real addresses are reserved for {}: {many:?}",
                        vm.va
                    ));
                }
            }
        }
    };
    tables
        .switch(vm.va, to, opts.drain)
        .map_err(|e| format!("{:#}", anyhow::Error::from(e)))
}

/// The domain's netpage metadata, from `virsh dumpxml`.
fn learn(opts: &FollowOptions, domain: &str) -> Result<Option<DomainVm>, String> {
    let mut cmd = Command::new(&opts.virsh);
    if let Some(uri) = &opts.connect {
        cmd.args(["-c", uri]);
    }
    let out = cmd
        .args(["dumpxml", "--", domain])
        .output()
        .map_err(|e| format!("running {}: {e}", opts.virsh.display()))?;
    if !out.status.success() {
        return Err(format!(
            "virsh dumpxml failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    domain::parse(&String::from_utf8_lossy(&out.stdout)).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests;
