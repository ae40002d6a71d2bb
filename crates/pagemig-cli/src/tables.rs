//! The terminal tables: the bench's series-style tables (baseline, mtcopy by threads, dcbm
//! by channels, auto against the fixed engines), the live backend's kernel calls, the
//! kernel comparison and the stress summary.

#![forbid(unsafe_code)]

use pagemig_harness::bench::{AutoRatios, BenchReport, BenchResult};
use pagemig_harness::kernel::KernelReport;
use pagemig_harness::spec::{format_size, EngineSpec};
use pagemig_harness::stress::StressReport;

/// Above this share of stolen CPU time (of the time the machine's CPUs had work) a run's
/// figures are called out as slowed by the hypervisor.
pub const STEAL_WARN: f64 = 0.05;

/// The line on the CPU time the hypervisor took while a run was measured (none where the
/// kernel does not say).
pub fn steal_line(steal: Option<f64>) -> Option<String> {
    let f = steal?;
    Some(if f >= STEAL_WARN {
        format!(
            "CPU steal: the hypervisor held back {:.0}% of the CPU time this machine asked for during the run; \
             every figure is slowed and noisier than the machine's own drift, compare only within this run",
            f * 100.0
        )
    } else {
        format!(
            "CPU steal: {:.1}% of the CPU time this machine asked for during the run",
            f * 100.0
        )
    })
}

/// Renders the series-style tables: baseline, mtcopy by threads, dcbm by channels.
pub fn render_table(rep: &BenchReport, sizes: &[usize], engines: &[EngineSpec]) -> String {
    let mut s = String::new();
    let limits: Vec<String> = rep
        .machine
        .copy_limit_gbps
        .iter()
        .map(|(t, g)| format!("{t} thread{}: {g:.2} GB/s", if t == "1" { "" } else { "s" }))
        .collect();
    s.push_str(&format!(
        "copy limit ({} in 2M chunks, {}; median of {} passes spread over the run): {}\n",
        format_size(rep.total_bytes),
        rep.machine.copy_primitive,
        rep.machine.copy_limit_samples_1t.len(),
        limits.join(", ")
    ));
    if let Some(line) = steal_line(rep.machine.cpu_steal) {
        s.push_str(&line);
        s.push('\n');
    }
    // The limits every cell is read against: one thread, and every CPU of the machine.
    let one = rep.machine.copy_limit_gbps.get("1").copied().unwrap_or(0.0);
    let all = rep
        .machine
        .copy_limit_gbps
        .iter()
        .filter_map(|(t, g)| Some((t.parse::<usize>().ok()?, *g)))
        .max_by_key(|(t, _)| *t)
        .unwrap_or((1, one));
    s.push_str(&format!(
        "backend {}, {} folios, moved {} per run, batch {} pages, mode {}; GB/s mean±sd (fraction of the copy limit with 1 thread | with all {} threads)\n",
        rep.backend,
        rep.kind,
        format_size(rep.total_bytes),
        rep.batch_pages,
        rep.mode,
        all.0
    ));
    let any_piped = rep.results.iter().any(|r| r.pipeline);
    for (title, fam, piped) in [
        ("baseline", &["vanilla", "batch"][..], false),
        ("mtcopy, by threads", &["mtcopy"][..], false),
        ("dcbm, by channels", &["dcbm"][..], false),
        ("auto", &["auto"][..], false),
        (
            "pipelined (--pipeline, beyond the series: +pipeline in turn, +overlap with a helper thread)",
            &["batch", "mtcopy", "dcbm"][..],
            true,
        ),
    ] {
        // (engine, None: the series' path | Some(overlap): pipelined that way).
        let variants: &[Option<bool>] = if piped {
            &[Some(false), Some(true)]
        } else {
            &[None]
        };
        let rows: Vec<(&EngineSpec, Option<bool>)> = engines
            .iter()
            .filter(|e| fam.contains(&e.family()) && (!piped || any_piped))
            .flat_map(|e| variants.iter().map(move |&v| (e, v)))
            .filter(|&(e, v)| {
                v.is_none()
                    || rep.results.iter().any(|r| {
                        r.engine == e.to_string() && r.pipeline && Some(r.pipeline_overlap) == v
                    })
            })
            .collect();
        if rows.is_empty() {
            continue;
        }
        s.push_str(&format!(
            "\n{title} — copy limit {one:.2} GB/s with 1 thread, {:.2} GB/s with {}\n{:<18}",
            all.1, all.0, "engine"
        ));
        for &z in sizes {
            s.push_str(&format!(" {:>24}", format_size(z)));
        }
        s.push('\n');
        for (e, v) in rows {
            let name = match v {
                None => e.to_string(),
                Some(false) => format!("{e}+pipeline"),
                Some(true) => format!("{e}+overlap"),
            };
            s.push_str(&format!("{name:<18}"));
            for &z in sizes {
                let cell = rep
                    .results
                    .iter()
                    .find(|r| {
                        r.engine == e.to_string()
                            && r.pipeline == v.is_some()
                            && (v.is_none() || Some(r.pipeline_overlap) == v)
                            && r.folio_size == z
                            && r.batch_pages == rep.batch_pages
                    })
                    .map(|r| {
                        let of_all = if all.1 > 0.0 {
                            r.gbps_mean / all.1
                        } else {
                            0.0
                        };
                        format!(
                            "{:.2}±{:.2} ({:.2} | {:.2})",
                            r.gbps_mean, r.gbps_sd, r.frac_of_limit, of_all
                        )
                    })
                    .unwrap_or_else(|| "-".into());
                s.push_str(&format!(" {:>24}", cell));
            }
            s.push('\n');
        }
    }
    s.push_str(&per_folio_text(rep, sizes, engines));
    if let Some(st) = &rep.auto_state {
        let from = match (st.orders_applied, st.age_s, &st.ignored) {
            (_, _, Some(_)) => {
                "its learned state was ignored (see the warning): it started from nothing"
                    .to_string()
            }
            (0, _, None) => "no learned state yet: it started from nothing".to_string(),
            (n, age, None) => format!(
                "started from what an earlier run learned ({n} folio size{}, {} old)",
                if n == 1 { "" } else { "s" },
                age.map_or("?".into(), format_age)
            ),
        };
        s.push_str(&wrap(
            &format!(
                "\nauto: {from}; what it learned is kept in {} (--no-cache: neither; pagemig cache clear forgets it)",
                st.path
            ),
            96,
        ));
    }
    if let Some([names, best, batch]) = auto_ratio_cells(rep, sizes) {
        s.push('\n');
        for (label, cells) in [
            ("best fixed", names),
            ("auto ÷ best", best),
            ("auto ÷ batch", batch),
        ] {
            s.push_str(&format!("\n{label:<18}"));
            for c in cells {
                s.push_str(&format!(" {c:>24}"));
            }
        }
        s.push('\n');
        s.push_str(&wrap(&format!("({AUTO_RATIOS_NOTE})"), 96));
    }
    s.push_str(&live_calls_text(rep));
    s
}

