//! The command line of `netpage`: commands, flags and their help.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};
use netpage::{attach::Mode, loader::Side, node::DEFAULT_PIN_DIR};

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
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Attach the program to an interface (loading the node's table if it has none).
    /// Re-attaching replaces the program atomically.
    Attach(AttachArgs),
    /// Detach the program from an interface. The table stays.
    Detach {
        /// The interface.
        iface: String,
    },
    /// Show the attached interfaces and the table's size.
    Status,
    /// Add, delete or list mappings.
    #[command(subcommand)]
    Map(MapCommand),
    /// Move a VM to a new real address: R2V[RA] first, then one V2R update; the old RA
    /// keeps translating replies in flight until the drain ends.
    Switch {
        /// The VM's virtual address.
        #[arg(long)]
        vm: IpAddr,
        /// Its new real address.
        #[arg(long)]
        to: IpAddr,
        #[command(flatten)]
        drain: DrainArg,
    },
    /// Make the table equal to a TOML or JSON table file, in batches; idempotent.
    Apply {
        /// The table file (`[[mapping]]` entries with `vm` and `real`).
        #[arg(short, long, value_name = "FILE")]
        file: PathBuf,
        /// Show what would change without changing it.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        drain: DrainArg,
    },
    /// Show the datapath's counters: globally by outcome, and per mapping.
    Stats {
        /// Only this VM's mapping.
        #[arg(long)]
        vm: Option<IpAddr>,
    },
    /// End the drains whose period is over (every command also does this first).
    Gc {
        /// End every drain now.
        #[arg(long)]
        now: bool,
    },
}

#[derive(Args)]
pub struct AttachArgs {
    /// The interface.
    pub iface: String,
    /// Which network the interface faces: `virtual` (clients or VMs) or `physical`.
    #[arg(long, value_enum)]
    pub side: Side,
    /// How the program runs: native (in the driver), skb (generic), or auto (native, else skb).
    #[arg(long, value_enum, default_value = "auto")]
    pub mode: Mode,
    /// Entries per table when the node's table is created (fixed afterwards) [default: 65536].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub capacity: Option<u32>,
    /// Load and verify the program again instead of reusing the node's pinned one
    /// (attach reloads by itself after an upgrade of netpage).
    #[arg(long)]
    pub reload: bool,
}

#[derive(Subcommand)]
pub enum MapCommand {
    /// Map a new VM: installs R2V[RA] = VA, then V2R[VA] = RA.
    Add {
        /// The VM's virtual address.
        #[arg(long)]
        vm: IpAddr,
        /// Its real address.
        #[arg(long)]
        real: IpAddr,
    },
    /// Remove a VM's mapping, both directions.
    Del {
        /// The VM's virtual address.
        #[arg(long)]
        vm: IpAddr,
    },
    /// List the mappings (with --json, in the format `apply` reads).
    List,
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
