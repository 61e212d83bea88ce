//! A QEMU guest running inside a named network namespace, attached to a tap that QEMU
//! creates there, controlled over a QMP unix socket and killed on drop.
//!
//! The machine is the one known to live-migrate between two QEMU 7.2 processes: machine type
//! `pc-i440fx-7.2`, CPU model `qemu64`, no default devices, a serial console to a log file,
//! and one virtio-net NIC with a fixed MAC and no option ROM. The same options with
//! `incoming` set give the matching destination of a live migration.
//!
//! [`binary`] is the one place that says which QEMU runs.

mod location;

use std::{
    fs::{self, File},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use self::location::{PRIVATE_BINARY, PRIVATE_PREFIX, QEMU_ENV, QEMU_NAME};
use crate::guest::{Guest, READY_MARKER};

/// The `id=` of the guest's NIC, for QMP commands such as `query-rx-filter`.
pub const NIC_ID: &str = "nic0";
/// The environment variable that overrides the accelerator choice (`kvm` or `tcg`).
pub const ACCEL_ENV: &str = "NETPAGE_QEMU_ACCEL";

/// The accelerator to run the guest with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Accel {
    /// KVM if [`kvm_usable`], else TCG (or what `NETPAGE_QEMU_ACCEL` says).
    #[default]
    Auto,
    Kvm,
    Tcg,
}

impl Accel {
    /// `kvm` or `tcg`, with `Auto` resolved.
    pub fn resolve(self) -> Accel {
        match self {
            Accel::Auto => match std::env::var(ACCEL_ENV).as_deref() {
                Ok("kvm") => Accel::Kvm,
                Ok("tcg") => Accel::Tcg,
                _ if kvm_usable() => Accel::Kvm,
                _ => Accel::Tcg,
            },
            other => other,
        }
    }

    fn name(self) -> &'static str {
        match self.resolve() {
            Accel::Kvm => "kvm",
            _ => "tcg",
        }
    }
}

/// Whether KVM can run this guest: /dev/kvm opens and is backed by hardware virtualisation
/// (`kvm_intel` or `kvm_amd`). A paravirtual KVM such as `kvm_pvm` cannot boot it: `-cpu
/// host` aborts and other CPU models hang.
pub fn kvm_usable() -> bool {
    let hardware = ["kvm_intel", "kvm_amd"]
        .iter()
        .any(|m| Path::new("/sys/module").join(m).exists());
    hardware
        && fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok()
}

/// A QEMU binary, and the data directory (firmware, option ROMs) to give it with `-L` when
/// it lies beside the binary rather than where the binary was built to look.
#[derive(Debug, Clone)]
pub struct Binary {
    pub path: PathBuf,
    pub data_dir: Option<PathBuf>,
}

impl Binary {
    /// `path`, with `BIN/../share/qemu` as its data directory if that exists (a QEMU
    /// unpacked under a prefix, or installed under its own).
    fn with_data_beside(path: PathBuf) -> Self {
        let data_dir = path
            .parent()
            .and_then(Path::parent)
            .map(|p| p.join("share/qemu"))
            .filter(|d| d.is_dir());
        Self { path, data_dir }
    }

    /// Whether `BIN --version` succeeds.
    fn runs(&self) -> bool {
        Command::new(&self.path)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }
}

/// The QEMU to start: the binary `NETPAGE_QEMU` names if it is set, else
/// `qemu-system-x86_64` on PATH, else the one `cargo xtask setup` unpacked under its
/// private prefix (`location::PRIVATE_PREFIX`). The error says why none runs.
pub fn binary() -> Result<Binary, String> {
    static FOUND: OnceLock<Result<Binary, String>> = OnceLock::new();
    FOUND.get_or_init(find_binary).clone()
}

fn find_binary() -> Result<Binary, String> {
    if let Some(path) = std::env::var_os(QEMU_ENV) {
        let named = Binary::with_data_beside(path.into());
        return if named.runs() {
            Ok(named)
        } else {
            Err(format!(
                "{QEMU_ENV}={} does not run (`--version` fails)",
                named.path.display()
            ))
        };
    }
    let on_path = Binary {
        path: QEMU_NAME.into(),
        data_dir: None,
    };
    if on_path.runs() {
        return Ok(on_path);
    }
    let private = Binary::with_data_beside(Path::new(PRIVATE_PREFIX).join(PRIVATE_BINARY));
    if private.runs() {
        return Ok(private);
    }
    Err(format!(
        "no QEMU: {QEMU_NAME} is not on PATH, none runs under {PRIVATE_PREFIX}, and \
         {QEMU_ENV} is not set (run `cargo xtask setup`)"
    ))
}