/// `text` broken into lines of at most `width` characters (longer words stand alone),
/// each ending with a newline.
fn wrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            out.push_str(&line);
            out.push('\n');
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// What the ratio rows are, for the text table and the report.
pub const AUTO_RATIOS_NOTE: &str = "auto against the fixed engines of this run: ratios of the \
    means, with the 95% interval that the runs' spread gives; picking the highest of several \
    close means favours the engine picked, so auto ÷ best leans low where engines tie; auto \
    learns on the migrations' batches, so a run shorter than its first rounds (--quick) shows \
    it exploring";

/// `auto` against the fixed engines of the same run, per folio size (main batch size), as
/// the cells of three rows: the best fixed engine's name, auto ÷ that engine and auto ÷
/// `batch`, each ratio of the means with its 95% interval ("0.98 [0.93, 1.03]"; "-" where
/// a size lacks them). `None` without auto.
pub fn auto_ratio_cells(rep: &BenchReport, sizes: &[usize]) -> Option<[Vec<String>; 3]> {
    if rep.auto_ratios.is_empty() {
        return None;
    }
    let at = |z: usize| rep.auto_ratios.iter().find(|r| r.folio_size == z);
    let cells = |f: &dyn Fn(&AutoRatios) -> Option<String>| -> Vec<String> {
        sizes
            .iter()
            .map(|&z| at(z).and_then(f).unwrap_or_else(|| "-".into()))
            .collect()
    };
    Some([
        cells(&|r| Some(r.best_engine.clone())),
        cells(&|r| Some(r.vs_best.text())),
        cells(&|r| r.vs_batch.map(|b| b.text())),
    ])
}

