//! An asynchronous client of QEMU's machine protocol (QMP) over a unix socket: commands with a
//! deadline on every wait, typed replies for the commands that live migration needs, and the
//! asynchronous events that QEMU sends in between, kept in arrival order.
//!
//! QMP is one JSON object per line (<https://www.qemu.org/docs/master/interop/qmp-spec.html>):
//! a greeting when a client connects, then for each command (`{"execute": .., "arguments":
//! .., "id": ..}`) exactly one `return` or `error` that echoes the `id`, with `event`s
//! interleaved at any point. Events read while waiting for a reply are buffered and handed
//! out by [`Qmp::next_event`], so none is lost; a reply that comes after its command timed
//! out carries a stale `id` and is dropped.

use std::{
    collections::VecDeque,
    fmt, io,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{
        UnixStream,
        unix::{OwnedReadHalf, OwnedWriteHalf},
    },
};

/// How long [`Qmp::connect`] waits between attempts while QEMU has not created its socket.
const CONNECT_RETRY: Duration = Duration::from_millis(20);

/// A failure to talk to QEMU over QMP, naming the socket and, where there is one, the command.
/// The longest line a QMP peer may send, newline included. QEMU's replies to what netpage
/// asks and its events take a few kilobytes; the bound keeps a peer that never ends its
/// line from growing netpage's memory without end.
pub const MAX_LINE: usize = 1 << 20;

/// How much of a malformed line an error shows.
const MALFORMED_SHOWN: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("cannot connect to the QMP socket {}", path.display())]
    Connect { path: PathBuf, source: io::Error },
    #[error("QMP socket {}: i/o error while {doing}", path.display())]
    Io {
        path: PathBuf,
        doing: String,
        source: io::Error,
    },
    #[error("QMP socket {}: no answer within {timeout:?} while {doing}", path.display())]
    Timeout {
        path: PathBuf,
        doing: String,
        timeout: Duration,
    },
    #[error("QMP socket {}: QEMU closed the connection while {doing}", path.display())]
    Closed { path: PathBuf, doing: String },
    #[error(
        "QMP socket {}: a line longer than {MAX_LINE} bytes while {doing}: not QEMU, or a QEMU gone wrong",
        path.display()
    )]
    LineTooLong { path: PathBuf, doing: String },
    #[error("QMP socket {}: malformed message {line:?}", path.display())]
    Malformed {
        path: PathBuf,
        line: String,
        source: serde_json::Error,
    },
    #[error("QMP socket {}: unexpected {message} while {doing}", path.display())]
    Unexpected {
        path: PathBuf,
        doing: String,
        message: String,
    },
    #[error("QMP command `{command}` on {} failed: {class}: {desc}", path.display())]
    Command {
        path: PathBuf,
        command: String,
        class: String,
        desc: String,
    },
    #[error("QMP command `{command}` on {}: cannot read its return value {value}", path.display())]
    Return {
        path: PathBuf,
        command: String,
        value: String,
        source: serde_json::Error,
    },
}

impl QmpError {
    /// Whether this is a wait that ran out of time (the connection is still usable).
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout { .. })
    }

    /// The QMP error class (`GenericError`, `CommandNotFound`, ...) if QEMU refused a command.
    pub fn class(&self) -> Option<&str> {
        match self {
            Self::Command { class, .. } => Some(class),
            _ => None,
        }
    }
}

/// One message from QEMU, as it appears on the wire.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Message {
    /// The first message on a connection.
    Greeting {
        #[serde(rename = "QMP")]
        qmp: Greeting,
    },
    /// A command's success, with its value.
    Return {
        #[serde(rename = "return")]
        value: Value,
        #[serde(default)]
        id: Option<Value>,
    },
    /// A command's failure.
    Error {
        error: ErrorReply,
        #[serde(default)]
        id: Option<Value>,
    },
    /// An asynchronous event.
    Event(Event),
}

impl Message {
    /// Parses one line of QMP.
    pub fn parse(line: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(line)
    }
}

/// The greeting's body: which QEMU, and which optional capabilities it offers.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Greeting {
    pub version: GreetingVersion,
    #[serde(default)]
    pub capabilities: Vec<String>,
}

/// QEMU's version as the greeting states it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct GreetingVersion {
    pub qemu: VersionTriple,
    #[serde(default)]
    pub package: String,
}

/// `major.minor.micro`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct VersionTriple {
    pub major: u32,
    pub minor: u32,
    pub micro: u32,
}

impl fmt::Display for VersionTriple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

/// The body of an `error` reply.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ErrorReply {
    pub class: String,
    pub desc: String,
}

/// When QEMU emitted an event: wall-clock time on the host that runs QEMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
pub struct Timestamp {
    pub seconds: i64,
    pub microseconds: i64,
}

