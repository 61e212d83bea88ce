//! A tiny VM guest built from Debian packages only: the cloud kernel and an initramfs of
//! busybox, the virtio-net modules and an /init that configures eth0 from the kernel command
//! line and serves a TCP echo (port 7), a web page (port 80) and its own network counters
//! (`/cgi-bin/counters` on port 80).
//!
//! The kernel comes from `apt-get download` of the package `linux-image-cloud-amd64` depends
//! on; its virtio drivers are modules without a modules.dep, so /init loads them with insmod
//! in dependency order. The result is cached under `target/guest/<key>/`, the key naming the
//! kernel package version and a hash of everything else that goes in, and is built in a
//! private directory renamed into place, so parallel builds are safe and later runs reuse it.
//!
//! busybox (1.35, Debian's static build) has no UDP mode in `nc` and no inetd or udpsvd, so
//! the guest offers no UDP echo service.

use std::{
    fmt::Write as _,
    fs,
    net::{Ipv4Addr, Ipv6Addr},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use crate::netns::check;

/// What /init prints on the serial console once every service is up.
pub const READY_MARKER: &str = "NETPAGE-GUEST-READY";
/// The first line of the page the guest's web server serves.
pub const PAGE_MARKER: &str = "netpage guest";
/// The guest's TCP echo port.
pub const ECHO_PORT: u16 = 7;
/// The guest's web server port.
pub const HTTP_PORT: u16 = 80;
/// The path of the guest's network counters on its web server.
pub const COUNTERS_PATH: &str = "/cgi-bin/counters";

/// The metapackage whose dependency names the current cloud kernel.
const KERNEL_METAPACKAGE: &str = "linux-image-cloud-amd64";
/// Debian's static busybox (package busybox-static).
const BUSYBOX: &str = "/bin/busybox";
/// The virtio-net modules, in the order they must be loaded.
const MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "failover",
    "net_failover",
    "virtio_net",
];

/// The guest's /init. It reads `np.ip=ADDR/PREFIX np.gw=GW np.ip6=ADDR/PREFIX np.gw6=GW
/// np.dirty=MIB` from /proc/cmdline; every one is optional.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci failover net_failover virtio_net; do
    insmod /lib/modules/$m.ko || echo "np: insmod $m failed"
