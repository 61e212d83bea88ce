//! Scraping netpage's metrics as Prometheus would: a real HTTP client (Python's urllib)
//! and an OpenMetrics parser that shares no code with netpage (Debian's
//! python3-prometheus-client, which setup installs). The parser refuses anything that is
//! not valid OpenMetrics text (it requires `# EOF`, for one).

use std::{collections::BTreeMap, process::Command};

use serde_json::Value;

use crate::netns::{NetNs, output};

/// Debian's Python, which has the `prometheus_client` package (a pyenv or venv Python
/// found first on PATH may not).
const PYTHON: &str = "/usr/bin/python3";

/// Fetches argv[1] and prints its status, content type and samples as JSON.
const SCRAPER: &str = r#"
import json, sys, urllib.request, urllib.error
from prometheus_client.openmetrics.parser import text_string_to_metric_families
try:
    r = urllib.request.urlopen(sys.argv[1], timeout=20)
except urllib.error.HTTPError as e:
    print(json.dumps({"status": e.code}))
    sys.exit(0)
text = r.read().decode()
samples = [
    {"name": s.name, "labels": s.labels, "value": s.value}
    for f in text_string_to_metric_families(text)
    for s in f.samples
]
print(json.dumps({"status": r.status, "content_type": r.headers["Content-Type"], "samples": samples}))
"#;

/// The content type netpage answers a scrape with.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One scrape: its HTTP status, content type and samples by name and sorted labels.
#[derive(Debug)]
pub struct Scrape {
    pub status: u64,
    pub content_type: Option<String>,
    samples: BTreeMap<(String, Vec<(String, String)>), f64>,
}

impl Scrape {
    /// Scrapes `url` from `ns` (the calling process's namespace if `None`).
    pub fn get(ns: Option<&NetNs>, url: &str) -> Self {
        let mut cmd = match ns {
            Some(ns) => ns.command(PYTHON),
            None => Command::new(PYTHON),
        };
        let out = output(cmd.args(["-c", SCRAPER, url]));
        assert!(
            out.status.success(),
            "scraping {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let samples = v["samples"]
            .as_array()
            .map(|a| a.iter().map(sample).collect())
            .unwrap_or_default();
        Scrape {
            status: v["status"].as_u64().unwrap(),
            content_type: v["content_type"].as_str().map(str::to_owned),
            samples,
        }
    }

    /// Asserts an answered scrape of the OpenMetrics content type.
    pub fn ok(self) -> Self {
        assert_eq!(self.status, 200, "{self:?}");
        assert_eq!(self.content_type.as_deref(), Some(OPENMETRICS));
        self
    }

    /// The value of the sample `name` with exactly `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        labels.sort();
        self.samples.get(&(name.to_owned(), labels)).copied()
    }
}

fn sample(s: &Value) -> ((String, Vec<(String, String)>), f64) {
    let mut labels: Vec<(String, String)> = s["labels"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    labels.sort();
    (
        (s["name"].as_str().unwrap().to_owned(), labels),
        s["value"].as_f64().unwrap(),
    )
}
