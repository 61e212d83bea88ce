//! The command line of `netpage`: commands, flags and their help.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};
use netpage::{
    attach::{Hook, Mode},
    directory::{EtcdOptions, schema::DEFAULT_PREFIX},
    loader::Side,
    migrate::{EdgeSpec, MigrateOptions, Neighbour, SwitchAt, intent::DEFAULT_STATE_DIR},
    node::DEFAULT_PIN_DIR,
};
use netpage_common::trace::DEFAULT_RATE;

/// The network page table at the edges of a data center network: VMs keep their virtual
/// addresses (VA) while the network routes real addresses (RA) of the site hosting them.
#[derive(Parser)]
#[command(name = "netpage", version, propagate_version = true)]
pub struct Cli {
    /// The node's bpffs pin directory, where its tables and XDP links live
    /// (bpffs is mounted there if it is not already).
    #[arg(long, global = true, default_value = DEFAULT_PIN_DIR, value_name = "DIR")]
    pub pin_dir: PathBuf,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// How long a command that changes a node waits for another one that is changing it
    /// (commands that change a node run one at a time) before it gives up as busy.
    #[arg(long, global = true, value_name = "SECONDS", default_value = "10", value_parser = parse_seconds)]
    pub lock_wait: Duration,
    #[command(flatten)]
    pub etcd: EtcdArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Where the mapping directory is (etcd), for the commands that work on it.
#[derive(Args)]
pub struct EtcdArgs {
    /// Work on the mapping directory in etcd instead of this machine's pin directory:
    /// comma-separated client URLs (`map`, `apply`, `switch`, `migrate`, `status`,
    /// `check`, `nodes`, `agent`).
    #[arg(long, global = true, env = "NETPAGE_ETCD", value_name = "URLS")]
    pub etcd: Option<String>,
    /// The directory's key prefix in etcd.
    #[arg(long, global = true, env = "NETPAGE_PREFIX", default_value = DEFAULT_PREFIX, value_name = "PREFIX")]
    pub prefix: String,
    /// TLS: the CA certificate that signed etcd's server certificates (PEM).
    #[arg(long, global = true, env = "NETPAGE_ETCD_CACERT", value_name = "FILE")]
    pub etcd_cacert: Option<PathBuf>,
    /// TLS: this client's certificate (PEM), for etcd's client-certificate authentication.
    #[arg(long, global = true, env = "NETPAGE_ETCD_CERT", value_name = "FILE")]
    pub etcd_cert: Option<PathBuf>,
    /// TLS: this client's private key (PEM).
    #[arg(long, global = true, env = "NETPAGE_ETCD_KEY", value_name = "FILE")]
    pub etcd_key: Option<PathBuf>,
    /// etcd user (etcd's role-based access control); the password comes from
    /// --etcd-password or NETPAGE_ETCD_PASSWORD.
    #[arg(long, global = true, env = "NETPAGE_ETCD_USER", value_name = "USER")]
    pub etcd_user: Option<String>,
    /// The etcd user's password (prefer the environment variable: arguments are visible
    /// to every user of the machine).
    #[arg(
        long,
        global = true,
        env = "NETPAGE_ETCD_PASSWORD",
        hide_env_values = true,
        value_name = "PASSWORD"
    )]
    pub etcd_password: Option<String>,
}

impl EtcdArgs {
    /// The directory's options, if `--etcd` was given.
    pub fn options(&self) -> Option<EtcdOptions> {
        let urls = self.etcd.as_deref()?;
        Some(EtcdOptions {
            cacert: self.etcd_cacert.clone(),
            cert: self.etcd_cert.clone(),
            key: self.etcd_key.clone(),
            user: self.etcd_user.clone(),
            password: self.etcd_password.clone(),
            ..EtcdOptions::new(urls, &self.prefix)
        })
    }
}

