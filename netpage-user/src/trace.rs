//! `netpage trace`: turns the datapath's trace on for a selection of VMs and interfaces,
//! keeps it on while the command runs (a deadline it renews), prints the events, and
//! turns it off at the end.

pub mod event;

use std::{
    collections::HashMap,
    io::{self, Write},
    net::IpAddr,
    path::PathBuf,
    time::Duration,
};

use aya::maps::{
    Array, HashMap as BpfHashMap, Map, MapData, MapError, PerCpuArray, ring_buf::RingBuf,
};
use netpage_common::{
    maps::{TRACE, TRACE_CPU, TRACE_EVENTS, TRACE_MAPS, TRACE_SEL},
    trace::{DEADLINE_NS, SELECT_IFACES, SELECT_VMS, TraceConfig, TraceCpu, TraceKey, is_on},
};
use serde::Serialize;
use tokio::io::{Interest, unix::AsyncFd};

use crate::{clock::node_ns, node::Node};
use event::Event;

/// How often the command renews the deadline and looks at the lost count: well inside
/// [`DEADLINE_NS`], so that a busy machine does not let a running trace expire.
pub const RENEW: Duration = Duration::from_millis(500);

/// A failure to start or run a trace.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error(
        "the node under {} was made by an older build of netpage (it has no trace maps): attach its interfaces again (`netpage attach IFACE --side SIDE`), which keeps its table, to trace it",
        dir.display()
    )]
    OlderNode { dir: PathBuf },
    #[error(
        "interface {iface} is not attached on the node under {}: `netpage status` lists its interfaces",
        dir.display()
    )]
    UnknownIface { iface: String, dir: PathBuf },
    #[error(
        "a trace is already running on the node under {} (another `netpage trace`); it ends at most {} s after that command does",
        dir.display(),
        DEADLINE_NS / 1_000_000_000
    )]
    Busy { dir: PathBuf },
    #[error("trace map {map}")]
    Map {
        map: &'static str,
        #[source]
        source: Box<MapError>,
    },
    #[error("waiting for trace events")]
    Wait(#[source] io::Error),
}

fn map_err(map: &'static str) -> impl FnOnce(MapError) -> TraceError {
    move |e| TraceError::Map {
        map,
        source: Box::new(e),
    }
}

/// What a trace selects: nothing selected is every packet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// Packets with one of these virtual addresses, as source or destination, before or
    /// after the translation.
    pub vms: Vec<IpAddr>,
    /// Packets on the interfaces of these indexes.
    pub ifaces: Vec<u32>,
}

impl Selection {
    /// The configuration's selection flags.
    pub fn flags(&self) -> u32 {
        let vms = if self.vms.is_empty() { 0 } else { SELECT_VMS };
        let ifaces = if self.ifaces.is_empty() {
            0
        } else {
            SELECT_IFACES
        };
        vms | ifaces
    }

    /// The keys of the selection map.
    pub fn keys(&self) -> Vec<TraceKey> {
        let vms = self.vms.iter().map(|&va| TraceKey::vm(va));
        vms.chain(self.ifaces.iter().map(|&i| TraceKey::iface(i)))
            .collect()
    }
}

/// What a trace saw, from its start to its end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Events printed.
    pub events: u64,
    /// Events the datapath could not send: over the rate, or the ring buffer full.
    pub lost: u64,
}

/// The trace maps of a node, opened from their pins.
pub struct Tracer {
    dir: PathBuf,
    config: Array<MapData, TraceConfig>,
    sel: BpfHashMap<MapData, TraceKey, u32>,
    cpu: PerCpuArray<MapData, TraceCpu>,
    /// The ring buffer, until [`run`] takes it to poll it.
    events: Option<RingBuf<MapData>>,
    /// The configuration the command keeps renewing.
    running: TraceConfig,
}

impl Tracer {
    /// Opens the trace maps of `node` (which must exist: see `Node::open`).
    pub fn open(node: &Node) -> Result<Self, TraceError> {
        if TRACE_MAPS.iter().any(|m| !node.map_path(m).exists()) {
            return Err(TraceError::OlderNode {
                dir: node.dir().to_owned(),
            });
        }
        let open = |name: &'static str| {
            MapData::from_pin(node.map_path(name))
                .and_then(Map::from_map_data)
                .map_err(map_err(name))
        };
        Ok(Self {
            dir: node.dir().to_owned(),
            config: Array::try_from(open(TRACE)?).map_err(map_err(TRACE))?,
            sel: BpfHashMap::try_from(open(TRACE_SEL)?).map_err(map_err(TRACE_SEL))?,
            cpu: PerCpuArray::try_from(open(TRACE_CPU)?).map_err(map_err(TRACE_CPU))?,
            events: Some(RingBuf::try_from(open(TRACE_EVENTS)?).map_err(map_err(TRACE_EVENTS))?),
            running: TraceConfig::default(),
        })
    }

    /// The configuration as the datapath reads it.
    pub fn config(&self) -> Result<TraceConfig, TraceError> {
        self.config.get(&0, 0).map_err(map_err(TRACE))
    }

    /// Events sent and lost since the node's programs were loaded, over every CPU.
    pub fn totals(&self) -> Result<(u64, u64), TraceError> {
        let per_cpu = self.cpu.get(&0, 0).map_err(map_err(TRACE_CPU))?;
        Ok(per_cpu
            .iter()
            .fold((0, 0), |(s, l), c| (s + c.sent, l + c.lost)))
    }

    /// Turns the trace on for `sel`, at most `rate` events per second and CPU; refused
    /// while another trace runs.
    pub fn start(&mut self, sel: &Selection, rate: u32) -> Result<(), TraceError> {
        if is_on(self.config()?.deadline_ns, node_ns()) {
            return Err(TraceError::Busy {
                dir: self.dir.clone(),
            });
        }
        // What an earlier trace left unread (a trace that was killed) is not this one's.
        if let Some(ring) = self.events.as_mut() {
            while ring.next().is_some() {}
        }
        self.clear_selection()?;
        for key in sel.keys() {
            self.sel.insert(key, 1, 0).map_err(map_err(TRACE_SEL))?;
        }
        self.running = TraceConfig {
            deadline_ns: 0,
            flags: sel.flags(),
            rate,
        };
        self.renew()
    }

    /// Moves the deadline [`DEADLINE_NS`] past now.
    pub fn renew(&mut self) -> Result<(), TraceError> {
        self.running.deadline_ns = node_ns() + DEADLINE_NS;
        self.config.set(0, self.running, 0).map_err(map_err(TRACE))
    }

    /// Turns the trace off and forgets its selection.
    pub fn stop(&mut self) -> Result<(), TraceError> {
        self.config
            .set(0, TraceConfig::default(), 0)
            .map_err(map_err(TRACE))?;
        self.clear_selection()
    }

    fn clear_selection(&mut self) -> Result<(), TraceError> {
        let keys: Vec<TraceKey> = self.sel.keys().filter_map(Result::ok).collect();
        for k in keys {
            match self.sel.remove(&k) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(TRACE_SEL)(e)),
            }
        }
        Ok(())
    }
}