/// How to start one QEMU.
#[derive(Debug, Clone)]
pub struct QemuOptions {
    /// A short name for logs and file names (`src`, `dst`, ...).
    pub name: String,
    /// The network namespace QEMU runs in (and creates its tap in).
    pub netns: String,
    /// The tap's name in that namespace.
    pub tap: String,
    /// The NIC's MAC address (`52:54:00:..`); the same on both ends of a migration.
    pub mac: String,
    /// The kernel and initramfs.
    pub guest: Guest,
    /// The kernel command line ([`crate::guest::BootParams::cmdline`]).
    pub append: String,
    /// Guest RAM in MiB: the Debian cloud kernel needs 80 or more.
    pub memory_mib: u32,
    /// `tcp:ADDR:PORT` to wait for an incoming migration instead of booting.
    pub incoming: Option<String>,
    /// More properties of the NIC (`,prop=value...`), for a device that differs from
    /// the other end's.
    pub nic_extra: String,
    /// A second QMP socket ([`Qemu::watch_qmp_path`]), for a test to follow QEMU's
    /// events while another client holds the first (QEMU serves one client a socket).
    pub watch_qmp: bool,
    pub accel: Accel,
}

impl QemuOptions {
    /// Options with 128 MiB, the accelerator chosen automatically, and no incoming migration.
    pub fn new(
        name: &str,
        netns: &str,
        tap: &str,
        mac: &str,
        guest: &Guest,
        append: String,
    ) -> Self {
        Self {
            name: name.to_owned(),
            netns: netns.to_owned(),
            tap: tap.to_owned(),
            mac: mac.to_owned(),
            guest: guest.clone(),
            append,
            memory_mib: 128,
            incoming: None,
            nic_extra: String::new(),
            watch_qmp: false,
            accel: Accel::Auto,
        }
    }
}

/// A running QEMU, killed when dropped.
#[derive(Debug)]
pub struct Qemu {
    child: Child,
    name: String,
    netns: String,
    tap: String,
    mac: String,
    accel: Accel,
    dir: PathBuf,
    started: Instant,
}