#[derive(Subcommand)]
pub enum Command {
    /// Attach the program to an interface (loading the node's table if it has none).
    /// Re-attaching replaces the program atomically.
    Attach(AttachArgs),
    /// Detach the program from an interface, and forget the VMs it owned. The table stays.
    Detach {
        /// The interface.
        iface: String,
    },
    /// Show the attached interfaces and the table's size.
    Status,
    /// Add, delete or list mappings.
    #[command(subcommand)]
    Map(MapCommand),
    /// Show or change the node's segmentation settings (for mappings of method encap):
    /// its locators, the default locator, the tunnel MTU. Without options, shows them.
    /// Segmentation runs at both hooks; on a node with a locator `attach --hook auto`
    /// chooses XDP, the quicker (`--hook tc` for senders with offloads).
    Locator(LocatorArgs),
    /// Move a VM to a new real address: R2V[RA] first, then one V2R update; the old RA
    /// keeps translating replies in flight until the drain ends. A VM mapped with method
    /// encap moves to its new node's locator: one segment update per node (with --etcd,
    /// one transaction), nothing to drain.
    Switch {
        /// The VM's virtual address.
        #[arg(long)]
        vm: IpAddr,
        /// Its new real address (method encap: its new node's locator).
        #[arg(long)]
        to: IpAddr,
        #[command(flatten)]
        drain: DrainArg,
        /// Switch these nodes (pin directories) together: every reverse entry first, then
        /// every V2R update, in the order given; repeat for each node [default:
        /// --pin-dir]. Not with --etcd, where every node's agent applies the switch.
        #[arg(long = "node", value_name = "PINDIR")]
        nodes: Vec<PathBuf>,
        /// With --etcd: how long to wait for every live node to confirm each phase (the
        /// reservation of the new RA, then the switch).
        #[arg(long, value_name = "SECONDS", default_value = "5", value_parser = parse_seconds)]
        timeout: Duration,
        /// With --etcd: do not wait for the nodes to confirm the switch (the reservation
        /// is still confirmed first).
        #[arg(long)]
        no_wait: bool,
    },
    /// Make the table equal to a TOML or JSON table file, in batches; idempotent. Removals
    /// go first; the node's capacity is checked before any write; installs that fail are
    /// undone. With a drain, a real address that passes from one VM to another is left to a
    /// later apply (reported as deferred) until its drain ends, as with `switch`.
    Apply {
        /// The table file (`[[mapping]]` entries with `vm` and `real`).
        #[arg(short, long, value_name = "FILE")]
        file: PathBuf,
        /// Show what would change without changing it.
        #[arg(long)]
        dry_run: bool,
        /// Accept a file without mappings, which removes every mapping (refused otherwise,
        /// so that an empty or truncated file does not empty the table).
        #[arg(long)]
        allow_empty: bool,
        #[command(flatten)]
        drain: DrainArg,
    },
    /// Show the datapath's counters: globally by outcome, and per mapping.
    Stats {
        /// Only this VM's mapping.
        #[arg(long)]
        vm: Option<IpAddr>,
    },
    /// Live-migrate a QEMU guest to another host and switch its page-table entry on every
    /// node at the chosen moment; on failure the table is rolled back.
    Migrate(Box<MigrateArgs>),
    /// libvirt's QEMU hook: install as /etc/libvirt/hooks/qemu (or a script in
    /// /etc/libvirt/hooks/qemu.d/) that runs `netpage libvirt-hook --host NAME ... "$@"`.
    /// At `migrate begin` (an incoming migration, on the destination) it reserves the VM's
    /// real address on this host, read from the domain XML's netpage metadata on stdin;
    /// every other operation exits 0 at once. It exits 0 even when the reservation
    /// fails (libvirt would abort the migration), unless --strict; it prints nothing on
    /// stdout.
    LibvirtHook(LibvirtHookArgs),
    /// Follow this host's libvirt domain events (virsh event) and switch a migrating VM
    /// at the moment chosen: at the source's pause for the last copy (stop: to the real
    /// address the destination's hook reserved; switched back if the migration then
    /// fails), or at the destination's resume (resume: to this host's real address).
    /// Runs until killed.
    LibvirtFollow(LibvirtFollowArgs),
    /// Run the agent of one node: mirror the directory (--etcd) into the node's table,
    /// as its only writer, until SIGTERM.
    Agent(AgentArgs),
    /// List the nodes registered in the directory (--etcd), with their applied revision
    /// and how far they are behind.
    Nodes,
    /// Report inconsistencies in the node's table (or the directory's, with --etcd):
    /// reverse entries without a mapping nor drain, mappings without a reverse entry,
    /// reverse entries of another VM, expired drains, drains without their reverse entry,
    /// counters without a mapping, a wrong count of fast-path ports. Exits non-zero if it
    /// finds any (with --repair: if any is left).
    Check {
        /// Fix each inconsistency with its safe action and say what was done: remove an
        /// orphan reverse entry, point a mapping's reverse entry back at its VM, end an
        /// expired drain, forget a drain or counters that belong to nothing, recount the
        /// fast-path ports. Two VMs that map to one real address are left for you to
        /// decide. Not with --etcd.
        #[arg(long)]
        repair: bool,
    },
    /// End the drains whose period is over (every command also does this first).
    Gc {
        /// End every drain now.
        #[arg(long)]
        now: bool,
    },
    /// Serve the node's metrics for Prometheus (OpenMetrics text at
    /// http://ADDR/metrics) until SIGINT or SIGTERM: packets by outcome and per mapping,
    /// table size, capacity and drains, read at each scrape. For a node without an agent
    /// (`agent --metrics` serves them with the agent's own).
    Metrics {
        /// Address and port to listen on.
        #[arg(long, value_name = "ADDR", default_value = DEFAULT_METRICS)]
        listen: std::net::SocketAddr,
        /// The state directory of `netpage migrate` on this machine, whose tally of
        /// migrations the metrics show.
        #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Print an event for every packet of the selected VMs or interfaces (none given: every
    /// packet) as the datapath sees it, until SIGINT or SIGTERM: time, interface, side, hook,
    /// protocol, addresses before and after, verdict and reason (the outcome counter). When
    /// no trace runs a packet pays for one flag test; the datapath turns the trace off by
    /// itself within 3 s of this command's end, however it ends. One trace per node at a
    /// time.
    Trace {
        /// Only packets with this virtual address as source or destination, before or
        /// after the translation; repeat for each VM.
        #[arg(long = "vm", value_name = "VA")]
        vms: Vec<IpAddr>,
        /// Only packets on this attached interface; repeat for each.
        #[arg(long = "iface", value_name = "IFACE")]
        ifaces: Vec<String>,
        /// At most this many events per second and CPU; the rest are counted as lost.
        #[arg(long, value_name = "EVENTS", default_value_t = DEFAULT_RATE, value_parser = clap::value_parser!(u32).range(1..))]
        rate: u32,
    },
}

/// This host and its page tables, for the libvirt hook and follower.
#[derive(Args)]
pub struct LibvirtTablesArgs {
    /// This host's name in the domains' netpage metadata (`<netpage:real host=NAME>`)
    /// [default: the machine's host name].
    #[arg(long, value_name = "NAME")]
    pub host: Option<String>,
    /// Change these nodes (pin directories) of this machine together; repeat for each
    /// [default: --pin-dir]. Not with --etcd, where every node's agent applies the change.
    #[arg(long = "node", value_name = "PINDIR")]
    pub nodes: Vec<PathBuf>,
    /// With --etcd: how long to wait for the live nodes to confirm a reservation.
    #[arg(long, value_name = "SECONDS", default_value = "2", value_parser = parse_seconds)]
    pub confirm_timeout: Duration,
}

#[derive(Args)]
pub struct LibvirtHookArgs {
    #[command(flatten)]
    pub tables: LibvirtTablesArgs,
    /// Give up after this long (the migration goes on without the reservation).
    #[arg(long, value_name = "SECONDS", default_value = "5", value_parser = parse_seconds)]
    pub timeout: Duration,
    /// Exit non-zero when the reservation fails, so that libvirt refuses the migration.
    #[arg(long)]
    pub strict: bool,
    /// Also, at `started begin`, set this host's neighbour entry for the VM's VA on its
    /// tap (the domain's one interface: its MAC, its target device), so that packets
    /// switched here while the guest is paused wait in the tap's queue, not for ARP.
    #[arg(long)]
    pub neigh: bool,
    /// Append what each call did to this file, one JSON object a line.
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
    /// The domain's name (libvirt's first argument).
    pub domain: String,
    /// libvirt's operation: migrate, prepare, start, started, stopped, release, ...
    pub operation: String,
    /// libvirt's sub-operation: begin, end, ...
    pub sub_operation: String,
    /// libvirt's extra argument (`-` when it has none).
    pub extra: Option<String>,
}

#[derive(Args)]
pub struct LibvirtFollowArgs {
    #[command(flatten)]
    pub tables: LibvirtTablesArgs,
    /// When to switch: on the source's pause for the last copy (stop), or on the
    /// destination's resume (resume). Use the same on every host.
    #[arg(long, value_enum, default_value = "stop")]
    pub switch_at: SwitchAt,
    /// libvirt's connection URI [default: virsh's].
    #[arg(long, short = 'c', value_name = "URI")]
    pub connect: Option<String>,
    #[command(flatten)]
    pub drain: DrainArg,
    /// The virsh to run.
    #[arg(long, value_name = "PATH", default_value = "virsh")]
    pub virsh: PathBuf,
    /// Stop after this many switches (for scripts and tests).
    #[arg(long, value_name = "N")]
    pub max_switches: Option<u64>,
}

/// Where metrics are served unless told otherwise: this machine only.
pub const DEFAULT_METRICS: &str = "127.0.0.1:9560";

#[derive(Args)]
pub struct AgentArgs {
    /// The node's name in the directory (e.g. its host name): 1 to 64 of A-Z a-z 0-9 . _ -
    #[arg(long, value_name = "NAME")]
    pub node: String,
    /// Seconds without word from the agent after which its node is no longer waited for
    /// (the lease of its registration).
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = clap::value_parser!(u64).range(2..=3600))]
    pub lease_ttl: u64,
    /// Entries per table if the agent creates the node's tables [default: 65536].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub capacity: Option<u32>,
    /// Serve the node's and the agent's metrics for Prometheus at http://ADDR/metrics
    /// (e.g. 127.0.0.1:9560; see `netpage metrics`).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// With --metrics: the state directory of `netpage migrate` on this machine, whose
    /// tally of migrations the metrics show.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