/// Prints the events of a started trace (`names`: interface index to name) until SIGINT
/// or SIGTERM, or until stdout is closed, renewing its deadline; then turns it off. The
/// lost count goes to stderr as it grows (under `json`, to stdout as `{"lost": N}` lines).
pub fn run(
    mut tracer: Tracer,
    names: &HashMap<u32, String>,
    json: bool,
) -> anyhow::Result<Summary> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(stream(&mut tracer, names, json));
    // Whatever happened: the deadline would end it within seconds, this ends it now.
    let stopped = tracer.stop();
    let summary = result?;
    stopped?;
    Ok(summary)
}

async fn stream(
    tracer: &mut Tracer,
    names: &HashMap<u32, String>,
    json: bool,
) -> anyhow::Result<Summary> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // Once the signals are ours: a SIGINT from now on ends the trace as it should.
    eprintln!(
        "netpage: tracing the node under {} until SIGINT or SIGTERM",
        tracer.dir.display()
    );
    let lost_before = tracer.totals()?.1;
    let mut summary = Summary::default();
    let mut tick = tokio::time::interval(RENEW);
    let ring = tracer
        .events
        .take()
        .ok_or_else(|| anyhow::anyhow!("the trace's ring buffer is read once"))?;
    // SAFETY: the ring buffer owns its descriptor, which stays open and the same until
    // the poller, which owns the ring buffer, is dropped.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| TraceError::Wait(e.into_parts().1))?;
    let mut out = io::stdout().lock();
    let print = |out: &mut io::StdoutLock, ev: &Event| -> anyhow::Result<bool> {
        let line = if json {
            serde_json::to_string(ev)?
        } else {
            ev.to_string()
        };
        Ok(writeln!(out, "{line}").is_ok())
    };
    let mut open = true;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = tick.tick() => {
                tracer.renew()?;
                let lost = tracer.totals()?.1 - lost_before;
                if lost > summary.lost {
                    summary.lost = lost;
                    let shown = if json {
                        writeln!(out, "{}", serde_json::json!({ "lost": lost })).and_then(|()| out.flush())
                    } else {
                        eprintln!("netpage: trace: {lost} event(s) lost so far (over the rate, or the ring buffer full)");
                        Ok(())
                    };
                    if shown.is_err() {
                        break;
                    }
                }
            }
            guard = ring.readable_mut() => {
                let mut guard = guard.map_err(TraceError::Wait)?;
                while let Some(item) = guard.get_inner_mut().next() {
                    let Some(ev) = Event::decode(&item, names) else { continue };
                    summary.events += 1;
                    open = print(&mut out, &ev)?;
                    if !open {
                        break;
                    }
                }
                guard.clear_ready();
                // A reader of a pipe (`| head`) that went away ends the trace.
                if !open || out.flush().is_err() {
                    open = false;
                    break;
                }
            }
        }
    }
    // What the datapath sent before the end is printed too.
    while open && let Some(item) = ring.get_mut().next() {
        if let Some(ev) = Event::decode(&item, names) {
            summary.events += 1;
            open = print(&mut out, &ev)?;
        }
    }
    let _ = out.flush();
    summary.lost = tracer.totals()?.1 - lost_before;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_flags_and_keys() {
        let none = Selection::default();
        assert_eq!(none.flags(), 0);
        assert!(none.keys().is_empty());
        let va: IpAddr = "198.19.0.10".parse().unwrap();
        let sel = Selection {
            vms: vec![va],
            ifaces: vec![4],
        };
        assert_eq!(sel.flags(), SELECT_VMS | SELECT_IFACES);
        assert_eq!(sel.keys(), vec![TraceKey::vm(va), TraceKey::iface(4)]);
        let only_ifaces = Selection {
            ifaces: vec![4],
            ..Selection::default()
        };
        assert_eq!(only_ifaces.flags(), SELECT_IFACES);
    }
}
