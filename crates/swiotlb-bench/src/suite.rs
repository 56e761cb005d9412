//! The whole comparative run behind `cargo xtask bench`: latency grid, memcpy floor,
//! scaling, the fixup's hypercalls, growth (hypercalls and time per MiB grown and given
//! back, latency with 1, 4 and 16 grown pools: [`crate::growth`]) and the foreign-table
//! lookup, as [`Figure`]s, Markdown tables and SVG plots.
//!
//! Everything is measured `--runs N` times (default [`DEFAULT_RUNS`], [`QUICK_RUNS`] with
//! `--quick`), each run a whole pass over the cases ([`run_once`]), and the runs are folded
//! into one figure per key ([`aggregate`]): the median, the least and the greatest run.
//! The tables and plots are made from those figures alone, so they print nothing the JSON
//! lines do not carry. The machine's load (`/proc/loadavg`) is recorded at the start and at
//! the end, with the number of CPUs.
//!
//! `--quick` measures only what the headline figures need (1500 B and 64 KiB at 90% fill
//! for every pool, the floor, scaling of ours and Linux, both fixups, growth, both table
//! sizes)
//! with short batches; the full run measures the whole grid ([`SIZES`] x [`FILLS`] x
//! [`Impl::ALL`], `ToDevice`, plus `Bidirectional` at 90%), scaling of every pool, and
//! draws the plots.

use std::path::PathBuf;
use std::time::Duration;

use swiotlb_core::DmaDirection;

use crate::compare::{Impl, ScalingCase, Timing, latency_all, with_pool};
use crate::fixup;
use crate::foreign::ForeignCase;
use crate::growth;
use crate::harness::{FILLS, SIZES};
use crate::report::{Figure, aggregate, markdown_table, markdown_table_aligned};
use crate::svg::{Point, Series, bar_chart, line_chart};

/// Runs of the full suite unless `--runs` says otherwise.
pub const DEFAULT_RUNS: usize = 5;
/// Runs of `--quick` unless `--runs` says otherwise.
pub const QUICK_RUNS: usize = 3;
/// The most runs `--runs` accepts.
pub const MAX_RUNS: usize = 100;

/// What the command line asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SuiteOptions {
    /// Only the headline figures, short batches.
    pub quick: bool,
    /// How many times every figure is measured.
    pub runs: usize,
    /// Where to write the SVG plots (full run only).
    pub svg_dir: Option<PathBuf>,
}

impl Default for SuiteOptions {
    fn default() -> Self {
        Self {
            quick: false,
            runs: DEFAULT_RUNS,
            svg_dir: None,
        }
    }
}

/// The usage text.
pub const USAGE: &str = "usage: bench-report [--quick] [--runs N] [--svg-dir DIR]

  --quick        only the headline figures, short batches, no tables or plots
  --runs N       measure every figure N times (1..=100; default 5, 3 with --quick) and
                 report the median, min and max
  --svg-dir DIR  write the plots there (full run only)

One JSON line per figure on stdout, then (full run) the Markdown tables; progress on stderr.";

fn parse_runs(v: Option<&String>) -> Result<usize, String> {
    let v = v.ok_or_else(|| format!("--runs needs a count in 1..={MAX_RUNS}"))?;
    match v.parse::<usize>() {
        Ok(n) if (1..=MAX_RUNS).contains(&n) => Ok(n),
        _ => Err(format!("--runs {v:?}: expected a count in 1..={MAX_RUNS}")),
    }
}

impl SuiteOptions {
    /// Parses the arguments (without the program name).
    ///
    /// # Errors
    ///
    /// An unknown argument, `--svg-dir` without a directory, or `--runs` without a count in
    /// `1..=`[`MAX_RUNS`].
    pub fn parse(args: &[String]) -> Result<Self, String> {
        let mut o = Self::default();
        let mut runs = None;
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--quick" => o.quick = true,
                "--runs" => runs = Some(parse_runs(it.next())?),
                "--svg-dir" => {
                    let d = it.next().ok_or("--svg-dir needs a directory")?;
                    o.svg_dir = Some(PathBuf::from(d));
                }
                other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
            }
        }
        o.runs = runs.unwrap_or(if o.quick { QUICK_RUNS } else { DEFAULT_RUNS });
        Ok(o)
    }
}

/// What a run produced.
#[derive(Clone, Debug, Default)]
pub struct SuiteOutput {
    /// The figures, in order, each folded over the runs.
    pub figures: Vec<Figure>,
    /// Markdown tables (full run).
    pub tables: String,
    /// SVG files: name and contents (full run).
    pub svgs: Vec<(String, String)>,
}

/// The figures `--quick` promises (and the full run too), by key.
pub const HEADLINE_KEYS: [&str; 9] = [
    "map_unmap_1500_fill90_vs_linux",
    "map_unmap_1500_vs_memcpy",
    "map_unmap_65536_vs_memcpy",
    "two_thread_scaling",
    "fixup_hypercalls_per_mib",
    "linux_fixup_hypercalls_per_mib",
    "growth_hypercalls_per_mib",
    "shrink_hypercalls_per_mib",
    "map_unmap_1500_pools_16_vs_1",
];

/// Fill levels the scaling and headline cases use.
pub const HEADLINE_FILL: u32 = 90;
/// The headline size (an Ethernet frame).
pub const HEADLINE_SIZE: usize = 1500;
/// The large headline size (`map_unmap_65536_vs_memcpy`), where the copy dominates.
pub const LARGE_SIZE: usize = 65536;
/// The foreign-table sizes.
pub const FOREIGN_ENTRIES: [usize; 2] = [10_000, 100_000];

fn setup<T, E: std::fmt::Display>(r: Result<T, E>, what: &str) -> Result<T, String> {
    r.map_err(|e| format!("cannot set up {what}: {e}"))
}

