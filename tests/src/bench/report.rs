//! Report rows, and the report files: `report.json` (the rows) and `report.md` (a table).

use std::{fmt::Write as _, io, path::Path};

use serde::Serialize;
use serde_json::{Map, Value};

/// One measured value.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// What is measured (`per_packet`, `v2r_update`, ...).
    pub measure: String,
    /// Which case of it.
    pub variant: String,
    /// The conditions: table size, traffic, percentile, ...
    pub params: Map<String, Value>,
    pub value: f64,
    pub unit: String,
    /// The row this one is compared with, by variant and params, if any.
    pub baseline: Option<String>,
    /// `value` divided by the baseline's value.
    pub ratio: Option<f64>,
    /// Samples behind `value`: repeats of a measurement, or timed operations.
    pub repeats: usize,
}

impl Row {
    /// A row with no baseline.
    pub fn new(measure: &str, variant: &str, params: Value, value: f64, unit: &str) -> Self {
        let Value::Object(params) = params else {
            panic!("params must be a JSON object: {params}");
        };
        Self {
            measure: measure.to_owned(),
            variant: variant.to_owned(),
            params,
            value,
            unit: unit.to_owned(),
            baseline: None,
            ratio: None,
            repeats: 1,
        }
    }

    /// Compares with `baseline`, whose value is `base`.
    pub fn against(mut self, baseline: impl Into<String>, base: f64) -> Self {
        self.baseline = Some(baseline.into());
        self.ratio = Some(self.value / base);
        self
    }

    /// Sets the number of samples behind the value.
    pub fn repeats(mut self, n: usize) -> Self {
        self.repeats = n;
        self
    }

    /// A parameter as an integer, if present.
    pub fn param_u64(&self, key: &str) -> Option<u64> {
        self.params.get(key).and_then(Value::as_u64)
    }

    /// A parameter as a string, if present.
    pub fn param_str(&self, key: &str) -> Option<&str> {
        self.params.get(key).and_then(Value::as_str)
    }
}

/// Writes `report.json` (the rows) and `report.md` (`markdown`) into `dir`, created if
/// missing.
pub fn write(dir: &Path, rows: &[Row], markdown: &str) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let json = serde_json::to_string_pretty(rows).map_err(io::Error::other)?;
    std::fs::write(dir.join("report.json"), json + "\n")?;
    std::fs::write(dir.join("report.md"), markdown)
}

/// A part of the report: the measures it holds and a paragraph on how they were taken
/// and how to read them.
#[derive(Clone, Debug)]
pub struct Section {
    pub title: String,
    pub about: String,
    /// The measures whose rows the section's table holds, in this order.
    pub measures: Vec<String>,
}

impl Section {
    pub fn new(title: &str, about: impl Into<String>, measures: &[&str]) -> Self {
        Self {
            title: title.to_owned(),
            about: about.into(),
            measures: measures.iter().map(|m| (*m).to_owned()).collect(),
        }
    }
}

/// The report as Markdown: a preamble, a section per part (its paragraph and table; rows
/// of no section last), the targets, and notes on why a target was missed.
pub fn markdown(
    rows: &[Row],
    preamble: &str,
    sections: &[Section],
    targets: &[String],
    notes: &[String],
) -> String {
    let mut md = format!("# netpage benchmark\n\n{preamble}\n");
    for s in sections {
        let mine: Vec<Row> = s
            .measures
            .iter()
            .flat_map(|m| rows.iter().filter(move |r| &r.measure == m))
            .cloned()
            .collect();
        if !mine.is_empty() {
            let _ = write!(md, "\n## {}\n\n{}\n\n{}", s.title, s.about, table(&mine));
        }
    }
    let other: Vec<Row> = rows
        .iter()
        .filter(|r| !sections.iter().any(|s| s.measures.contains(&r.measure)))
        .cloned()
        .collect();
    if !other.is_empty() {
        let _ = write!(md, "\n## Other measures\n\n{}", table(&other));
    }
    for (title, lines) in [("Targets (noted, not asserted)", targets), ("Notes", notes)] {
        if !lines.is_empty() {
            let _ = writeln!(md, "\n## {title}\n");
            for n in lines {
                let _ = writeln!(md, "- {n}");
            }
        }
    }
    md
}

/// The rows as a Markdown table.
pub fn table(rows: &[Row]) -> String {
    let mut t = String::from(
        "| measure | variant | params | value | unit | baseline | ratio | repeats |\n\
         |---|---|---|---:|---|---|---:|---:|\n",
    );
    for r in rows {
        let params: Vec<String> = r
            .params
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}={s}"),
                v => format!("{k}={v}"),
            })
            .collect();
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.measure,
            r.variant,
            params.join(", "),
            number(r.value),
            r.unit,
            r.baseline.as_deref().unwrap_or("-"),
            r.ratio.map_or("-".to_owned(), |x| format!("{x:.3}")),
            r.repeats
        );
    }
    t
}

/// A value with about three significant digits.
fn number(x: f64) -> String {
    match x.abs() {
        a if a < 10.0 => format!("{x:.3}"),
        a if a < 100.0 => format!("{x:.2}"),
        a if a < 1000.0 => format!("{x:.1}"),
        _ => format!("{x:.0}"),
    }
}