#[derive(Args)]
pub struct AttachArgs {
    /// The interface.
    pub iface: String,
    /// Which network the interface faces: `virtual` (clients or VMs) or `physical`.
    #[arg(long, value_enum)]
    pub side: Side,
    /// Where the program runs: `xdp` (before the kernel builds a socket buffer: the
    /// fastest, for devices whose packets carry final checksums), `tc` (on the socket
    /// buffer: right with checksum offload and GSO, as from guests and veth peers with
    /// offloads on), or `auto` (tc for tun/tap and veth devices, xdp for the rest, and xdp
    /// whenever --fast-path or an XDP --mode is given). `status` says which runs and why.
    #[arg(long, value_enum, default_value = "auto")]
    pub hook: Hook,
    /// How XDP runs: native (in the driver), skb (generic), or auto (native, else skb).
    #[arg(long, value_enum, default_value = "auto")]
    pub mode: Mode,
    /// Entries per table when the node's table is created (fixed afterwards) [default: 65536].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub capacity: Option<u32>,
    /// Load and verify the program again instead of reusing the node's pinned one
    /// (attach reloads by itself after an upgrade of netpage).
    #[arg(long)]
    pub reload: bool,
    /// Forward translated packets from XDP: look up their route and, for a plain forward,
    /// rewrite the Ethernet header, decrement TTL or hop limit and redirect them to the
    /// egress interface (which must be attached too); anything else goes to the kernel.
    /// Bypasses netfilter and xfrm on the forwarding path. A re-attach keeps the setting
    /// unless told otherwise.
    #[arg(long, conflicts_with = "no_fast_path")]
    pub fast_path: bool,
    /// Turn the fast path off (translated packets go to the kernel's stack).
    #[arg(long)]
    pub no_fast_path: bool,
    /// The virtual address of a VM behind this interface (its tap), IPv4 or IPv6; repeat
    /// for each. The interface becomes the VM's owner: the only port of this node that
    /// the VM's addresses (virtual or real) are accepted from as a source. From any other
    /// virtual-side port (another VM's tap, a gateway's client port) they are dropped and
    /// counted as dropped_spoofed, so a VM nobody owns on a node cannot send there. Adds to
    /// what the interface owns; a VM owned by another attached port is refused. Virtual
    /// side only; `detach` forgets the interface's VMs.
    #[arg(long = "vm", value_name = "VA")]
    pub vms: Vec<IpAddr>,
}

