//! The `pagemig` binary: a quick benchmark run, its JSON, and bad input.

use std::process::Command;

fn pagemig(args: &[&str]) -> std::process::Output {
    // auto's learned state goes to a directory of this test process, never the user's.
    let cache = std::env::temp_dir().join(format!("pagemig-cli-cache-{}", std::process::id()));
    pagemig_in(args, &cache)
}

fn pagemig_in(args: &[&str], cache_dir: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pagemig"))
        .args(args)
        .env("PAGEMIG_CACHE_DIR", cache_dir)
        .output()
        .expect("run pagemig")
}

#[test]
fn quick_bench_prints_the_table_and_writes_json_with_verified_results() {
    let dir = std::env::temp_dir().join(format!("pagemig-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("out.json");
    let out = pagemig(&[
        "bench",
        "--quick",
        "--quiet",
        "--sizes",
        "4K,64K,2M",
        "--engines",
        "vanilla,batch,mtcopy:2,dcbm:2",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("copy limit"));
    assert!(text.contains("vanilla") && text.contains("batch"));
    assert!(text.contains("mtcopy, by threads") && text.contains("dcbm, by channels"));
    // The work per folio outside the copy, and its ceiling, for the engines whose phases
    // hold the copy apart: not vanilla, which copies inside the move. Small folios carry
    // far more of that work per byte than 2M ones.
    let block = text
        .split("work per folio on the series' path")
        .nth(1)
        .unwrap_or_else(|| panic!("no work-per-folio table: {text}"));
    let block: Vec<&str> = block.lines().take_while(|l| !l.is_empty()).collect();
    assert!(!block.iter().any(|l| l.starts_with("vanilla")), "{block:?}");
    let batch = block
        .iter()
        .find(|l| l.starts_with("batch "))
        .unwrap_or_else(|| panic!("no batch row: {block:?}"));
    let ceilings: Vec<f64> = batch
        .split('→')
        .skip(1)
        .map(|c| c.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(ceilings.len(), 3, "{batch}");
    assert!(ceilings.iter().all(|&c| c > 0.0 && c < 2.0), "{batch}");
    assert!(
        ceilings[0] < ceilings[2],
        "4K's ceiling not below 2M's: {batch}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let limit = v["machine"]["copy_limit_gbps"]["1"].as_f64().unwrap();
    assert!(limit > 0.1);
    // The hypervisor's share of the CPUs while it ran, where the kernel counts steal.
    let steal = v["machine"]["cpu_steal"].as_f64();
    assert_eq!(steal.is_some(), pagemig::sys::CpuTimes::now().is_some());
    if let Some(f) = steal {
        assert!((0.0..=1.0).contains(&f), "{f}");
        assert!(text.contains("CPU steal: "), "{text}");
    }
    if std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        > 1
    {
        assert!(
            v["machine"]["copy_limit_gbps"].as_object().unwrap().len() >= 2,
            "an all-cores limit too"
        );
    }
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 12);
    for r in results {
        assert_eq!(r["backend"], "builtin");
        let engine = r["engine"].as_str().unwrap();
        let width = if engine.ends_with(":2") { 2 } else { 1 };
        assert_eq!(r["width"], width, "{engine}");
        assert_eq!(r["nr_failed"], 0);
        assert!(r["gbps_mean"].as_f64().unwrap() > 0.0);
        for k in ["unmap", "flush", "copy", "move"] {
            assert!(r["phases_ns"][k].is_u64(), "{k}");
        }
        let size = r["folio_size"].as_u64().unwrap();
        assert_eq!(
            r["nr_folios"].as_u64().unwrap() * size,
            v["total_bytes"].as_u64().unwrap()
        );
        if engine == "vanilla" {
            assert_eq!(r["nr_copied_by_batch"], 0, "vanilla never batch-copies");
        } else {
            assert!(
                r["nr_copied_by_batch"].as_u64().unwrap() > 0,
                "{engine} used the batch copy"
            );
            assert!(r["phases_ns"]["copy"].as_u64().unwrap() > 0);
        }
        if engine.starts_with("dcbm") || engine.starts_with("mtcopy") {
            let c = &r["engine_counters"];
            assert_eq!(c["folios_failures"], 0, "{engine}");
            assert_eq!(
                c["folios_migrated"].as_u64().unwrap(),
                r["nr_copied_by_batch"].as_u64().unwrap(),
                "{engine}: the driver's count matches the core's"
            );
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_input_is_a_clear_error_and_a_non_zero_exit() {
    for (args, needle) in [
        (vec!["bench", "--sizes", "3K"], "bad folio size"),
        (vec!["bench", "--total", "0"], "--total"),
        (
            vec!["bench", "--engines", "vanilla,turbo"],
            "unknown engine",
        ),
        (
            vec!["bench", "--total", "3M", "--sizes", "2M"],
            "not a multiple",
        ),
        (vec!["bench", "--runs", "0"], "--runs"),
        (
            vec!["bench", "--sizes", ""],
            "invalid value '' for '--sizes",
        ),
        (vec!["bench", "--engines", "dcbm:0"], "1..=16"),
        (vec!["bench", "--engines", "mtcopy:65"], "1..=64"),
        (
            vec![
                "bench",
                "--quick",
                "--engines",
                "dcbm:1",
                "--knob",
                "dcbm.nr_dma_chan=0",
            ],
            "nr_dma_chan",
        ),
        (
            vec![
                "bench",
                "--quick",
                "--engines",
                "dcbm:1",
                "--knob",
                "dcbm.reason_mask=bogus",
            ],
            "unknown migration reason",
        ),
        (vec!["bench", "--knob", "dcbm"], "bad knob"),
        (vec!["stress", "--accessors", "0"], "not in 1..=64"),
        (vec!["stress", "--engines", "turbo"], "unknown engine"),
    ] {
        let out = pagemig(&args);
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn fault_injection_keeps_checksums_and_counters_consistent() {
    let dir = std::env::temp_dir().join(format!("pagemig-cli-faults-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("out.json");
    let out = pagemig(&[
        "bench",
        "--quick",
        "--quiet",
        "--sizes",
        "4K,2M",
        "--engines",
        "mtcopy:2,dcbm:2",
        "--knob",
        "mtcopy.inject_fail_every=5",
        "--knob",
        "dcbm.dma.fail_every=7",
        "--knob",
        "dcbm.max_desc_bytes=8192",
        "--json",
        json.to_str().unwrap(),
    ]);
    // The bench verifies every folio's checksum and the drivers' counters itself and exits
    // non-zero on any mismatch.
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let failures: u64 = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["engine_counters"]["folios_failures"].as_u64().unwrap())
        .sum();
    assert!(failures > 0, "faults were injected");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_short_stress_run_with_every_fault_reports_zero_loss() {
    let dir = std::env::temp_dir().join(format!("pagemig-cli-stress-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("stress.json");
    let out = pagemig(&[
        "stress",
        "--seconds",
        "2",
        "--engines",
        "batch,mtcopy:2,dcbm:2",
        "--inject",
        "all",
        "--quiet",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3);
    for r in runs {
        for k in [
            "lost_writes",
            "torn_reads",
            "content_mismatches",
            "leaked_frames",
        ] {
            assert_eq!(r[k], 0, "{}: {k}", r["engine"]);
        }
        assert!(r["operations"].as_u64().unwrap() > 0);
        assert!(r["pages_migrated"].as_u64().unwrap() > 0);
        let faults = r["faults_injected"].as_object().unwrap();
        for k in ["eagain", "lock", "writeback", "enomem"] {
            assert!(
                faults.get(k).and_then(|v| v.as_u64()).unwrap_or(0) > 0,
                "{}: no {k} injected",
                r["engine"]
            );
        }
    }
    assert_eq!(
        v["resources_before"]["threads"], v["resources_after"]["threads"],
        "threads released"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn stress_rejects_bad_input() {
    for (args, needle) in [
        (vec!["stress", "--inject", "meteor"], "unknown fault kind"),
        (vec!["stress", "--inject", "lock=2"], "(0, 1]"),
        (vec!["stress", "--seconds", "0"], "--seconds"),
        (
            vec!["stress", "--backend", "kernel", "--seconds", "1"],
            "builtin or live",
        ),
        (vec!["stress", "--engines", "dcbm:99"], "1..=16"),
    ] {
        let out = pagemig(&args);
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

fn svg_is_well_formed(path: &std::path::Path) -> (usize, String) {
    use quick_xml::events::Event;
    let text = std::fs::read_to_string(path).unwrap();
    let mut r = quick_xml::Reader::from_str(&text);
    let mut depth = 0i32;
    let mut elements = 0;
    let mut texts = String::new();
    loop {
        match r.read_event() {
            Ok(Event::Start(_)) => {
                depth += 1;
                elements += 1;
            }
            Ok(Event::End(_)) => depth -= 1,
            Ok(Event::Empty(_)) => elements += 1,
            Ok(Event::Text(t)) => texts.push_str(&String::from_utf8_lossy(t.as_ref())),
            Ok(Event::Eof) => break,
            Ok(_) => {}
            Err(e) => panic!("{} is not well-formed XML: {e}", path.display()),
        }
    }
    assert_eq!(depth, 0, "{}: unbalanced tags", path.display());
    (elements, texts)
}

#[test]
fn report_and_plots_hold_the_measured_series() {
    let dir = std::env::temp_dir().join(format!("pagemig-cli-report-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let report = dir.join("report.md");
    let json = dir.join("out.json");
    let out = pagemig(&[
        "bench",
        "--quick",
        "--quiet",
        "--sizes",
        "4K,2M",
        "--engines",
        "vanilla,batch,mtcopy:2,auto",
        "--batch-pages",
        "64,512",
        "--accessors",
        "1",
        "--explain",
        "--report",
        report.to_str().unwrap(),
        "--svg-dir",
        dir.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("latency per batch"), "{stdout}");
    assert!(
        stdout.contains("auto: copy time per MiB"),
        "--explain prints the calibration"
    );
    assert!(stdout.contains("auto ÷ best"), "{stdout}");
    let md = std::fs::read_to_string(&report).unwrap();
    for needle in [
        "## Throughput",
        "## Latency against batch size",
        "## Phase breakdown",
        "Amdahl",
        "## Accessor stalls",
        "series V3",
        "other hardware",
        "## How `auto` decided",
        "| best fixed engine |",
        "| auto ÷ best fixed engine |",
        "| auto ÷ batch |",
        "95% interval",
    ] {
        assert!(md.contains(needle), "report lacks {needle:?}");
    }
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 2 * 2 * 4, "sizes x batch sizes x engines");
    for r in results {
        assert!(r["last_usable_us"].as_f64().unwrap() >= r["first_usable_us"].as_f64().unwrap());
        assert!(r["first_usable_us"].as_f64().unwrap() > 0.0);
    }
    let auto_choices: u64 = results
        .iter()
        .filter(|r| r["engine"] == "auto")
        .flat_map(|r| {
            r["engine_counters"]
                .as_object()
                .unwrap()
                .values()
                .map(|x| x.as_u64().unwrap())
        })
        .sum();
    assert!(auto_choices > 0, "auto counts its decisions");
    // auto against the fixed engines, per size: the ratio of the means, inside its interval.
    let ratios = v["auto_ratios"].as_array().unwrap();
    assert_eq!(ratios.len(), 2, "one per folio size");
    for a in ratios {
        let mean = |e: &str| {
            results
                .iter()
                .find(|r| {
                    r["engine"] == e && r["folio_size"] == a["folio_size"] && r["batch_pages"] == 64
                })
                .unwrap()["gbps_mean"]
                .as_f64()
                .unwrap()
        };
        let best = a["best_engine"].as_str().unwrap();
        assert!(["vanilla", "batch", "mtcopy:2"].contains(&best), "{best}");
        let r = a["vs_best"]["ratio"].as_f64().unwrap();
        assert!((r - mean("auto") / mean(best)).abs() < 1e-9);
        let [lo, hi] = [0, 1].map(|i| a["vs_best"]["interval"][i].as_f64().unwrap());
        assert!(lo <= r && r <= hi, "{a}");
        let rb = a["vs_batch"]["ratio"].as_f64().unwrap();
        assert!((rb - mean("auto") / mean("batch")).abs() < 1e-9);
    }
    for r in results {
        let runs = r["runs"].as_u64().unwrap();
        assert_eq!(r["gbps_runs"].as_array().unwrap().len() as u64, runs);
        if r["engine"] == "auto" {
            // Each result counts its own runs' decisions (auto lives across all of them):
            // at most one per folio per run.
            let chosen: u64 = r["engine_counters"]
                .as_object()
                .unwrap()
                .values()
                .map(|x| x.as_u64().unwrap())
                .sum();
            assert!(chosen > 0);
            assert!(
                chosen <= runs * r["nr_folios"].as_u64().unwrap(),
                "{chosen} decisions in {runs} runs of {} folios",
                r["nr_folios"]
            );
        }
    }
    for (name, series) in [
        (
            "throughput.svg",
            vec!["vanilla", "batch", "mtcopy:2", "auto", "copy limit"],
        ),
        (
            "latency.svg",
            vec!["vanilla: last folio", "auto: first folio"],
        ),
        (
            "phases.svg",
            vec!["unmap", "flush", "copy", "move", "batch 2M"],
        ),
    ] {
        let (elements, texts) = svg_is_well_formed(&dir.join(name));
        assert!(elements > 20, "{name} has content");
        for s in series {
            assert!(texts.contains(s), "{name} lacks the series {s:?}");
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn live_bench_moves_this_process_pages_and_reports_kernel_calls() {
    let dir = std::env::temp_dir().join(format!("pagemig-cli-live-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("live.json");
    let out = pagemig(&[
        "bench",
        "--backend",
        "live",
        "--quick",
        "--quiet",
        "--sizes",
        "4K,2M",
        "--engines",
        "vanilla,batch,mtcopy:2",
        "--accessors",
        "1",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("backend live"), "{text}");
    assert!(text.contains("UFFDIO_MOVE calls per migration"), "{text}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["backend"], "live");
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 6);
    let has_tlb_row = std::fs::read_to_string("/proc/interrupts")
        .is_ok_and(|t| t.lines().any(|l| l.trim_start().starts_with("TLB:")));
    for r in results {
        assert_eq!(r["backend"], "live");
        assert_eq!(r["nr_failed"], 0);
        let l = &r["live"];
        assert_eq!(l["batch_moves"], true);
        // 32M per run: at least one kernel call out and one back per migration.
        assert!(l["unmap_calls"].as_f64().unwrap() >= 1.0);
        assert!(l["remap_calls"].as_f64().unwrap() >= 1.0);
        // The TLB IPIs are counted where the kernel has the row for them (x86), and only there.
        assert_eq!(l["tlb_ipis"].as_f64().is_some(), has_tlb_row, "{l}");
    }
    assert!(text.contains("TLB IPIs"), "{text}");
    // Batched: a 4K migration of 32M (8192 pages) takes far fewer calls than pages.
    let four_k = results
        .iter()
        .find(|r| r["folio_size"] == 4096 && r["engine"] == "batch")
        .unwrap();
    assert!(four_k["live"]["unmap_calls"].as_f64().unwrap() < 1024.0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn live_stress_finds_no_loss() {
    let out = pagemig(&[
        "stress",
        "--backend",
        "live",
        "--seconds",
        "2",
        "--engines",
        "batch,dcbm:2",
        "--quiet",
    ]);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("live batch") && text.contains("live dcbm:2"),
        "{text}"
    );
    // The summary table: the last four columns (lost writes, torn reads, mismatches,
    // leaked frames) are 0 in every engine's row.
    let header = text.lines().next().unwrap_or_default();
    assert!(
        header.contains("lost writes") && header.ends_with("leaked"),
        "{text}"
    );
    let rows: Vec<&str> = text.lines().skip(1).take_while(|l| !l.is_empty()).collect();
    assert_eq!(rows.len(), 2, "{text}");
    for row in rows {
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols[cols.len() - 4..], ["0", "0", "0", "0"], "{row}");
    }
}

#[test]
fn kernel_backend_runs_only_with_two_numa_nodes_and_says_so() {
    let out = pagemig(&[
        "bench",
        "--backend",
        "kernel",
        "--quick",
        "--quiet",
        "--sizes",
        "4K",
    ]);
    let nodes = pagemig::mm::numa::host_numa_nodes().len();
    if nodes >= 2 {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("kernel move_pages(2)"));
    } else {
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("two NUMA nodes") && err.contains("ENODEV"),
            "{err}"
        );
    }
}

#[test]
fn json_to_stdout_is_json_alone_with_schema_version_and_command() {
    let out = pagemig(&[
        "bench",
        "--quick",
        "--quiet",
        "--sizes",
        "2M",
        "--engines",
        "batch",
        "--json",
        "-",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("standard output is one JSON document");
    assert_eq!(v["schema_version"], 2);
    assert_eq!(v["pagemig_version"], env!("CARGO_PKG_VERSION"));
    let cmd = v["command"].as_str().unwrap();
    assert!(cmd.contains("bench") && cmd.contains("--json -"), "{cmd}");
    assert_eq!(
        (v["from_node"].as_u64(), v["to_node"].as_u64()),
        (Some(0), Some(1))
    );
    assert_eq!(v["reason"], "syscall_or_cpuset");
    // The table went to standard error.
    assert!(String::from_utf8_lossy(&out.stderr).contains("batch"));
}

#[test]
fn from_to_and_reason_choose_the_nodes_and_the_reason() {
    let out = pagemig(&[
        "bench",
        "--quick",
        "--quiet",
        "--sizes",
        "64K",
        "--engines",
        "batch",
        "--from",
        "2",
        "--to",
        "0",
        "--reason",
        "demotion",
        "--json",
        "-",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["from_node"].as_u64(), v["to_node"].as_u64()),
        (Some(2), Some(0))
    );
    assert_eq!(v["reason"], "demotion");
    // `batch` offloads only the reasons in its mask: by default demotion is one of them,
    // so the batch path copied the folios.
    let r = &v["results"][0];
    assert!(r["nr_copied_by_batch"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["nr_failed"], 0);
    for (args, needle) in [
        (vec!["--from", "1", "--to", "1"], "both node 1"),
        (vec!["--from", "0-1"], "names 2 nodes"),
        (vec!["--to", "x"], "not a number"),
        (vec!["--reason", "gardening"], "invalid value 'gardening'"),
        (vec!["--mode", "fast"], "invalid value 'fast'"),
    ] {
        let mut a = vec!["bench", "--quick", "--quiet", "--sizes", "64K"];
        a.extend(args.iter().copied());
        let out = pagemig(&a);
        assert!(!out.status.success(), "{a:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("pagemig: error:") && err.contains(needle),
            "{a:?}: {err}"
        );
    }
}

#[test]
fn info_shows_the_nodes_thp_userfaultfd_and_cpus() {
    let out = pagemig(&["info"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "available: ",
        "node 0 cpus:",
        "node distances:",
        "transparent hugepages:",
        "userfaultfd",
        "copy primitive:",
        "allowed cpus:",
    ] {
        assert!(text.contains(needle), "{needle}: {text}");
    }
    let out = pagemig(&["info", "--json", "-"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), pagemig::mm::numa::host_numa_nodes().len());
    assert!(nodes
        .iter()
        .any(|n| !n["cpus"].as_array().unwrap().is_empty()));
    assert!(!v["allowed_cpus"].as_array().unwrap().is_empty());
}

#[test]
fn completions_and_the_man_page_come_from_the_command_definition() {
    let out = pagemig(&["completions", "bash"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "_pagemig()",
        "bench",
        "stress",
        "info",
        "--reason",
        "--from",
    ] {
        assert!(text.contains(needle), "{needle}");
    }
    let out = pagemig(&["completions", "zsh"]);
    assert!(out.status.success() && !out.stdout.is_empty());
    let out = pagemig(&["completions", "tcsh"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value 'tcsh'"));
    let out = pagemig(&["man"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(".ie") || text.contains(".TH pagemig"),
        "{text}"
    );
    assert!(text.contains("bench") && text.contains("completions"));
}

#[test]
fn bench_migrates_page_cache_and_shmem_folios_with_the_same_tables() {
    for kind in ["file", "shmem"] {
        let out = pagemig(&[
            "bench",
            "--quick",
            "--quiet",
            "--kind",
            kind,
            "--sizes",
            "4K,2M",
            "--engines",
            "vanilla,batch,mtcopy:2",
            "--json",
            "-",
        ]);
        assert!(
            out.status.success(),
            "{kind}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(text.contains(&format!("{kind} folios")), "{kind}: {text}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["kind"], kind);
        let results = v["results"].as_array().unwrap();
        assert_eq!(results.len(), 6);
        for r in results {
            assert_eq!(r["kind"], kind);
            assert_eq!(r["nr_failed"], 0, "{kind}: every folio migrated, verified");
            // The mm_migrate_pages tracepoint: one event per run, all pages migrated.
            let t = &r["trace"];
            let events = t["events"].as_u64().unwrap();
            assert_eq!(events, r["gbps_runs"].as_array().unwrap().len() as u64);
            let per_run =
                r["nr_folios"].as_u64().unwrap() * r["folio_size"].as_u64().unwrap() / 4096;
            assert_eq!(t["succeeded"].as_u64().unwrap(), events * per_run, "{kind}");
            assert_eq!(t["failed"], 0);
            assert!(r["gbps_mean"].as_f64().unwrap() > 0.0);
        }
        let batch_copied: u64 = results
            .iter()
            .filter(|r| r["engine"] == "batch")
            .map(|r| r["nr_copied_by_batch"].as_u64().unwrap())
            .sum();
        assert!(
            batch_copied > 0,
            "{kind}: page-cache folios take the batch path"
        );
    }
    for backend in ["live", "kernel"] {
        let out = pagemig(&["bench", "--quick", "--kind", "file", "--backend", backend]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("anonymous memory only") && !err.contains("panicked"),
            "{backend}: {err}"
        );
    }
    let out = pagemig(&["bench", "--kind", "swap"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("swap"));
}

#[test]
fn auto_starts_from_what_the_run_before_learned_and_ignores_a_corrupt_state() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let json = dir.path().join("out.json");
    let args = [
        "bench",
        "--quiet",
        "--total",
        "64M",
        "--runs",
        "3",
        "--sizes",
        "4K",
        "--engines",
        "batch,auto",
        "--json",
        json.to_str().unwrap(),
    ];
    let run = |extra: &[&str]| {
        let mut a = args.to_vec();
        a.extend_from_slice(extra);
        let out = pagemig_in(&a, &cache);
        assert!(
            out.status.success(),
            "stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        (v, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    // First run: nothing to start from; what it learned is written back.
    let (v, _) = run(&[]);
    let st = &v["auto_state"];
    assert_eq!(st["orders_applied"], 0, "{st}");
    assert_eq!(st["saved_orders"], 1, "4K settled: {st}");
    let path = std::path::PathBuf::from(st["path"].as_str().unwrap());
    assert!(path.starts_with(&cache), "{}", path.display());
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(saved["version"], 1);
    assert_eq!(saved["orders"][0]["order"], 0);
    // Second run: starts from it.
    let (v, _) = run(&[]);
    assert_eq!(v["auto_state"]["orders_applied"], 1, "{}", v["auto_state"]);
    assert!(v["auto_state"]["age_s"].as_u64().is_some());
    // A corrupt file: a warning, a start from nothing, and a good file again after.
    std::fs::write(&path, "{ not json").unwrap();
    let (v, stderr) = run(&[]);
    assert!(
        stderr.contains("pagemig: warning: auto's learned state") && stderr.contains("ignored"),
        "{stderr}"
    );
    assert_eq!(v["auto_state"]["orders_applied"], 0);
    assert!(v["auto_state"]["ignored"]
        .as_str()
        .unwrap()
        .contains("parse"));
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(saved["version"], 1, "rewritten whole");
    // --no-cache: neither read nor written.
    std::fs::remove_file(&path).unwrap();
    let (v, _) = run(&["--no-cache"]);
    assert!(v.get("auto_state").is_none(), "{v}");
    assert!(!path.exists());
    // pagemig cache shows, then clears.
    run(&[]);
    let out = pagemig_in(&["cache"], &cache);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"version\": 1"));
    let out = pagemig_in(&["cache", "clear"], &cache);
    assert!(String::from_utf8_lossy(&out.stdout).contains("removed 1 learned state"));
    assert!(!path.exists());
}

#[test]
fn pipeline_runs_each_batch_engine_both_ways_and_reports_both_latencies() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.json");
    let out = pagemig(&[
        "bench",
        "--quick",
        "--quiet",
        "--sizes",
        "4K",
        "--engines",
        "vanilla,batch",
        "--pipeline",
        "both",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("pipelined (--pipeline, beyond the series"),
        "{text}"
    );
    assert!(
        text.contains("batch+pipeline") && text.contains("batch+overlap"),
        "{text}"
    );
    assert!(text.contains("latency per batch"), "{text}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let r = v["results"].as_array().unwrap();
    let shape: Vec<(String, bool, bool)> = r
        .iter()
        .map(|r| {
            (
                r["engine"].as_str().unwrap().to_string(),
                r["pipeline"].as_bool().unwrap(),
                r["pipeline_overlap"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        vec![
            ("vanilla".to_string(), false, false),
            ("batch".to_string(), false, false),
            ("batch".to_string(), true, false),
            ("batch".to_string(), true, true)
        ]
    );
    // The kernel's move_pages(2) has nothing to pipeline: a clear error.
    let out = pagemig(&["bench", "--quick", "--backend", "kernel", "--pipeline"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("pagemig: error: --pipeline"));
    for r in r {
        assert_eq!(r["nr_failed"], 0);
        let (first, last) = (
            r["first_usable_us"].as_f64().unwrap(),
            r["last_usable_us"].as_f64().unwrap(),
        );
        assert!(first > 0.0 && first <= last, "{r}");
    }
}
