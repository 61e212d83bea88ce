//! The declarative table file of `netpage apply` (TOML or JSON), which is also what
//! `netpage map list --json` prints, so a node's table can be saved and restored.
//!
//! ```toml
//! [[mapping]]
//! vm = "198.19.0.10"
//! real = "198.18.10.100"
//!
//! [[segment]]          # method encap: listed by `map list`; `apply` refuses them
//! vm = "198.19.0.20"
//! locator = "2001:db8:a::1"
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ops::Mapping;

/// The whole table of a node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableFile {
    #[serde(default)]
    pub mapping: Vec<Mapping>,
    /// Mappings of method `encap`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub segment: Vec<Segment>,
}

/// A mapping of method `encap`: the VM's address and the locator of its node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Segment {
    pub vm: std::net::IpAddr,
    pub locator: std::net::IpAddr,
}

/// A table file that cannot be read or understood.
#[derive(Debug, thiserror::Error)]
pub enum TableFileError {
    #[error("reading {}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a valid TOML table file", path.display())]
    Toml {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("{} is not a valid JSON table file", path.display())]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "{} has {count} mapping(s) of method encap ([[segment]]), which apply does not install: remove them from the file, and map each VM with `netpage map add --vm VA --locator L`", path.display()
    )]
    Segments { path: PathBuf, count: usize },
}

impl TableFile {
    /// Reads a table file: JSON if it ends in `.json` or starts with `{`, else TOML.
    pub fn read(path: &Path) -> Result<Self, TableFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| TableFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        let file = Self::parse(path, &text)?;
        if !file.segment.is_empty() {
            return Err(TableFileError::Segments {
                path: path.to_owned(),
                count: file.segment.len(),
            });
        }
        Ok(file)
    }

    fn parse(path: &Path, text: &str) -> Result<Self, TableFileError> {
        let json =
            path.extension().is_some_and(|e| e == "json") || text.trim_start().starts_with('{');
        if json {
            serde_json::from_str(text).map_err(|source| TableFileError::Json {
                path: path.to_owned(),
                source,
            })
        } else {
            toml::from_str(text).map_err(|source| TableFileError::Toml {
                path: path.to_owned(),
                source: Box::new(source),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(name: &str, text: &str) -> Result<TableFile, TableFileError> {
        TableFile::parse(Path::new(name), text)
    }

    #[test]
    fn toml_and_json_give_the_same_table() {
        let toml = "[[mapping]]\nvm = \"198.19.0.10\"\nreal = \"198.18.10.100\"\n\n[[mapping]]\nvm = \"2001:db8:100::10\"\nreal = \"2001:db8:10::100\"\n";
        let json = r#"{"mapping": [{"vm": "198.19.0.10", "real": "198.18.10.100"},
            {"vm": "2001:db8:100::10", "real": "2001:db8:10::100"}]}"#;
        let a = parse("t.toml", toml).unwrap();
        assert_eq!(a, parse("t.json", json).unwrap());
        assert_eq!(a.mapping.len(), 2);
        assert_eq!(
            a.mapping[1].real,
            "2001:db8:10::100".parse::<std::net::IpAddr>().unwrap()
        );
        // What `map list --json` prints reads back.
        assert_eq!(
            parse("saved", &serde_json::to_string(&a).unwrap()).unwrap(),
            a
        );
        assert_eq!(parse("empty.toml", "").unwrap(), TableFile::default());
    }

    #[test]
    fn bad_files_are_refused_with_their_name() {
        for (name, text) in [
            (
                "a.toml",
                "[[mapping]]\nvm = \"198.19.0.300\"\nreal = \"198.18.10.100\"\n",
            ),
            ("b.toml", "[[mapping]]\nvm = \"198.19.0.1\"\n"),
            (
                "c.toml",
                "[[mapping]]\nvm = \"198.19.0.1\"\nreal = \"198.18.0.1\"\nextra = 1\n",
            ),
            ("d.json", "{\"mapping\": [}"),
        ] {
            let e = parse(name, text).unwrap_err().to_string();
            assert!(e.starts_with(name), "{e}");
        }
    }
}
