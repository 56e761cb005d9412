//! The output of `cargo xtask bench`: one JSON object per line per figure, and Markdown
//! tables.
//!
//! A figure line has the shape
//!
//! ```text
//! {"key":"map_unmap_1500_fill90_vs_linux","value":0.2341,"unit":"ratio","ours_ns":36.9,"linux_ns":157.4}
//! ```
//!
//! `key` names the figure (stable across runs, the names `docs/performance.md` uses),
//! `value` is the number, `unit` says what it counts, and any further members are the
//! inputs the value was computed from. Numbers are finite (a value that could not be
//! measured is `null`); strings are escaped as JSON requires.

use std::fmt::Write;

/// One figure.
#[derive(Clone, Debug, PartialEq)]
pub struct Figure {
    /// The figure's name.
    pub key: String,
    /// Its value.
    pub value: f64,
    /// Its unit: `"ratio"`, `"ns"`, `"per_mib"`, ...
    pub unit: &'static str,
    /// Numbers it was computed from, by name.
    pub inputs: Vec<(String, f64)>,
    /// Words about it, by name.
    pub notes: Vec<(String, String)>,
}

impl Figure {
    /// A figure without inputs.
    #[must_use]
    pub fn new(key: impl Into<String>, value: f64, unit: &'static str) -> Self {
        Self {
            key: key.into(),
            value,
            unit,
            inputs: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Adds a named input.
    #[must_use]
    pub fn with(mut self, name: impl Into<String>, value: f64) -> Self {
        self.inputs.push((name.into(), value));
        self
    }

    /// Adds a named note.
    #[must_use]
    pub fn note(mut self, name: impl Into<String>, text: impl Into<String>) -> Self {
        self.notes.push((name.into(), text.into()));
        self
    }

    /// The figure as one line of JSON (no newline).
    #[must_use]
    pub fn to_json(&self) -> String {
        let mut out = String::from("{");
        let _ = write!(
            out,
            "\"key\":{},\"value\":{},\"unit\":{}",
            json_str(&self.key),
            json_num(self.value),
            json_str(self.unit)
        );
        for (k, v) in &self.inputs {
            let _ = write!(out, ",{}:{}", json_str(k), json_num(*v));
        }
        for (k, v) in &self.notes {
            let _ = write!(out, ",{}:{}", json_str(k), json_str(v));
        }
        out.push('}');
        out
    }
}

/// A JSON number: up to 4 decimals, trailing zeros dropped; `null` if not finite.
#[must_use]
pub fn json_num(v: f64) -> String {
    if !v.is_finite() {
        return "null".into();
    }
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.into() }
}

/// A JSON string with quotes, backslashes and control characters escaped.
#[must_use]
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A Markdown table from a header and rows.
#[must_use]
pub fn markdown_table(header: &[&str], right_aligned_from: usize, rows: &[Vec<String>]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let align: Vec<&str> = (0..header.len())
        .map(|i| {
            if i >= right_aligned_from {
                "---:"
            } else {
                "---"
            }
        })
        .collect();
    let _ = writeln!(out, "|{}|", align.join("|"));
    for r in rows {
        let _ = writeln!(out, "| {} |", r.join(" | "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figure_is_one_line_of_valid_json() {
        let f = Figure::new("map_unmap_1500_fill90_vs_linux", 0.234_06, "ratio")
            .with("ours_ns", 36.9)
            .with("linux_ns", f64::NAN)
            .note("machine", "2 \"vCPUs\"\n\\");
        let line = f.to_json();
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["key"], "map_unmap_1500_fill90_vs_linux");
        assert_eq!(v["value"].as_f64(), Some(0.2341));
        assert_eq!(v["unit"], "ratio");
        assert_eq!(v["ours_ns"].as_f64(), Some(36.9));
        assert!(v["linux_ns"].is_null());
        assert_eq!(v["machine"], "2 \"vCPUs\"\n\\");
    }

    #[test]
    fn numbers() {
        assert_eq!(json_num(2.0), "2");
        assert_eq!(json_num(0.5), "0.5");
        assert_eq!(json_num(-0.00001), "0");
        assert_eq!(json_num(f64::INFINITY), "null");
        assert_eq!(json_num(12.345_67), "12.3457");
        assert_eq!(json_str("\u{1}"), "\"\\u0001\"");
    }

    #[test]
    fn table() {
        let t = markdown_table(&["a", "b"], 1, &[vec!["x".into(), "1".into()]]);
        assert_eq!(t, "| a | b |\n|---|---:|\n| x | 1 |\n");
    }
}
