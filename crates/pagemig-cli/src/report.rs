//! The benchmark report: latency against batch size, phase breakdown with the Amdahl bound,
//! stall distributions, a comparison with the series' published ratios, as Markdown and as
//! SVG plots (plotters' SVG backend: no system font libraries).

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use pagemig_harness::bench::{BenchReport, BenchResult, LIVE_STALL_NS};
use pagemig_harness::spec::format_size;

/// Throughput in GB/s from the RFC v3 cover letter of the series (AMD EPYC Zen 3, two
/// sockets, AMD PTDMA, `move_pages()` of 1 GB between two NUMA nodes): (engine, folio size,
/// GB/s). Other hardware: compare ratios only.
const SERIES_V3: &[(&str, usize, f64)] = &[
    ("vanilla", 4 << 10, 3.73),
    ("vanilla", 16 << 10, 5.53),
    ("vanilla", 64 << 10, 5.90),
    ("vanilla", 256 << 10, 6.50),
    ("vanilla", 1 << 20, 6.92),
    ("vanilla", 2 << 20, 10.67),
    ("mtcopy:1", 4 << 10, 3.84),
    ("mtcopy:1", 16 << 10, 5.23),
    ("mtcopy:1", 64 << 10, 6.01),
    ("mtcopy:1", 256 << 10, 7.16),
    ("mtcopy:1", 1 << 20, 7.10),
    ("mtcopy:1", 2 << 20, 10.94),
    ("mtcopy:2", 4 << 10, 4.04),
    ("mtcopy:2", 16 << 10, 6.72),
    ("mtcopy:2", 64 << 10, 7.68),
    ("mtcopy:2", 256 << 10, 8.45),
    ("mtcopy:2", 1 << 20, 9.87),
    ("mtcopy:2", 2 << 20, 17.80),
    ("mtcopy:4", 4 << 10, 4.72),
    ("mtcopy:4", 16 << 10, 8.41),
    ("mtcopy:4", 64 << 10, 10.08),
    ("mtcopy:4", 256 << 10, 10.45),
    ("mtcopy:4", 1 << 20, 12.38),
    ("mtcopy:4", 2 << 20, 31.41),
    ("dcbm:1", 4 << 10, 2.75),
    ("dcbm:1", 16 << 10, 2.86),
    ("dcbm:1", 64 << 10, 3.28),
    ("dcbm:1", 256 << 10, 5.03),
    ("dcbm:1", 1 << 20, 4.78),
    ("dcbm:1", 2 << 20, 12.50),
    ("dcbm:2", 4 << 10, 3.35),
    ("dcbm:2", 16 << 10, 4.57),
    ("dcbm:2", 64 << 10, 5.35),
    ("dcbm:2", 256 << 10, 7.40),
    ("dcbm:2", 1 << 20, 7.21),
    ("dcbm:2", 2 << 20, 14.23),
    ("dcbm:4", 4 << 10, 4.01),
    ("dcbm:4", 16 << 10, 6.36),
    ("dcbm:4", 64 << 10, 7.71),
    ("dcbm:4", 256 << 10, 10.27),
    ("dcbm:4", 1 << 20, 12.35),
    ("dcbm:4", 2 << 20, 26.84),
];

fn series(engine: &str, size: usize) -> Option<f64> {
    SERIES_V3
        .iter()
        .find(|(e, s, _)| *e == engine && *s == size)
        .map(|(_, _, g)| *g)
}

fn ordered<T: Clone + PartialEq>(it: impl Iterator<Item = T>) -> Vec<T> {
    let mut v: Vec<T> = Vec::new();
    for x in it {
        if !v.contains(&x) {
            v.push(x);
        }
    }
    v
}

fn engines(rep: &BenchReport) -> Vec<String> {
    ordered(rep.results.iter().map(|r| r.label()))
}

fn sizes(rep: &BenchReport) -> Vec<usize> {
    ordered(rep.results.iter().map(|r| r.folio_size))
}

fn find<'a>(rep: &'a BenchReport, e: &str, size: usize, bp: usize) -> Option<&'a BenchResult> {
    rep.results
        .iter()
        .find(|r| r.label() == e && r.folio_size == size && r.batch_pages == bp)
}