/// The fraction of the one-thread copy limit (`limit_1t_gbps`) that moving a folio of
/// `size_bytes` reaches when its copy runs at `limit_width_gbps` (the copy limit with as
/// many threads as the engine copies with) and its other work takes `noncopy_ns`: the time
/// the copy alone would take at one thread's limit, over the copy at the engine's limit
/// plus the rest. 1 GB/s is one byte per ns.
pub fn ceiling(
    size_bytes: usize,
    noncopy_ns: f64,
    limit_1t_gbps: f64,
    limit_width_gbps: f64,
) -> f64 {
    if limit_1t_gbps <= 0.0 || limit_width_gbps <= 0.0 {
        return 0.0;
    }
    let at_one = size_bytes as f64 / limit_1t_gbps;
    at_one / (size_bytes as f64 / limit_width_gbps + noncopy_ns.max(0.0))
}

/// A result's work per folio on the series' path, in ns: (unmap + flush, batch copy,
/// move), and its [`ceiling`]. `None` where the phases do not hold the copy apart: the
/// pipelined paths (their phases overlap), and any result with folios copied inside the
/// move phase (`vanilla`, a batch copy declined or failed for some folios).
pub fn per_folio_work(r: &BenchResult, limit_1t_gbps: f64) -> Option<([f64; 3], f64)> {
    if r.pipeline || r.nr_folios == 0 || r.nr_copied_by_batch < r.nr_folios * r.runs {
        return None;
    }
    let p = &r.phases_ns;
    let n = r.nr_folios as f64;
    let work = [
        (p.unmap + p.flush) as f64 / n,
        p.copy as f64 / n,
        p.r#move as f64 / n,
    ];
    // The limit at the engine's width, as the run measured it.
    let width_limit = if r.frac_of_width_limit > 0.0 {
        r.gbps_mean / r.frac_of_width_limit
    } else {
        limit_1t_gbps
    };
    let c = ceiling(r.folio_size, work[0] + work[2], limit_1t_gbps, width_limit);
    Some((work, c))
}

/// Per engine and folio size, the work per folio outside the copy and the ceiling it sets
/// ([`per_folio_work`]): how close to the copy limit an engine could come at that size if
/// only its copy got faster. Empty when no result separates its copy.
pub fn per_folio_text(rep: &BenchReport, sizes: &[usize], engines: &[EngineSpec]) -> String {
    let one = rep.machine.copy_limit_gbps.get("1").copied().unwrap_or(0.0);
    let cell = |e: &EngineSpec, z: usize| {
        rep.results
            .iter()
            .find(|r| {
                r.engine == e.to_string()
                    && !r.pipeline
                    && r.folio_size == z
                    && r.batch_pages == rep.batch_pages
            })
            .and_then(|r| per_folio_work(r, one))
    };
    let rows: Vec<&EngineSpec> = engines
        .iter()
        .filter(|e| sizes.iter().any(|&z| cell(e, z).is_some()))
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    let mut s = String::from("\n");
    s.push_str(&wrap(
        "work per folio on the series' path, ns (unmap+flush | copy | move), and its ceiling: the fraction of the 1-thread copy limit an engine would reach at that size were its copy at the copy limit of its threads and the rest of its work unchanged",
        96,
    ));
    s.push_str(&format!("{:<18}", "engine"));
    for &z in sizes {
        s.push_str(&format!(" {:>24}", format_size(z)));
    }
    s.push('\n');
    for e in rows {
        s.push_str(&format!("{:<18}", e.to_string()));
        for &z in sizes {
            let c = cell(e, z).map_or("-".to_string(), |(w, c)| {
                format!("{:.0}|{:.0}|{:.0} → {:.2}", w[0], w[1], w[2], c)
            });
            s.push_str(&format!(" {c:>24}"));
        }
        s.push('\n');
    }
    s
}

