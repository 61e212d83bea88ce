//! A migration's timeline: what happened when, relative to its start, as text, JSON and
//! an SVG picture.

use std::{fmt, fmt::Write as _, time::Instant};

use serde::Serialize;

use crate::progress::Progress;

/// Who reported a mark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// netpage itself (checks, page-table updates).
    Netpage,
    /// The source QEMU.
    Src,
    /// The destination QEMU.
    Dst,
}

impl Source {
    fn lane(self) -> usize {
        match self {
            Source::Src => 0,
            Source::Netpage => 1,
            Source::Dst => 2,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Source::Netpage => "netpage",
            Source::Src => "source",
            Source::Dst => "destination",
        }
    }
}

/// One moment of the timeline.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Mark {
    /// Milliseconds since the migration started.
    pub at_ms: f64,
    pub source: Source,
    /// `SETUP`, `PASS 2`, `STOP`, `SWITCHED gw`, `RESUME`, `COMPLETED`, ...
    pub what: String,
    /// Figures that go with it (bytes transferred, update time, ...), if any.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// The marks of one migration, in the order they happened.
#[derive(Clone, Debug, Serialize)]
pub struct Timeline {
    #[serde(skip)]
    start: Instant,
    pub marks: Vec<Mark>,
    /// Where each mark is shown as it is made (on a terminal: see [`Progress`]).
    #[serde(skip)]
    progress: Progress,
}

impl Timeline {
    pub fn new(start: Instant) -> Self {
        Self {
            start,
            marks: Vec::new(),
            progress: Progress::hidden(),
        }
    }

    /// Shows each mark from now on in `progress` as the stage under way.
    pub fn showing(mut self, progress: Progress) -> Self {
        self.progress = progress;
        self
    }

    /// Ends the display of the marks (the report follows).
    pub fn shown(&mut self) {
        self.progress.finish();
        self.progress = Progress::hidden();
    }

    /// Records `what` at `when` (which may come from an event read a little earlier).
    pub fn mark(&mut self, when: Instant, source: Source, what: impl Into<String>, detail: String) {
        let at_ms = when.saturating_duration_since(self.start).as_secs_f64() * 1e3;
        let what = what.into();
        self.progress.stage(format!("{what} {detail}"));
        self.marks.push(Mark {
            at_ms,
            source,
            what,
            detail,
        });
        self.marks.sort_by(|a, b| a.at_ms.total_cmp(&b.at_ms));
    }

    /// The time of the first mark named `what`.
    pub fn at(&self, what: &str) -> Option<f64> {
        self.marks.iter().find(|m| m.what == what).map(|m| m.at_ms)
    }

    /// The timeline drawn as an SVG: one lane per source, a tick and a label per mark.
    pub fn svg(&self, title: &str) -> String {
        const W: f64 = 960.0;
        const LEFT: f64 = 110.0;
        const LANE: f64 = 110.0;
        let end = self.marks.last().map_or(1.0, |m| m.at_ms).max(1.0);
        let x = |ms: f64| LEFT + (W - LEFT - 40.0) * ms / end;
        let h = 60.0 + 3.0 * LANE + 40.0;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" font-family="sans-serif" font-size="11">"#
        );
        let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="10" y="20" font-size="14">{}</text>"#,
            escape(title)
        );
        for src in [Source::Src, Source::Netpage, Source::Dst] {
            let y = lane_y(src.lane(), LANE);
            let _ = writeln!(
                s,
                r##"<text x="10" y="{y}">{}</text><line x1="{LEFT}" y1="{y}" x2="{}" y2="{y}" stroke="#999"/>"##,
                src.label(),
                W - 40.0
            );
        }
        let mut last_x = [f64::NEG_INFINITY; 3];
        let mut row = [0usize; 3];
        for m in &self.marks {
            let lane = m.source.lane();
            let (mx, y) = (x(m.at_ms), lane_y(lane, LANE));
            // Labels of marks close together are staggered so that they stay readable.
            row[lane] = if mx - last_x[lane] < 90.0 {
                (row[lane] + 1) % 4
            } else {
                0
            };
            last_x[lane] = mx;
            let ly = y - 8.0 - 14.0 * row[lane] as f64;
            let color = if m.source == Source::Netpage {
                "#c0392b"
            } else {
                "#2c3e50"
            };
            let _ = writeln!(
                s,
                r#"<line x1="{mx:.1}" y1="{}" x2="{mx:.1}" y2="{}" stroke="{color}"/><text x="{mx:.1}" y="{ly:.1}" fill="{color}">{} ({:.1} ms)</text>"#,
                y - 5.0,
                y + 5.0,
                escape(&m.what),
                m.at_ms
            );
        }
        let axis = 60.0 + 3.0 * LANE;
        let _ = writeln!(
            s,
            r#"<text x="{LEFT}" y="{axis}">0 ms</text><text x="{}" y="{axis}" text-anchor="end">{end:.0} ms</text>"#,
            W - 40.0
        );
        s.push_str("</svg>\n");
        s
    }
}

fn lane_y(lane: usize, height: f64) -> f64 {
    100.0 + lane as f64 * height
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

impl fmt::Display for Timeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for m in &self.marks {
            write!(
                f,
                "  {:>9.1} ms  {:<11} {}",
                m.at_ms,
                m.source.label(),
                m.what
            )?;
            if !m.detail.is_empty() {
                write!(f, "  ({})", m.detail)?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn marks_are_ordered_and_drawn() {
        let t0 = Instant::now();
        let mut t = Timeline::new(t0);
        t.mark(
            t0 + Duration::from_millis(30),
            Source::Dst,
            "RESUME",
            String::new(),
        );
        t.mark(
            t0 + Duration::from_millis(10),
            Source::Src,
            "STOP",
            String::new(),
        );
        t.mark(
            t0 + Duration::from_millis(11),
            Source::Netpage,
            "SWITCHED <gw>",
            "1.2 us".into(),
        );
        let names: Vec<_> = t.marks.iter().map(|m| m.what.as_str()).collect();
        assert_eq!(names, ["STOP", "SWITCHED <gw>", "RESUME"]);
        assert_eq!(t.at("RESUME"), Some(30.0));
        let svg = t.svg("a & b");
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("SWITCHED &lt;gw&gt; (11.0 ms)") && svg.contains("a &amp; b"));
        let text = t.to_string();
        assert!(text.contains("10.0 ms  source      STOP"), "{text}");
        assert!(text.contains("(1.2 us)"), "{text}");
    }
}