/// Copy's share of the migration time and the Amdahl bound on the speedup a faster copy
/// alone could give.
pub fn copy_share_and_bound(r: &BenchResult) -> (f64, f64) {
    let p = &r.phases_ns;
    let total = (p.unmap + p.flush + p.copy + p.r#move) as f64;
    if total == 0.0 {
        return (0.0, 1.0);
    }
    let share = p.copy as f64 / total;
    (
        share,
        if share < 1.0 {
            1.0 / (1.0 - share)
        } else {
            f64::INFINITY
        },
    )
}

/// Latency against batch size (and stalls), as plain text for the terminal.
pub fn latency_text(rep: &BenchReport) -> String {
    let mut s = String::from(
        "\nlatency per batch: first folio usable / last folio usable (µs), by batch size (pages)\n",
    );
    for z in sizes(rep) {
        let _ = writeln!(s, "\nfolio size {}", format_size(z));
        let _ = write!(s, "{:<12}", "engine");
        for bp in &rep.batch_pages_list {
            let _ = write!(s, " {:>24}", format!("batch {bp}"));
        }
        s.push('\n');
        for e in engines(rep) {
            let _ = write!(s, "{e:<12}");
            for &bp in &rep.batch_pages_list {
                let cell = find(rep, &e, z, bp)
                    .map(|r| {
                        format!(
                            "{:.0}/{:.0} @{:.2}GB/s",
                            r.first_usable_us, r.last_usable_us, r.gbps_mean
                        )
                    })
                    .unwrap_or_else(|| "-".into());
                let _ = write!(s, " {cell:>24}");
            }
            s.push('\n');
        }
    }
    if rep.accessors > 0 {
        let what = if rep.backend == "live" {
            format!(
                "program-thread accesses slower than {} µs",
                LIVE_STALL_NS / 1000
            )
        } else {
            "accessor stalls on migration entries".to_string()
        };
        let _ = writeln!(
            s,
            "\n{what} (µs), batch {} pages: p50 / p99 / max (count)",
            rep.batch_pages
        );
        for z in sizes(rep) {
            for e in engines(rep) {
                if let Some(r) = find(rep, &e, z, rep.batch_pages) {
                    let _ = writeln!(
                        s,
                        "{:<12} {:>5}: {:.1} / {:.1} / {:.1} ({})",
                        e,
                        format_size(z),
                        r.stall_p50_us,
                        r.stall_p99_us,
                        r.stall_max_us,
                        r.nr_stalls
                    );
                }
            }
        }
    }
    s
}

/// The Markdown report.
pub fn markdown(rep: &BenchReport, svg_dir: Option<&Path>) -> String {
    let mut s = String::new();
    let m = &rep.machine;
    let _ = writeln!(s, "# pagemig benchmark report\n");
    let _ = writeln!(
        s,
        "Backend `{}`; {} moved per migration, mode {}, batch sizes {:?} pages, {} CPUs, kernel {}, {} host NUMA node(s), copy primitive `{}`.\n",
        rep.backend,
        format_size(rep.total_bytes),
        rep.mode,
        rep.batch_pages_list,
        m.cpus,
        m.kernel,
        m.host_numa_nodes,
        m.copy_primitive
    );
    let limits: Vec<String> = m
        .copy_limit_gbps
        .iter()
        .map(|(t, g)| format!("{g:.2} GB/s with {t} thread(s)"))
        .collect();
    let _ = writeln!(
        s,
        "Copy limit measured in the same run (median of {} passes): {}.\n",
        m.copy_limit_samples_1t.len(),
        limits.join(", ")
    );
    if let Some(line) = crate::tables::steal_line(m.cpu_steal) {
        let _ = writeln!(s, "{line}.\n");
    }
    let zs = sizes(rep);
    let header = |s: &mut String| {
        let _ = write!(s, "| engine |");
        for z in &zs {
            let _ = write!(s, " {} |", format_size(*z));
        }
        let _ = write!(s, "\n|---|");
        for _ in &zs {
            s.push_str("---|");
        }
        s.push('\n');
    };
    let _ = writeln!(
        s,
        "## Throughput (GB/s, mean ± sd; fraction of the single-thread copy limit)\n"
    );
    let _ = writeln!(s, "Batch size {} pages.\n", rep.batch_pages);
    for (title, fam) in [
        ("Baseline", "vanilla|batch"),
        ("mtcopy, by threads", "mtcopy"),
        ("dcbm, by channels", "dcbm"),
        ("auto", "auto"),
    ] {
        let rows: Vec<String> = engines(rep)
            .into_iter()
            .filter(|e| {
                fam.split('|')
                    .any(|f| e == f || e.starts_with(&format!("{f}:")))
            })
            .collect();
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(s, "**{title}**\n");
        header(&mut s);
        for e in rows {
            let _ = write!(s, "| {e} |");
            for z in &zs {
                let cell = find(rep, &e, *z, rep.batch_pages)
                    .map(|r| {
                        format!(
                            "{:.2}±{:.2} ({:.2})",
                            r.gbps_mean, r.gbps_sd, r.frac_of_limit
                        )
                    })
                    .unwrap_or_else(|| "-".into());
                let _ = write!(s, " {cell} |");
            }
            s.push('\n');
        }
        if fam == "auto" {
            if let Some([names, best, batch]) = crate::tables::auto_ratio_cells(rep, &zs) {
                for (label, cells) in [
                    ("best fixed engine", names),
                    ("auto ÷ best fixed engine", best),
                    ("auto ÷ batch", batch),
                ] {
                    let _ = writeln!(s, "| {label} | {} |", cells.join(" | "));
                }
                let _ = writeln!(s, "\n{}.", crate::tables::AUTO_RATIOS_NOTE);
            }
        }
        s.push('\n');
    }
    if let Some(d) = svg_dir {
        let _ = writeln!(s, "![throughput]({}/throughput.svg)\n", d.display());
    }
    let _ = writeln!(s, "## Latency against batch size\n");
    let _ = writeln!(
        s,
        "Per batch: time from its first unmap until its first folio is usable again / until its last is (µs), next to the throughput. A bigger batch amortises the flush and the engine's setup but keeps the first folio unmapped longer.\n"
    );
    for z in &zs {
        let _ = writeln!(s, "**{}**\n", format_size(*z));
        let _ = write!(s, "| engine |");
        for bp in &rep.batch_pages_list {
            let _ = write!(s, " batch {bp} |");
        }
        let _ = write!(s, "\n|---|");
        for _ in &rep.batch_pages_list {
            s.push_str("---|");
        }
        s.push('\n');
        for e in engines(rep) {
            let _ = write!(s, "| {e} |");
            for &bp in &rep.batch_pages_list {
                let cell = find(rep, &e, *z, bp)
                    .map(|r| {
                        format!(
                            "{:.0} / {:.0} µs, {:.2} GB/s",
                            r.first_usable_us, r.last_usable_us, r.gbps_mean
                        )
                    })
                    .unwrap_or_else(|| "-".into());
                let _ = write!(s, " {cell} |");
            }
            s.push('\n');
        }
        s.push('\n');
    }
    if let Some(d) = svg_dir {
        let _ = writeln!(s, "![latency]({}/latency.svg)\n", d.display());
    }
    let _ = writeln!(s, "## Phase breakdown\n");
    let _ = writeln!(
        s,
        "Share of each phase in `migrate_pages_batch` (batch {} pages). The copy share bounds what any copy engine can give (Amdahl): with an infinitely fast copy the migration would be at most 1 / (1 − share) times faster — the series' V3 cover letter reasons the same way. The other work per folio (unmap, flush and move, where the copy is held apart) sets a ceiling from the other side: the fraction of the 1-thread copy limit the engine would reach were its copy at the copy limit of its threads and that work unchanged.\n",
        rep.batch_pages
    );
    let one = rep.machine.copy_limit_gbps.get("1").copied().unwrap_or(0.0);
    let _ = writeln!(s, "| engine | size | unmap | flush | copy | move | copy share | Amdahl bound | other work per folio | ceiling |\n|---|---|---|---|---|---|---|---|---|---|");
    for e in engines(rep) {
        for z in &zs {
            if let Some(r) = find(rep, &e, *z, rep.batch_pages) {
                let p = &r.phases_ns;
                let total = (p.unmap + p.flush + p.copy + p.r#move).max(1) as f64;
                let (share, bound) = copy_share_and_bound(r);
                let (other, ceiling) = crate::tables::per_folio_work(r, one)
                    .map_or(("-".to_string(), "-".to_string()), |(w, c)| {
                        (format!("{:.0} ns", w[0] + w[2]), format!("{c:.2}"))
                    });
                let _ = writeln!(
                    s,
                    "| {e} | {} | {:.0}% | {:.1}% | {:.0}% | {:.0}% | {:.2} | {:.2}× | {other} | {ceiling} |",
                    format_size(*z),
                    100.0 * p.unmap as f64 / total,
                    100.0 * p.flush as f64 / total,
                    100.0 * p.copy as f64 / total,
                    100.0 * p.r#move as f64 / total,
                    share,
                    bound
                );
            }
        }
    }
    let _ = writeln!(s, "\n`vanilla` copies inside the move phase, so its copy column is empty and its move column holds the copies.\n");
    if let Some(d) = svg_dir {
        let _ = writeln!(s, "![phases]({}/phases.svg)\n", d.display());
    }
    if rep.accessors > 0 {
        let _ = writeln!(s, "## Accessor stalls\n\n{} accessor thread(s) read random words of the region during the migrations; each wait on a migration entry:\n", rep.accessors);
        let _ = writeln!(
            s,
            "| engine | size | waits | p50 µs | p99 µs | max µs |\n|---|---|---|---|---|---|"
        );
        for e in engines(rep) {
            for z in &zs {
                if let Some(r) = find(rep, &e, *z, rep.batch_pages) {
                    let _ = writeln!(
                        s,
                        "| {e} | {} | {} | {:.1} | {:.1} | {:.1} |",
                        format_size(*z),
                        r.nr_stalls,
                        r.stall_p50_us,
                        r.stall_p99_us,
                        r.stall_max_us
                    );
                }
            }
        }
        s.push('\n');
    }
    let _ = writeln!(s, "## Beside the series' published figures\n");
    let _ = writeln!(
        s,
        "Speedup over `vanilla` at the same folio size: this run, and the series' RFC v3 tables (**other hardware**: AMD EPYC Zen 3, two sockets, AMD PTDMA DMA engine, `move_pages()` between real NUMA nodes). Absolute GB/s do not compare; ratios roughly do. This machine has no DMA engine: `dcbm` runs on the emulated provider, whose engines are CPU threads.\n"
    );
    let _ = writeln!(
        s,
        "| engine | size | this run | series V3 |\n|---|---|---|---|"
    );
    for e in engines(rep).into_iter().filter(|e| e != "vanilla") {
        for z in &zs {
            let ours = match (
                find(rep, &e, *z, rep.batch_pages),
                find(rep, "vanilla", *z, rep.batch_pages),
            ) {
                (Some(r), Some(v)) if v.gbps_mean > 0.0 => {
                    format!("{:.2}×", r.gbps_mean / v.gbps_mean)
                }
                _ => "-".into(),
            };
            let theirs = match (series(&e, *z), series("vanilla", *z)) {
                (Some(a), Some(b)) => format!("{:.2}×", a / b),
                _ => "-".into(),
            };
            let _ = writeln!(s, "| {e} | {} | {ours} | {theirs} |", format_size(*z));
        }
    }
    if let Some(t) = &rep.explain {
        let _ = writeln!(s, "\n## How `auto` decided\n\n```\n{t}```");
    }
    s
}

type PlotResult = Result<(), Box<dyn std::error::Error>>;

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// Writes `throughput.svg`, `latency.svg` and `phases.svg` into `dir`.
pub fn write_svgs(rep: &BenchReport, dir: &Path) -> PlotResult {
    throughput_svg(rep, &dir.join("throughput.svg"))?;
    latency_svg(rep, &dir.join("latency.svg"))?;
    phases_svg(rep, &dir.join("phases.svg"))?;
    Ok(())
}

fn throughput_svg(rep: &BenchReport, path: &Path) -> PlotResult {
    let zs = sizes(rep);
    let es = engines(rep);
    let ymax = rep.results.iter().map(|r| r.gbps_mean).fold(1.0, f64::max) * 1.15;
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Throughput by folio size (batch {} pages)", rep.batch_pages),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(50)
        .build_cartesian_2d(-0.3f64..(zs.len() as f64 - 0.7), 0f64..ymax)?;
    let labels = zs.clone();
    chart
        .configure_mesh()
        .x_labels(zs.len())
        .x_label_formatter(&|x| {
            labels
                .get(x.round() as usize)
                .map(|z| format_size(*z))
                .unwrap_or_default()
        })
        .x_desc("folio size")
        .y_desc("GB/s")
        .draw()?;
    for (k, e) in es.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        let pts: Vec<(f64, f64)> = zs
            .iter()
            .enumerate()
            .filter_map(|(i, z)| find(rep, e, *z, rep.batch_pages).map(|r| (i as f64, r.gbps_mean)))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(e.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
    }
    if let Some(l) = rep.machine.copy_limit_gbps.get("1") {
        chart
            .draw_series(LineSeries::new(
                vec![(-0.3, *l), (zs.len() as f64 - 0.7, *l)],
                BLACK.stroke_width(1),
            ))?
            .label("copy limit, 1 thread")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn latency_svg(rep: &BenchReport, path: &Path) -> PlotResult {
    let z = sizes(rep).first().copied().unwrap_or(4096);
    let es = engines(rep);
    let bps = &rep.batch_pages_list;
    let ymax = rep
        .results
        .iter()
        .filter(|r| r.folio_size == z)
        .map(|r| r.last_usable_us)
        .fold(1.0, f64::max)
        * 1.15;
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Latency against batch size ({} folios)", format_size(z)),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.3f64..(bps.len() as f64 - 0.7).max(0.3), 0f64..ymax)?;
    let labels = bps.clone();
    chart
        .configure_mesh()
        .x_labels(bps.len().max(1))
        .x_label_formatter(&|x| {
            labels
                .get(x.round() as usize)
                .map(|b| b.to_string())
                .unwrap_or_default()
        })
        .x_desc("batch (base pages)")
        .y_desc("µs from the batch's first unmap")
        .draw()?;
    for (k, e) in es.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        let first: Vec<(f64, f64)> = bps
            .iter()
            .enumerate()
            .filter_map(|(i, b)| find(rep, e, z, *b).map(|r| (i as f64, r.first_usable_us)))
            .collect();
        let last: Vec<(f64, f64)> = bps
            .iter()
            .enumerate()
            .filter_map(|(i, b)| find(rep, e, z, *b).map(|r| (i as f64, r.last_usable_us)))
            .collect();
        chart
            .draw_series(LineSeries::new(last.clone(), color.stroke_width(2)))?
            .label(format!("{e}: last folio"))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(last.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
        chart
            .draw_series(LineSeries::new(
                first.clone(),
                color.mix(0.5).stroke_width(1),
            ))?
            .label(format!("{e}: first folio"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.mix(0.5)));
        chart.draw_series(
            first
                .iter()
                .map(|p| TriangleMarker::new(*p, 4, color.mix(0.5).filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn phases_svg(rep: &BenchReport, path: &Path) -> PlotResult {
    let zs = sizes(rep);
    let picks: Vec<usize> = match (zs.first(), zs.last()) {
        (Some(a), Some(b)) if a != b => vec![*a, *b],
        (Some(a), _) => vec![*a],
        _ => vec![],
    };
    let es = engines(rep);
    let bars: Vec<(String, &BenchResult)> = picks
        .iter()
        .flat_map(|z| {
            es.iter().filter_map(move |e| {
                find(rep, e, *z, rep.batch_pages).map(|r| (format!("{e} {}", format_size(*z)), r))
            })
        })
        .collect();
    let root = SVGBackend::new(path, (900, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Phase breakdown (share of migrate_pages_batch time)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(60)
        .y_label_area_size(50)
        .build_cartesian_2d(-0.5f64..(bars.len() as f64 - 0.5).max(0.5), 0f64..100f64)?;
    let labels: Vec<String> = bars.iter().map(|(l, _)| l.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(bars.len().max(1))
        .x_label_formatter(&|x| labels.get(x.round() as usize).cloned().unwrap_or_default())
        .y_desc("% of the time")
        .draw()?;
    let names = ["unmap", "flush", "copy", "move"];
    for (k, name) in names.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        let rects: Vec<Rectangle<(f64, f64)>> = bars
            .iter()
            .enumerate()
            .map(|(i, (_, r))| {
                let p = &r.phases_ns;
                let v = [p.unmap, p.flush, p.copy, p.r#move];
                let total = v.iter().sum::<u64>().max(1) as f64;
                let lo: f64 = v[..k].iter().map(|x| *x as f64).sum::<f64>() / total * 100.0;
                let hi = lo + v[k] as f64 / total * 100.0;
                Rectangle::new(
                    [(i as f64 - 0.35, lo), (i as f64 + 0.35, hi)],
                    color.filled(),
                )
            })
            .collect();
        chart
            .draw_series(rects)?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