/// The live backend's kernel calls per migration (empty for the built-in backend).
pub fn live_calls_text(rep: &BenchReport) -> String {
    let rows: Vec<&BenchResult> = rep
        .results
        .iter()
        .filter(|r| r.live.is_some() && r.batch_pages == rep.batch_pages)
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    let mut s = String::from(
        "\nlive backend: UFFDIO_MOVE calls per migration (each is one kernel TLB flush), TLB-shootdown IPIs\nthe CPUs received per migration (/proc/interrupts, system-wide), unmap-phase time\n",
    );
    s.push_str(&format!(
        "{:<18} {:>6} {:>10} {:>12} {:>12} {:>10} {:>9} {:>12}\n",
        "engine",
        "folio",
        "moves",
        "unmap calls",
        "remap calls",
        "faults",
        "TLB IPIs",
        "unmap+flush"
    ));
    for r in rows {
        let l = r.live.expect("filtered");
        s.push_str(&format!(
            "{:<18} {:>6} {:>10} {:>12.1} {:>12.1} {:>10.1} {:>9} {:>10.0}us\n",
            r.label(),
            format_size(r.folio_size),
            if l.batch_moves {
                "batched"
            } else {
                "per-folio"
            },
            l.unmap_calls,
            l.remap_calls,
            l.faults,
            l.tlb_ipis.map_or("-".to_string(), |v| format!("{v:.1}")),
            (r.phases_ns.unmap + r.phases_ns.flush) as f64 / 1e3
        ));
    }
    s
}

/// A warning line for timings taken on an emulated CPU (empty elsewhere).
pub fn emulation_warning() -> String {
    match pagemig::sys::emulated_cpu() {
        Some(cpu) => format!(
            "note: this CPU is emulated ({cpu}): the timings below are the emulator's, not performance figures\n"
        ),
        None => String::new(),
    }
}

/// `--backend kernel,live`: GB/s per folio size, one column per backend and engine, the
/// kernel's `move_pages(2)` first and each other column also as a ratio to it.
pub fn side_by_side_table(
    kernel: Option<&KernelReport>,
    reports: &[BenchReport],
    sizes: &[usize],
) -> String {
    let mut s = emulation_warning();
    let (from, to, total) = match (kernel, reports.first()) {
        (Some(k), _) => (k.nodes.0, k.nodes.1, k.total_bytes),
        (None, Some(r)) => (r.from_node, r.to_node, r.total_bytes),
        (None, None) => return s,
    };
    s += &format!(
        "side by side: node {from} <-> node {to}, {} per migration, GB/s{}\n\n",
        format_size(total),
        if kernel.is_some() {
            " (ratio to the kernel's move_pages(2))"
        } else {
            ""
        }
    );
    let mut cols: Vec<(String, Vec<Option<f64>>)> = Vec::new();
    if let Some(k) = kernel {
        cols.push((
            "kernel move_pages(2)".into(),
            sizes
                .iter()
                .map(|&sz| {
                    k.results
                        .iter()
                        .find(|r| r.folio_size == sz)
                        .map(|r| r.gbps_mean)
                })
                .collect(),
        ));
    }
    for rep in reports {
        let mut engines: Vec<&str> = Vec::new();
        for r in &rep.results {
            if !engines.contains(&r.engine.as_str()) {
                engines.push(&r.engine);
            }
        }
        for e in engines {
            cols.push((
                format!("{} {e}", rep.backend),
                sizes
                    .iter()
                    .map(|&sz| {
                        rep.results
                            .iter()
                            .find(|r| {
                                r.engine == e
                                    && r.folio_size == sz
                                    && r.batch_pages == rep.batch_pages
                            })
                            .map(|r| r.gbps_mean)
                    })
                    .collect(),
            ));
        }
    }
    s += "| folio |";
    for (name, _) in &cols {
        s += &format!(" {name} |");
    }
    s += "\n|---|";
    s += &"---|".repeat(cols.len());
    s += "\n";
    for (i, &sz) in sizes.iter().enumerate() {
        s += &format!("| {} |", format_size(sz));
        let base = kernel.and(cols.first().and_then(|c| c.1[i]));
        for (k, (_, v)) in cols.iter().enumerate() {
            s += &match (v[i], base) {
                (None, _) => " - |".to_string(),
                (Some(x), Some(b)) if k > 0 && b > 0.0 => format!(" {x:.2} ({:.2}x) |", x / b),
                (Some(x), _) => format!(" {x:.2} |"),
            };
        }
        s += "\n";
    }
    s
}

