//! The whole comparative run behind `cargo xtask bench`: latency grid, memcpy floor,
//! scaling, the fixup's hypercalls and the foreign-table lookup, as [`Figure`]s, Markdown
//! tables and SVG plots.
//!
//! `--quick` measures only what the headline figures need (1500 B at 90% fill for every
//! pool, the floor, scaling of ours and Linux, both fixups, both table sizes) with short
//! batches; the full run measures the whole grid ([`SIZES`] x [`FILLS`] x [`Impl::ALL`],
//! `ToDevice`, plus `Bidirectional` at 90%), scaling of every pool, and draws the plots.

use std::path::PathBuf;
use std::time::Duration;

use swiotlb_core::DmaDirection;

use crate::compare::{Impl, Latency, ScalingCase, Timing, latency_all, with_pool};
use crate::fixup;
use crate::foreign::ForeignCase;
use crate::harness::{FILLS, SIZES};
use crate::report::{Figure, markdown_table};
use crate::svg::{Series, bar_chart, line_chart};

/// What the command line asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SuiteOptions {
    /// Only the headline figures, short batches.
    pub quick: bool,
    /// Where to write the SVG plots (full run only).
    pub svg_dir: Option<PathBuf>,
}

/// The usage line.
pub const USAGE: &str = "usage: bench-report [--quick] [--svg-dir DIR]";

impl SuiteOptions {
    /// Parses the arguments (without the program name).
    ///
    /// # Errors
    ///
    /// An unknown argument, or `--svg-dir` without a directory.
    pub fn parse(args: &[String]) -> Result<Self, String> {
        let mut o = Self::default();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--quick" => o.quick = true,
                "--svg-dir" => {
                    let d = it.next().ok_or("--svg-dir needs a directory")?;
                    o.svg_dir = Some(PathBuf::from(d));
                }
                other => return Err(format!("unknown argument {other:?}; {USAGE}")),
            }
        }
        Ok(o)
    }
}

/// What a run produced.
#[derive(Clone, Debug, Default)]
pub struct SuiteOutput {
    /// The figures, in order.
    pub figures: Vec<Figure>,
    /// Markdown tables (full run).
    pub tables: String,
    /// SVG files: name and contents (full run).
    pub svgs: Vec<(String, String)>,
}

/// The figures `--quick` promises (and the full run too), by key.
pub const HEADLINE_KEYS: [&str; 6] = [
    "map_unmap_1500_fill90_vs_linux",
    "map_unmap_1500_vs_memcpy",
    "map_unmap_65536_vs_memcpy",
    "two_thread_scaling",
    "fixup_hypercalls_per_mib",
    "linux_fixup_hypercalls_per_mib",
];

/// Fill levels the scaling and headline cases use.
pub const HEADLINE_FILL: u32 = 90;
/// The headline size (an Ethernet frame).
pub const HEADLINE_SIZE: usize = 1500;
/// The large headline size (`map_unmap_65536_vs_memcpy`), where the copy dominates.
pub const LARGE_SIZE: usize = 65536;

fn setup<T, E: std::fmt::Display>(r: Result<T, E>, what: &str) -> Result<T, String> {
    r.map_err(|e| format!("cannot set up {what}: {e}"))
}

/// One cell for every pool, and the floor.
fn cells(
    size: usize,
    fill: u32,
    dir: DmaDirection,
    t: Timing,
) -> Result<([Latency; 4], f64), String> {
    let copies = if dir == DmaDirection::ToDevice { 1 } else { 2 };
    setup(latency_all(size, fill, dir, copies, t), "the pools")
}