impl AttachArgs {
    /// The fast-path setting asked for: on, off, or `None` to keep the interface's.
    pub fn fast_path(&self) -> Option<bool> {
        match (self.fast_path, self.no_fast_path) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        }
    }
}

#[derive(Args)]
pub struct MigrateArgs {
    /// The guest's virtual address.
    #[arg(long)]
    pub vm: IpAddr,
    /// Its real address at the destination site.
    #[arg(long, required_unless_present = "recover")]
    pub to: Option<IpAddr>,
    /// The source QEMU's QMP socket.
    #[arg(long, value_name = "SOCK", required_unless_present = "recover")]
    pub src_qmp: Option<PathBuf>,
    /// The destination QEMU's QMP socket (started with `-incoming`).
    #[arg(long, value_name = "SOCK", required_unless_present = "recover")]
    pub dst_qmp: Option<PathBuf>,
    /// Where the source sends the migration stream, e.g. `tcp:198.18.5.2:4444`.
    #[arg(long, value_name = "URI", required_unless_present = "recover")]
    pub uri: Option<String>,
    /// Finish or undo the interrupted migration of --vm from its record (in
    /// --state-dir): finished if the destination runs the guest, else undone (every node
    /// back at the source's address, the source resumed with its own downtime limit).
    #[arg(long, conflicts_with_all = ["to", "src_qmp", "dst_qmp", "uri"])]
    pub recover: bool,
    /// The pin directory of a node to switch; repeat for every node (gateways and hosts)
    /// [default: --pin-dir]. Their V2R entries are updated in the order given (the
    /// report's `switches`, each with its time), so name the node that must change first
    /// first. Not with --etcd, where every node's agent applies the switch.
    #[arg(long = "node", value_name = "PINDIR")]
    pub nodes: Vec<PathBuf>,
    /// With --etcd: how long each step waits for the live nodes' confirmations (of the
    /// reservation, of the switch, of a rollback). A node that does not confirm in time
    /// is named; the directory keeps the change and the node converges when it returns.
    #[arg(long, value_name = "SECONDS", default_value = "2", value_parser = parse_seconds)]
    pub confirm_timeout: Duration,
    /// When to switch: `stop` (just before the source pauses: netpage holds QEMU's downtime
    /// limit at 1 ms, and once the last copy would fit --downtime-limit it switches and
    /// pauses the source itself; what is sent from the switch to the end of the pause
    /// waits at the destination and nothing is lost, and a client's gap grows only by the
    /// time the pause takes to begin, a few milliseconds at most) or `resume` (the
    /// destination runs: what is sent during the pause waits in the source's tap until
    /// netpage salvages it).
    #[arg(long, value_enum, default_value = "stop")]
    pub switch_at: SwitchAt,
    /// With `--switch-at stop`: switch on hearing QEMU's STOP event instead of holding the
    /// downtime limit, switching, and pausing the source itself. The client's gap is then
    /// QEMU's pause alone, but QEMU stops reading its tap a few milliseconds before STOP
    /// (under TCG): what reaches the source then is salvaged from the tap after the
    /// switch, except the packet QEMU itself took as it paused, which is lost.
    #[arg(long)]
    pub no_hold: bool,
    /// With the hold: switch at least this long before pausing the source. What was in
    /// flight toward the source at the switch is forwarded by the old site anyway; the
    /// lead lets it reach the running guest instead, and lengthens the client's gap as
    /// much.
    #[arg(
        long,
        value_name = "MS",
        default_value = "0",
        conflicts_with = "no_hold"
    )]
    pub hold_lead: u64,
    /// Leave what reaches the source after its pause in its tap. By default netpage takes
    /// a duplicate of the source QEMU's tap descriptors (found through its QMP socket)
    /// and, once the source has paused and every node has switched, reads that queue out
    /// and sends each packet for the VM on to its new address: the packets in flight
    /// toward the source at the switch, or everything sent during the pause with
    /// `--switch-at resume`.
    #[arg(long)]
    pub no_salvage: bool,
    /// Run at the time-shared class instead of raising netpage's thread to SCHED_FIFO for
    /// the migration (it sleeps on QEMU's sockets and wakes at once on STOP, ahead of busy
    /// vCPU threads; without CAP_SYS_NICE it runs time-shared anyway, and says so).
    #[arg(long)]
    pub no_realtime: bool,
    /// The longest pause QEMU may plan for the final copy, in milliseconds [default: the
    /// source's own, 300 unless changed].
    #[arg(long, value_name = "MS")]
    pub downtime_limit: Option<u64>,
    /// Give up (and roll back) if the migration has not completed by then.
    #[arg(long, value_name = "SECONDS", default_value = "120", value_parser = parse_seconds)]
    pub timeout: Duration,
    #[command(flatten)]
    pub drain: DrainArg,
    /// Install the guest's neighbour entry on the destination's tap before the switch, so
    /// that packets wait in the tap's queue while the guest is paused: IFACE or IFACE@NETNS.
    #[arg(long, value_name = "IFACE[@NETNS]")]
    pub dst_neigh: Option<String>,
    /// The guest's MAC for --dst-neigh (default: asked from the source QEMU).
    #[arg(long, value_name = "MAC")]
    pub mac: Option<String>,
    /// Also draw the timeline as an SVG picture.
    #[arg(long, value_name = "FILE.svg")]
    pub timeline: Option<PathBuf>,
    /// Where the record of a migration in flight is kept (one file per VM, written
    /// before the first change and removed at the end).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