done
ip=; gw=; ip6=; gw6=; dirty=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        np.ip=*) ip=${arg#np.ip=} ;;
        np.gw=*) gw=${arg#np.gw=} ;;
        np.ip6=*) ip6=${arg#np.ip6=} ;;
        np.gw6=*) gw6=${arg#np.gw6=} ;;
        np.dirty=*) dirty=${arg#np.dirty=} ;;
    esac
done
ip link set lo up
n=0
while [ ! -e /sys/class/net/eth0 ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
[ -e /proc/sys/net/ipv6/conf/eth0/accept_dad ] && echo 0 > /proc/sys/net/ipv6/conf/eth0/accept_dad
ip link set eth0 up
[ -n "$ip" ] && ip addr add "$ip" dev eth0
if [ -n "$gw" ]; then
    # A gateway outside the guest's prefix (a /32) needs a route to it first.
    ip route add "$gw" dev eth0
    ip route add default via "$gw" dev eth0
fi
[ -n "$ip6" ] && ip -6 addr add "$ip6" dev eth0
if [ -n "$gw6" ]; then
    ip -6 route add "$gw6" dev eth0
    ip -6 route add default via "$gw6" dev eth0
fi
mkdir -p /www/cgi-bin
echo "netpage guest" > /www/index.html
echo "ipv4 $ip ipv6 $ip6" >> /www/index.html
# The guest's own network counters, for a test that lost a packet to tell where.
cat > /www/cgi-bin/counters <<'EOF'
#!/bin/sh
printf 'Content-Type: text/plain\r\n\r\n'
for f in /proc/net/dev /proc/net/snmp /proc/net/netstat /proc/net/softnet_stat; do
    echo "== $f"; cat $f
done
echo "== /proc/net/arp"; cat /proc/net/arp; echo "== ip neigh"; ip neigh 2>&1
echo "== kernel log"; dmesg | tail -n 20
EOF
chmod 755 /www/cgi-bin/counters
httpd -p 80 -h /www
nc -ll -p 7 -e cat &
if [ -n "$dirty" ] && [ "$dirty" -gt 0 ]; then
    # Rewrites DIRTY MiB of random (so not zero-page-compressible) tmpfs pages in place,
    # as fast as the guest can.
    dd if=/dev/urandom of=/tmp/dirty bs=1M count="$dirty" 2>/dev/null
    (while :; do dd if=/tmp/dirty of=/tmp/dirty bs=1M conv=notrunc 2>/dev/null; done) &
    echo "np: dirtying $dirty MiB"
fi
ip addr show dev eth0
ip route
echo NETPAGE-GUEST-READY
while :; do sleep 3600; done
"#;

/// The guest's boot parameters, turned into the kernel command line by [`BootParams::cmdline`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootParams {
    /// eth0's IPv4 address and prefix length.
    pub ipv4: Option<(Ipv4Addr, u8)>,
    /// The IPv4 default gateway (reachable on eth0 even outside the prefix).
    pub gw4: Option<Ipv4Addr>,
    /// eth0's IPv6 address and prefix length.
    pub ipv6: Option<(Ipv6Addr, u8)>,
    /// The IPv6 default gateway.
    pub gw6: Option<Ipv6Addr>,
    /// MiB of tmpfs the guest rewrites in a loop, to dirty memory faster than a migration
    /// can copy it (0: none). Keep it under about 48 in a 128 MiB guest.
    pub dirty_mib: u32,
}

impl BootParams {
    /// The kernel command line: serial console, no reboot on panic (QEMU then exits with
    /// `-no-reboot`), and the `np.*` parameters /init reads.
    pub fn cmdline(&self) -> String {
        let mut s = String::from("console=ttyS0 panic=-1");
        if let Some((addr, len)) = self.ipv4 {
            write!(s, " np.ip={addr}/{len}").unwrap();
        }
        if let Some(gw) = self.gw4 {
            write!(s, " np.gw={gw}").unwrap();
        }
        if let Some((addr, len)) = self.ipv6 {
            write!(s, " np.ip6={addr}/{len}").unwrap();
        }
        if let Some(gw) = self.gw6 {
            write!(s, " np.gw6={gw}").unwrap();
        }
        if self.dirty_mib > 0 {
            write!(s, " np.dirty={}", self.dirty_mib).unwrap();
        }
        s
    }
}

/// A built guest: a kernel and an initramfs.
#[derive(Debug, Clone)]
pub struct Guest {
    dir: PathBuf,
    kernel_release: String,
}

impl Guest {
    /// The guest, built unless a cached build with the same inputs exists. Panics, naming
    /// the step, if it cannot be built; [`missing_prerequisites`] tells beforehand whether
    /// the tools are there.
    pub fn build() -> Self {
        let started = Instant::now();
        let package = kernel_package();
        let version = package_version(&package);
        let release = package
            .strip_prefix("linux-image-")
            .unwrap_or(&package)
            .to_owned();
        let key = format!(
            "{release}_{}_{:016x}",
            version.replace([':', '/'], "_"),
            inputs_hash()
        );
        let root = target_dir().join("guest");
        let dir = root.join(&key);
        let guest = Self {
            dir,
            kernel_release: release,
        };
        if guest.kernel().exists() && guest.initrd().exists() {
            return guest;
        }
        fs::create_dir_all(&root).unwrap_or_else(|e| panic!("create {}: {e}", root.display()));
        let work = root.join(format!(".build-{key}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&work);
        fs::create_dir_all(&work).unwrap_or_else(|e| panic!("create {}: {e}", work.display()));
        let out = build_into(&work, &package);
        match fs::rename(&out, &guest.dir) {
            Ok(()) => {}
            // Another build won the race; its result is as good as ours.
            Err(_) if guest.initrd().exists() => {}
            Err(e) => panic!("rename {} to {}: {e}", out.display(), guest.dir.display()),
        }
        let _ = fs::remove_dir_all(&work);
        eprintln!(
            "guest: built {} in {:.1} s",
            guest.dir.display(),
            started.elapsed().as_secs_f64()
        );
        guest
    }

    /// The kernel image (`vmlinuz`).
    pub fn kernel(&self) -> PathBuf {
        self.dir.join("vmlinuz")
    }

    /// The initramfs (`initramfs.cpio.gz`).
    pub fn initrd(&self) -> PathBuf {
        self.dir.join("initramfs.cpio.gz")
    }

    /// The kernel release (`6.1.0-NN-cloud-amd64`).
    pub fn kernel_release(&self) -> &str {
        &self.kernel_release
    }
}

/// What is missing on this machine to build the guest, if anything (`cargo xtask setup`
/// installs it all).
pub fn missing_prerequisites() -> Option<String> {
    let mut missing = Vec::new();
    if !Path::new(BUSYBOX).exists() {
        missing.push("busybox (package busybox-static)");
    }
    for (tool, package) in [
        ("cpio", "cpio"),
        ("gzip", "gzip"),
        ("apt-get", "apt"),
        ("dpkg-deb", "dpkg"),
    ] {
        let found = Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            missing.push(package);
        }
    }
    (!missing.is_empty()).then(|| {
        format!(
            "cannot build the guest, missing: {} (run `cargo xtask setup`)",
            missing.join(", ")
        )
    })
}

/// The workspace's target directory: `CARGO_TARGET_DIR` or `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
            manifest.parent().unwrap_or(manifest).join("target")
        })
}