/// The sizes and fills a run measures.
fn grid_of(o: &SuiteOptions) -> (Vec<usize>, Vec<u32>) {
    if o.quick {
        (vec![HEADLINE_SIZE, LARGE_SIZE], vec![HEADLINE_FILL])
    } else {
        (SIZES.to_vec(), FILLS.to_vec())
    }
}

/// The pools whose scaling a run measures.
fn scaled_of(o: &SuiteOptions) -> Vec<Impl> {
    if o.quick {
        vec![Impl::Ours, Impl::Linux]
    } else {
        Impl::ALL.to_vec()
    }
}

/// Key of one grid cell's latency.
fn cell_key(size: usize, fill: u32, imp: Impl) -> String {
    format!("map_unmap_{size}_fill{fill}_{}_ns", imp.name())
}

/// Key of one grid cell's ratio of ours to `peer` (`"memcpy"` for the floor).
fn ratio_key(size: usize, fill: u32, peer: &str) -> String {
    format!("map_unmap_{size}_fill{fill}_vs_{peer}")
}

/// Key of the `Bidirectional` cell's latency.
fn bidi_key(size: usize, imp: &str) -> String {
    format!("map_unmap_bidi_{size}_fill{HEADLINE_FILL}_{imp}_ns")
}

/// Key of a pool's scaling (wall clock; `_cpu_time` appended for the CPU-time ratio).
fn scaling_key(imp: Impl) -> String {
    if imp == Impl::Ours {
        "two_thread_scaling".to_string()
    } else {
        format!("{}_two_thread_scaling", imp.name())
    }
}

// CAST: sizes and fills fit f64 exactly.
fn f(v: usize) -> f64 {
    v as f64
}

/// One pass over every case: each figure measured once.
///
/// # Errors
///
/// If a pool, the memory or a simulated machine cannot be set up.
pub fn run_once(o: &SuiteOptions, progress: &mut dyn FnMut(&str)) -> Result<Vec<Figure>, String> {
    let t = if o.quick { Timing::QUICK } else { Timing::FULL };
    let mut figs = Vec::new();
    let to_dev = DmaDirection::ToDevice;
    let (hs, hf) = (HEADLINE_SIZE, HEADLINE_FILL);

    // Latency grid.
    let (sizes, fills) = grid_of(o);
    let mut cells = Vec::new(); // (size, fill, [ns; 4], floor)
    for &size in &sizes {
        let mut floors = Vec::new();
        let mut rows = Vec::new();
        for &fill in &fills {
            progress(&format!("map+unmap {size} B at {fill}% fill"));
            let (lat, floor) = setup(latency_all(size, fill, to_dev, 1, t), "the pools")?;
            floors.push(floor);
            for (imp, l) in Impl::ALL.into_iter().zip(lat) {
                figs.push(
                    Figure::new(cell_key(size, fill, imp), l.ns, "ns")
                        .with("reached_fill", l.reached_fill),
                );
            }
            rows.push((fill, lat.map(|l| l.ns)));
        }
        // The floor does not depend on the fill: this run's median of its measurements.
        let floor = crate::compare::median(&mut floors);
        figs.push(Figure::new(format!("memcpy_{size}_ns"), floor, "ns"));
        for (fill, ns) in rows {
            for (i, peer) in Impl::ALL.iter().enumerate().skip(1) {
                figs.push(
                    Figure::new(ratio_key(size, fill, peer.name()), ns[0] / ns[i], "ratio")
                        .with("ours_ns", ns[0])
                        .with(format!("{}_ns", peer.name()), ns[i]),
                );
            }
            figs.push(
                Figure::new(ratio_key(size, fill, "memcpy"), ns[0] / floor, "ratio")
                    .with("ours_ns", ns[0])
                    .with("memcpy_ns", floor),
            );
            cells.push((size, fill, ns, floor));
        }
    }
    let cell = |size: usize, fill: u32| cells.iter().find(|c| c.0 == size && c.1 == fill);
    for size in [hs, LARGE_SIZE] {
        if let Some(&(_, _, ns, floor)) = cell(size, hf) {
            figs.push(
                Figure::new(
                    format!("map_unmap_{size}_vs_memcpy"),
                    ns[0] / floor,
                    "ratio",
                )
                .with("ours_ns", ns[0])
                .with("memcpy_ns", floor)
                .with("fill", f64::from(hf)),
            );
        }
    }

    // Bidirectional at the headline fill: copy in and copy back (full run).
    if !o.quick {
        for &size in &sizes {
            progress(&format!("bidirectional {size} B at {hf}% fill"));
            let (lat, floor2) = setup(
                latency_all(size, hf, DmaDirection::Bidirectional, 2, t),
                "the pools",
            )?;
            for (imp, l) in Impl::ALL.into_iter().zip(lat) {
                figs.push(
                    Figure::new(bidi_key(size, imp.name()), l.ns, "ns")
                        .with("reached_fill", l.reached_fill),
                );
            }
            figs.push(Figure::new(bidi_key(size, "2x_memcpy"), floor2, "ns"));
            figs.push(Figure::new(
                format!("map_unmap_bidi_{size}_fill{hf}_vs_linux"),
                lat[0].ns / lat[1].ns,
                "ratio",
            ));
            figs.push(Figure::new(
                format!("map_unmap_bidi_{size}_fill{hf}_vs_2x_memcpy"),
                lat[0].ns / floor2,
                "ratio",
            ));
        }
    }

    // Scaling.
    let (run, rounds) = if o.quick {
        (Duration::from_millis(100), 2)
    } else {
        (Duration::from_millis(200), 5)
    };
    for imp in scaled_of(o) {
        progress(&format!("scaling of {} (1 and 2 threads)", imp.name()));
        let case = ScalingCase {
            fill: hf,
            size: hs,
            run,
            rounds,
        };
        let s = setup(with_pool(imp, case), imp.name())?;
        figs.push(
            Figure::new(scaling_key(imp), s.ratio, "ratio")
                .with("one_thread_per_s", s.one)
                .with("two_threads_per_s", s.two)
                .with("cpu_time_ratio", s.cpu_ratio)
                .with("one_thread_cpu_per_s", s.one_cpu)
                .with("two_threads_cpu_per_s", s.two_cpu)
                .with("size", f(hs))
                .with("fill", f64::from(hf)),
        );
        figs.push(Figure::new(
            format!("{}_cpu_time", scaling_key(imp)),
            s.cpu_ratio,
            "ratio",
        ));
    }

    // Fixup hypercalls (the simulator's counts: the same in every run).
    progress("fixup hypercalls on the simulator");
    figs.extend(fixup_figures()?);

    // Pools grown at run time (the simulator's counts, and times).
    progress("growth: 8 pools of 2 MiB grown and given back on the simulator");
    figs.extend(growth_figures()?);
    for pools in growth::POOL_COUNTS {
        progress(&format!(
            "map+unmap and sync {hs} B with {pools} grown pools"
        ));
        figs.extend(pools_figures(pools, t)?);
    }
    if let (Some(one), Some(many)) = (
        get(&figs, &pools_key("map_unmap", 1)),
        get(&figs, &pools_key("map_unmap", 16)),
    ) {
        let (one, many) = (one.value, many.value);
        figs.push(
            Figure::new(
                format!("{}_vs_1", pools_key("map_unmap", 16)),
                many / one,
                "ratio",
            )
            .with("pools_1_ns", one)
            .with("pools_16_ns", many),
        );
    }
    if let (Some(one), Some(many)) = (
        get(&figs, &pools_key("sync", 1)),
        get(&figs, &pools_key("sync", 16)),
    ) {
        let (one, many) = (one.value, many.value);
        figs.push(
            Figure::new(
                format!("{}_vs_1", pools_key("sync", 16)),
                many / one,
                "ratio",
            )
            .with("pools_1_ns", one)
            .with("pools_16_ns", many),
        );
    }

    // Foreign table.
    for n in FOREIGN_ENTRIES {
        progress(&format!("foreign table lookup, {n} entries"));
        let c = setup(
            ForeignCase::new(n, 0xf0_4e19 + n as u64),
            "the foreign table",
        )?;
        let hits = c.check()?;
        let (table, btree) = c.time(t);
        figs.push(
            Figure::new(
                format!("foreign_lookup_{n}_vs_btreemap"),
                table / btree,
                "ratio",
            )
            .with("table_ns", table)
            .with("btreemap_ns", btree)
            .with("hit_share", f(hits) / f(crate::foreign::QUERIES)),
        );
        figs.push(Figure::new(
            format!("foreign_lookup_{n}_table_ns"),
            table,
            "ns",
        ));
        figs.push(Figure::new(
            format!("foreign_lookup_{n}_btreemap_ns"),
            btree,
            "ns",
        ));
    }
    Ok(figs)
}

