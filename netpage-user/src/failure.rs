//! What kind of failure an error is: its exit code, and its shape under `--json`.
//!
//! Every error netpage reports falls in one [`Kind`], which sets the process's exit code
//! (documented in the README) so that a script can tell "try again later" from "fix the
//! input" from "a person must look" without reading the message.

use std::{error::Error as StdError, io, net::IpAddr, path::Path};

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::{
    agent::AgentError,
    attach::AttachError,
    directory::{BadValue, DirError},
    migrate::{MigrateError, intent::IntentError},
    node::NodeError,
    ops::OpError,
    outfile::OutFileError,
    owner::OwnerError,
    qmp::QmpError,
    segment::SegError,
    table::TableError,
    tablefile::TableFileError,
    trace::TraceError,
};

/// The kinds of failure, each with its exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The kernel, a file, QEMU or etcd failed (exit 1). A migration that failed and was
    /// rolled back is one too: the table is as it was.
    System,
    /// The command line or an input file is wrong (exit 2, as for a usage error); nothing
    /// was changed.
    BadInput,
    /// The request collides with the state: an address in use, a VM already mapped, a
    /// node busy or managed by an agent, a full table (exit 3); nothing was changed.
    Conflict,
    /// It names something that does not exist: a VM, a node's table, an interface, a
    /// file, a migration record (exit 4); nothing was changed.
    NotFound,
    /// Part of the change was made and could not be undone, or nodes have not confirmed
    /// it yet (exit 5): the message says how to finish (`check --repair`, `migrate
    /// --recover`, or waiting for the nodes).
    Partial,
    /// The process lacks the privileges it needs (exit 6).
    Permission,
    /// `netpage check` found the table inconsistent (exit 7).
    Inconsistent,
}

impl Kind {
    /// The process's exit code for a failure of this kind.
    pub fn exit_code(self) -> i32 {
        match self {
            Kind::System => 1,
            Kind::BadInput => 2,
            Kind::Conflict => 3,
            Kind::NotFound => 4,
            Kind::Partial => 5,
            Kind::Permission => 6,
            Kind::Inconsistent => 7,
        }
    }
}

/// An error that knows its kind, and which facts a script may want as fields.
pub trait Classify {
    fn kind(&self) -> Kind;
    /// Named facts of the failure (`vm`, `real`, `iface`, ...), added to the JSON error.
    fn fields(&self, _out: &mut Map<String, Value>) {}
}

/// A usage error found by the command line's own checks (not by clap).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

impl Classify for Usage {
    fn kind(&self) -> Kind {
        Kind::BadInput
    }
}

/// An error with its kind and fields, read from the first link of its chain that netpage
/// knows (the outer links are context).
pub struct Failure<'a> {
    pub kind: Kind,
    fields: Map<String, Value>,
    error: &'a anyhow::Error,
}

impl<'a> Failure<'a> {
    pub fn of(error: &'a anyhow::Error) -> Self {
        let mut fields = Map::new();
        let kind = error
            .chain()
            .find_map(|link| classify(link, &mut fields))
            .unwrap_or(Kind::System);
        Failure {
            kind,
            fields,
            error,
        }
    }

    /// `{"error": {"kind", "exit_code", "message", "causes", ...fields}}`.
    pub fn json(&self) -> Value {
        let causes: Vec<String> = self.error.chain().skip(1).map(|c| c.to_string()).collect();
        error_json(
            self.kind,
            &format!("{:#}", self.error),
            &causes,
            self.fields.clone(),
        )
    }
}

/// The JSON error object of a failure of `kind`.
pub fn error_json(
    kind: Kind,
    message: &str,
    causes: &[String],
    fields: Map<String, Value>,
) -> Value {
    let mut error = Map::new();
    error.insert("kind".into(), json!(kind));
    error.insert("exit_code".into(), json!(kind.exit_code()));
    error.insert("message".into(), json!(message));
    error.insert("causes".into(), json!(causes));
    error.extend(fields);
    json!({ "error": error })
}

