//! Minimal SVG plots for `docs/perf/`: a line chart (latency against fill level) and a
//! grouped bar chart (throughput with 1 and 2 threads). Plain SVG 1.1 text, no scripts, no
//! external fonts, so the files render on GitHub and in any browser and diff as text.

use std::fmt::Write;

/// Colours of the series, in order (colour-blind safe: Okabe and Ito).
const COLOURS: [&str; 6] = [
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#555555",
];

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 180.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;

/// One named series of `(x, y)` points.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// The legend's name.
    pub name: String,
    /// The points, in x order.
    pub points: Vec<(f64, f64)>,
}

/// Escapes text for SVG.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn header(out: &mut String, title: &str) {
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
         viewBox=\"0 0 {WIDTH} {HEIGHT}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{}</text>\n",
        WIDTH / 2.0,
        esc(title)
    );
}

/// Tick values for `lo..=hi` on a log scale: 1, 2, 5 times powers of ten.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut ticks = Vec::new();
    let mut p = 10f64.powf(lo.log10().floor());
    while p <= hi * 1.0001 {
        for m in [1.0, 2.0, 5.0] {
            let v = p * m;
            if v >= lo * 0.9999 && v <= hi * 1.0001 {
                ticks.push(v);
            }
        }
        p *= 10.0;
    }
    ticks
}

/// Tick values for `0..=hi` on a linear scale, about five of them at round steps.
fn linear_ticks(hi: f64) -> Vec<f64> {
    if hi <= 0.0 || !hi.is_finite() {
        return vec![0.0];
    }
    let raw = hi / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let mut ticks = vec![0.0];
    let mut v = 0.0;
    while v < hi * 0.9999 {
        v += step;
        ticks.push(v);
    }
    ticks
}

/// Formats a tick label without trailing zeros.
fn label(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 10.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// A line chart: x linear over the points' range, y logarithmic (all y must be > 0; other
/// points are left out), one polyline with markers per series, legend on the right.
#[must_use]
pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let pts = series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|(x, y)| x.is_finite() && y.is_finite() && *y > 0.0);
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 1.0, 10.0);
    }
    if x1 == x0 {
        x1 = x0 + 1.0;
    }
    // Round the y range out to 1-2-5 steps.
    let ylo = 10f64.powf(y0.log10().floor());
    let yhi = {
        let p = 10f64.powf(y1.log10().floor());
        [1.0, 2.0, 5.0, 10.0]
            .into_iter()
            .map(|m| m * p)
            .find(|v| *v >= y1)
            .unwrap_or(10.0 * p)
    };
    let (pw, ph) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let sx = |x: f64| LEFT + (x - x0) / (x1 - x0) * pw;
    let sy = |y: f64| TOP + ph - (y.log10() - ylo.log10()) / (yhi.log10() - ylo.log10()) * ph;
    let mut out = String::new();
    header(&mut out, title);
    // Grid and y ticks.
    for t in log_ticks(ylo, yhi) {
        let y = sy(t);
        let _ = writeln!(
            out,
            "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            LEFT + pw,
            LEFT - 6.0,
            y + 4.0,
            label(t)
        );
    }
    // X ticks at the distinct x values of the first series.
    let mut xs: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .collect();
    xs.sort_unstable_by(f64::total_cmp);
    xs.dedup();
    for x in xs {
        let px = sx(x);
        let _ = writeln!(
            out,
            "<line x1=\"{px:.1}\" y1=\"{TOP}\" x2=\"{px:.1}\" y2=\"{:.1}\" stroke=\"#eee\"/>\
             <text x=\"{px:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            TOP + ph,
            TOP + ph + 16.0,
            label(x)
        );
    }
    let _ = writeln!(
        out,
        "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" \
         stroke=\"#333\"/>\n\
         <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n\
         <text x=\"16\" y=\"{:.1}\" text-anchor=\"middle\" \
         transform=\"rotate(-90 16 {:.1})\">{}</text>",
        LEFT + pw / 2.0,
        HEIGHT - 12.0,
        esc(x_label),
        TOP + ph / 2.0,
        TOP + ph / 2.0,
        esc(y_label)
    );
    for (i, s) in series.iter().enumerate() {
        let c = COLOURS[i % COLOURS.len()];
        let path: Vec<String> = s
            .points
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite() && *y > 0.0)
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let _ = writeln!(
            out,
            "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{}\"/>",
            path.join(" ")
        );
        for p in &path {
            let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
            let _ = writeln!(out, "<circle cx=\"{x}\" cy=\"{y}\" r=\"3\" fill=\"{c}\"/>");
        }
        // CAST: a handful of series.
        let ly = TOP + 10.0 + 20.0 * i as f64;
        let lx = LEFT + pw + 14.0;
        let _ = writeln!(
            out,
            "<line x1=\"{lx}\" y1=\"{ly}\" x2=\"{:.1}\" y2=\"{ly}\" stroke=\"{c}\" \
             stroke-width=\"2\"/><text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            lx + 20.0,
            lx + 26.0,
            ly + 4.0,
            esc(&s.name)
        );
    }
    out.push_str("</svg>\n");
    out
}