/// The versioned kernel package (`linux-image-6.1.0-NN-cloud-amd64`).
fn kernel_package() -> String {
    let out = check(Command::new("apt-cache").args(["depends", KERNEL_METAPACKAGE]));
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-"))
        .unwrap_or_else(|| {
            panic!(
                "`apt-cache depends {KERNEL_METAPACKAGE}` names no kernel (run apt-get update?):\n{out}"
            )
        })
        .to_owned()
}

/// The version apt would download of `package`.
fn package_version(package: &str) -> String {
    let out = check(Command::new("apt-cache").args(["show", "--no-all-versions", package]));
    out.lines()
        .find_map(|l| l.strip_prefix("Version:"))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("`apt-cache show {package}` gives no version:\n{out}"))
}

/// FNV-1a over /init, the module list and busybox: what besides the kernel makes a guest.
fn inputs_hash() -> u64 {
    let busybox = fs::read(BUSYBOX).unwrap_or_else(|e| panic!("read {BUSYBOX}: {e}"));
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [INIT.as_bytes(), MODULES.join(",").as_bytes(), &busybox] {
        for &b in part.iter().chain(&[0xff]) {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// Downloads and unpacks the kernel in `work`, packs the initramfs, and returns the
/// directory that holds both.
fn build_into(work: &Path, package: &str) -> PathBuf {
    check(
        Command::new("apt-get")
            .args(["download", "-q", package])
            .current_dir(work),
    );
    let deb = fs::read_dir(work)
        .unwrap_or_else(|e| panic!("read {}: {e}", work.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .unwrap_or_else(|| {
            panic!(
                "apt-get download {package} left no .deb in {}",
                work.display()
            )
        });
    let unpacked = work.join("kernel");
    check(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked));

    let out = work.join("out");
    fs::create_dir_all(&out).unwrap_or_else(|e| panic!("create {}: {e}", out.display()));
    let vmlinuz = find_file(&unpacked.join("boot"), |name| name.starts_with("vmlinuz-"))
        .unwrap_or_else(|| panic!("no boot/vmlinuz-* in {deb:?}"));
    copy(&vmlinuz, &out.join("vmlinuz"));

    let initramfs = work.join("initramfs");
    for d in ["bin", "dev", "proc", "sys", "tmp", "lib/modules"] {
        let d = initramfs.join(d);
        fs::create_dir_all(&d).unwrap_or_else(|e| panic!("create {}: {e}", d.display()));
    }
    copy(Path::new(BUSYBOX), &initramfs.join("bin/busybox"));
    for module in MODULES {
        let file = format!("{module}.ko");
        let found = find_file(&unpacked, |name| name == file)
            .unwrap_or_else(|| panic!("no {file} in {deb:?} (is it built in, or compressed?)"));
        copy(&found, &initramfs.join("lib/modules").join(&file));
    }
    let init = initramfs.join("init");
    fs::write(&init, INIT).unwrap_or_else(|e| panic!("write {}: {e}", init.display()));
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", init.display()));

    let cpio = out.join("initramfs.cpio.gz");
    check(
        Command::new("sh")
            .arg("-c")
            .arg("find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -9 > \"$1\"")
            .arg("sh")
            .arg(&cpio)
            .current_dir(&initramfs),
    );
    out
}

/// The first file under `dir` (recursively) whose name satisfies `wanted`.
fn find_file(dir: &Path, wanted: impl Fn(&str) -> bool + Copy) -> Option<PathBuf> {
    let mut entries: Vec<_> = fs::read_dir(dir).ok()?.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let kind = entry.file_type().ok()?;
        if kind.is_dir() {
            if let Some(found) = find_file(&path, wanted) {
                return Some(found);
            }
        } else if kind.is_file() && entry.file_name().to_str().is_some_and(wanted) {
            return Some(path);
        }
    }
    None
}

fn copy(from: &Path, to: &Path) {
    fs::copy(from, to)
        .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_carries_the_parameters() {
        let params = BootParams {
            ipv4: Some((Ipv4Addr::new(198, 19, 0, 10), 32)),
            gw4: Some(Ipv4Addr::new(198, 19, 0, 1)),
            ipv6: Some(("fd00::10".parse().unwrap(), 128)),
            gw6: Some("fd00::1".parse().unwrap()),
            dirty_mib: 32,
        };
        assert_eq!(
            params.cmdline(),
            "console=ttyS0 panic=-1 np.ip=198.19.0.10/32 np.gw=198.19.0.1 \
             np.ip6=fd00::10/128 np.gw6=fd00::1 np.dirty=32"
        );
        assert_eq!(BootParams::default().cmdline(), "console=ttyS0 panic=-1");
    }

    #[test]
    fn init_loads_every_module_in_order() {
        assert!(INIT.contains(&format!("for m in {}; do", MODULES.join(" "))));
        assert!(INIT.contains(READY_MARKER));
        assert!(INIT.contains(PAGE_MARKER));
    }
}