impl Timestamp {
    /// Microseconds since the Unix epoch.
    pub fn as_micros(&self) -> i64 {
        self.seconds * 1_000_000 + self.microseconds
    }

    /// How much later `self` is than `earlier` (negative if it is earlier).
    pub fn micros_since(&self, earlier: &Timestamp) -> i64 {
        self.as_micros() - earlier.as_micros()
    }
}

/// An asynchronous event, with QEMU's timestamp and the local moment it was read.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Event {
    /// The event's name: `STOP`, `RESUME`, `MIGRATION`, `MIGRATION_PASS`, ...
    pub event: String,
    /// Its data (`Null` if it has none).
    #[serde(default)]
    pub data: Value,
    /// QEMU's clock when it emitted the event.
    pub timestamp: Timestamp,
    /// This process's clock when the event was read from the socket.
    #[serde(skip_deserializing, default = "Instant::now")]
    pub received: Instant,
}

impl Event {
    /// The new status carried by a `MIGRATION` event.
    pub fn migration_status(&self) -> Option<MigrationStatus> {
        (self.event == "MIGRATION")
            .then(|| self.data.get("status")?.as_str())
            .flatten()
            .map(MigrationStatus::from)
    }

    /// The pass number carried by a `MIGRATION_PASS` event (1 is the first full copy).
    pub fn migration_pass(&self) -> Option<u64> {
        (self.event == "MIGRATION_PASS")
            .then(|| self.data.get("pass")?.as_u64())
            .flatten()
    }
}

/// A VM's run state, as `query-status` and the `STOP`/`RESUME` story report it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "String")]
pub enum RunState {
    Running,
    Paused,
    /// Waiting for an incoming migration (`-incoming`).
    InMigrate,
    /// The source after a completed outgoing migration.
    PostMigrate,
    /// The last stop-and-copy phase of an outgoing migration.
    FinishMigrate,
    Prelaunch,
    Shutdown,
    InternalError,
    IoError,
    GuestPanicked,
    /// Any state this client does not name.
    Other(String),
}

impl From<String> for RunState {
    fn from(s: String) -> Self {
        match s.as_str() {
            "running" => Self::Running,
            "paused" => Self::Paused,
            "inmigrate" => Self::InMigrate,
            "postmigrate" => Self::PostMigrate,
            "finish-migrate" => Self::FinishMigrate,
            "prelaunch" => Self::Prelaunch,
            "shutdown" => Self::Shutdown,
            "internal-error" => Self::InternalError,
            "io-error" => Self::IoError,
            "guest-panicked" => Self::GuestPanicked,
            _ => Self::Other(s),
        }
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::InMigrate => "inmigrate",
            Self::PostMigrate => "postmigrate",
            Self::FinishMigrate => "finish-migrate",
            Self::Prelaunch => "prelaunch",
            Self::Shutdown => "shutdown",
            Self::InternalError => "internal-error",
            Self::IoError => "io-error",
            Self::GuestPanicked => "guest-panicked",
            Self::Other(s) => s,
        })
    }
}

/// The reply of `query-status`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StatusInfo {
    pub running: bool,
    pub status: RunState,
}

/// A migration's status, in `query-migrate` and in `MIGRATION` events.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "String")]
pub enum MigrationStatus {
    None,
    Setup,
    Active,
    /// The source has stopped the VM and sends the last dirty pages and the device state.
    Device,
    PreSwitchover,
    Completed,
    Failed,
    Cancelling,
    Cancelled,
    PostcopyActive,
    /// Any status this client does not name.
    Other(String),
}

impl MigrationStatus {
    /// Whether the migration has ended, one way or another.
    pub fn is_final(&self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

impl From<&str> for MigrationStatus {
    fn from(s: &str) -> Self {
        match s {
            "none" => Self::None,
            "setup" => Self::Setup,
            "active" => Self::Active,
            "device" => Self::Device,
            "pre-switchover" => Self::PreSwitchover,
            "completed" => Self::Completed,
            "failed" => Self::Failed,
            "cancelling" => Self::Cancelling,
            "cancelled" => Self::Cancelled,
            "postcopy-active" => Self::PostcopyActive,
            _ => Self::Other(s.to_owned()),
        }
    }
}

impl From<String> for MigrationStatus {
    fn from(s: String) -> Self {
        Self::from(s.as_str())
    }
}

impl fmt::Display for MigrationStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::Setup => "setup",
            Self::Active => "active",
            Self::Device => "device",
            Self::PreSwitchover => "pre-switchover",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelling => "cancelling",
            Self::Cancelled => "cancelled",
            Self::PostcopyActive => "postcopy-active",
            Self::Other(s) => s,
        })
    }
}

