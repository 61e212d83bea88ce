//! A libvirtd per emulated host, for end-to-end tests of netpage's libvirt hook and
//! follower: each runs inside its host's network namespace and in a mount namespace of
//! its own, where private directories are bound over /etc/libvirt, /run/libvirt,
//! /var/lib/libvirt, /var/log/libvirt and /var/cache/libvirt, so that two daemons (and
//! their hooks) live side by side on one machine. They listen on TCP without
//! authentication (their namespaces are reachable only from the test's world), run QEMU
//! as root without confinement or cgroups, and are killed, with their guests, on drop.
//!
//! The domain runs the project's QEMU through a wrapper script named in `<emulator>`,
//! which adds QEMU's data directory (`-L`) when QEMU is unpacked under a private prefix.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::netns::output;

/// The user Debian's libvirt is built to run QEMU as: libvirtd refuses to start without
/// it, even when qemu.conf says root. Debian's libvirt-daemon-system creates it; `cargo
/// xtask setup` does, without that package.
pub const QEMU_USER: &str = "libvirt-qemu";
const LIBVIRTD: &str = "/usr/sbin/libvirtd";
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Why libvirt cannot run here, if it cannot.
pub fn skip_reason() -> Option<String> {
    if !Path::new(LIBVIRTD).exists() {
        return Some(format!(
            "no {LIBVIRTD} (Debian's libvirt-daemon and libvirt-daemon-driver-qemu: run `cargo xtask setup`)"
        ));
    }
    if Command::new("virsh").arg("--version").output().is_err() {
        return Some("no virsh (Debian's libvirt-clients: run `cargo xtask setup`)".into());
    }
    let user = Command::new("getent").args(["passwd", QEMU_USER]).output();
    if !user.is_ok_and(|o| o.status.success()) {
        return Some(format!(
            "no user {QEMU_USER}, without which libvirtd does not start (run `cargo xtask setup`)"
        ));
    }
    None
}

/// One libvirtd.
pub struct Libvirtd {
    pub name: String,
    netns: String,
    addr: String,
    /// Its private directories' parent.
    root: PathBuf,
    child: Child,
}

