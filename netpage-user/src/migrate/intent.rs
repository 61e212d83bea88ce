//! The record of a migration in flight: written before its first change, removed once it
//! has ended (completed, or rolled back), so that a migration whose `netpage` was killed
//! can be finished or undone (`netpage migrate --recover`) and no other migration of the
//! same VM starts meanwhile.
//!
//! One JSON file per VM, `<VA>.json`, in the state directory (`--state-dir`, by default
//! [`DEFAULT_STATE_DIR`]) of the machine that runs `netpage migrate`, also when the page
//! tables are the directory's (`--etcd`): the record names QMP sockets, which only this
//! machine can reach. It is created exclusively (`O_EXCL`) and never through a symbolic
//! link (`O_NOFOLLOW`), readable by its owner only.

use std::{
    fs::{self, OpenOptions},
    io::{self, Write},
    net::IpAddr,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// Where records are kept unless `--state-dir` says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/run/netpage/migrations";

/// The page tables a recorded migration changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordedEdges {
    /// The pin directories of this machine's nodes.
    Nodes(Vec<PathBuf>),
    /// The directory on etcd (named again by `--etcd` to recover).
    Directory,
}

/// Everything needed to finish or undo a migration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    pub vm: IpAddr,
    /// The VM's real address before the migration (the source's).
    pub from: IpAddr,
    /// Its real address at the destination.
    pub to: IpAddr,
    pub edges: RecordedEdges,
    pub src_qmp: PathBuf,
    pub dst_qmp: PathBuf,
    /// The source's own downtime limit (ms), which netpage may have held at 1 ms.
    pub src_limit_ms: u64,
    /// Whether the source ran the guest (an undo resumes it).
    pub src_was_running: bool,
    /// The destination's neighbour entry for the guest, if netpage installed one:
    /// the interface and its network namespace.
    pub neighbour: Option<(String, Option<String>)>,
    /// When the migration started (ms since the epoch), and the process that ran it.
    pub started_unix_ms: u64,
    pub pid: u32,
}

/// A failure to keep the record.
#[derive(Debug, thiserror::Error)]
pub enum IntentError {
    #[error(
        "a migration of {vm} is in flight or was interrupted (recorded in {}): finish or undo it with `netpage migrate --recover --vm {vm}{}`",
        path.display(),
        state_dir_arg(path)
    )]
    InFlight { vm: IpAddr, path: PathBuf },
    #[error("no migration of {vm} is recorded in {}", dir.display())]
    NotRecorded { vm: IpAddr, dir: PathBuf },
    #[error("the migration record {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the migration record {} is not readable JSON", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// ` --state-dir DIR` for the record at `path`, unless DIR is the default.
fn state_dir_arg(path: &Path) -> String {
    match path.parent() {
        Some(dir) if dir != Path::new(DEFAULT_STATE_DIR) => {
            format!(" --state-dir {}", dir.display())
        }
        _ => String::new(),
    }
}

/// The record's file for `vm` in `dir`.
pub fn path(dir: &Path, vm: IpAddr) -> PathBuf {
    dir.join(format!("{vm}.json"))
}

impl Intent {
    /// Writes the record; refused if one exists for this VM.
    pub fn write(&self, dir: &Path) -> Result<PathBuf, IntentError> {
        let path = path(dir, self.vm);
        let io = |source| IntentError::Io {
            path: path.clone(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => IntentError::InFlight {
                    vm: self.vm,
                    path: path.clone(),
                },
                _ => io(e),
            })?;
        let json = serde_json::to_vec_pretty(self).expect("a record serializes");
        file.write_all(&json)
            .and_then(|()| file.sync_all())
            .map_err(io)?;
        Ok(path)
    }

    /// Refuses if a record exists for `vm`.
    pub fn refuse_if_recorded(dir: &Path, vm: IpAddr) -> Result<(), IntentError> {
        let path = path(dir, vm);
        match fs::symlink_metadata(&path) {
            Ok(_) => Err(IntentError::InFlight { vm, path }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(IntentError::Io { path, source }),
        }
    }

    /// Reads the record of `vm`.
    pub fn read(dir: &Path, vm: IpAddr) -> Result<(Self, PathBuf), IntentError> {
        let path = path(dir, vm);
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => IntentError::NotRecorded {
                    vm,
                    dir: dir.to_path_buf(),
                },
                _ => IntentError::Io {
                    path: path.clone(),
                    source: e,
                },
            })?;
        let intent = serde_json::from_reader(file).map_err(|source| IntentError::Json {
            path: path.clone(),
            source,
        })?;
        Ok((intent, path))
    }
}

/// Removes the record at `path`, saying so if it cannot.
pub fn remove(path: &Path) {
    if let Err(e) = fs::remove_file(path) {
        eprintln!(
            "netpage: warning: removing the migration record {}: {e}",
            path.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intent() -> Intent {
        Intent {
            vm: "198.19.0.10".parse().unwrap(),
            from: "198.18.10.100".parse().unwrap(),
            to: "198.18.20.100".parse().unwrap(),
            edges: RecordedEdges::Nodes(vec!["/sys/fs/bpf/netpage".into()]),
            src_qmp: "/run/src.sock".into(),
            dst_qmp: "/run/dst.sock".into(),
            src_limit_ms: 300,
            src_was_running: true,
            neighbour: Some(("tap0".into(), Some("hostb".into()))),
            started_unix_ms: 1,
            pid: 2,
        }
    }

    #[test]
    fn a_record_refuses_a_second_and_reads_back() {
        let dir = std::env::temp_dir().join(format!("netpage-intent-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let i = intent();
        let p = i.write(&dir).unwrap();
        assert!(matches!(i.write(&dir), Err(IntentError::InFlight { .. })));
        assert!(Intent::refuse_if_recorded(&dir, i.vm).is_err());
        assert_eq!(Intent::read(&dir, i.vm).unwrap().0, i);
        remove(&p);
        assert!(Intent::refuse_if_recorded(&dir, i.vm).is_ok());
        assert!(matches!(
            Intent::read(&dir, i.vm),
            Err(IntentError::NotRecorded { .. })
        ));
        let _ = fs::remove_dir_all(&dir);
    }
}