/// The reply of `query-migrate`: every field is absent in some status, so all are optional.
/// Times are milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MigrationInfo {
    pub status: Option<MigrationStatus>,
    pub total_time: Option<u64>,
    /// The VM's actual pause, known once the migration has completed.
    pub downtime: Option<u64>,
    /// QEMU's estimate of the pause while the migration is active.
    pub expected_downtime: Option<u64>,
    pub setup_time: Option<u64>,
    pub ram: Option<RamStats>,
    pub error_desc: Option<String>,
}

/// The RAM part of `query-migrate`. Sizes are bytes.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct RamStats {
    pub transferred: u64,
    pub remaining: u64,
    pub total: u64,
    pub duplicate: u64,
    pub normal: u64,
    pub normal_bytes: u64,
    /// How many times the dirty bitmap was synchronised: one per pass over the RAM.
    pub dirty_sync_count: u64,
    /// Pages dirtied per second, as last measured.
    pub dirty_pages_rate: u64,
    /// The transfer rate, in megabits per second.
    pub mbps: f64,
    pub pages_per_second: u64,
    /// The guest page size QEMU counts dirty pages in (0 if it does not say).
    pub page_size: u64,
    pub precopy_bytes: u64,
    /// What the final stop-and-copy sent.
    pub downtime_bytes: u64,
}

/// One migration capability (`events`, `postcopy-ram`, ...) and whether it is on.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Capability {
    pub capability: String,
    pub state: bool,
}

/// Parameters of `migrate-set-parameters`; `None` leaves a parameter as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct MigrationParameters {
    /// The longest pause (ms) QEMU may plan for its final stop-and-copy (QEMU's default: 300).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub downtime_limit: Option<u64>,
    /// Bytes per second for the live phase (it does not cap the final stop-and-copy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bandwidth: Option<u64>,
}

/// One network device's receive filter, from `query-rx-filter`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RxFilterInfo {
    /// The device's id (the `id=` of `-device`), or QEMU's generated name for it.
    pub name: String,
    /// The MAC address the guest programmed, `52:54:00:..` style.
    pub main_mac: String,
}

/// A connection to one QEMU's QMP socket, in command mode.
#[derive(Debug)]
pub struct Qmp {
    path: PathBuf,
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    /// Bytes of a line not yet complete (kept across a timed-out read).
    partial: Vec<u8>,
    events: VecDeque<Event>,
    greeting: Greeting,
    timeout: Duration,
    next_id: u64,
    /// The process at the other end of the socket, if this one's pid namespace sees it.
    peer_pid: Option<u32>,
}