/// Runs the suite `o.runs` times, calling `progress` with a line before each step, and
/// folds the runs into one figure per key; makes the tables and plots of a full run from
/// those figures.
///
/// # Errors
///
/// If a pool, the memory or a simulated machine cannot be set up, or a plot cannot be
/// drawn.
pub fn run(o: &SuiteOptions, progress: &mut dyn FnMut(&str)) -> Result<SuiteOutput, String> {
    let start = machine_figure("machine_load_1min");
    let mut runs = Vec::with_capacity(o.runs);
    for r in 1..=o.runs.max(1) {
        let n = o.runs.max(1);
        runs.push(run_once(o, &mut |step| {
            progress(&format!("run {r}/{n}: {step}"))
        })?);
    }
    let mut out = SuiteOutput::default();
    out.figures.push(start);
    out.figures.extend(aggregate(&runs));
    out.figures.push(machine_figure("machine_load_1min_end"));
    if !o.quick {
        out.tables = tables(o, &out.figures);
        out.svgs = plots(o, &out.figures)?;
    }
    Ok(out)
}

/// The figure called `key`.
fn get<'a>(figs: &'a [Figure], key: &str) -> Option<&'a Figure> {
    figs.iter().find(|f| f.key == key)
}

/// A figure's median and spread for a table cell: `median (min–max)`, `median` alone when
/// one run measured it, `-` when none did.
fn stat(fig: Option<&Figure>, prec: usize) -> String {
    match fig {
        Some(f) if f.runs > 1 && f.min == f.max => format!("{:.prec$} (every run)", f.value),
        Some(f) if f.runs > 1 => format!("{:.prec$} ({:.prec$}–{:.prec$})", f.value, f.min, f.max),
        Some(f) if f.runs == 1 => format!("{:.prec$}", f.value),
        _ => "-".into(),
    }
}

/// A figure's input (a median over the runs) for a table cell.
fn input(fig: Option<&Figure>, name: &str, scale: f64, prec: usize) -> String {
    match fig.and_then(|f| f.input(name)) {
        Some(v) if v.is_finite() => format!("{:.prec$}", v * scale),
        _ => "-".into(),
    }
}