/// Runs the suite, calling `progress` with a line before each step.
///
/// # Errors
///
/// If a pool, the memory or a simulated machine cannot be set up.
pub fn run(o: &SuiteOptions, progress: &mut dyn FnMut(&str)) -> Result<SuiteOutput, String> {
    let t = if o.quick { Timing::QUICK } else { Timing::FULL };
    let mut out = SuiteOutput::default();
    out.figures.push(machine_figure());
    let to_dev = DmaDirection::ToDevice;

    // Latency grid.
    let sizes: Vec<usize> = if o.quick {
        vec![HEADLINE_SIZE, LARGE_SIZE]
    } else {
        SIZES.to_vec()
    };
    let fills: Vec<u32> = if o.quick {
        vec![HEADLINE_FILL]
    } else {
        FILLS.to_vec()
    };
    let mut floor = Vec::new();
    let mut grid = Vec::new(); // (imp, size, fill, latency)
    for &size in &sizes {
        let mut floors = Vec::new();
        for &fill in &fills {
            progress(&format!("map+unmap {size} B at {fill}% fill"));
            let (lat, f) = cells(size, fill, to_dev, t)?;
            floors.push(f);
            for (imp, l) in Impl::ALL.into_iter().zip(lat) {
                grid.push((imp, size, fill, l));
            }
        }
        // The floor does not depend on the fill: the median of its measurements.
        floor.push((size, crate::compare::median(&mut floors)));
    }
    let ns_of = |imp: Impl, size: usize, fill: u32| {
        grid.iter()
            .find(|g| g.0 == imp && g.1 == size && g.2 == fill)
            .map_or(f64::NAN, |g| g.3.ns)
    };
    let floor_of = |size: usize| floor.iter().find(|f| f.0 == size).map_or(f64::NAN, |f| f.1);
    let (hs, hf) = (HEADLINE_SIZE, HEADLINE_FILL);
    let ours = ns_of(Impl::Ours, hs, hf);
    for peer in [Impl::Linux, Impl::Buddy, Impl::Bitmap] {
        let p = ns_of(peer, hs, hf);
        out.figures.push(
            Figure::new(
                format!("map_unmap_{hs}_fill{hf}_vs_{}", peer.name()),
                ours / p,
                "ratio",
            )
            .with("ours_ns", ours)
            .with(format!("{}_ns", peer.name()), p),
        );
    }
    out.figures.push(
        Figure::new(
            format!("map_unmap_{hs}_vs_memcpy"),
            ours / floor_of(hs),
            "ratio",
        )
        .with("ours_ns", ours)
        .with("memcpy_ns", floor_of(hs))
        .with("fill", f64::from(hf)),
    );
    let large = ns_of(Impl::Ours, LARGE_SIZE, hf);
    out.figures.push(
        Figure::new(
            format!("map_unmap_{LARGE_SIZE}_vs_memcpy"),
            large / floor_of(LARGE_SIZE),
            "ratio",
        )
        .with("ours_ns", large)
        .with("memcpy_ns", floor_of(LARGE_SIZE))
        .with("fill", f64::from(hf)),
    );

    // Scaling.
    let (run, rounds) = if o.quick {
        (Duration::from_millis(150), 7)
    } else {
        (Duration::from_millis(200), 9)
    };
    let scaled: Vec<Impl> = if o.quick {
        vec![Impl::Ours, Impl::Linux]
    } else {
        Impl::ALL.to_vec()
    };
    let mut scaling = Vec::new();
    for imp in scaled {
        progress(&format!("scaling of {} (1 and 2 threads)", imp.name()));
        let s = setup(
            with_pool(
                imp,
                ScalingCase {
                    fill: hf,
                    size: hs,
                    run,
                    rounds,
                },
            ),
            imp.name(),
        )?;
        let key = if imp == Impl::Ours {
            "two_thread_scaling".to_string()
        } else {
            format!("{}_two_thread_scaling", imp.name())
        };
        out.figures.push(
            Figure::new(key, s.ratio, "ratio")
                .with("one_thread_per_s", s.one)
                .with("two_threads_per_s", s.two)
                .with("cpu_time_ratio", s.cpu_ratio)
                .with("size", f64::from(u32::try_from(hs).unwrap_or(u32::MAX)))
                .with("fill", f64::from(hf)),
        );
        scaling.push((imp, s));
    }

    // Fixup hypercalls.
    progress("fixup hypercalls on the simulator");
    let fix = fixup_figures()?;
    out.figures.extend(fix.iter().cloned());

    // Foreign table.
    let ft = if o.quick { Timing::QUICK } else { Timing::FULL };
    let mut foreign_rows = Vec::new();
    for n in [10_000usize, 100_000] {
        progress(&format!("foreign table lookup, {n} entries"));
        let c = setup(
            ForeignCase::new(n, 0xf0_4e19 + n as u64),
            "the foreign table",
        )?;
        let hits = c.check()?;
        let (table, btree) = c.time(ft);
        out.figures.push(
            Figure::new(
                format!("foreign_lookup_{n}_vs_btreemap"),
                table / btree,
                "ratio",
            )
            .with("table_ns", table)
            .with("btreemap_ns", btree)
            .with("hit_share", hits as f64 / crate::foreign::QUERIES as f64),
        );
        foreign_rows.push(vec![
            format!("{n}"),
            format!("{table:.1}"),
            format!("{btree:.1}"),
            format!("{:.2}", table / btree),
        ]);
    }

    if o.quick {
        out.figures.push(load_at_end());
        return Ok(out);
    }

    // Per-cell figures and the full tables.
    let mut rows = Vec::new();
    for &(imp, size, fill, lat) in &grid {
        out.figures.push(
            Figure::new(
                format!("map_unmap_{size}_fill{fill}_{}_ns", imp.name()),
                lat.ns,
                "ns",
            )
            .with("reached_fill", lat.reached_fill),
        );
    }
    for &size in &sizes {
        for &fill in &fills {
            let row_ns: Vec<f64> = Impl::ALL.iter().map(|&i| ns_of(i, size, fill)).collect();
            let reached: Vec<String> = Impl::ALL
                .iter()
                .map(|&i| {
                    grid.iter()
                        .find(|g| g.0 == i && g.1 == size && g.2 == fill)
                        .map_or("-".into(), |g| format!("{:.0}", g.3.reached_fill))
                })
                .collect();
            let mut r = vec![
                format!("{size} B"),
                format!("{fill}% ({})", reached.join("/")),
            ];
            r.extend(row_ns.iter().map(|c| format!("{c:.1}")));
            r.push(format!("{:.1}", floor_of(size)));
            r.extend(row_ns[1..].iter().map(|c| format!("{:.2}", row_ns[0] / c)));
            r.push(format!("{:.2}", row_ns[0] / floor_of(size)));
            rows.push(r);
        }
    }
    out.tables.push_str(
        "### Map+unmap, ToDevice (median ns per round trip)\n\n\
         fill column: target (reached by ours/linux/buddy/bitmap)\n\n",
    );
    out.tables.push_str(&markdown_table(
        &[
            "size",
            "fill",
            "ours",
            "linux",
            "buddy",
            "bitmap",
            "memcpy",
            "ours/linux",
            "ours/buddy",
            "ours/bitmap",
            "ours/memcpy",
        ],
        2,
        &rows,
    ));

    // Bidirectional at the headline fill: copy in and copy back.
    let mut bidi = Vec::new();
    for &size in &sizes {
        progress(&format!("bidirectional {size} B at {hf}% fill"));
        let (lat, floor2) = cells(size, hf, DmaDirection::Bidirectional, t)?;
        let mut r = vec![format!("{size} B")];
        r.extend(lat.iter().map(|l| format!("{:.1}", l.ns)));
        r.push(format!("{floor2:.1}"));
        r.push(format!("{:.2}", lat[0].ns / lat[1].ns));
        r.push(format!("{:.2}", lat[0].ns / floor2));
        bidi.push(r);
    }
    out.tables.push_str(&format!(
        "\n### Map+unmap, Bidirectional at {hf}% fill (copy in and copy back; median ns)\n\n"
    ));
    out.tables.push_str(&markdown_table(
        &[
            "size",
            "ours",
            "linux",
            "buddy",
            "bitmap",
            "2 x memcpy",
            "ours/linux",
            "ours/2 memcpy",
        ],
        1,
        &bidi,
    ));

    // Scaling table.
    let srows: Vec<Vec<String>> = scaling
        .iter()
        .map(|(i, s)| {
            vec![
                i.name().to_string(),
                format!("{:.2}", s.one / 1e6),
                format!("{:.2}", s.two / 1e6),
                format!("{:.2}", s.ratio),
                format!("{:.2}", s.one_cpu / 1e6),
                format!("{:.2}", s.two_cpu / 1e6),
                format!("{:.2}", s.cpu_ratio),
            ]
        })
        .collect();
    out.tables.push_str(&format!(
        "\n### Scaling: {hs} B ToDevice round trips at {hf}% fill (millions per second; \
         per wall-clock second, and per second of each thread's CPU time)\n\n"
    ));
    out.tables.push_str(&markdown_table(
        &[
            "pool",
            "1 thread",
            "2 threads",
            "2 / 1",
            "1 thread (CPU time)",
            "2 threads (CPU time)",
            "2 / 1 (CPU time)",
        ],
        1,
        &srows,
    ));

    // Fixup and foreign tables.
    out.tables
        .push_str("\n### Pool fixup on the simulated x86 PV machine\n\n");
    let frows: Vec<Vec<String>> = fix
        .iter()
        .map(|f| vec![f.key.clone(), format!("{:.2}", f.value), f.unit.to_string()])
        .collect();
    out.tables
        .push_str(&markdown_table(&["figure", "value", "unit"], 1, &frows));
    out.tables
        .push_str("\n### Foreign-table lookup (median ns per lookup)\n\n");
    out.tables.push_str(&markdown_table(
        &["entries", "ForeignTable", "BTreeMap", "table/btree"],
        1,
        &foreign_rows,
    ));

    // Plots.
    for size in [HEADLINE_SIZE, 4096, 65536] {
        let mut series: Vec<Series> = Impl::ALL
            .iter()
            .map(|&i| Series {
                name: i.name().to_string(),
                points: fills
                    .iter()
                    .map(|&f| (f64::from(f), ns_of(i, size, f)))
                    .collect(),
            })
            .collect();
        series.push(Series {
            name: "memcpy".into(),
            points: fills
                .iter()
                .map(|&f| (f64::from(f), floor_of(size)))
                .collect(),
        });
        out.svgs.push((
            format!("latency-vs-fill-{size}.svg"),
            line_chart(
                &format!("{size} B ToDevice map+unmap against pool fill"),
                "fill level (% of slots in use, fragmented)",
                "median ns per round trip (log)",
                &series,
            ),
        ));
    }
    let groups: Vec<(String, Vec<f64>, String)> = scaling
        .iter()
        .map(|(i, s)| {
            (
                i.name().to_string(),
                vec![s.one / 1e6, s.two / 1e6, s.one_cpu / 1e6, s.two_cpu / 1e6],
                format!("{:.2}x / {:.2}x", s.ratio, s.cpu_ratio),
            )
        })
        .collect();
    out.svgs.push((
        "scaling.svg".into(),
        bar_chart(
            &format!("{hs} B round trips at {hf}% fill, 1 and 2 threads (2/1: wall / CPU)"),
            "millions of round trips per second",
            &[
                "1 thread",
                "2 threads",
                "1 thread, CPU time",
                "2 threads, CPU time",
            ],
            &groups,
        ),
    ));
    out.figures.push(load_at_end());
    Ok(out)
}

