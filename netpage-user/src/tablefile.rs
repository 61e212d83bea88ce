//! The declarative table file of `netpage apply` (TOML or JSON), which is also what
//! `netpage map list --json` prints, so a node's table can be saved and restored.
//!
//! ```toml
//! [[mapping]]
//! vm = "198.19.0.10"
//! real = "198.18.10.100"
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
}

impl TableFile {
    /// Reads a table file: JSON if it ends in `.json` or starts with `{`, else TOML.
    pub fn read(path: &Path) -> Result<Self, TableFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| TableFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
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