/// The Markdown tables of a full run, from its figures.
fn tables(o: &SuiteOptions, figs: &[Figure]) -> String {
    let (sizes, fills) = grid_of(o);
    let (hs, hf) = (HEADLINE_SIZE, HEADLINE_FILL);
    let g = |k: &str| get(figs, k);
    let n = o.runs;
    let mut out = String::new();
    out.push_str(&format!(
        "### Headline figures\n\nMedian (min–max) over {n} runs; the inputs are medians over the \
         runs.\n\n"
    ));
    out.push_str(&markdown_table_aligned(
        &["key", "value", "unit", "from"],
        &[false, true, false, false],
        &headline_rows(figs),
    ));
    out.push('\n');
    let mut ns_rows = Vec::new();
    let mut ratio_rows = Vec::new();
    for &size in &sizes {
        for &fill in &fills {
            let reached: Vec<String> = Impl::ALL
                .iter()
                .map(|&i| input(g(&cell_key(size, fill, i)), "reached_fill", 1.0, 0))
                .collect();
            let mut r = vec![
                format!("{size} B"),
                format!("{fill}% ({})", reached.join("/")),
            ];
            r.extend(
                Impl::ALL
                    .iter()
                    .map(|&i| stat(g(&cell_key(size, fill, i)), 1)),
            );
            r.push(stat(g(&format!("memcpy_{size}_ns")), 1));
            ns_rows.push(r);
            let mut r = vec![format!("{size} B"), format!("{fill}%")];
            for peer in ["linux", "buddy", "bitmap", "memcpy"] {
                r.push(stat(g(&ratio_key(size, fill, peer)), 2));
            }
            ratio_rows.push(r);
        }
    }
    out.push_str(&format!(
        "### Map+unmap, ToDevice: ns per round trip\n\nMedian (min–max) over {n} runs, \
         each run's value the median of its batches. The fill column gives the target \
         and, in parentheses, the fill reached by ours/linux/buddy/bitmap (medians).\n\n"
    ));
    out.push_str(&markdown_table(
        &["size", "fill", "ours", "linux", "buddy", "bitmap", "memcpy"],
        2,
        &ns_rows,
    ));
    out.push_str(&format!(
        "\n### Map+unmap, ToDevice: ours against each\n\nMedian (min–max) over {n} runs \
         of each run's ratio.\n\n"
    ));
    out.push_str(&markdown_table(
        &[
            "size",
            "fill",
            "ours/linux",
            "ours/buddy",
            "ours/bitmap",
            "ours/memcpy",
        ],
        2,
        &ratio_rows,
    ));

    let bidi: Vec<Vec<String>> = sizes
        .iter()
        .map(|&size| {
            let mut r = vec![format!("{size} B")];
            for imp in ["ours", "linux", "buddy", "bitmap", "2x_memcpy"] {
                r.push(stat(g(&bidi_key(size, imp)), 1));
            }
            for peer in ["linux", "2x_memcpy"] {
                r.push(stat(
                    g(&format!("map_unmap_bidi_{size}_fill{hf}_vs_{peer}")),
                    2,
                ));
            }
            r
        })
        .collect();
    out.push_str(&format!(
        "\n### Map+unmap, Bidirectional at {hf}% fill (copy in and copy back)\n\nns per \
         round trip and ratios, median (min–max) over {n} runs.\n\n"
    ));
    out.push_str(&markdown_table(
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

    let srows: Vec<Vec<String>> = scaled_of(o)
        .into_iter()
        .map(|i| {
            let s = g(&scaling_key(i));
            vec![
                i.name().to_string(),
                input(s, "one_thread_per_s", 1e-6, 2),
                input(s, "two_threads_per_s", 1e-6, 2),
                stat(s, 2),
                input(s, "one_thread_cpu_per_s", 1e-6, 2),
                input(s, "two_threads_cpu_per_s", 1e-6, 2),
                stat(g(&format!("{}_cpu_time", scaling_key(i))), 2),
            ]
        })
        .collect();
    out.push_str(&format!(
        "\n### Scaling: {hs} B ToDevice round trips at {hf}% fill\n\nMillions per second \
         (per wall-clock second, and per second of each thread's CPU time), medians over \
         {n} runs; the ratios median (min–max) over the runs.\n\n"
    ));
    out.push_str(&markdown_table(
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

    out.push_str(&format!(
        "\n### Pool fixup on the simulated x86 PV machine\n\nMedian (min–max) over {n} \
         runs.\n\n"
    ));
    let frows: Vec<Vec<String>> = figs
        .iter()
        .filter(|f| f.key.contains("fixup_"))
        .map(|f| vec![format!("`{}`", f.key), stat(Some(f), 4), f.unit.to_string()])
        .collect();
    out.push_str(&markdown_table_aligned(
        &["figure", "value", "unit"],
        &[false, true, false],
        &frows,
    ));

    out.push_str(&format!(
        "\n### Growth on the simulated x86 PV machine\n\n{} pools of {} MiB grown at run \
         time (first pool full: `PoolFull`) and given back by reclaim, against Linux's \
         init-time fixup of the same memory; then a {} B bounced map+unmap and a sync with \
         1, 4 and 16 grown pools alive, the mapping in the last. Median (min–max) over {n} \
         runs.\n\n",
        growth::GROW_CHUNKS,
        growth::CHUNK_BYTES >> 20,
        growth::LOOKUP_SIZE
    ));
    out.push_str(&markdown_table_aligned(
        &["figure", "value", "unit"],
        &[false, true, false],
        &growth_rows(figs),
    ));

    out.push_str(&format!(
        "\n### Foreign-table lookup\n\nns per lookup and ratio, median (min–max) over {n} \
         runs.\n\n"
    ));
    let frows: Vec<Vec<String>> = FOREIGN_ENTRIES
        .iter()
        .map(|&e| {
            vec![
                format!("{e}"),
                stat(g(&format!("foreign_lookup_{e}_table_ns")), 1),
                stat(g(&format!("foreign_lookup_{e}_btreemap_ns")), 1),
                stat(g(&format!("foreign_lookup_{e}_vs_btreemap")), 2),
            ]
        })
        .collect();
    out.push_str(&markdown_table(
        &["entries", "ForeignTable", "BTreeMap", "table/btree"],
        1,
        &frows,
    ));
    out
}

/// The keys of the headline table, after [`HEADLINE_KEYS`]'s.
const MORE_HEADLINES: [&str; 11] = [
    "map_unmap_1500_fill90_vs_buddy",
    "map_unmap_1500_fill90_vs_bitmap",
    "two_thread_scaling_cpu_time",
    "linux_two_thread_scaling",
    "linux_two_thread_scaling_cpu_time",
    "fixup_exchanges_per_mib",
    "linux_fixup_exchanges_per_mib",
    "fixup_hypercalls_per_mib_align256k",
    "linux_fixup_hypercalls_per_mib_align256k",
    "foreign_lookup_10000_vs_btreemap",
    "foreign_lookup_100000_vs_btreemap",
];

/// The rows of the headline table: each figure with its inputs (medians over the runs).
fn headline_rows(figs: &[Figure]) -> Vec<Vec<String>> {
    HEADLINE_KEYS
        .iter()
        .chain(MORE_HEADLINES.iter())
        .filter_map(|k| get(figs, k))
        .map(|f| {
            let prec = if f.unit == "per_mib" { 4 } else { 2 };
            let from: Vec<String> = f
                .inputs
                .iter()
                .filter(|(name, v)| v.is_finite() && !matches!(name.as_str(), "size" | "fill"))
                .map(|(name, v)| {
                    if v.abs() >= 1e5 {
                        format!("{name} {:.2}M", v / 1e6)
                    } else if v.fract() == 0.0 {
                        format!("{name} {v:.0}")
                    } else {
                        format!("{name} {v:.2}")
                    }
                })
                .chain(f.notes.iter().map(|(name, t)| format!("{name} `{t}`")))
                .collect();
            vec![
                format!("`{}`", f.key),
                stat(Some(f), prec),
                f.unit.to_string(),
                from.join(", "),
            ]
        })
        .collect()
}

/// A figure as a plot point at `x` (NaN if there is none).
fn point(fig: Option<&Figure>, x: f64) -> Point {
    fig.map_or(
        Point {
            x,
            median: f64::NAN,
            min: f64::NAN,
            max: f64::NAN,
        },
        |f| Point {
            x,
            median: f.value,
            min: f.min,
            max: f.max,
        },
    )
}

/// The SVG plots of a full run, from its figures.
fn plots(o: &SuiteOptions, figs: &[Figure]) -> Result<Vec<(String, String)>, String> {
    let (_, fills) = grid_of(o);
    let (hs, hf) = (HEADLINE_SIZE, HEADLINE_FILL);
    let n = o.runs;
    let mut out = Vec::new();
    for size in [HEADLINE_SIZE, 4096, 65536] {
        let mut series: Vec<Series> = Impl::ALL
            .iter()
            .map(|&i| Series {
                name: i.name().to_string(),
                points: fills
                    .iter()
                    .map(|&fl| point(get(figs, &cell_key(size, fl, i)), f64::from(fl)))
                    .collect(),
            })
            .collect();
        series.push(Series {
            name: "memcpy".into(),
            points: fills
                .iter()
                .map(|&fl| point(get(figs, &format!("memcpy_{size}_ns")), f64::from(fl)))
                .collect(),
        });
        out.push((
            format!("latency-vs-fill-{size}.svg"),
            line_chart(
                &format!(
                    "{size} B ToDevice map+unmap against pool fill ({n} runs: median, min-max)"
                ),
                "fill level (% of slots in use, fragmented)",
                "ns per round trip (log)",
                &series,
            )?,
        ));
    }
    let groups: Vec<(String, Vec<Point>)> = scaled_of(o)
        .into_iter()
        .map(|i| {
            (
                i.name().to_string(),
                vec![
                    point(get(figs, &scaling_key(i)), 0.0),
                    point(get(figs, &format!("{}_cpu_time", scaling_key(i))), 0.0),
                ],
            )
        })
        .collect();
    out.push((
        "scaling.svg".into(),
        bar_chart(
            &format!(
                "{hs} B round trips at {hf}% fill: 2 threads / 1 thread ({n} runs: median, min-max)"
            ),
            "2 threads / 1 thread (2 = perfect, 1 = none)",
            &["per wall-clock second", "per CPU second"],
            &groups,
            &[1.0, 2.0],
        )?,
    ));
    Ok(out)
}

/// The load averages of `/proc/loadavg` now (`key`'s value the 1-minute one, with the 5-
/// and 15-minute ones and the CPUs this process may use as inputs): other work on the CPUs
/// skews every figure, scaling most. A number that cannot be read is `null`.
#[must_use]
pub fn machine_figure(key: &str) -> Figure {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let loads: Vec<f64> = text
        .split_whitespace()
        .take(3)
        .map(|s| s.parse::<f64>().unwrap_or(f64::NAN))
        .chain(std::iter::repeat(f64::NAN))
        .take(3)
        .collect();
    let cpus = std::thread::available_parallelism().map_or(f64::NAN, |n| f(n.get()));
    Figure::new(key, loads[0], "load")
        .with("load_5min", loads[1])
        .with("load_15min", loads[2])
        .with("cpus", cpus)
}

/// The cases of [`fixup_figures`]: pool bytes, key suffix, and where the pool lies (for
/// Linux's scheme `None` is dom0's first free segment-aligned range, 1 MiB into dom0 on a
/// fresh machine).
const FIXUP_CASES: [(u64, &str, Option<fixup::PoolAlign>); 3] = [
    (fixup::FIXUP_POOL_BYTES, "", None),
    (16 << 20, "_16mib", None),
    (
        fixup::FIXUP_POOL_BYTES,
        "_align256k",
        Some(fixup::PoolAlign::SegmentOnly),
    ),
];

/// The fixup figures: Linux's scheme on the simulator, and the facade's pool init, for a
/// 32 MiB pool (the headline keys: on the default machine it outgrows the free memory below
/// 2^25 halfway, so the address width must rise mid-pool), a 16 MiB one (keys suffixed
/// `_16mib`: one width fits it all), and the 32 MiB pool again aligned to 256 KiB and to
/// nothing larger, as Linux's pool is (keys suffixed `_align256k`; the headline case aligns
/// ours to its size, as the facade's docs advise). Every figure carries `pool_align_kib`,
/// the largest power of two dividing the pool's address as placed.
///
/// # Errors
///
/// If a fixup fails on the simulator.
pub fn fixup_figures() -> Result<Vec<Figure>, String> {
    let mut v = Vec::new();
    for (bytes, suffix, align) in FIXUP_CASES {
        let (xen, g) = fixup::machine();
        let phys = match align {
            Some(a) => fixup::alloc_pool(&g, bytes, a),
            None => g.alloc_aligned(bytes / 4096, fixup::SEGMENT_BYTES / 4096),
        };
        // SAFETY: fresh dom0 pages, used by nothing else.
        let linux =
            unsafe { fixup::linux_fixup(&xen, &g, phys, bytes) }.map_err(|e| e.to_string())?;
        let (ours, report) =
            crate::sim::facade_fixup(bytes, align.unwrap_or(fixup::PoolAlign::Natural))?;
        // CAST: alignments in KiB fit f64 exactly up to 2^53.
        let align_kib = |c: &fixup::FixupCount| (fixup::alignment_of(c.pool) >> 10) as f64;
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
            .with("pool_align_kib", align_kib(&ours))
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
            .with("pool_align_kib", align_kib(&linux))
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

/// Key of a latency with `pools` grown pools alive (`what` is `map_unmap` or `sync`):
/// `map_unmap_1500_pools_16`, `sync_1500_pools_16`.
fn pools_key(what: &str, pools: usize) -> String {
    format!("{what}_{}_pools_{pools}", growth::LOOKUP_SIZE)
}

/// Whether `key` is one of the growth figures (the Growth table).
fn is_growth_key(key: &str) -> bool {
    [
        "growth_",
        "shrink_",
        "linux_fixup_us_",
        "map_unmap_1500_pools_",
        "sync_1500_pools_",
    ]
    .iter()
    .any(|p| key.starts_with(p))
}

/// The rows of the Growth table: every growth figure, in the order measured.
fn growth_rows(figs: &[Figure]) -> Vec<Vec<String>> {
    figs.iter()
        .filter(|f| is_growth_key(&f.key))
        .map(|f| {
            let prec = if f.unit == "ns" { 1 } else { 4 };
            vec![
                format!("`{}`", f.key),
                stat(Some(f), prec),
                f.unit.to_string(),
            ]
        })
        .collect()
}

/// The growth figures ([`growth::grow_and_shrink`] of [`growth::GROW_CHUNKS`] chunks, and
/// Linux's fixup scheme of the same 16 MiB on the same machine, timed): traps and CPU microseconds per MiB of
/// pools grown at run time, traps and time per MiB given back by reclaim, and Linux's
/// init-time scheme's time per MiB (its traps are `linux_fixup_hypercalls_per_mib_16mib`,
/// the same memory on the same machine, carried as an input).
///
/// # Errors
///
/// If the growth, the give-back or Linux's fixup fails on the simulator.
pub fn growth_figures() -> Result<Vec<Figure>, String> {
    let c = growth::grow_and_shrink(growth::GROW_CHUNKS)?;
    let (linux_traps, linux_ns) = growth::linux_fixup_timed(c.bytes)?;
    let (_, platform_ns) = growth::contiguous_timed(growth::GROW_CHUNKS)?;
    let mib = c.mib();
    // CAST: trap counts far below 2^53.
    let linux_per_mib = linux_traps as f64 / mib;
    let grow_per_mib = c.grow_traps as f64 / mib;
    Ok(vec![
        Figure::new("growth_hypercalls_per_mib", grow_per_mib, "per_mib")
            .with("traps", c.grow_traps as f64)
            .with("exchanges", c.grow_exchanges as f64)
            .with("multicalls", c.grow_multicalls as f64)
            .with("pools", c.pools_added as f64)
            .with("chunk_mib", f(growth::CHUNK_BYTES >> 20))
            .with("pool_mib", mib)
            .with("linux_fixup_hypercalls_per_mib", linux_per_mib),
        Figure::new(
            "growth_hypercalls_per_mib_vs_linux_fixup",
            grow_per_mib / linux_per_mib,
            "ratio",
        )
        .with("growth_per_mib", grow_per_mib)
        .with("linux_fixup_per_mib", linux_per_mib),
        Figure::new("growth_us_per_mib", c.grow_ns / 1e3 / mib, "us_per_mib")
            .with("grow_us", c.grow_ns / 1e3)
            .with("plain_map_us", c.plain_map_ns / 1e3)
            .with("pool_mib", mib)
            .with("platform_us_per_mib", platform_ns / 1e3 / mib)
            .with("linux_fixup_us_per_mib", linux_ns / 1e3 / mib),
        Figure::new("linux_fixup_us_per_mib", linux_ns / 1e3 / mib, "us_per_mib")
            .with("traps", linux_traps as f64)
            .with("pool_mib", mib),
        Figure::new(
            "shrink_hypercalls_per_mib",
            c.shrink_traps as f64 / mib,
            "per_mib",
        )
        .with("traps", c.shrink_traps as f64)
        .with("exchanges", c.shrink_exchanges as f64)
        .with("pools", c.pools_removed as f64)
        .with("pool_mib", mib),
        Figure::new("shrink_us_per_mib", c.shrink_ns / 1e3 / mib, "us_per_mib")
            .with("shrink_us", c.shrink_ns / 1e3),
    ])
}

/// The latencies with `pools` grown pools alive ([`growth::pools_latency`]): ns per
/// bounced map+unmap pair and per sync, the mapping in the last grown pool.
///
/// # Errors
///
/// If the machine cannot be set up, a DMA operation fails, or the mappings did not land in
/// the last grown pool.
pub fn pools_figures(pools: usize, t: Timing) -> Result<Vec<Figure>, String> {
    let l = growth::pools_latency(pools, t)?;
    if !l.in_last_pool || l.live_pools != pools {
        return Err(format!("{pools} grown pools: {l:?}"));
    }
    let live = f(l.live_pools);
    Ok(vec![
        Figure::new(pools_key("map_unmap", pools), l.map_unmap_ns, "ns")
            .with("live_pools", live)
            .with("size", f(growth::LOOKUP_SIZE)),
        Figure::new(pools_key("sync", pools), l.sync_ns, "ns").with("live_pools", live),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::svg::tests::has_text;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_string()).collect()
    }

    /// Checks a JSON line: parses, and its spread is ordered.
    fn check_line(line: &str) -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v["key"].is_string() && v["unit"].is_string(), "{v}");
        let runs = v["runs"].as_u64().unwrap();
        if runs > 0 {
            let (lo, mid, hi) = (
                v["min"].as_f64().unwrap(),
                v["median"].as_f64().unwrap(),
                v["max"].as_f64().unwrap(),
            );
            assert!(lo <= mid && mid <= hi, "{v}");
            assert_eq!(v["value"], v["median"], "{v}");
        }
        v
    }

    #[test]
    fn quick_run_has_every_headline_figure_once_with_its_spread() {
        let o = SuiteOptions::parse(&args(&["--quick", "--runs", "2"])).unwrap();
        let mut steps = Vec::new();
        let out = run(&o, &mut |s| steps.push(s.to_string())).unwrap();
        assert!(
            steps.iter().any(|s| s.starts_with("run 2/2: ")),
            "{steps:?}"
        );
        assert!(out.tables.is_empty() && out.svgs.is_empty());
        for key in HEADLINE_KEYS {
            let f: Vec<&Figure> = out.figures.iter().filter(|f| f.key == key).collect();
            assert_eq!(f.len(), 1, "{key}");
            assert!(
                f[0].value.is_finite() && f[0].value > 0.0,
                "{key}: {:?}",
                f[0]
            );
            assert_eq!(f[0].runs, 2, "{key}");
        }
        // Every line is one JSON object with a key, a value and its ordered spread.
        for f in &out.figures {
            check_line(&f.to_json());
        }
        // The load at the start and at the end, with the CPUs.
        let first = check_line(&out.figures[0].to_json());
        assert_eq!(first["key"], "machine_load_1min");
        assert!(first["cpus"].as_f64().unwrap() >= 1.0, "{first}");
        assert!(first["load_15min"].is_number(), "{first}");
        let last = out.figures.last().unwrap();
        assert_eq!(last.key, "machine_load_1min_end");
    }

    #[test]
    fn tables_and_plots_carry_what_the_figures_say() {
        // Two made-up runs of the figures the tables and plots read: what they print must
        // come from the figures, with the spread of the runs.
        let o = SuiteOptions::default();
        let (sizes, fills) = grid_of(&o);
        let one = |k: f64| {
            let mut v = Vec::new();
            for &s in &sizes {
                for &fl in &fills {
                    for (j, i) in Impl::ALL.into_iter().enumerate() {
                        v.push(
                            Figure::new(cell_key(s, fl, i), k * (10.0 + f(j)), "ns")
                                .with("reached_fill", f64::from(fl)),
                        );
                    }
                    v.push(Figure::new(ratio_key(s, fl, "linux"), k * 0.25, "ratio"));
                }
                v.push(Figure::new(format!("memcpy_{s}_ns"), 5.0, "ns"));
            }
            for i in Impl::ALL {
                v.push(Figure::new(scaling_key(i), k * 1.5, "ratio").with("one_thread_per_s", 8e6));
                v.push(Figure::new(
                    format!("{}_cpu_time", scaling_key(i)),
                    1.9,
                    "ratio",
                ));
            }
            v
        };
        let figs = aggregate(&[one(1.0), one(1.2)]);
        let o = SuiteOptions { runs: 2, ..o };
        let t = tables(&o, &figs);
        // 1500 B at 90%: ours 10 and 12 ns; the upper middle of two is 12.
        assert!(
            t.contains("| 1500 B | 90% (90/90/90/90) | 12.0 (10.0–12.0) |"),
            "{t}"
        );
        assert!(t.contains("| 1500 B | 90% | 0.30 (0.25–0.30) |"), "{t}");
        assert!(t.contains("| ours | 8.00 | - | 1.80 (1.50–1.80) |"), "{t}");
        assert!(
            t.contains(
                "| `two_thread_scaling` | 1.80 (1.50–1.80) | ratio | one_thread_per_s 8.00M |"
            ),
            "{t}"
        );
        // A figure every run measured alike says so.
        assert!(
            t.contains("| `two_thread_scaling_cpu_time` | 1.90 (every run) | ratio |  |"),
            "{t}"
        );
        // No line of text is indented (which Markdown would render as code).
        assert!(!t.contains("\n "), "{t}");
        // A figure no run produced is a dash, never a number.
        assert!(
            t.contains("| 64 B | 0% | 0.30 (0.25–0.30) | - | - | - |"),
            "{t}"
        );
        let svgs = plots(&o, &figs).unwrap();
        assert_eq!(svgs.len(), 4);
        for (name, svg) in &svgs {
            assert!(svg.starts_with("<svg"), "{name}");
            assert!(svg.trim_end().ends_with("</svg>"), "{name}");
        }
        let lat = &svgs[0].1;
        for s in ["ours", "linux", "buddy", "bitmap", "memcpy"] {
            assert!(has_text(lat, s), "{s} missing from {}", svgs[0].0);
        }
        // A median marker per point: 5 series of 6 fills.
        assert_eq!(lat.matches("<circle").count(), 30);
        assert!(has_text(&svgs[3].1, "bitmap"));
    }

    #[test]
    fn fixup_figures_count_a_pool_aligned_to_256_kib_only() {
        let figs = fixup_figures().unwrap();
        let g = |k: &str| get(&figs, k).unwrap_or_else(|| panic!("{k} missing"));
        let input = |k: &str, name: &str| g(k).input(name).unwrap_or_else(|| panic!("{k}.{name}"));
        for (_, suffix, _) in FIXUP_CASES {
            for scheme in ["", "linux_"] {
                for what in ["hypercalls", "exchanges"] {
                    let k = format!("{scheme}fixup_{what}_per_mib{suffix}");
                    assert!(g(&k).value.is_finite() && g(&k).value > 0.0, "{k}");
                }
                // The figure is the trap count of that run, per MiB.
                let k = format!("{scheme}fixup_hypercalls_per_mib{suffix}");
                let per_mib = input(&k, "traps") / input(&k, "pool_mib");
                assert!((g(&k).value - per_mib).abs() < 1e-9, "{k}");
            }
        }
        // Placed as the keys say: ours aligned to its size in the headline case, both
        // schemes' pools at an odd multiple of 256 KiB in the `_align256k` one.
        assert!(input("fixup_hypercalls_per_mib", "pool_align_kib") >= 32768.0);
        for k in [
            "fixup_hypercalls_per_mib_align256k",
            "linux_fixup_hypercalls_per_mib_align256k",
        ] {
            assert_eq!(input(k, "pool_align_kib"), 256.0, "{k}");
            assert_eq!(input(k, "pool_mib"), 32.0, "{k}");
        }
        // Smaller chunks at the ends of a pool aligned to 256 KiB only: more traps for ours.
        assert!(
            g("fixup_hypercalls_per_mib_align256k").value > g("fixup_hypercalls_per_mib").value
        );
        let chunks = &g("fixup_hypercalls_per_mib_align256k").notes;
        assert!(
            chunks
                .iter()
                .any(|(n, t)| n == "chunks_order_at_bits" && t.starts_with("6@")),
            "{chunks:?}"
        );
    }

    #[test]
    fn growth_figures_are_the_simulator_counts_per_mib() {
        let figs = growth_figures().unwrap();
        let g = |k: &str| get(&figs, k).unwrap_or_else(|| panic!("{k} missing"));
        let input = |k: &str, name: &str| g(k).input(name).unwrap_or_else(|| panic!("{k}.{name}"));
        for k in [
            "growth_hypercalls_per_mib",
            "growth_us_per_mib",
            "shrink_hypercalls_per_mib",
            "shrink_us_per_mib",
            "linux_fixup_us_per_mib",
        ] {
            assert!(g(k).value.is_finite() && g(k).value > 0.0, "{k}");
            assert!(is_growth_key(k), "{k}");
        }
        assert_eq!(input("growth_hypercalls_per_mib", "pools"), 8.0);
        assert_eq!(input("growth_hypercalls_per_mib", "pool_mib"), 16.0);
        assert_eq!(input("shrink_hypercalls_per_mib", "pools"), 8.0);
        assert!(input("growth_us_per_mib", "platform_us_per_mib") > 0.0);
        for k in ["growth_hypercalls_per_mib", "shrink_hypercalls_per_mib"] {
            let per_mib = input(k, "traps") / input(k, "pool_mib");
            assert!((g(k).value - per_mib).abs() < 1e-9, "{k}");
        }
        // Linux's scheme for the same memory counts as the fixup figure does (the
        // simulator is deterministic): the comparison is of the same thing.
        let fixup = fixup_figures().unwrap();
        let linux = get(&fixup, "linux_fixup_hypercalls_per_mib_16mib")
            .unwrap()
            .value;
        let beside = input(
            "growth_hypercalls_per_mib",
            "linux_fixup_hypercalls_per_mib",
        );
        assert!((beside - linux).abs() < 1e-9, "{beside} against {linux}");
        let ratio = g("growth_hypercalls_per_mib_vs_linux_fixup").value;
        assert!((ratio - g("growth_hypercalls_per_mib").value / linux).abs() < 1e-9);
        // Only the time figure of Linux's scheme is a fixup_ key of the growth table.
        assert!(!is_growth_key("linux_fixup_hypercalls_per_mib"));
        let rows = growth_rows(&figs);
        assert_eq!(rows.len(), figs.len());
    }

    #[test]
    fn pools_figures_carry_the_live_pools() {
        let t = Timing {
            batches: 1,
            batch_time: Duration::from_micros(200),
        };
        let figs = pools_figures(4, t).unwrap();
        let keys: Vec<&str> = figs.iter().map(|f| f.key.as_str()).collect();
        assert_eq!(keys, ["map_unmap_1500_pools_4", "sync_1500_pools_4"]);
        for f in &figs {
            assert_eq!(f.input("live_pools"), Some(4.0), "{f:?}");
            assert!(f.value > 0.0, "{f:?}");
        }
    }

    #[test]
    fn parses_options() {
        assert_eq!(SuiteOptions::parse(&[]), Ok(SuiteOptions::default()));
        let o = SuiteOptions::parse(&args(&["--quick", "--svg-dir", "docs/perf"])).unwrap();
        assert!(o.quick);
        assert_eq!(o.runs, QUICK_RUNS);
        assert_eq!(o.svg_dir, Some(PathBuf::from("docs/perf")));
        assert_eq!(
            SuiteOptions::parse(&args(&["--runs", "7"])).unwrap().runs,
            7
        );
        assert!(SuiteOptions::parse(&args(&["--svg-dir"])).is_err());
        for bad in [
            &["--runs", "0"][..],
            &["--runs", "101"],
            &["--runs", "x"],
            &["--runs"],
        ] {
            let e = SuiteOptions::parse(&args(bad)).unwrap_err();
            assert!(e.contains("1..=100"), "{bad:?}: {e}");
        }
        assert!(
            SuiteOptions::parse(&args(&["--fast"]))
                .unwrap_err()
                .contains("--fast")
        );
    }
}
