//! The programs (XDP and tc) loaded for BPF_PROG_TEST_RUN: packet in, verdict and packet
//! out.

use std::{
    net::IpAddr,
    os::fd::{AsFd, BorrowedFd},
    time::Duration,
};

use aya::{
    Ebpf,
    maps::{Array, DevMapHash, HashMap as BpfHashMap, PerCpuArray, ring_buf::RingBuf},
    programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions, TestRunResult, Xdp},
};
use netpage::{
    counters::Totals,
    loader::{self, Side},
    owner::Owners,
    table::{BpfTable, PageTable},
};
use netpage_common::{
    maps::{
        COUNTERS, DEVMAP, FAST_PORTS, MappingStats, PORTS, PROG_PHYSICAL, PROG_TC_PHYSICAL,
        PROG_TC_VIRTUAL, PROG_VIRTUAL, PortRecord, SEG_CONFIG, TRACE, TRACE_CPU, TRACE_EVENTS,
        TRACE_SEL, fast_port_count,
    },
    segment::SegConfig,
    trace::{TraceConfig, TraceCpu, TraceEvent, TraceKey},
};

/// XDP_PASS: the verdict of every packet but those the fast path forwards.
pub const XDP_PASS: u32 = 2;
/// XDP_REDIRECT: the fast path sent the frame out of another interface.
pub const XDP_REDIRECT: u32 = 4;
/// XDP_DROP: the verdict of a spoofed source.
pub const XDP_DROP: u32 = 1;
/// TC_ACT_SHOT (2): the tc programs' verdict for a spoofed source.
pub const TC_SHOT: u32 = 2;
/// The interface a test run's packet arrives on unless its context names another: the
/// namespace's loopback (index 1), at both hooks.
pub const LOOPBACK: u32 = 1;
/// TC_ACT_UNSPEC (-1), as `test_run` returns it: the tc programs' verdict for every
/// packet (the next program, or the kernel).
pub const TC_NEXT: u32 = u32::MAX;

/// The hook a program runs at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Xdp,
    Tc,
}

impl Hook {
    pub const ALL: [Hook; 2] = [Hook::Xdp, Hook::Tc];

    /// The hook's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Hook::Xdp => "xdp",
            Hook::Tc => "tc",
        }
    }

    /// A measured variant's name at this hook: as it is under XDP, with `(tc)` under tc.
    pub fn variant(self, name: &str) -> String {
        match self {
            Hook::Xdp => name.to_owned(),
            Hook::Tc => format!("{name} (tc)"),
        }
    }

    /// The verdict of a packet the program lets go on.
    pub fn pass(self) -> u32 {
        match self {
            Hook::Xdp => XDP_PASS,
            Hook::Tc => TC_NEXT,
        }
    }

    /// The verdict of a packet the program drops (a spoofed source).
    pub fn drop(self) -> u32 {
        match self {
            Hook::Xdp => XDP_DROP,
            Hook::Tc => TC_SHOT,
        }
    }

    /// A context for a test run at this hook in which the packet (of `len` bytes) arrives
    /// on the interface with index `ifindex` of the calling thread's network namespace:
    /// an `xdp_md` with its `ingress_ifindex`, or a `struct __sk_buff` with its `ifindex`.
    pub fn arriving_on(self, ifindex: u32, len: usize) -> Vec<u8> {
        match self {
            Hook::Xdp => {
                // struct xdp_md: data, data_end, data_meta, ingress_ifindex, ...
                let mut ctx = vec![0u8; 24];
                ctx[4..8].copy_from_slice(&(len as u32).to_ne_bytes());
                ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
                ctx
            }
            Hook::Tc => {
                // struct __sk_buff: ifindex at 40, of 192 bytes.
                let mut ctx = vec![0u8; 192];
                ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
                ctx
            }
        }
    }
}

/// A `struct __sk_buff` for a tc test run of a GSO packet of `segs` segments of `size`
/// bytes (the only fields `test_run` lets a caller set are zero but these).
pub fn gso_context(size: u32, segs: u32) -> Vec<u8> {
    // Offsets in struct __sk_buff (linux/bpf.h): gso_segs at 164, gso_size at 176; the
    // whole struct is 192 bytes.
    let mut ctx = vec![0u8; 192];
    ctx[164..168].copy_from_slice(&segs.to_ne_bytes());
    ctx[176..180].copy_from_slice(&size.to_ne_bytes());
    ctx
}

/// One loaded copy of the program with its own, empty tables.
pub struct Datapath {
    ebpf: Ebpf,
    table: BpfTable,
    owners: Owners,
}