impl Qemu {
    /// Starts QEMU inside `opts.netns`. Its QMP socket, serial log and stderr
    /// go to a fresh directory under the system's temporary directory.
    pub fn start(opts: QemuOptions) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "netpage-qemu-{}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            opts.name
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let accel = opts.accel.resolve();
        let qemu = binary().unwrap_or_else(|why| panic!("qemu {}: {why}", opts.name));
        let stderr = File::create(dir.join("stderr"))
            .unwrap_or_else(|e| panic!("create {}: {e}", dir.join("stderr").display()));

        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &opts.netns])
            .arg(&qemu.path)
            .args(["-name", &opts.name])
            .args(["-machine", "pc-i440fx-7.2"])
            .args(["-accel", accel.name(), "-cpu", "qemu64"])
            .args(["-m", &opts.memory_mib.to_string()])
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .arg("-no-reboot")
            .arg("-serial")
            .arg(format!("file:{}", dir.join("serial.log").display()))
            .arg("-kernel")
            .arg(opts.guest.kernel())
            .arg("-initrd")
            .arg(opts.guest.initrd())
            .args(["-append", &opts.append])
            .arg("-netdev")
            .arg(format!(
                "tap,id=n0,ifname={},script=no,downscript=no",
                opts.tap
            ))
            .arg("-device")
            .arg(format!(
                "virtio-net-pci,netdev=n0,id={NIC_ID},mac={},romfile={}",
                opts.mac, opts.nic_extra
            ))
            .arg("-qmp")
            .arg(format!(
                "unix:{},server=on,wait=off",
                dir.join("qmp.sock").display()
            ));
        if let Some(data_dir) = &qemu.data_dir {
            cmd.arg("-L").arg(data_dir);
        }
        if let Some(incoming) = &opts.incoming {
            cmd.args(["-incoming", incoming]);
        }
        if opts.watch_qmp {
            cmd.arg("-qmp").arg(format!(
                "unix:{},server=on,wait=off",
                dir.join("watch.sock").display()
            ));
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr));
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start {} in {}: {e}",
                qemu.path.display(),
                opts.netns
            )
        });
        eprintln!(
            "qemu {}: {} started in netns {} with accel {}{}",
            opts.name,
            qemu.path.display(),
            opts.netns,
            accel.name(),
            opts.incoming
                .as_deref()
                .map(|i| format!(", incoming {i}"))
                .unwrap_or_default()
        );
        Self {
            child,
            name: opts.name,
            netns: opts.netns,
            tap: opts.tap,
            mac: opts.mac,
            accel,
            dir,
            started: Instant::now(),
        }
    }

    /// Waits until the guest prints its ready marker on the serial console; returns the time
    /// since start. Panics with the end of the serial log and QEMU's stderr if it does not
    /// come within `timeout` or QEMU exits.
    pub fn wait_ready(&mut self, timeout: Duration) -> Duration {
        let deadline = Instant::now() + timeout;
        loop {
            if self.serial_log().contains(READY_MARKER) {
                return self.started.elapsed();
            }
            if let Some(status) = self.exit_status() {
                panic!(
                    "qemu {} exited ({status}) before the guest was ready\n{}",
                    self.name,
                    self.diagnostics()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "guest in qemu {} not ready within {timeout:?}\n{}",
                    self.name,
                    self.diagnostics()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until QEMU has created its tap in the namespace. Panics if it does not within
    /// `timeout` or QEMU exits.
    pub fn wait_tap(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let shown = Command::new("ip")
                .args(["-n", &self.netns, "link", "show", "dev", &self.tap])
                .output()
                .is_ok_and(|o| o.status.success());
            if shown {
                return;
            }
            if let Some(status) = self.exit_status() {
                panic!(
                    "qemu {} exited ({status}) before creating tap {}\n{}",
                    self.name,
                    self.tap,
                    self.diagnostics()
                );
            }
            assert!(
                Instant::now() < deadline,
                "qemu {} created no tap {} in {} within {timeout:?}\n{}",
                self.name,
                self.tap,
                self.netns,
                self.diagnostics()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The exit status if QEMU has exited, `None` while it runs.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child
            .try_wait()
            .unwrap_or_else(|e| panic!("wait for qemu {}: {e}", self.name))
    }

    /// Panics with the exit status and QEMU's output unless QEMU is still running.
    pub fn assert_alive(&mut self) {
        if let Some(status) = self.exit_status() {
            panic!(
                "qemu {} has exited ({status})\n{}",
                self.name,
                self.diagnostics()
            );
        }
    }

    /// Waits up to `timeout` for QEMU to exit on its own (after `quit`, or as a cancelled
    /// migration's destination); its status, or `None` if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The QMP unix socket.
    pub fn qmp_path(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }

    /// The second QMP socket, if started with [`QemuOptions::watch_qmp`].
    pub fn watch_qmp_path(&self) -> PathBuf {
        self.dir.join("watch.sock")
    }

    /// The serial console's log file.
    pub fn serial_path(&self) -> PathBuf {
        self.dir.join("serial.log")
    }

    /// What the guest has printed on its serial console so far.
    pub fn serial_log(&self) -> String {
        fs::read(self.serial_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// What QEMU has printed on its standard error so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }

    /// The end of the serial log and QEMU's stderr, for failure messages.
    pub fn diagnostics(&self) -> String {
        let serial = self.serial_log();
        let lines: Vec<&str> = serial.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        format!(
            "--- serial log (last 30 lines) of {}:\n{tail}\n--- qemu stderr:\n{}",
            self.name,
            self.stderr()
        )
    }

    /// The tap's name in the namespace.
    pub fn tap(&self) -> &str {
        &self.tap
    }

    /// The NIC's MAC address.
    pub fn mac(&self) -> &str {
        &self.mac
    }

    /// The namespace QEMU runs in.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The accelerator QEMU was started with (`Kvm` or `Tcg`).
    pub fn accel(&self) -> Accel {
        self.accel
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            eprintln!("qemu {}: files kept in {}", self.name, self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}