impl Qmp {
    /// Connects to the socket at `path` (retrying while QEMU has not yet created it or does
    /// not yet listen), reads the greeting and enters command mode. `timeout` bounds the
    /// whole connection and is then the default wait of every command.
    pub async fn connect(path: impl AsRef<Path>, timeout: Duration) -> Result<Self, QmpError> {
        let path = path.as_ref().to_path_buf();
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(&path).await {
                Ok(stream) => break stream,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                    ) && Instant::now() + CONNECT_RETRY < deadline =>
                {
                    tokio::time::sleep(CONNECT_RETRY).await;
                }
                Err(source) => return Err(QmpError::Connect { path, source }),
            }
        };
        Self::handshake(stream, path, timeout, deadline).await
    }

    /// Reads the greeting on `stream` and negotiates command mode, by `deadline`.
    async fn handshake(
        stream: UnixStream,
        path: PathBuf,
        timeout: Duration,
        deadline: Instant,
    ) -> Result<Self, QmpError> {
        let peer_pid = stream
            .peer_cred()
            .ok()
            .and_then(|c| c.pid())
            .and_then(|pid| u32::try_from(pid).ok())
            .filter(|&pid| pid != 0);
        let (read, writer) = stream.into_split();
        let mut qmp = Self {
            path,
            reader: BufReader::new(read),
            writer,
            partial: Vec::new(),
            events: VecDeque::new(),
            greeting: Greeting {
                version: GreetingVersion {
                    qemu: VersionTriple {
                        major: 0,
                        minor: 0,
                        micro: 0,
                    },
                    package: String::new(),
                },
                capabilities: Vec::new(),
            },
            timeout,
            next_id: 0,
            peer_pid,
        };
        let doing = "waiting for the greeting";
        loop {
            match qmp.read_message(deadline, doing).await? {
                Message::Greeting { qmp: greeting } => {
                    qmp.greeting = greeting;
                    break;
                }
                Message::Event(event) => qmp.events.push_back(event),
                other => return Err(qmp.unexpected(doing, &other)),
            }
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        qmp.execute_within::<Value>("qmp_capabilities", Value::Null, remaining)
            .await?;
        Ok(qmp)
    }

    /// The socket this client talks to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The QEMU process this client talks to (its socket's peer), unless it runs in a pid
    /// namespace this one does not see.
    pub fn peer_pid(&self) -> Option<u32> {
        self.peer_pid
    }

    /// What QEMU said when the connection opened.
    pub fn greeting(&self) -> &Greeting {
        &self.greeting
    }

    /// The default wait for a command's reply.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Changes the default wait for a command's reply.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Runs `command` with `args` (`Value::Null` for none) and returns its typed reply,
    /// waiting at most the default timeout.
    pub async fn execute<T: DeserializeOwned>(
        &mut self,
        command: &str,
        args: Value,
    ) -> Result<T, QmpError> {
        self.execute_within(command, args, self.timeout).await
    }

    /// Runs `command` with `args`, waiting at most `timeout` for its reply. Events that
    /// arrive meanwhile are buffered for [`Qmp::next_event`].
    pub async fn execute_within<T: DeserializeOwned>(
        &mut self,
        command: &str,
        args: Value,
        timeout: Duration,
    ) -> Result<T, QmpError> {
        let deadline = Instant::now() + timeout;
        self.next_id += 1;
        let id = self.next_id;
        let mut request = json!({ "execute": command, "id": id });
        if !args.is_null() {
            request["arguments"] = args;
        }
        let mut line = request.to_string();
        line.push('\n');
        let doing = format!("sending `{command}`");
        match tokio::time::timeout_at(deadline.into(), self.writer.write_all(line.as_bytes())).await
        {
            Ok(Ok(())) => {}
            Ok(Err(source)) => {
                return Err(QmpError::Io {
                    path: self.path.clone(),
                    doing,
                    source,
                });
            }
            Err(_) => return Err(self.timed_out(doing, timeout)),
        }
        let doing = format!("waiting for the reply to `{command}`");
        let value = loop {
            let message = match self.read_message(deadline, &doing).await {
                Err(e) if e.is_timeout() => return Err(self.timed_out(doing, timeout)),
                other => other?,
            };
            match message {
                Message::Event(event) => self.events.push_back(event),
                Message::Return {
                    value,
                    id: Some(got),
                } if got == id => break value,
                Message::Error {
                    error,
                    id: Some(got),
                } if got == id => {
                    return Err(QmpError::Command {
                        path: self.path.clone(),
                        command: command.to_owned(),
                        class: error.class,
                        desc: error.desc,
                    });
                }
                // The late reply of a command that timed out earlier.
                Message::Return { id: Some(_), .. } | Message::Error { id: Some(_), .. } => {}
                other => return Err(self.unexpected(&doing, &other)),
            }
        };
        serde_json::from_value(value.clone()).map_err(|source| QmpError::Return {
            path: self.path.clone(),
            command: command.to_owned(),
            value: value.to_string(),
            source,
        })
    }

    /// The next event, buffered or read within `timeout`; `None` if none came in time.
    pub async fn next_event(&mut self, timeout: Duration) -> Result<Option<Event>, QmpError> {
        if let Some(event) = self.events.pop_front() {
            return Ok(Some(event));
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.read_message(deadline, "waiting for an event").await {
                Ok(Message::Event(event)) => return Ok(Some(event)),
                // A late reply to a command that timed out.
                Ok(Message::Return { id: Some(_), .. } | Message::Error { id: Some(_), .. }) => {}
                Ok(other) => return Err(self.unexpected("waiting for an event", &other)),
                Err(e) if e.is_timeout() => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits up to `timeout` for an event that satisfies `matches`; the events that do not,
    /// and the matching one, all stay in order in `seen` for the caller.
    pub async fn wait_event(
        &mut self,
        timeout: Duration,
        seen: &mut Vec<Event>,
        matches: impl Fn(&Event) -> bool,
    ) -> Result<Event, QmpError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left).await? {
                Some(event) => {
                    seen.push(event.clone());
                    if matches(&event) {
                        return Ok(event);
                    }
                }
                None => return Err(self.timed_out("waiting for an awaited event".into(), timeout)),
            }
        }
    }

    /// Takes every event buffered so far, without reading the socket.
    pub fn drain_events(&mut self) -> Vec<Event> {
        self.events.drain(..).collect()
    }

    /// `query-status`: whether the VM runs, and its run state.
    pub async fn query_status(&mut self) -> Result<StatusInfo, QmpError> {
        self.execute("query-status", Value::Null).await
    }

    /// `migrate-set-capabilities`, each capability (`events`, `postcopy-ram`, ...) to its state.
    pub async fn migrate_set_capabilities(
        &mut self,
        capabilities: &[(&str, bool)],
    ) -> Result<(), QmpError> {
        let list: Vec<Value> = capabilities
            .iter()
            .map(|(name, state)| json!({ "capability": name, "state": state }))
            .collect();
        self.execute::<Value>("migrate-set-capabilities", json!({ "capabilities": list }))
            .await
            .map(drop)
    }

    /// `query-migrate-capabilities`: every migration capability QEMU knows, and its state.
    pub async fn query_migrate_capabilities(&mut self) -> Result<Vec<Capability>, QmpError> {
        self.execute("query-migrate-capabilities", Value::Null)
            .await
    }

    /// Turns on `MIGRATION` and `MIGRATION_PASS` events (needed on both ends).
    pub async fn enable_migration_events(&mut self) -> Result<(), QmpError> {
        self.migrate_set_capabilities(&[("events", true)]).await
    }

    /// `migrate-set-parameters` with the parameters that are set.
    pub async fn migrate_set_parameters(
        &mut self,
        parameters: &MigrationParameters,
    ) -> Result<(), QmpError> {
        let args = serde_json::to_value(parameters).expect("parameters serialize to JSON");
        self.execute::<Value>("migrate-set-parameters", args)
            .await
            .map(drop)
    }

    /// Starts an outgoing migration to `uri` (`tcp:ADDR:PORT`); it then proceeds in QEMU.
    pub async fn migrate(&mut self, uri: &str) -> Result<(), QmpError> {
        self.execute::<Value>("migrate", json!({ "uri": uri }))
            .await
            .map(drop)
    }

    /// Cancels the outgoing migration (the destination QEMU then exits).
    pub async fn migrate_cancel(&mut self) -> Result<(), QmpError> {
        self.execute::<Value>("migrate_cancel", Value::Null)
            .await
            .map(drop)
    }

    /// `query-migrate`: the status and statistics of the current or last migration.
    pub async fn query_migrate(&mut self) -> Result<MigrationInfo, QmpError> {
        self.execute("query-migrate", Value::Null).await
    }

    /// `query-rx-filter` for every network device (`name: None`) or for the device `name`.
    pub async fn query_rx_filter(
        &mut self,
        name: Option<&str>,
    ) -> Result<Vec<RxFilterInfo>, QmpError> {
        let args = name.map_or(Value::Null, |n| json!({ "name": n }));
        self.execute("query-rx-filter", args).await
    }

    /// The MAC address of the network device `name` (the `id=` of its `-device`).
    pub async fn mac_of(&mut self, name: &str) -> Result<String, QmpError> {
        let filters = self.query_rx_filter(Some(name)).await?;
        filters
            .into_iter()
            .next()
            .map(|f| f.main_mac)
            .ok_or_else(|| QmpError::Unexpected {
                path: self.path.clone(),
                doing: format!("reading the MAC address of `{name}`"),
                message: "empty query-rx-filter reply".into(),
            })
    }

    /// `stop`: pauses the VM.
    pub async fn stop(&mut self) -> Result<(), QmpError> {
        self.execute::<Value>("stop", Value::Null).await.map(drop)
    }

    /// `cont`: resumes a paused VM.
    pub async fn cont(&mut self) -> Result<(), QmpError> {
        self.execute::<Value>("cont", Value::Null).await.map(drop)
    }

    /// `quit`: QEMU exits right after replying.
    pub async fn quit(&mut self) -> Result<(), QmpError> {
        self.execute::<Value>("quit", Value::Null).await.map(drop)
    }

    /// Reads and parses one message, by `deadline`. An event is stamped with the moment its
    /// line was read.
    async fn read_message(&mut self, deadline: Instant, doing: &str) -> Result<Message, QmpError> {
        loop {
            // `read_until` keeps what it has read in `partial` if the deadline cancels it;
            // QEMU is not trusted to end its lines, so a line may not grow past the limit.
            let room = (MAX_LINE - self.partial.len()) as u64;
            let read = tokio::time::timeout_at(
                deadline.into(),
                (&mut self.reader)
                    .take(room)
                    .read_until(b'\n', &mut self.partial),
            )
            .await;
            let received = Instant::now();
            match read {
                Err(_) => {
                    let timeout = deadline.saturating_duration_since(received);
                    return Err(self.timed_out(doing.to_owned(), timeout));
                }
                Ok(Err(source)) => {
                    return Err(QmpError::Io {
                        path: self.path.clone(),
                        doing: doing.to_owned(),
                        source,
                    });
                }
                Ok(Ok(0)) => {
                    return Err(QmpError::Closed {
                        path: self.path.clone(),
                        doing: doing.to_owned(),
                    });
                }
                Ok(Ok(_)) => {}
            }
            if self.partial.last() != Some(&b'\n') {
                if self.partial.len() >= MAX_LINE {
                    self.partial.clear();
                    return Err(QmpError::LineTooLong {
                        path: self.path.clone(),
                        doing: doing.to_owned(),
                    });
                }
                // EOF in the middle of a line: the next read reports the close.
                continue;
            }
            let bytes = std::mem::take(&mut self.partial);
            let line = String::from_utf8_lossy(&bytes);
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let mut message = Message::parse(line).map_err(|source| QmpError::Malformed {
                path: self.path.clone(),
                line: line.chars().take(MALFORMED_SHOWN).collect(),
                source,
            })?;
            if let Message::Event(event) = &mut message {
                event.received = received;
            }
            return Ok(message);
        }
    }

    fn timed_out(&self, doing: String, timeout: Duration) -> QmpError {
        QmpError::Timeout {
            path: self.path.clone(),
            doing,
            timeout,
        }
    }

    fn unexpected(&self, doing: &str, message: &Message) -> QmpError {
        QmpError::Unexpected {
            path: self.path.clone(),
            doing: doing.to_owned(),
            message: format!("{message:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    use super::*;

    // Lines as QEMU 7.2 sends them.
    const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}"#;
    const RETURN_STATUS: &str =
        r#"{"return": {"status": "postmigrate", "singlestep": false, "running": false}, "id": 3}"#;
    const ERROR: &str = r#"{"id": 4, "error": {"class": "CommandNotFound", "desc": "The command bogus has not been found"}}"#;
    const MIGRATION: &str = r#"{"timestamp": {"seconds": 1732075680, "microseconds": 123456}, "event": "MIGRATION", "data": {"status": "setup"}}"#;
    const PASS: &str = r#"{"timestamp": {"seconds": 1732075680, "microseconds": 130001}, "event": "MIGRATION_PASS", "data": {"pass": 1}}"#;
    const STOP: &str =
        r#"{"timestamp": {"seconds": 1732075680, "microseconds": 640000}, "event": "STOP"}"#;
    const RESUME: &str =
        r#"{"timestamp": {"seconds": 1732075680, "microseconds": 690500}, "event": "RESUME"}"#;
    const QUERY_MIGRATE: &str = r#"{"return": {"expected-downtime": 300, "status": "completed", "setup-time": 2, "downtime": 38, "total-time": 598, "ram": {"total": 134750208, "postcopy-requests": 0, "dirty-sync-count": 3, "multifd-bytes": 0, "pages-per-second": 40960, "downtime-bytes": 1179648, "page-size": 4096, "remaining": 0, "postcopy-bytes": 0, "mbps": 1262.6, "transferred": 92541107, "dirty-sync-missed-zero-copy": 0, "precopy-bytes": 91361459, "duplicate": 10434, "dirty-pages-rate": 0, "skipped": 0, "normal-bytes": 91086848, "normal": 22238}}, "id": 9}"#;

    fn unwrap_return(message: Message) -> Value {
        match message {
            Message::Return { value, .. } => value,
            other => panic!("not a return: {other:?}"),
        }
    }

    fn unwrap_event(message: Message) -> Event {
        match message {
            Message::Event(event) => event,
            other => panic!("not an event: {other:?}"),
        }
    }

    #[test]
    fn parses_greeting() {
        let Message::Greeting { qmp } = Message::parse(GREETING).unwrap() else {
            panic!("not a greeting");
        };
        assert_eq!(qmp.version.qemu.to_string(), "7.2.22");
        assert_eq!(qmp.capabilities, ["oob"]);
    }

    #[test]
    fn parses_return_and_status() {
        let message = Message::parse(RETURN_STATUS).unwrap();
        let Message::Return { id, .. } = &message else {
            panic!("not a return: {message:?}");
        };
        assert_eq!(id, &Some(json!(3)));
        let status: StatusInfo = serde_json::from_value(unwrap_return(message)).unwrap();
        assert_eq!(status.status, RunState::PostMigrate);
        assert!(!status.running);
        let other: StatusInfo =
            serde_json::from_value(json!({"running": false, "status": "colo"})).unwrap();
        assert_eq!(other.status, RunState::Other("colo".into()));
        assert_eq!(other.status.to_string(), "colo");
    }

    #[test]
    fn parses_error() {
        let Message::Error { error, id } = Message::parse(ERROR).unwrap() else {
            panic!("not an error");
        };
        assert_eq!(id, Some(json!(4)));
        assert_eq!(error.class, "CommandNotFound");
        assert!(error.desc.contains("bogus"));
    }

    #[test]
    fn parses_migration_events() {
        let setup = unwrap_event(Message::parse(MIGRATION).unwrap());
        assert_eq!(setup.migration_status(), Some(MigrationStatus::Setup));
        assert_eq!(setup.migration_pass(), None);
        let pass = unwrap_event(Message::parse(PASS).unwrap());
        assert_eq!(pass.migration_pass(), Some(1));
        assert_eq!(pass.migration_status(), None);
        let stop = unwrap_event(Message::parse(STOP).unwrap());
        let resume = unwrap_event(Message::parse(RESUME).unwrap());
        assert_eq!(stop.event, "STOP");
        assert_eq!(stop.data, Value::Null);
        assert_eq!(resume.timestamp.micros_since(&stop.timestamp), 50_500);
    }

    #[test]
    fn parses_query_migrate() {
        let info: MigrationInfo =
            serde_json::from_value(unwrap_return(Message::parse(QUERY_MIGRATE).unwrap())).unwrap();
        assert_eq!(info.status, Some(MigrationStatus::Completed));
        assert!(info.status.as_ref().unwrap().is_final());
        assert_eq!(info.total_time, Some(598));
        assert_eq!(info.downtime, Some(38));
        assert_eq!(info.setup_time, Some(2));
        let ram = info.ram.unwrap();
        assert_eq!(ram.transferred, 92_541_107);
        assert_eq!(ram.dirty_sync_count, 3);
        assert_eq!(ram.downtime_bytes, 1_179_648);
        // Early in a migration most fields are absent.
        let early: MigrationInfo = serde_json::from_value(json!({"status": "setup"})).unwrap();
        assert_eq!(early.ram, None);
    }

    #[test]
    fn serializes_parameters() {
        let params = MigrationParameters {
            downtime_limit: Some(500),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&params).unwrap(),
            json!({"downtime-limit": 500})
        );
    }

    /// A scripted QEMU on the other end of a socket pair.
    struct FakeQemu {
        reader: BufReader<OwnedReadHalf>,
        writer: OwnedWriteHalf,
    }

    impl FakeQemu {
        async fn send(&mut self, line: &str) {
            self.writer
                .write_all(format!("{line}\r\n").as_bytes())
                .await
                .unwrap();
        }

        /// Reads a command; returns its name, arguments and id.
        async fn command(&mut self) -> (String, Value, Value) {
            let mut line = String::new();
            self.reader.read_line(&mut line).await.unwrap();
            let v: Value = serde_json::from_str(&line).unwrap();
            (
                v["execute"].as_str().unwrap().to_owned(),
                v["arguments"].clone(),
                v["id"].clone(),
            )
        }

        async fn reply(&mut self, value: Value, id: &Value) {
            self.send(&json!({"return": value, "id": id}).to_string())
                .await;
        }
    }

    fn pair() -> (UnixStream, FakeQemu) {
        let (client, server) = UnixStream::pair().unwrap();
        let (read, writer) = server.into_split();
        let fake = FakeQemu {
            reader: BufReader::new(read),
            writer,
        };
        (client, fake)
    }

    async fn handshake(client: UnixStream, timeout: Duration) -> Result<Qmp, QmpError> {
        Qmp::handshake(
            client,
            "fake.sock".into(),
            timeout,
            Instant::now() + timeout,
        )
        .await
    }

    #[tokio::test(flavor = "current_thread")]
    async fn talks_to_a_fake_qemu() {
        let (client, mut fake) = pair();
        let server = tokio::spawn(async move {
            fake.send(GREETING).await;
            let (name, args, id) = fake.command().await;
            assert_eq!(name, "qmp_capabilities");
            assert_eq!(args, Value::Null);
            fake.reply(json!({}), &id).await;

            // An event arrives before the reply it must not be lost behind.
            let (name, _, id) = fake.command().await;
            assert_eq!(name, "query-status");
            fake.send(STOP).await;
            fake.reply(json!({"status": "paused", "running": false}), &id)
                .await;

            let (name, _, id) = fake.command().await;
            assert_eq!(name, "bogus");
            fake.send(&json!({"error": {"class": "CommandNotFound", "desc": "The command bogus has not been found"}, "id": id}).to_string()).await;

            // Never answered in time: the client times out, then gets the late reply
            // before the next one and must skip it.
            let (name, _, late_id) = fake.command().await;
            assert_eq!(name, "migrate");
            let (name, args, id) = fake.command().await;
            assert_eq!(name, "migrate-set-parameters");
            assert_eq!(args, json!({"downtime-limit": 100}));
            fake.reply(json!({}), &late_id).await;
            fake.send(RESUME).await;
            fake.reply(json!({}), &id).await;
            fake
        });

        let mut qmp = handshake(client, Duration::from_secs(5)).await.unwrap();
        assert_eq!(qmp.greeting().version.qemu.major, 7);

        let status = qmp.query_status().await.unwrap();
        assert_eq!(status.status, RunState::Paused);
        let stop = qmp
            .next_event(Duration::ZERO)
            .await
            .unwrap()
            .expect("STOP buffered");
        assert_eq!(stop.event, "STOP");
        assert!(stop.received <= Instant::now());

        let err = qmp
            .execute::<Value>("bogus", Value::Null)
            .await
            .unwrap_err();
        assert_eq!(err.class(), Some("CommandNotFound"));
        assert!(err.to_string().contains("`bogus`"), "{err}");
        assert!(err.to_string().contains("fake.sock"), "{err}");

        let err = qmp
            .execute_within::<Value>(
                "migrate",
                json!({"uri": "tcp:x:1"}),
                Duration::from_millis(50),
            )
            .await
            .unwrap_err();
        assert!(err.is_timeout(), "{err}");
        assert!(err.to_string().contains("`migrate`"), "{err}");

        qmp.migrate_set_parameters(&MigrationParameters {
            downtime_limit: Some(100),
            ..Default::default()
        })
        .await
        .unwrap();
        let resume = qmp.next_event(Duration::ZERO).await.unwrap();
        assert_eq!(resume.map(|e| e.event).as_deref(), Some("RESUME"));
        assert_eq!(
            qmp.next_event(Duration::from_millis(20)).await.unwrap(),
            None
        );

        let fake = server.await.unwrap();
        drop(fake);
        let err = qmp.query_status().await.unwrap_err();
        assert!(
            matches!(err, QmpError::Closed { .. } | QmpError::Io { .. }),
            "{err}"
        );
    }

    /// A peer that streams a line without end is cut off at the limit with an error, and
    /// a line just under the limit is still read.
    #[tokio::test(flavor = "current_thread")]
    async fn refuses_a_line_without_end() {
        let (client, mut fake) = pair();
        let server = tokio::spawn(async move {
            fake.send(GREETING).await;
            let (_, _, id) = fake.command().await;
            fake.reply(json!({}), &id).await;
            let (name, _, id) = fake.command().await;
            assert_eq!(name, "query-status");
            // The reply, padded to one byte under the limit with its "\r\n".
            let reply =
                json!({"return": {"status": "running", "running": true}, "id": id}).to_string();
            let pad = MAX_LINE - reply.len() - 2;
            fake.send(&format!("{}{reply}", " ".repeat(pad))).await;
            let (name, _, _) = fake.command().await;
            assert_eq!(name, "query-status");
            let chunk = vec![b'x'; 64 * 1024];
            // Far more than the limit, never a newline; the client stops reading.
            for _ in 0..(4 * MAX_LINE / chunk.len()) {
                if fake.writer.write_all(&chunk).await.is_err() {
                    break;
                }
            }
            fake
        });
        let mut qmp = handshake(client, Duration::from_secs(5)).await.unwrap();
        assert!(qmp.query_status().await.unwrap().running);
        let err = qmp
            .execute_within::<Value>("query-status", Value::Null, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, QmpError::LineTooLong { .. }), "{err}");
        assert!(
            err.to_string().contains("longer than 1048576 bytes"),
            "{err}"
        );
        drop(qmp);
        drop(server.await.unwrap());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn times_out_without_greeting() {
        let (client, fake) = pair();
        let err = handshake(client, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(err.is_timeout(), "{err}");
        assert!(err.to_string().contains("greeting"), "{err}");
        drop(fake);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn connects_by_path() {
        let dir = std::env::temp_dir().join(format!("netpage-qmp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("qmp.sock");
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (read, writer) = stream.into_split();
            let mut fake = FakeQemu {
                reader: BufReader::new(read),
                writer,
            };
            fake.send(MIGRATION).await;
            fake.send(GREETING).await;
            let (_, _, id) = fake.command().await;
            fake.reply(json!({}), &id).await;
            let (name, args, id) = fake.command().await;
            assert_eq!(name, "query-rx-filter");
            assert_eq!(args, json!({"name": "nic0"}));
            fake.reply(json!([{"name": "nic0", "main-mac": "52:54:00:12:34:56", "promiscuous": true, "multicast": "normal", "unicast": "normal", "vlan": "normal", "broadcast-allowed": false, "multicast-overflow": false, "unicast-overflow": false, "unicast-table": [], "multicast-table": [], "vlan-table": []}]), &id).await;
            fake
        });
        let mut qmp = Qmp::connect(&path, Duration::from_secs(5)).await.unwrap();
        assert_eq!(qmp.path(), path);
        assert_eq!(qmp.mac_of("nic0").await.unwrap(), "52:54:00:12:34:56");
        // An event sent before the greeting is kept too.
        let events = qmp.drain_events();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].migration_status(), Some(MigrationStatus::Setup));
        drop(server.await.unwrap());
        std::fs::remove_dir_all(&dir).unwrap();

        let err = Qmp::connect(dir.join("absent.sock"), Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(matches!(err, QmpError::Connect { .. }), "{err}");
    }
}