/// The kind of `link` if it is one of netpage's errors, collecting its fields.
fn classify(link: &(dyn StdError + 'static), fields: &mut Map<String, Value>) -> Option<Kind> {
    macro_rules! known {
        ($($t:ty),* $(,)?) => {
            $(
                if let Some(e) = link.downcast_ref::<$t>() {
                    e.fields(fields);
                    return Some(e.kind());
                }
            )*
        };
    }
    known!(
        Usage,
        OpError,
        NodeError,
        AttachError,
        TableError,
        TableFileError,
        OwnerError,
        MigrateError,
        IntentError,
        QmpError,
        DirError,
        AgentError,
        OutFileError,
        TraceError,
        SegError,
    );
    if let Some(e) = link.downcast_ref::<clap::Error>() {
        return Some(match e.kind() {
            clap::error::ErrorKind::Io | clap::error::ErrorKind::Format => Kind::System,
            _ => Kind::BadInput,
        });
    }
    None
}

fn put(out: &mut Map<String, Value>, name: &str, value: impl Serialize) {
    out.insert(name.into(), json!(value));
}

fn put_path(out: &mut Map<String, Value>, name: &str, path: &Path) {
    put(out, name, path.display().to_string());
}

/// The kind of an I/O failure on a file or socket the user named.
fn io_kind(e: &io::Error) -> Kind {
    match e.kind() {
        io::ErrorKind::NotFound => Kind::NotFound,
        io::ErrorKind::PermissionDenied => Kind::Permission,
        _ => Kind::System,
    }
}

impl Classify for OpError {
    fn kind(&self) -> Kind {
        match self {
            OpError::FamilyMismatch { .. }
            | OpError::UnusableAddress { .. }
            | OpError::DuplicateVm { .. }
            | OpError::DuplicateReal { .. }
            | OpError::NoNode
            | OpError::EmptyTable { .. } => Kind::BadInput,
            OpError::VmExists { .. }
            | OpError::RealInUse { .. }
            | OpError::Disagree { .. }
            | OpError::NotSegment { .. }
            | OpError::NoRoom { .. } => Kind::Conflict,
            OpError::UnknownVm { .. } => Kind::NotFound,
            OpError::Undone { failed } => failed.kind(),
            OpError::NotUndone { .. } => Kind::Partial,
            OpError::OnNode { source, .. } => source.kind(),
            OpError::ApplyFailed { failed, undo, .. } => match undo {
                Some(_) => Kind::Partial,
                None => failed.kind(),
            },
            OpError::Table(t) => t.kind(),
        }
    }

    fn fields(&self, out: &mut Map<String, Value>) {
        match self {
            OpError::FamilyMismatch { vm, real } => {
                put(out, "vm", vm);
                put(out, "real", real);
            }
            OpError::UnusableAddress { role, addr, .. } => {
                put(out, "role", role.to_string());
                put(out, "address", addr);
            }
            OpError::VmExists { vm, real } => {
                put(out, "vm", vm);
                put(out, "real", real);
            }
            OpError::UnknownVm { vm }
            | OpError::DuplicateVm { vm }
            | OpError::NotSegment { vm } => put(out, "vm", vm),
            OpError::RealInUse {
                real,
                owner,
                draining,
                orphan,
            } => {
                put(out, "real", real);
                put(out, "owner", owner);
                put(out, "draining", draining);
                put(out, "orphan", orphan);
            }
            OpError::DuplicateReal { real, a, b } => {
                put(out, "real", real);
                put(out, "vms", [a, b]);
            }
            OpError::Disagree {
                vm,
                here,
                elsewhere,
            } => {
                put(out, "vm", vm);
                put(out, "real", here);
                put(out, "elsewhere", elsewhere);
            }
            OpError::Undone { failed } => {
                failed.fields(out);
                put(out, "undone", true);
            }
            OpError::NotUndone { failed, .. } => {
                failed.fields(out);
                put(out, "undone", false);
            }
            OpError::OnNode { node, source } => {
                source.fields(out);
                put(out, "node", node);
            }
            OpError::ApplyFailed { failed, undo, .. } => {
                failed.fields(out);
                put(out, "undone", undo.is_none());
            }
            OpError::Table(t) => t.fields(out),
            OpError::NoNode | OpError::EmptyTable { .. } | OpError::NoRoom { .. } => {}
        }
    }
}

impl Classify for TableError {
    fn kind(&self) -> Kind {
        match self {
            TableError::FamilyMismatch { .. } => Kind::BadInput,
            TableError::SlotsFull { .. } | TableError::Unsupported { .. } => Kind::Conflict,
            _ => Kind::System,
        }
    }

    fn fields(&self, out: &mut Map<String, Value>) {
        let addr: Option<&IpAddr> = match self {
            TableError::Map { addr, .. } | TableError::Batch { addr, .. } => Some(addr),
            TableError::SlotsFull { vm } => Some(vm),
            _ => None,
        };
        if let Some(addr) = addr {
            put(out, "address", addr);
        }
    }
}

impl Classify for NodeError {
    fn kind(&self) -> Kind {
        match self {
            NodeError::Capabilities { .. } => Kind::Permission,
            NodeError::NoTable { .. } => Kind::NotFound,
            NodeError::PinDir { source, .. } | NodeError::Mount { source, .. } => {
                match source.kind() {
                    io::ErrorKind::PermissionDenied => Kind::Permission,
                    _ => Kind::System,
                }
            }
            NodeError::Capacity { .. }
            | NodeError::Incompatible { .. }
            | NodeError::OlderCounters { .. }
            | NodeError::OlderOwners { .. }
            | NodeError::OlderTable { .. }
            | NodeError::Managed { .. }
            | NodeError::Busy { .. }
            | NodeError::WriterBusy { .. } => Kind::Conflict,
            NodeError::IfaceName(_) | NodeError::NodeTwice { .. } => Kind::BadInput,
            NodeError::Table(t) => t.kind(),
            NodeError::OpenMap { .. }
            | NodeError::Load { .. }
            | NodeError::Unpin { .. }
            | NodeError::Registry(_)
            | NodeError::Devmap(_)
            | NodeError::Lock { .. }
            | NodeError::Owners(_) => Kind::System,
        }
    }

    fn fields(&self, out: &mut Map<String, Value>) {
        match self {
            NodeError::Capabilities { missing } => put(out, "missing", missing),
            NodeError::Table(t) => t.fields(out),
            NodeError::IfaceName(iface) => put(out, "iface", iface),
            _ => {}
        }
        if let Some(dir) = self.pin_dir() {
            put_path(out, "pin_dir", dir);
        }
    }
}

impl Classify for TraceError {
    fn kind(&self) -> Kind {
        match self {
            TraceError::UnknownIface { .. } => Kind::NotFound,
            TraceError::OlderNode { .. } | TraceError::Busy { .. } => Kind::Conflict,
            TraceError::Map { .. } | TraceError::Wait(_) => Kind::System,
        }
    }

    fn fields(&self, out: &mut Map<String, Value>) {
        match self {
            TraceError::UnknownIface { iface, dir } => {
                put(out, "iface", iface);
                put_path(out, "pin_dir", dir);
            }
            TraceError::OlderNode { dir } | TraceError::Busy { dir } => {
                put_path(out, "pin_dir", dir)
            }
            _ => {}
        }
    }
}

impl Classify for AttachError {
    fn kind(&self) -> Kind {
        match self {
            AttachError::Node(n) => n.kind(),
            AttachError::UnknownInterface { .. } | AttachError::NotAttached { .. } => {
                Kind::NotFound
            }
            AttachError::TcFastPath { .. }
            | AttachError::TcMode { .. }
            | AttachError::VmOnPhysical { .. }
            | AttachError::UnusableVm { .. } => Kind::BadInput,
            AttachError::ModeChange { .. } | AttachError::Owned { .. } => Kind::Conflict,
            AttachError::Attach { .. }
            | AttachError::AttachTc { .. }
            | AttachError::Link { .. }
            | AttachError::Pin { .. }
            | AttachError::Verify { .. }
            | AttachError::PinProgram { .. }
            | AttachError::Mac { .. }
            | AttachError::AcceptLocal { .. }
            | AttachError::Unpin { .. } => Kind::System,
            AttachError::Segments(e) => e.kind(),
        }
    }

    fn fields(&self, out: &mut Map<String, Value>) {
        if let AttachError::Node(n) = self {
            return n.fields(out);
        }
        if let Some(iface) = self.iface() {
            put(out, "iface", iface);
        }
        match self {
            AttachError::UnusableVm { vm, .. } => put(out, "vm", vm),
            AttachError::Owned { vm, owner, .. } => {
                put(out, "vm", vm);
                put(out, "owner", owner);
            }
            _ => {}
        }
    }
}

impl Classify for SegError {
    fn kind(&self) -> Kind {
        match self {
            SegError::TwoLocators { .. }
            | SegError::Unusable { .. }
            | SegError::SmallMtu { .. } => Kind::BadInput,
            SegError::Missing => Kind::Conflict,
            SegError::Map(_) => Kind::System,
        }
    }

    fn fields(&self, out: &mut Map<String, Value>) {
        match self {
            SegError::Unusable { addr, .. } => put(out, "address", addr),
            SegError::SmallMtu { mtu } => put(out, "tunnel_mtu", mtu),
            _ => {}
        }
    }
}

impl Classify for TableFileError {
    fn kind(&self) -> Kind {
        match self {
            TableFileError::Read { source, .. } => match io_kind(source) {
                Kind::System => Kind::BadInput,
                k => k,
            },
            TableFileError::Toml { .. }
            | TableFileError::Json { .. }
            | TableFileError::Segments { .. } => Kind::BadInput,
        }
    }

    fn fields(&self, out: &mut Map<String, Value>) {
        let (TableFileError::Read { path, .. }
        | TableFileError::Toml { path, .. }
        | TableFileError::Json { path, .. }
        | TableFileError::Segments { path, .. }) = self;
        put_path(out, "path", path);
    }
}

impl Classify for OutFileError {
    fn kind(&self) -> Kind {
        match self {
            OutFileError::Link { .. } | OutFileError::NotRegular { .. } => Kind::BadInput,
            OutFileError::Io { source, .. } => io_kind(source),
        }
    }

    fn fields(&self, out: &mut Map<String, Value>) {
        let (OutFileError::Link { path }
        | OutFileError::NotRegular { path }
        | OutFileError::Io { path, .. }) = self;
        put_path(out, "path", path);
    }
}

impl Classify for OwnerError {
    fn kind(&self) -> Kind {
        Kind::System
    }
}

impl Classify for MigrateError {
    fn kind(&self) -> Kind {
        match self {
            MigrateError::Node { source, .. } => source.kind(),
            MigrateError::Op(o) => o.kind(),
            MigrateError::AlreadyThere { .. }
            | MigrateError::Mac(_)
            | MigrateError::RecoverWithEtcd { .. } => Kind::BadInput,
            MigrateError::NoSocket { .. } => Kind::NotFound,
            MigrateError::SourceNotRunning { .. }
            | MigrateError::DestinationNotWaiting { .. }
            | MigrateError::PostCopy { .. }
            | MigrateError::StillRunning { .. } => Kind::Conflict,
            MigrateError::Qmp(q) => q.kind(),
            MigrateError::Table(t) => t.kind(),
            MigrateError::Dir(d) => d.kind(),
            MigrateError::Intent(i) => i.kind(),
            MigrateError::Signals(_) => Kind::System,
        }
    }

    fn fields(&self, out: &mut Map<String, Value>) {
        match self {
            MigrateError::Node { dir, source } => {
                source.fields(out);
                put_path(out, "pin_dir", dir);
            }
            MigrateError::Op(o) => o.fields(out),
            MigrateError::Dir(d) => d.fields(out),
            MigrateError::Intent(i) => i.fields(out),
            MigrateError::AlreadyThere { vm, to } => {
                put(out, "vm", vm);
                put(out, "real", to);
            }
            MigrateError::NoSocket { path, .. } => put_path(out, "path", path),
            MigrateError::StillRunning { vm, pid } => {
                put(out, "vm", vm);
                put(out, "pid", pid);
            }
            _ => {}
        }
    }
}

impl Classify for IntentError {
    fn kind(&self) -> Kind {
        match self {
            IntentError::InFlight { .. } => Kind::Conflict,
            IntentError::NotRecorded { .. } => Kind::NotFound,
            IntentError::Io { source, .. } => match io_kind(source) {
                Kind::NotFound => Kind::System,
                k => k,
            },
            IntentError::Json { .. } => Kind::System,
        }
    }

    fn fields(&self, out: &mut Map<String, Value>) {
        match self {
            IntentError::InFlight { vm, path } => {
                put(out, "vm", vm);
                put_path(out, "path", path);
            }
            IntentError::NotRecorded { vm, dir } => {
                put(out, "vm", vm);
                put_path(out, "path", dir);
            }
            IntentError::Io { path, .. } | IntentError::Json { path, .. } => {
                put_path(out, "path", path)
            }
        }
    }
}

impl Classify for QmpError {
    fn kind(&self) -> Kind {
        match self {
            QmpError::Connect { source, .. } => match source.kind() {
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => Kind::NotFound,
                io::ErrorKind::PermissionDenied => Kind::Permission,
                _ => Kind::System,
            },
            _ => Kind::System,
        }
    }
}

impl Classify for DirError {
    fn kind(&self) -> Kind {
        match self {
            DirError::Usage(_) => Kind::BadInput,
            DirError::TlsFile { source, .. } => match io_kind(source) {
                Kind::System => Kind::BadInput,
                k => k,
            },
            DirError::Refused { .. } => Kind::Permission,
            DirError::Connect { .. } | DirError::Etcd { .. } | DirError::BadValue(_) => {
                Kind::System
            }
            DirError::Schema { .. } | DirError::Conflict { .. } | DirError::Busy => Kind::Conflict,
            DirError::Partial { .. } => Kind::Partial,
            DirError::Op(o) => o.kind(),
        }
    }

    fn fields(&self, out: &mut Map<String, Value>) {
        match self {
            DirError::Op(o) => o.fields(out),
            DirError::Conflict { vm, .. } => put(out, "vm", vm),
            DirError::BadValue(BadValue { key, .. }) => put(out, "key", key),
            DirError::Partial { done, total } => {
                put(out, "done", done);
                put(out, "total", total);
            }
            _ => {}
        }
    }
}

impl Classify for AgentError {
    fn kind(&self) -> Kind {
        match self {
            AgentError::NodeName(_) => Kind::BadInput,
            AgentError::Node(n) => n.kind(),
            AgentError::Signals(_) => Kind::System,
            AgentError::Metrics { source, .. } => match source.kind() {
                io::ErrorKind::AddrInUse => Kind::Conflict,
                io::ErrorKind::PermissionDenied => Kind::Permission,
                _ => Kind::System,
            },
        }
    }

    fn fields(&self, out: &mut Map<String, Value>) {
        if let AgentError::Node(n) = self {
            n.fields(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure_of(e: impl Into<anyhow::Error>) -> (Kind, Value) {
        let e = e.into();
        let f = Failure::of(&e);
        (f.kind, f.json())
    }

    #[test]
    fn kinds_come_from_the_first_known_link_and_wrappers_pass_them_on() {
        let vm: IpAddr = "198.19.0.10".parse().unwrap();
        let (kind, json) = failure_of(OpError::UnknownVm { vm });
        assert_eq!(kind, Kind::NotFound);
        assert_eq!(json["error"]["kind"], "not_found");
        assert_eq!(json["error"]["exit_code"], 4);
        assert_eq!(json["error"]["vm"], "198.19.0.10");

        let wrapped = OpError::OnNode {
            node: "a".into(),
            source: Box::new(OpError::Undone {
                failed: Box::new(OpError::RealInUse {
                    real: "198.18.10.100".parse().unwrap(),
                    owner: vm,
                    draining: false,
                    orphan: false,
                }),
            }),
        };
        let e = anyhow::Error::from(wrapped).context("switching");
        let f = Failure::of(&e);
        assert_eq!(f.kind, Kind::Conflict);
        let json = f.json();
        assert_eq!(json["error"]["owner"], "198.19.0.10");
        assert_eq!(json["error"]["node"], "a");
        assert_eq!(json["error"]["undone"], true);
        let message = json["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("switching: node a: real address"),
            "{message}"
        );
        assert_eq!(json["error"]["causes"][0], "node a");
    }

    #[test]
    fn a_change_not_undone_is_partial_and_an_unknown_error_a_system_one() {
        let failed = Box::new(OpError::UnknownVm {
            vm: "198.19.0.10".parse().unwrap(),
        });
        let (kind, _) = failure_of(OpError::NotUndone {
            failed,
            undo: "node b: gone".into(),
        });
        assert_eq!(kind, Kind::Partial);
        assert_eq!(failure_of(io::Error::other("disk on fire")).0, Kind::System);
        assert_eq!(failure_of(Usage("no".into())).0, Kind::BadInput);
    }

    #[test]
    fn exit_codes_are_distinct_and_usage_is_clap_s() {
        let all = [
            Kind::System,
            Kind::BadInput,
            Kind::Conflict,
            Kind::NotFound,
            Kind::Partial,
            Kind::Permission,
            Kind::Inconsistent,
        ];
        let mut codes: Vec<i32> = all.iter().map(|k| k.exit_code()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
        assert!(!codes.contains(&0));
        assert_eq!(Kind::BadInput.exit_code(), 2, "clap's usage errors exit 2");
    }
}
