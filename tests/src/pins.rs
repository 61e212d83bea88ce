//! bpffs mounts for emulated nodes: one per node, each a pin directory of its own, all
//! unmounted (and their directory removed) when the set is dropped.

use std::{path::PathBuf, process::Command};

use crate::netns::{check, output};

/// bpffs mounts under one base directory.
pub struct PinDirs {
    base: PathBuf,
    mounted: Vec<PathBuf>,
}

impl PinDirs {
    /// An empty set under `/tmp/<prefix>-<pid>-<what>` (the benchmark's prefix is what its
    /// sweep of leftovers looks for).
    pub fn new(prefix: &str, what: &str) -> Self {
        let base = std::env::temp_dir().join(format!("{prefix}-{}-{what}", std::process::id()));
        Self {
            base,
            mounted: Vec::new(),
        }
    }

    /// Creates and mounts a bpffs at `<base>/<name>`.
    pub fn mount(&mut self, name: &str) -> PathBuf {
        let dir = self.base.join(name);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        check(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&dir));
        self.mounted.push(dir.clone());
        dir
    }
}

impl Drop for PinDirs {
    fn drop(&mut self) {
        for dir in &self.mounted {
            let _ = output(Command::new("umount").arg("-l").arg(dir));
        }
        let _ = std::fs::remove_dir_all(&self.base);
    }
}
