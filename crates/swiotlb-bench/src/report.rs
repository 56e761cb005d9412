//! The output of `cargo xtask bench`: one JSON object per line per figure, and Markdown
//! tables.
//!
//! Every figure is measured once per run ([`Figure::new`]), and the runs are folded into one
//! figure per key by [`aggregate`]. A figure line has the shape
//!
//! ```text
//! {"key":"map_unmap_1500_fill90_vs_linux","value":0.2341,"min":0.2210,"median":0.2341,"max":0.2597,"runs":5,"unit":"ratio","ours_ns":36.9,"linux_ns":157.4}
//! ```
//!
//! `key` names the figure (stable across runs, the names `docs/performance.md` uses),
//! `value` is the headline number, the median over the runs that measured it (`median`
//! repeats it), `min` and `max` the least and greatest run, `runs` how many runs gave a
//! number, `unit` what it counts; any further members are the inputs the value was computed
//! from, each the median of its own over the runs (so a ratio's `value` need not be the
//! ratio of its inputs' medians), and notes. With an even number of runs the median is the
//! upper of the two middle runs: every number printed is one that a run measured. Numbers
//! keep six significant digits; a value no run could measure is `null` (with `runs` 0).
//! The lines are written by `serde_json`.

use std::fmt::Write;

use serde_json::{Map, Value};

/// One figure: one run's measurement, or (after [`aggregate`]) the median of several.
#[derive(Clone, Debug, PartialEq)]
pub struct Figure {
    /// The figure's name.
    pub key: String,
    /// Its value: the median over the runs (NaN if no run measured it).
    pub value: f64,
    /// The least run.
    pub min: f64,
    /// The greatest run.
    pub max: f64,
    /// How many runs gave a finite value.
    pub runs: usize,
    /// Its unit: `"ratio"`, `"ns"`, `"per_mib"`, ...
    pub unit: &'static str,
    /// Numbers it was computed from, by name (after [`aggregate`], each one's median).
    pub inputs: Vec<(String, f64)>,
    /// Words about it, by name.
    pub notes: Vec<(String, String)>,
}

