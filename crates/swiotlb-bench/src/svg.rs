//! The SVG plots of `docs/perf/`, drawn with `plotters`' SVG backend: a line chart (latency
//! against fill level, log scale) and a grouped bar chart (scaling ratios), each point or
//! bar the median over the runs with its min–max drawn as an error bar.
//!
//! Only the SVG backend is built: it writes text as `<text>` elements (laid out with
//! `plotters`' built-in size estimate), so no font library is needed and the files diff as
//! text and render on GitHub and in any browser.

use plotters::prelude::*;

/// Colours of the series, in order (colour-blind safe: Okabe and Ito).
const COLOURS: [RGBColor; 6] = [
    RGBColor(0x00, 0x72, 0xB2),
    RGBColor(0xD5, 0x5E, 0x00),
    RGBColor(0x00, 0x9E, 0x73),
    RGBColor(0xCC, 0x79, 0xA7),
    RGBColor(0xE6, 0x9F, 0x00),
    RGBColor(0x55, 0x55, 0x55),
];

const SIZE: (u32, u32) = (760, 440);

/// One measured point: the median over the runs and the least and greatest run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    /// Where on the x axis.
    pub x: f64,
    /// The median over the runs.
    pub median: f64,
    /// The least run.
    pub min: f64,
    /// The greatest run.
    pub max: f64,
}

impl Point {
    /// Whether the point can be drawn on a scale that needs values above `floor`.
    fn drawable(&self, floor: f64) -> bool {
        [self.x, self.median, self.min, self.max]
            .iter()
            .all(|v| v.is_finite())
            && self.min > floor
            && self.min <= self.median
            && self.median <= self.max
    }
}

/// One named series of points.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// The legend's name.
    pub name: String,
    /// The points, in x order.
    pub points: Vec<Point>,
}

fn err<E: std::fmt::Display>(e: E) -> String {
    format!("plot: {e}")
}

/// Rounds a log range out to powers of ten.
fn log_range(lo: f64, hi: f64) -> (f64, f64) {
    if !(lo.is_finite() && hi.is_finite() && lo > 0.0 && hi >= lo) {
        return (1.0, 10.0);
    }
    let lo = 10f64.powf(lo.log10().floor());
    let mut hi = 10f64.powf(hi.log10().ceil());
    if hi <= lo {
        hi = lo * 10.0;
    }
    (lo, hi)
}