/// A grouped bar chart: one group per entry of `groups`, one bar per entry of `bars` in
/// each, linear y from 0, with each group's `note` written above it.
#[must_use]
pub fn bar_chart(
    title: &str,
    y_label: &str,
    bars: &[&str],
    groups: &[(String, Vec<f64>, String)],
) -> String {
    let ymax = groups
        .iter()
        .flat_map(|g| g.1.iter().copied())
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let ticks = linear_ticks(ymax);
    let yhi = ticks
        .last()
        .copied()
        .unwrap_or(1.0)
        .max(ymax)
        .max(f64::MIN_POSITIVE);
    let (pw, ph) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let sy = |y: f64| TOP + ph - y / yhi * ph;
    let mut out = String::new();
    header(&mut out, title);
    for t in &ticks {
        let y = sy(*t);
        let _ = writeln!(
            out,
            "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            LEFT + pw,
            LEFT - 6.0,
            y + 4.0,
            label(*t)
        );
    }
    // CAST: a handful of groups and bars.
    let gw = pw / groups.len().max(1) as f64;
    let bw = gw * 0.7 / bars.len().max(1) as f64;
    for (gi, (name, values, note)) in groups.iter().enumerate() {
        // CAST: as above.
        let gx = LEFT + gw * gi as f64 + gw * 0.15;
        for (bi, v) in values.iter().enumerate().take(bars.len()) {
            let v = if v.is_finite() { v.max(0.0) } else { 0.0 };
            // CAST: as above.
            let x = gx + bw * bi as f64;
            let _ = writeln!(
                out,
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"/>",
                sy(v),
                bw - 2.0,
                TOP + ph - sy(v),
                COLOURS[bi % COLOURS.len()]
            );
        }
        let top = values
            .iter()
            .copied()
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max);
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            gx + gw * 0.35,
            TOP + ph + 16.0,
            esc(name),
            gx + gw * 0.35,
            sy(top) - 6.0,
            esc(note)
        );
    }
    let _ = writeln!(
        out,
        "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" \
         stroke=\"#333\"/>\n\
         <text x=\"16\" y=\"{:.1}\" text-anchor=\"middle\" \
         transform=\"rotate(-90 16 {:.1})\">{}</text>",
        TOP + ph / 2.0,
        TOP + ph / 2.0,
        esc(y_label)
    );
    for (i, b) in bars.iter().enumerate() {
        // CAST: a handful of bars.
        let ly = TOP + 10.0 + 20.0 * i as f64;
        let lx = LEFT + pw + 14.0;
        let _ = writeln!(
            out,
            "<rect x=\"{lx}\" y=\"{:.1}\" width=\"14\" height=\"10\" fill=\"{}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            ly - 6.0,
            COLOURS[i % COLOURS.len()],
            lx + 20.0,
            ly + 4.0,
            esc(b)
        );
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn balanced(svg: &str) {
        assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<svg").count(), 1);
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
    }

    #[test]
    fn line_chart_has_a_polyline_per_series() {
        let s = [
            Series {
                name: "ours".into(),
                points: vec![(0.0, 30.0), (50.0, 31.0), (95.0, 35.0)],
            },
            Series {
                name: "linux <C>".into(),
                points: vec![(0.0, 150.0), (50.0, 90.0), (95.0, 0.0)],
            },
        ];
        let svg = line_chart("t", "fill (%)", "ns", &s);
        balanced(&svg);
        assert_eq!(svg.matches("<polyline").count(), 2);
        // The zero point cannot be drawn on a log scale and is left out.
        assert_eq!(svg.matches("<circle").count(), 5);
        assert!(svg.contains("linux &lt;C&gt;"));
        // Ticks cover the range: 20 below 30, 200 above 150.
        assert!(svg.contains(">20<") && svg.contains(">200<"), "{svg}");
    }

    #[test]
    fn bar_chart_draws_every_bar() {
        let g = vec![
            ("ours".to_string(), vec![20e6, 38e6], "1.9x".to_string()),
            ("linux".to_string(), vec![8e6, 12e6], "1.5x".to_string()),
        ];
        let svg = bar_chart("scaling", "round trips/s", &["1 thread", "2 threads"], &g);
        balanced(&svg);
        // 4 bars, 2 legend swatches, the frame and the background.
        assert_eq!(svg.matches("<rect").count(), 4 + 2 + 2);
        assert!(svg.contains("1.9x"));
    }

    #[test]
    fn ticks() {
        assert_eq!(log_ticks(10.0, 100.0), vec![10.0, 20.0, 50.0, 100.0]);
        assert_eq!(linear_ticks(9.0), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(label(2000.0), "2k");
        assert_eq!(label(0.5), "0.5");
    }
}