impl MigrateArgs {
    /// The options of the migration, switching `edges`.
    pub fn options(&self, edges: EdgeSpec) -> MigrateOptions {
        let neighbour = self.dst_neigh.as_ref().map(|s| {
            let (iface, netns) = match s.split_once('@') {
                Some((i, n)) => (i.to_owned(), Some(n.to_owned())),
                None => (s.clone(), None),
            };
            Neighbour {
                iface,
                netns,
                mac: self.mac.clone(),
            }
        });
        let required = "clap requires it without --recover";
        MigrateOptions {
            vm: self.vm,
            to: self.to.expect(required),
            src_qmp: self.src_qmp.clone().expect(required),
            dst_qmp: self.dst_qmp.clone().expect(required),
            uri: self.uri.clone().expect(required),
            edges,
            switch_at: self.switch_at,
            hold: self.switch_at == SwitchAt::Stop && !self.no_hold,
            hold_lead: Duration::from_millis(self.hold_lead),
            realtime: !self.no_realtime,
            downtime_limit_ms: self.downtime_limit,
            timeout: self.timeout,
            drain: self.drain.drain,
            neighbour,
            salvage: !self.no_salvage,
            state_dir: self.state_dir.clone(),
        }
    }
}

#[derive(Args)]
pub struct LocatorArgs {
    /// A locator of this node, IPv4 or IPv6 (one of each at most): the outer source of
    /// the packets it encapsulates, and the address it decapsulates packets at. It must
    /// be an address of the node that the physical network routes to it.
    #[arg(long = "own", value_name = "ADDR")]
    pub own: Vec<IpAddr>,
    /// Where a VM of method encap sends packets whose destination is not a VM of the table:
    /// the locator of the site's gateway, which decapsulates them and routes them on.
    #[arg(long = "default", value_name = "ADDR", conflicts_with = "no_default")]
    pub default: Option<IpAddr>,
    /// Forget the default locator.
    #[arg(long)]
    pub no_default: bool,
    /// The largest packet the physical network carries, outer headers included [default:
    /// 1500]. A packet that would not fit once encapsulated is answered with
    /// "fragmentation needed" or "packet too big" (an IPv4 one that may be fragmented
    /// goes out in an outer IPv4 header that may be, too).
    #[arg(long, value_name = "BYTES")]
    pub tunnel_mtu: Option<u32>,
    /// Forget every setting first: without a locator the node leaves segmentation.
    #[arg(long)]
    pub clear: bool,
}