/// A line chart: x linear over the points' range, y logarithmic; per series a line through
/// the medians and an error bar from min to max at each point (the bars of the series set a
/// little apart so that they do not hide each other). Points that cannot be drawn on a log
/// scale (not finite, or not above 0) are left out.
///
/// # Errors
///
/// If `plotters` fails to draw.
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<String, String> {
    let pts = || {
        series
            .iter()
            .flat_map(|s| s.points.iter())
            .filter(|p| p.drawable(0.0))
    };
    let x0 = pts().map(|p| p.x).fold(f64::INFINITY, f64::min);
    let x1 = pts().map(|p| p.x).fold(f64::NEG_INFINITY, f64::max);
    let (x0, x1) = if x0 < x1 {
        (x0, x1)
    } else if x0.is_finite() {
        (x0 - 1.0, x0 + 1.0)
    } else {
        (0.0, 1.0)
    };
    let pad = (x1 - x0) * 0.03;
    let (y0, y1) = log_range(
        pts().map(|p| p.min).fold(f64::INFINITY, f64::min),
        pts().map(|p| p.max).fold(f64::NEG_INFINITY, f64::max),
    );
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d((x0 - pad)..(x1 + pad), (y0..y1).log_scale())
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| format!("{v}"))
            .light_line_style(TRANSPARENT)
            .draw()
            .map_err(err)?;
        // CAST: a handful of series.
        let mid = (series.len() as f64 - 1.0) / 2.0;
        for (i, s) in series.iter().enumerate() {
            let c = COLOURS[i % COLOURS.len()];
            let good: Vec<Point> = s
                .points
                .iter()
                .copied()
                .filter(|p| p.drawable(0.0))
                .collect();
            chart
                .draw_series(LineSeries::new(
                    good.iter().map(|p| (p.x, p.median)),
                    c.stroke_width(2),
                ))
                .map_err(err)?
                .label(s.name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
            // CAST: as above.
            let dx = (i as f64 - mid) * pad * 0.25;
            chart
                .draw_series(good.iter().map(|p| {
                    ErrorBar::new_vertical(p.x + dx, p.min, p.median, p.max, c.filled(), 6)
                }))
                .map_err(err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(out)
}

/// A grouped bar chart: one group per entry of `groups` (its name, then one point per entry
/// of `bars`, whose `x` is ignored), bars up to the median with an error bar from min to
/// max, y linear from 0, a dashed horizontal line at each of `marks`, and the groups'
/// names under the axis.
///
/// # Errors
///
/// If `plotters` fails to draw.
pub fn bar_chart(
    title: &str,
    y_label: &str,
    bars: &[&str],
    groups: &[(String, Vec<Point>)],
    marks: &[f64],
) -> Result<String, String> {
    let top = groups
        .iter()
        .flat_map(|g| g.1.iter())
        .filter(|p| p.drawable(f64::NEG_INFINITY))
        .map(|p| p.max)
        .chain(marks.iter().copied())
        .fold(0.0, f64::max);
    // Room above the tallest whisker for the legend.
    let y1 = if top > 0.0 { top * 1.3 } else { 1.0 };
    // CAST: a handful of groups and bars.
    let n = groups.len().max(1) as f64;
    let w = 0.7 / bars.len().max(1) as f64;
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(28)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..n, 0.0..y1)
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc(y_label)
            .light_line_style(TRANSPARENT)
            .draw()
            .map_err(err)?;
        for &m in marks {
            chart
                .draw_series(DashedLineSeries::new(
                    [(0.0, m), (n, m)],
                    6,
                    4,
                    BLACK.mix(0.5).stroke_width(1),
                ))
                .map_err(err)?;
        }
        for (b, name) in bars.iter().enumerate() {
            let c = COLOURS[b % COLOURS.len()];
            // CAST: as above.
            let off = 0.15 + w * b as f64;
            let pts: Vec<(f64, Point)> = groups
                .iter()
                .enumerate()
                .filter_map(|(g, (_, v))| Some((g as f64 + off, *v.get(b)?)))
                .filter(|(_, p)| p.drawable(f64::NEG_INFINITY))
                .collect();
            chart
                .draw_series(pts.iter().map(|&(x, p)| {
                    Rectangle::new([(x, 0.0), (x + w * 0.9, p.median)], c.mix(0.75).filled())
                }))
                .map_err(err)?
                .label(*name)
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], c.filled()));
            chart
                .draw_series(pts.iter().map(|&(x, p)| {
                    ErrorBar::new_vertical(x + w * 0.45, p.min, p.median, p.max, BLACK, 8)
                }))
                .map_err(err)?;
        }
        chart
            .draw_series(groups.iter().enumerate().map(|(g, (name, _))| {
                // CAST: as above.
                Text::new(
                    name.clone(),
                    (g as f64 + 0.5, -y1 * 0.02),
                    ("sans-serif", 14).into_font().color(&BLACK).pos(
                        plotters::style::text_anchor::Pos::new(
                            plotters::style::text_anchor::HPos::Center,
                            plotters::style::text_anchor::VPos::Top,
                        ),
                    ),
                )
            }))
            .map_err(err)?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn well_formed(svg: &str) {
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<svg").count(), 1);
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
    }

    /// Whether `svg` has a `<text>` element reading `t` (plotters writes the text on a line
    /// of its own).
    pub(crate) fn has_text(svg: &str, t: &str) -> bool {
        svg.contains(&format!(">\n{t}\n</text>"))
    }

    fn p(x: f64, min: f64, median: f64, max: f64) -> Point {
        Point {
            x,
            median,
            min,
            max,
        }
    }

    #[test]
    fn line_chart_draws_every_series_with_its_spread() {
        let s = [
            Series {
                name: "ours".into(),
                points: vec![p(0.0, 28.0, 30.0, 33.0), p(50.0, 30.0, 31.0, 40.0)],
            },
            Series {
                name: "linux <C>".into(),
                points: vec![p(0.0, 140.0, 150.0, 170.0), p(50.0, 0.0, 0.0, 0.0)],
            },
        ];
        let svg = line_chart("t", "fill (%)", "ns", &s).unwrap();
        well_formed(&svg);
        // Every series is in the legend, escaped.
        assert!(has_text(&svg, "ours"), "{svg}");
        assert!(has_text(&svg, "linux &lt;C&gt;"), "{svg}");
        // A line per series (and one in each legend entry), a median marker per drawable
        // point: the zero point cannot be drawn on a log scale and is left out.
        assert_eq!(svg.matches("<circle").count(), 3, "{svg}");
        assert!(svg.matches("<polyline").count() >= 4, "{svg}");
        // The error bars: a stem and two caps per point.
        assert!(svg.matches("<line").count() >= 9, "{svg}");
    }

    #[test]
    fn bar_chart_draws_every_bar_and_its_spread() {
        let g = vec![
            (
                "ours".to_string(),
                vec![p(0.0, 1.0, 1.5, 1.9), p(0.0, 1.8, 2.0, 2.1)],
            ),
            (
                "linux".to_string(),
                vec![p(0.0, 0.8, 0.9, 1.0), p(0.0, 1.2, 1.4, 1.5)],
            ),
        ];
        let svg = bar_chart("scaling", "2 / 1", &["wall", "CPU time"], &g, &[1.0, 2.0]).unwrap();
        well_formed(&svg);
        for t in ["ours", "linux", "wall", "CPU time"] {
            assert!(has_text(&svg, t), "{t}: {svg}");
        }
        // 4 bars and their 4 median markers.
        assert_eq!(svg.matches("<circle").count(), 4, "{svg}");
    }

    #[test]
    fn log_ranges() {
        assert_eq!(log_range(30.0, 150.0), (10.0, 1000.0));
        assert_eq!(log_range(10.0, 10.0), (10.0, 100.0));
        assert_eq!(log_range(f64::NAN, 1.0), (1.0, 10.0));
    }
}
