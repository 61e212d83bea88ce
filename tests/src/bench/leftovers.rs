//! Removal of what an earlier benchmark run left behind when it was killed or aborted
//! (release builds abort on a panic, so no destructor runs): its etcd members and agents,
//! namespaces, bpffs mounts and directories, recognised by the process id in their names
//! (the processes by the directories their command lines name), and only if that process
//! is gone.

use std::process::Command;

use crate::{bench::note, netns::output};

/// Name prefixes that carry the owning process id, and the character that ends the id:
/// the bench's namespaces (`npbench<pid>-`) and directories (`netpage-bench-<pid>-` in
/// /tmp), the namespace world's (`np<pid>x`, `netpage-world-np<pid>x`), and the etcd
/// members' and agents' directories, and the QEMU guests' (`netpage-qemu-<pid>-`).
const NETNS_PREFIXES: [(&str, char); 2] = [("npbench", '-'), ("np", 'x')];
const TMP_PREFIXES: [(&str, char); 6] = [
    ("netpage-bench-", '-'),
    ("netpage-qemu-", '-'),
    ("netpage-world-np", 'x'),
    ("netpage-etcd-", '-'),
    ("netpage-etcd-tls-", '-'),
    ("netpage-agents-", '-'),
];

/// Removes the etcd members, agents, namespaces, bpffs mounts and directories of dead
/// benchmark or world processes.
pub fn sweep() {
    let stale = |name: &str| {
        TMP_PREFIXES
            .iter()
            .any(|(p, end)| dead_owner(name, p, *end))
    };
    kill_orphans(&stale);
    let netns = output(Command::new("ip").args(["netns", "list"]));
    for line in String::from_utf8_lossy(&netns.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if NETNS_PREFIXES
            .iter()
            .any(|(p, end)| dead_owner(name, p, *end))
        {
            note(format_args!(
                "removing the namespace {name} of an earlier run"
            ));
            let _ = output(Command::new("ip").args(["netns", "del", name]));
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    for point in mounts.lines().filter_map(|l| l.split_whitespace().nth(1)) {
        let top = point
            .strip_prefix("/tmp/")
            .and_then(|r| r.split('/').next());
        if top.is_some_and(stale) {
            let _ = output(Command::new("umount").args(["-l", point]));
        }
    }
    let Ok(tmp) = std::fs::read_dir("/tmp") else {
        return;
    };
    for e in tmp.flatten() {
        if e.file_name().to_str().is_some_and(stale) {
            note(format_args!(
                "removing {} of an earlier run",
                e.path().display()
            ));
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Kills (SIGKILL) the processes whose command line names a directory in /tmp that
/// `stale` says a dead run left: its etcd members (`--data-dir`), agents (`--pin-dir`) and
/// QEMU guests (`-serial file:/tmp/...`), which run in process groups of their own and so
/// outlive it.
fn kill_orphans(stale: &dyn Fn(&str) -> bool) {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in procs.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let names_stale = cmdline.split(|&b| b == 0).any(|arg| {
            std::str::from_utf8(arg)
                .ok()
                .and_then(|a| a.split_once("/tmp/"))
                .map(|(_, r)| r)
                .and_then(|r| r.split('/').next())
                .is_some_and(stale)
        });
        if names_stale {
            let program = cmdline.split(|&b| b == 0).next().unwrap_or_default();
            note(format_args!(
                "killing {} (pid {pid}) of an earlier run",
                String::from_utf8_lossy(program)
            ));
            // SAFETY: kill(2) with a pid read from /proc; at worst it is gone already.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Whether `name` is `prefix<pid><end>...` for a process that no longer exists.
fn dead_owner(name: &str, prefix: &str, end: char) -> bool {
    let Some(rest) = name.strip_prefix(prefix) else {
        return false;
    };
    let Some(digits) = rest.split(end).next() else {
        return false;
    };
    if digits.is_empty()
        || digits.len() == rest.len()
        || !digits.bytes().all(|b| b.is_ascii_digit())
    {
        return false;
    }
    !std::path::Path::new(&format!("/proc/{digits}")).exists()
}

#[cfg(test)]
mod tests {
    use super::dead_owner;

    #[test]
    fn owners() {
        let me = std::process::id();
        assert!(!dead_owner(&format!("npbench{me}-gw"), "npbench", '-'));
        assert!(dead_owner("npbench999999999-gw", "npbench", '-'));
        assert!(!dead_owner("npt", "np", 'x'));
        assert!(!dead_owner("npbench", "npbench", '-'));
        assert!(dead_owner("np999999999x0-gw", "np", 'x'));
        assert!(dead_owner(
            "netpage-etcd-999999999-0-etcd0",
            "netpage-etcd-",
            '-'
        ));
        assert!(!dead_owner(
            "netpage-etcd-tls-999999999-1",
            "netpage-etcd-",
            '-'
        ));
        assert!(!dead_owner("netpage-etcd-ports", "netpage-etcd-", '-'));
    }
}