/// The table.
pub fn kernel_table(rep: &KernelReport) -> String {
    let mut s = emulation_warning();
    s += &format!(
        "kernel move_pages(2), node {} <-> node {}, {} per migration, kernel {}\n\n| folio | kernel page | GB/s | sd | not migrated |\n|---|---|---|---|---|\n",
        rep.nodes.0,
        rep.nodes.1,
        format_size(rep.total_bytes),
        rep.kernel
    );
    for r in &rep.results {
        s += &format!(
            "| {} | {} | {:.2} | {:.2} | {} |\n",
            format_size(r.folio_size),
            format_size(r.kernel_page_size),
            r.gbps_mean,
            r.gbps_sd,
            r.pages_not_migrated
        );
    }
    s
}

/// The stress summary: one row per engine, the loss figures last (each must be 0).
pub fn stress_table(reports: &[StressReport]) -> String {
    let mut s = format!(
        "{:<14} {:>7} {:>11} {:>10} {:>14} {:>11} {:>10} {:>11} {:>8}\n",
        "engine",
        "seconds",
        "operations",
        "migrations",
        "pages migrated",
        "lost writes",
        "torn reads",
        "mismatches",
        "leaked"
    );
    for r in reports {
        s.push_str(&format!(
            "{:<14} {:>7.1} {:>11} {:>10} {:>14} {:>11} {:>10} {:>11} {:>8}\n",
            r.engine,
            r.seconds,
            r.operations,
            r.migrate_calls,
            r.pages_migrated,
            r.lost_writes,
            r.torn_reads,
            r.content_mismatches,
            r.leaked_frames
        ));
    }
    let counts =
        |title: &str, get: &dyn Fn(&StressReport) -> &std::collections::BTreeMap<String, u64>| {
            let mut keys: Vec<&String> = reports.iter().flat_map(|r| get(r).keys()).collect();
            keys.sort();
            keys.dedup();
            if keys.is_empty() {
                return String::new();
            }
            let mut t = format!("\n{title}\n{:<14}", "engine");
            let width = |k: &str| k.chars().count().max(12);
            for k in &keys {
                t.push_str(&format!(" {:>w$}", k, w = width(k)));
            }
            t.push('\n');
            for r in reports {
                t.push_str(&format!("{:<14}", r.engine));
                for k in &keys {
                    let v = get(r).get(*k).copied().unwrap_or(0);
                    t.push_str(&format!(" {:>w$}", v, w = width(k)));
                }
                t.push('\n');
            }
            t
        };
    s.push_str(&counts("faults injected", &|r| &r.faults_injected));
    s.push_str(&counts("folios not migrated, by errno", &|r| {
        &r.folios_failed_by_errno
    }));
    s.push_str(&counts("whole calls failed, by errno", &|r| {
        &r.calls_failed_by_errno
    }));
    s
}

/// `45 s`, `12 min`, `3 h`, `2 days`.
fn format_age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 2 * 86400 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::{ceiling, wrap};

    #[test]
    fn the_ceiling_is_the_copy_at_the_limit_over_the_copy_and_the_rest() {
        // 4K at 28.33 GB/s: the copy alone takes 144.6 ns, so 0.70 leaves 62 ns for the rest.
        let c = ceiling(4096, 62.0, 28.33, 28.33);
        assert!((c - 0.70).abs() < 0.005, "{c}");
        // 240 ns of other work (the built-in batch path's, 2026-12-05) caps it at 0.38.
        let c = ceiling(4096, 240.0, 28.33, 28.33);
        assert!((c - 0.376).abs() < 0.005, "{c}");
        // Nothing but the copy: the limit itself; a wider copy can pass one thread's.
        assert_eq!(ceiling(4096, 0.0, 28.33, 28.33), 1.0);
        assert!((ceiling(4096, 0.0, 20.0, 30.0) - 1.5).abs() < 1e-12);
        // 2M: 3.6 µs of other work against a 74 µs copy.
        let c = ceiling(2 << 20, 3600.0, 28.33, 28.33);
        assert!((c - 0.953).abs() < 0.005, "{c}");
        assert_eq!(ceiling(4096, 10.0, 0.0, 1.0), 0.0);
    }

    #[test]
    fn wrap_breaks_at_words() {
        assert_eq!(wrap("ab cd ef", 5), "ab cd\nef\n");
        assert_eq!(wrap("abcdefg hi", 3), "abcdefg\nhi\n");
        assert_eq!(wrap("÷ ÷ ÷", 3), "÷ ÷\n÷\n");
        assert_eq!(wrap("", 3), "");
    }
}