impl LocatorArgs {
    /// The change asked for, `None` if none (show the settings).
    pub fn change(&self) -> Option<netpage::segment::Change> {
        let any = !self.own.is_empty()
            || self.default.is_some()
            || self.no_default
            || self.tunnel_mtu.is_some()
            || self.clear;
        any.then(|| netpage::segment::Change {
            locators: self.own.clone(),
            default_locator: self.default,
            no_default: self.no_default,
            tunnel_mtu: self.tunnel_mtu,
            clear: self.clear,
        })
    }
}

#[derive(Subcommand)]
pub enum MapCommand {
    /// Map a new VM: with --real (paging) installs R2V[RA] = VA, then V2R[VA] = RA; with
    /// --locator (segmentation, method encap) one segment entry: its packets then travel
    /// unchanged inside outer headers to that locator (the node's own locators are set with
    /// `netpage locator`, on each node). With --etcd, either goes into the directory and
    /// every node's agent installs it.
    #[command(group(clap::ArgGroup::new("method").required(true).args(["real", "locator"])))]
    Add {
        /// The VM's virtual address.
        #[arg(long)]
        vm: IpAddr,
        /// Its real address (paging).
        #[arg(long)]
        real: Option<IpAddr>,
        /// The locator of the node that hosts it (segmentation); of either family.
        #[arg(long)]
        locator: Option<IpAddr>,
    },
    /// Remove a VM's mapping, both directions. Which port owns the VM (`attach --vm`)
    /// stays: it belongs to the port, and counts again once the VM is mapped again.
    Del {
        /// The VM's virtual address.
        #[arg(long)]
        vm: IpAddr,
    },
    /// List the mappings (with --json, in the format `apply` reads).
    List {
        /// List the reverse entries (R2V) instead, each with what it is for (mapped,
        /// draining, of another VM, orphan), and the drains.
        #[arg(long)]
        reverse: bool,
    },
}

/// How long an old real address keeps translating after the VM leaves it.
#[derive(Args)]
pub struct DrainArg {
    /// Seconds the old RA keeps translating replies in flight (0: remove it at once).
    #[arg(long, value_name = "SECONDS", default_value = "5", value_parser = parse_seconds)]
    pub drain: Duration,
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{s:?} is not a valid duration"))
}