/// The 1-minute load average when the measurements ended (`machine_load_1min_end`), to
/// compare with the one at the start.
#[must_use]
pub fn load_at_end() -> Figure {
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(f64::NAN);
    Figure::new("machine_load_1min_end", load, "load")
}

/// The machine the run is on: the 1-minute load average at the start (other work on the
/// CPUs skews every figure, scaling most) and the CPUs available.
#[must_use]
pub fn machine_figure() -> Figure {
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(f64::NAN);
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    // CAST: a CPU count fits f64 exactly.
    Figure::new("machine_load_1min", load, "load").with("cpus", cpus as f64)
}

/// The fixup figures: Linux's scheme on the simulator, and the facade's pool init, for a
/// 32 MiB pool (the headline keys: on the default machine it outgrows the free memory below
/// 2^25 halfway, so the address width must rise mid-pool) and a 16 MiB one (keys suffixed
/// `_16mib`: one width fits it all).
///
/// # Errors
///
/// If a fixup fails on the simulator.
pub fn fixup_figures() -> Result<Vec<Figure>, String> {
    let mut v = Vec::new();
    for (bytes, suffix) in [(fixup::FIXUP_POOL_BYTES, ""), (16 << 20, "_16mib")] {
        let (xen, g) = fixup::machine();
        let phys = g.alloc_aligned(bytes / 4096, 64);
        // SAFETY: fresh dom0 pages, used by nothing else.
        let linux =
            unsafe { fixup::linux_fixup(&xen, &g, phys, bytes) }.map_err(|e| e.to_string())?;
        let (ours, report) = crate::sim::facade_fixup(bytes)?;
        let chunks: Vec<String> = report
            .chunks
            .iter()
            .map(|c| match c.address_bits {
                Some(b) => format!("{}@{b}", c.order),
                None => format!("{}@kept", c.order),
            })
            .collect();
        v.push(
            Figure::new(
                format!("fixup_hypercalls_per_mib{suffix}"),
                ours.traps_per_mib(),
                "per_mib",
            )
            .with("traps", ours.traps as f64)
            .with("exchanges", ours.exchanges as f64)
            .with("multicalls", ours.multicalls as f64)
            // Exchanges that did not make a chunk: refused limits and refused orders.
            .with(
                "failed_exchanges",
                ours.exchanges
                    .saturating_sub(report.exchanged().count() as u64) as f64,
            )
            .with("pool_mib", (ours.bytes >> 20) as f64)
            .with("max_address_bits", f64::from(ours.max_bits))
            .note("chunks_order_at_bits", chunks.join(" ")),
        );
        v.push(Figure::new(
            format!("fixup_exchanges_per_mib{suffix}"),
            ours.exchanges_per_mib(),
            "per_mib",
        ));
        v.push(
            Figure::new(
                format!("linux_fixup_hypercalls_per_mib{suffix}"),
                linux.traps_per_mib(),
                "per_mib",
            )
            .with("traps", linux.traps as f64)
            .with("exchanges", linux.exchanges as f64)
            .with("multicalls", linux.multicalls as f64)
            .with(
                "failed_exchanges",
                (linux.exchanges - bytes / fixup::SEGMENT_BYTES) as f64,
            )
            .with("pool_mib", (bytes >> 20) as f64)
            .with("max_address_bits", f64::from(linux.max_bits)),
        );
        v.push(Figure::new(
            format!("linux_fixup_exchanges_per_mib{suffix}"),
            linux.exchanges_per_mib(),
            "per_mib",
        ));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_string()).collect()
    }

    #[test]
    fn quick_run_has_every_headline_figure_once() {
        let o = SuiteOptions {
            quick: true,
            svg_dir: None,
        };
        let mut steps = 0;
        let out = run(&o, &mut |_| steps += 1).unwrap();
        assert!(steps > 3);
        assert!(out.tables.is_empty() && out.svgs.is_empty());
        for key in HEADLINE_KEYS {
            let f: Vec<&Figure> = out.figures.iter().filter(|f| f.key == key).collect();
            assert_eq!(f.len(), 1, "{key}");
            assert!(
                f[0].value.is_finite() && f[0].value > 0.0,
                "{key}: {:?}",
                f[0]
            );
        }
        // Every line is one JSON object with a key, a value and a unit.
        for f in &out.figures {
            let v: serde_json::Value = serde_json::from_str(&f.to_json()).unwrap();
            assert!(v["key"].is_string() && v["unit"].is_string(), "{v}");
        }
    }

    #[test]
    fn parses_options() {
        assert_eq!(SuiteOptions::parse(&[]), Ok(SuiteOptions::default()));
        let o = SuiteOptions::parse(&args(&["--quick", "--svg-dir", "docs/perf"])).unwrap();
        assert!(o.quick);
        assert_eq!(o.svg_dir, Some(PathBuf::from("docs/perf")));
        assert!(SuiteOptions::parse(&args(&["--svg-dir"])).is_err());
        assert!(
            SuiteOptions::parse(&args(&["--fast"]))
                .unwrap_err()
                .contains("--fast")
        );
    }
}