impl Datapath {
    /// Loads every program (through the verifier) with tables of `capacity` entries.
    pub fn load(capacity: u32) -> Self {
        let mut ebpf = loader::load(capacity).expect("load the eBPF object");
        for name in [PROG_VIRTUAL, PROG_PHYSICAL] {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .unwrap_or_else(|| panic!("program {name}"))
                .try_into()
                .expect("an XDP program");
            netpage::loader::load_retrying(|| prog.load())
                .unwrap_or_else(|e| panic!("verifier rejected {name}: {e:?}"));
        }
        for name in [PROG_TC_VIRTUAL, PROG_TC_PHYSICAL] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .unwrap_or_else(|| panic!("program {name}"))
                .try_into()
                .expect("a tc program");
            netpage::loader::load_retrying(|| prog.load())
                .unwrap_or_else(|e| panic!("verifier rejected {name}: {e:?}"));
        }
        let table = BpfTable::from_maps(|n| ebpf.take_map(n)).expect("page table maps");
        let owners = Owners::from_maps(|n| ebpf.take_map(n)).expect("owner maps");
        Self {
            ebpf,
            table,
            owners,
        }
    }

    /// The node's page table.
    pub fn table(&mut self) -> &mut BpfTable {
        &mut self.table
    }

    /// Installs a mapping in both directions, with its counters.
    pub fn map(&mut self, va: IpAddr, ra: IpAddr) {
        self.table.set_reverse(ra, va).unwrap();
        self.table.set_forward(va, ra).unwrap();
        self.table.create_stats(va).unwrap();
    }

    /// Records the interface with index `ifindex` as the owner of the VM of `va`, as
    /// `attach --vm` does: the only port its addresses are accepted from as a source.
    pub fn own(&mut self, va: IpAddr, ifindex: u32) {
        self.owners.set(va, ifindex).unwrap();
    }

    /// Forgets the owner of the VM of `va`.
    pub fn disown(&mut self, va: IpAddr) {
        self.owners.remove(va).unwrap();
    }

    /// The loaded program of `side`.
    pub fn program(&self, side: Side) -> &Xdp {
        self.ebpf
            .program(side.program())
            .unwrap()
            .try_into()
            .unwrap()
    }

    /// The descriptor of the loaded program of `side` at `hook`.
    pub fn program_fd(&self, hook: Hook, side: Side) -> BorrowedFd<'_> {
        let name = match hook {
            Hook::Xdp => side.program(),
            Hook::Tc => side.tc_program(),
        };
        let prog = self.ebpf.program(name).expect("the program");
        prog.fd().expect("loaded").as_fd()
    }

    /// The loaded program of `side`, to attach it.
    pub fn program_mut(&mut self, side: Side) -> &mut Xdp {
        self.ebpf
            .program_mut(side.program())
            .unwrap()
            .try_into()
            .unwrap()
    }

    /// Runs the program of `side` once on `input`: the verdict and the packet out.
    pub fn run(&self, side: Side, input: &[u8]) -> (u32, Vec<u8>) {
        self.run_with(side, input, None)
    }

    /// [`Datapath::run_at`] with no context, or `None` if the kernel refuses to build a
    /// packet of `input` (EINVAL: under tc, one cut inside its Ethernet or IP header).
    pub fn try_run_at(&self, hook: Hook, side: Side, input: &[u8]) -> Option<(u32, Vec<u8>)> {
        match self.test_run_at(hook, side, input, None) {
            Err(ProgramError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::EINVAL) =>
            {
                None
            }
            r => Some(r.unwrap_or_else(|e| panic!("test_run of {} bytes: {e:?}", input.len()))),
        }
    }

    /// Runs the program of `side` at `hook` once on `input` (under tc with the
    /// `struct __sk_buff` context `ctx`, if given): the verdict and the packet out.
    pub fn run_at(
        &self,
        hook: Hook,
        side: Side,
        input: &[u8],
        ctx: Option<&[u8]>,
    ) -> (u32, Vec<u8>) {
        self.test_run_at(hook, side, input, ctx)
            .unwrap_or_else(|e| panic!("test_run of {} bytes (ctx {ctx:?}): {e:?}", input.len()))
    }

    /// Runs the program of `side` at `hook` once on `input` (with context `ctx`): the
    /// verdict and the packet out, or the kernel's error.
    pub fn test_run_at(
        &self,
        hook: Hook,
        side: Side,
        input: &[u8],
        ctx: Option<&[u8]>,
    ) -> Result<(u32, Vec<u8>), ProgramError> {
        match hook {
            Hook::Xdp => test_run(self.program(side), input, ctx),
            Hook::Tc => {
                let prog: &SchedClassifier = self
                    .ebpf
                    .program(side.tc_program())
                    .unwrap()
                    .try_into()
                    .unwrap();
                test_run(prog, input, ctx)
            }
        }
    }

    /// Runs the program of `side` once on `input` as if it arrived on the interface with
    /// index `ingress` of the calling thread's network namespace (the `xdp_md` context
    /// passed in names it), so that helpers that look at the interface, such as the FIB
    /// lookup, see it. The verdict and the packet out.
    pub fn run_on(&self, side: Side, input: &[u8], ingress: u32) -> (u32, Vec<u8>) {
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex; data and data_end are offsets into `input`.
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(input.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&ingress.to_ne_bytes());
        self.run_with(side, input, Some(&ctx))
    }

    fn run_with(&self, side: Side, input: &[u8], ctx: Option<&[u8]>) -> (u32, Vec<u8>) {
        test_run(self.program(side), input, ctx)
            .unwrap_or_else(|e| panic!("test_run of {} bytes (ctx {ctx:?}): {e:?}", input.len()))
    }

    /// Sets what the program does on the interface with index `ifindex`, as attach does.
    pub fn set_port(&mut self, ifindex: u32, record: PortRecord) {
        let mut ports: BpfHashMap<_, u32, PortRecord> =
            BpfHashMap::try_from(self.ebpf.map_mut(PORTS).expect("port map")).expect("port map");
        ports.insert(ifindex, record, 0).expect("port entry");
        let records: Vec<PortRecord> = ports.iter().map(|kv| kv.expect("port entry").1).collect();
        let mut fast: Array<_, u32> =
            Array::try_from(self.ebpf.map_mut(FAST_PORTS).expect("fast map")).expect("fast map");
        fast.set(0, fast_port_count(records), 0)
            .expect("fast port count");
    }

    /// Adds the interface with index `ifindex` to the device map, or removes it, as attach
    /// does for an interface that takes XDP frames (here whatever the interface's driver
    /// says: a test run only returns the verdict).
    pub fn set_redirect_target(&mut self, ifindex: u32, on: bool) {
        let mut devmap =
            DevMapHash::try_from(self.ebpf.map_mut(DEVMAP).expect("device map")).expect("devmap");
        if on {
            devmap
                .insert(ifindex, ifindex, None, 0)
                .expect("device map entry");
        } else {
            devmap.remove(ifindex).expect("device map entry");
        }
    }

    /// Sets the node's segmentation settings, as `netpage locator` does.
    pub fn set_segments(&mut self, config: SegConfig) {
        let mut map: Array<_, SegConfig> =
            Array::try_from(self.ebpf.map_mut(SEG_CONFIG).expect("segment settings"))
                .expect("segment settings");
        map.set(0, config, 0).expect("segment settings");
    }

    /// Sets the trace's configuration, as `netpage trace` does.
    pub fn set_trace(&mut self, config: TraceConfig) {
        let mut map: Array<_, TraceConfig> =
            Array::try_from(self.ebpf.map_mut(TRACE).expect("trace map")).expect("trace map");
        map.set(0, config, 0).expect("trace configuration");
    }

    /// Adds `key` to the trace's selection, or removes it.
    pub fn trace_select(&mut self, key: TraceKey, on: bool) {
        let mut sel: BpfHashMap<_, TraceKey, u32> =
            BpfHashMap::try_from(self.ebpf.map_mut(TRACE_SEL).expect("selection map"))
                .expect("selection map");
        if on {
            sel.insert(key, 1, 0).expect("selection entry");
        } else {
            sel.remove(&key).expect("selection entry");
        }
    }

    /// Takes every trace event waiting in the ring buffer.
    pub fn trace_events(&mut self) -> Vec<TraceEvent> {
        let mut ring =
            RingBuf::try_from(self.ebpf.map_mut(TRACE_EVENTS).expect("ring buffer")).expect("ring");
        let mut out = Vec::new();
        while let Some(item) = ring.next() {
            assert_eq!(item.len(), std::mem::size_of::<TraceEvent>(), "event size");
            // SAFETY: a whole event, plain data; the read does not assume alignment.
            out.push(unsafe { item.as_ptr().cast::<TraceEvent>().read_unaligned() });
        }
        out
    }

    /// Trace events sent and lost, summed over CPUs.
    pub fn trace_totals(&self) -> (u64, u64) {
        let cpu: PerCpuArray<_, TraceCpu> =
            PerCpuArray::try_from(self.ebpf.map(TRACE_CPU).expect("trace state")).expect("state");
        let per_cpu = cpu.get(&0, 0).expect("trace state");
        per_cpu
            .iter()
            .fold((0, 0), |(s, l), c| (s + c.sent, l + c.lost))
    }

    /// The kernel's average time per run over `repeat` runs of `input`.
    pub fn time(&self, side: Side, input: &[u8], repeat: u32) -> Duration {
        let mut out = vec![0u8; input.len() + 512];
        self.program(side)
            .test_run(TestRunOptions {
                data_in: Some(input),
                data_out: Some(&mut out),
                repeat,
                ..TestRunOptions::default()
            })
            .expect("test_run")
            .duration
    }

    /// The outcome counters, summed over CPUs.
    pub fn counters(&self) -> Totals {
        Totals::read(self.ebpf.map(COUNTERS).expect("counter map")).expect("read counters")
    }

    /// The traffic counted for the mapping of `va`.
    pub fn stats(&self, va: IpAddr) -> MappingStats {
        self.table.stats(va).unwrap().expect("mapping has counters")
    }
}

/// One `test_run` of `prog` on `input` (with context `ctx`): the verdict and the packet out.
fn test_run<P>(prog: &P, input: &[u8], ctx: Option<&[u8]>) -> Result<(u32, Vec<u8>), ProgramError>
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    let mut out = vec![0u8; input.len() + 512];
    let r = prog.test_run(TestRunOptions {
        data_in: Some(input),
        data_out: Some(&mut out),
        ctx_in: ctx,
        ..TestRunOptions::default()
    })?;
    out.truncate(r.data_size_out as usize);
    Ok((r.return_value, out))
}
