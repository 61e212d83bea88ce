//! Files netpage writes where the user says (`--timeline`): as root, never through a
//! symbolic link and never into anything but a regular file, so that a link planted in a
//! shared directory cannot turn the write against another file.

use std::{
    fs::{File, OpenOptions},
    io::{self, Seek, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum OutFileError {
    #[error(
        "{} is a symbolic link: netpage does not write through links; give the file's own path",
        path.display()
    )]
    Link { path: PathBuf },
    #[error("{} is not a regular file", path.display())]
    NotRegular { path: PathBuf },
    #[error("cannot write {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A file opened to be written later, checked now: a command that is to write it at its
/// end learns before it starts that it could not.
#[derive(Debug)]
pub struct OutFile {
    path: PathBuf,
    file: File,
}

impl OutFile {
    /// Opens `path` to write, creating it (mode 0644) if missing. Its content is kept until
    /// [`OutFile::write`].
    pub fn open(path: &Path) -> Result<Self, OutFileError> {
        let io = |source| OutFileError::Io {
            path: path.to_owned(),
            source,
        };
        // O_NONBLOCK: a FIFO planted at the path must not hang the open.
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => OutFileError::Link {
                    path: path.to_owned(),
                },
                _ => io(e),
            })?;
        if !file.metadata().map_err(io)?.is_file() {
            return Err(OutFileError::NotRegular {
                path: path.to_owned(),
            });
        }
        Ok(OutFile {
            path: path.to_owned(),
            file,
        })
    }

    /// Replaces the file's content with `content`.
    pub fn write(mut self, content: &[u8]) -> Result<(), OutFileError> {
        let io = |source| OutFileError::Io {
            path: self.path.clone(),
            source,
        };
        self.file.set_len(0).map_err(io)?;
        self.file.rewind().map_err(io)?;
        self.file.write_all(content).map_err(io)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_regular_files_and_refuses_links_and_others() {
        let dir = std::env::temp_dir().join(format!("netpage-outfile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join("precious");
        std::fs::write(&target, "keep me").unwrap();

        let link = dir.join("timeline.svg");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = OutFile::open(&link).unwrap_err();
        assert!(matches!(err, OutFileError::Link { .. }), "{err}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");

        let err = OutFile::open(&dir).unwrap_err();
        assert!(matches!(err, OutFileError::Io { .. }), "{err}");
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: `c` is a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = OutFile::open(&fifo);
        assert!(
            matches!(
                err,
                Err(OutFileError::NotRegular { .. } | OutFileError::Io { .. })
            ),
            "{err:?}"
        );

        let plain = dir.join("plain.svg");
        std::fs::write(&plain, "an older, longer timeline").unwrap();
        let out = OutFile::open(&plain).unwrap();
        assert_eq!(
            std::fs::read_to_string(&plain).unwrap(),
            "an older, longer timeline",
            "kept until written"
        );
        out.write(b"<svg/>").unwrap();
        assert_eq!(std::fs::read_to_string(&plain).unwrap(), "<svg/>");
        OutFile::open(&dir.join("new.svg"))
            .unwrap()
            .write(b"x")
            .unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("new.svg")).unwrap(), "x");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