impl Figure {
    /// A figure measured once, without inputs.
    #[must_use]
    pub fn new(key: impl Into<String>, value: f64, unit: &'static str) -> Self {
        Self {
            key: key.into(),
            value,
            min: value,
            max: value,
            runs: usize::from(value.is_finite()),
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

    /// The input called `name`.
    #[must_use]
    pub fn input(&self, name: &str) -> Option<f64> {
        self.inputs.iter().find(|i| i.0 == name).map(|i| i.1)
    }

    /// The figure as a JSON object (members in the order of the module docs).
    #[must_use]
    pub fn to_value(&self) -> Value {
        let mut m = Map::new();
        m.insert("key".into(), Value::from(self.key.as_str()));
        m.insert("value".into(), num(self.value));
        m.insert("min".into(), num(self.min));
        m.insert("median".into(), num(self.value));
        m.insert("max".into(), num(self.max));
        m.insert("runs".into(), Value::from(self.runs));
        m.insert("unit".into(), Value::from(self.unit));
        for (k, v) in &self.inputs {
            m.entry(k.as_str()).or_insert_with(|| num(*v));
        }
        for (k, v) in &self.notes {
            m.entry(k.as_str())
                .or_insert_with(|| Value::from(v.as_str()));
        }
        Value::Object(m)
    }

    /// The figure as one line of JSON (no newline).
    #[must_use]
    pub fn to_json(&self) -> String {
        self.to_value().to_string()
    }
}

/// A JSON number with six significant digits; `null` if not finite.
#[must_use]
pub fn num(v: f64) -> Value {
    if !v.is_finite() {
        return Value::Null;
    }
    let r: f64 = format!("{v:.5e}").parse().unwrap_or(v);
    // `-0` reads as 0.
    Value::from(if r == 0.0 { 0.0 } else { r })
}

/// The median of the finite values of `v` (the upper middle one for an even count), and
/// the least and greatest; NaN for all three if none is finite.
#[must_use]
pub fn spread(v: &[f64]) -> (f64, f64, f64, usize) {
    let mut f: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    f.sort_unstable_by(f64::total_cmp);
    match (f.first(), f.get(f.len() / 2), f.last()) {
        (Some(&lo), Some(&mid), Some(&hi)) => (lo, mid, hi, f.len()),
        _ => (f64::NAN, f64::NAN, f64::NAN, 0),
    }
}

/// Folds the figures of several runs into one per key, in the order the keys first appear:
/// the value is the median over the runs, `min` and `max` the extremes, `runs` the number
/// of runs with a finite value; each input is its own median over the runs; notes that
/// differ between runs are kept, each once, joined by `" / "`.
#[must_use]
pub fn aggregate(runs: &[Vec<Figure>]) -> Vec<Figure> {
    let mut keys: Vec<&str> = Vec::new();
    for f in runs.iter().flatten() {
        if !keys.contains(&f.key.as_str()) {
            keys.push(&f.key);
        }
    }
    keys.into_iter()
        .filter_map(|key| {
            let fs: Vec<&Figure> = runs
                .iter()
                .filter_map(|r| r.iter().find(|f| f.key == key))
                .collect();
            let first = *fs.first()?;
            let values: Vec<f64> = fs.iter().map(|f| f.value).collect();
            let (min, value, max, n) = spread(&values);
            let mut out = Figure {
                key: key.to_owned(),
                value,
                min,
                max,
                runs: n,
                unit: first.unit,
                inputs: Vec::new(),
                notes: Vec::new(),
            };
            for (name, _) in &first.inputs {
                let v: Vec<f64> = fs.iter().filter_map(|f| f.input(name)).collect();
                out.inputs.push((name.clone(), spread(&v).1));
            }
            for (name, _) in &first.notes {
                let mut seen: Vec<&str> = Vec::new();
                for f in &fs {
                    if let Some((_, t)) = f.notes.iter().find(|n| n.0 == *name)
                        && !seen.contains(&t.as_str())
                    {
                        seen.push(t);
                    }
                }
                out.notes.push((name.clone(), seen.join(" / ")));
            }
            Some(out)
        })
        .collect()
}

/// A Markdown table from a header and rows, the columns from `right_aligned_from` on
/// aligned right (numbers).
#[must_use]
pub fn markdown_table(header: &[&str], right_aligned_from: usize, rows: &[Vec<String>]) -> String {
    let right: Vec<bool> = (0..header.len()).map(|i| i >= right_aligned_from).collect();
    markdown_table_aligned(header, &right, rows)
}

/// A Markdown table from a header and rows, column `i` aligned right if `right[i]`.
#[must_use]
pub fn markdown_table_aligned(header: &[&str], right: &[bool], rows: &[Vec<String>]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let align: Vec<&str> = (0..header.len())
        .map(|i| {
            if right.get(i).copied().unwrap_or(false) {
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
        let f = Figure::new("map_unmap_1500_fill90_vs_linux", 0.234_061_234, "ratio")
            .with("ours_ns", 36.9)
            .with("linux_ns", f64::NAN)
            .note("machine", "2 \"vCPUs\"\n\\");
        let line = f.to_json();
        assert!(!line.contains('\n'));
        assert!(line.starts_with("{\"key\":"), "{line}");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["key"], "map_unmap_1500_fill90_vs_linux");
        assert_eq!(v["value"].as_f64(), Some(0.234_061));
        assert_eq!(v["median"], v["value"]);
        assert_eq!(v["min"], v["value"]);
        assert_eq!(v["runs"], 1);
        assert_eq!(v["unit"], "ratio");
        assert_eq!(v["ours_ns"].as_f64(), Some(36.9));
        assert!(v["linux_ns"].is_null());
        assert_eq!(v["machine"], "2 \"vCPUs\"\n\\");
    }

    #[test]
    fn numbers() {
        assert_eq!(num(2.0), Value::from(2.0));
        assert_eq!(num(-0.000_000_1).to_string(), "-1e-7");
        assert_eq!(num(-0.0).to_string(), "0.0");
        assert_eq!(num(f64::INFINITY), Value::Null);
        assert_eq!(num(12.345_678_9).as_f64(), Some(12.3457));
        assert_eq!(num(123_456_789.0).as_f64(), Some(123_457_000.0));
    }

    #[test]
    fn runs_fold_into_min_median_max() {
        let run = |v: f64, ours: f64, note: &str| {
            vec![
                Figure::new("a", v, "ratio")
                    .with("ours_ns", ours)
                    .note("n", note),
                Figure::new("lost", f64::NAN, "ns"),
            ]
        };
        let runs = vec![
            run(0.5, 30.0, "x"),
            run(0.3, 50.0, "x"),
            run(f64::NAN, 10.0, "y"),
            run(0.4, 40.0, "x"),
        ];
        let f = aggregate(&runs);
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].key, "a");
        // Three finite runs: 0.3, 0.4, 0.5.
        assert_eq!(
            (f[0].min, f[0].value, f[0].max, f[0].runs),
            (0.3, 0.4, 0.5, 3)
        );
        // Inputs: their own median (upper middle of 10, 30, 40, 50).
        assert_eq!(f[0].input("ours_ns"), Some(40.0));
        assert_eq!(f[0].notes, vec![("n".to_string(), "x / y".to_string())]);
        assert_eq!(f[1].runs, 0);
        let v: serde_json::Value = serde_json::from_str(&f[1].to_json()).unwrap();
        assert!(v["value"].is_null() && v["min"].is_null() && v["max"].is_null());
        assert_eq!(v["runs"], 0);
    }

    #[test]
    fn table() {
        let t = markdown_table(&["a", "b"], 1, &[vec!["x".into(), "1".into()]]);
        assert_eq!(t, "| a | b |\n|---|---:|\n| x | 1 |\n");
        let t = markdown_table_aligned(&["a", "b", "c"], &[false, true], &[]);
        assert_eq!(t, "| a | b | c |\n|---|---:|---|\n");
    }
}