impl Libvirtd {
    /// Starts libvirtd `name` in network namespace `netns`, listening on `addr`, its
    /// private directories under `base/name`, with `hook` (a script's text) as its QEMU
    /// hook; waits until it answers.
    pub fn start(name: &str, netns: &str, addr: &str, base: &Path, hook: Option<&str>) -> Self {
        let root = base.join(name);
        let dirs = ["etc", "run", "lib", "log", "cache"];
        for d in dirs {
            fs::create_dir_all(root.join(d)).expect("libvirtd's private directory");
        }
        fs::write(
            root.join("etc/libvirtd.conf"),
            "listen_tls = 0\nlisten_tcp = 1\nauth_tcp = \"none\"\nauth_unix_rw = \"none\"\n\
             log_outputs = \"3:file:/var/log/libvirt/libvirtd.log\"\n",
        )
        .expect("libvirtd.conf");
        fs::write(
            root.join("etc/qemu.conf"),
            "user = \"root\"\ngroup = \"root\"\ndynamic_ownership = 0\nremember_owner = 0\n\
             security_driver = \"none\"\ncgroup_controllers = [ ]\nnamespaces = [ ]\n\
             stdio_handler = \"file\"\nmigration_address = \"0.0.0.0\"\n",
        )
        .expect("qemu.conf");
        if let Some(hook) = hook {
            fs::create_dir_all(root.join("etc/hooks")).expect("hooks directory");
            write_executable(&root.join("etc/hooks/qemu"), hook);
        }
        let mounts: String = [
            ("etc", "/etc/libvirt"),
            ("run", "/run/libvirt"),
            ("lib", "/var/lib/libvirt"),
            ("log", "/var/log/libvirt"),
            ("cache", "/var/cache/libvirt"),
        ]
        .iter()
        .map(|(d, at)| {
            format!(
                "mkdir -p {at} && mount --bind {} {at} && ",
                root.join(d).display()
            )
        })
        .collect();
        let script =
            format!("{mounts}exec {LIBVIRTD} --listen --pid-file /run/libvirt/libvirtd.pid");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                netns,
                "unshare",
                "--mount",
                "--propagation",
                "private",
            ])
            .args(["sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start libvirtd");
        let mut d = Self {
            name: name.to_owned(),
            netns: netns.to_owned(),
            addr: addr.to_owned(),
            root,
            child,
        };
        d.wait_answering();
        d
    }

    /// The URI that reaches it (from any of the world's namespaces that route to it).
    pub fn uri(&self) -> String {
        format!("qemu+tcp://{}/system", self.addr)
    }

    /// `virsh -c URI ARGS`, run in its network namespace.
    pub fn virsh(&self, args: &[&str]) -> Output {
        output(
            Command::new("ip")
                .args(["netns", "exec", &self.netns, "virsh", "-c", &self.uri()])
                .args(args),
        )
    }

    /// Like [`Libvirtd::virsh`], panicking with the daemon's log unless it succeeds;
    /// returns stdout.
    pub fn virsh_ok(&self, args: &[&str]) -> String {
        let out = self.virsh(args);
        assert!(
            out.status.success(),
            "virsh {} on {} failed: {}{}\n{}",
            args.join(" "),
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The end of its log (warnings and errors).
    pub fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.root.join("log/libvirtd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        format!(
            "libvirtd {} log (last lines):\n{}",
            self.name,
            lines[lines.len().saturating_sub(20)..].join("\n")
        )
    }

    fn wait_answering(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if self.virsh(&["list", "--all"]).status.success() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "libvirtd {} exited ({status}) at start\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "libvirtd {} does not answer within {START_TIMEOUT:?}\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        let running = self.virsh(&["list", "--name"]);
        for domain in String::from_utf8_lossy(&running.stdout).lines() {
            if !domain.trim().is_empty() {
                self.virsh(&["destroy", domain.trim()]);
            }
        }
        // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let _ = self.child.wait();
        // A guest libvirtd could not destroy (it was going away) by its pid file.
        if let Ok(entries) = fs::read_dir(self.root.join("run/qemu")) {
            for e in entries.flatten() {
                if e.path().extension().is_some_and(|x| x == "pid")
                    && let Ok(pid) = fs::read_to_string(e.path())
                    && let Ok(pid) = pid.trim().parse::<libc::pid_t>()
                {
                    // SAFETY: as above; the pid is the guest's QEMU, which this daemon started.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                }
            }
        }
    }
}

fn write_executable(path: &Path, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// The file beside [`emulator_wrapper`]'s script whose words it adds to the command
/// line of an incoming QEMU (one started for a migration's destination), if it exists:
/// for a test to make a destination differ from its source where libvirt does not look.
pub const INCOMING_ARGS: &str = "incoming-args";

/// A script that runs the project's QEMU (with its data directory if it needs one), to
/// name in a domain's `<emulator>`.
pub fn emulator_wrapper(dir: &Path) -> PathBuf {
    let qemu = crate::qemu::binary().expect("a QEMU (checked by the skip reason)");
    let data = qemu
        .data_dir
        .map(|d| format!(" -L {}", d.display()))
        .unwrap_or_default();
    let path = dir.join("qemu-system-x86_64");
    let incoming = dir.join(INCOMING_ARGS);
    write_executable(
        &path,
        &format!(
            "#!/bin/sh\ncase \" $* \" in *\" -incoming \"*) [ -e {i} ] && set -- \"$@\" $(cat {i});; esac\nexec {}{data} \"$@\"\n",
            qemu.path.display(),
            i = incoming.display()
        ),
    );
    path
}

/// What a test domain is made of.
pub struct DomainSpec<'a> {
    pub name: &'a str,
    pub emulator: &'a Path,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub cmdline: &'a str,
    /// A tap that exists already (libvirt opens it, `managed='no'`).
    pub tap: &'a str,
    pub mac: &'a str,
    /// The serial console's log file.
    pub console: &'a Path,
    pub memory_mib: u32,
    /// The `<metadata>` element's content.
    pub metadata: &'a str,
}

/// The domain XML of the machine known to live-migrate between two QEMU 7.2 (see
/// [`crate::qemu`]): TCG, `pc-i440fx-7.2`, `qemu64`, one virtio-net NIC without option
/// ROM, a serial console to a file, no balloon.
pub fn domain_xml(s: &DomainSpec) -> String {
    format!(
        "<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>{mem}</memory>
  <vcpu>1</vcpu>
  <metadata>{metadata}</metadata>
  <os>
    <type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <cpu mode='custom' match='exact'><model fallback='forbid'>qemu64</model></cpu>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <emulator>{emulator}</emulator>
    <interface type='ethernet'>
      <mac address='{mac}'/>
      <target dev='{tap}' managed='no'/>
      <model type='virtio'/>
      <rom enabled='no'/>
    </interface>
    <serial type='file'><source path='{console}'/><target port='0'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>
",
        name = s.name,
        mem = s.memory_mib,
        metadata = s.metadata,
        kernel = s.kernel.display(),
        initrd = s.initrd.display(),
        cmdline = s.cmdline,
        emulator = s.emulator.display(),
        mac = s.mac,
        tap = s.tap,
        console = s.console.display(),
    )
}
