//! The `pagemig` binary: a quick benchmark run, its JSON, and bad input.

use std::process::Command;

fn pagemig(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pagemig"))
        .args(args)
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
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let limit = v["machine"]["copy_limit_gbps"]["1"].as_f64().unwrap();
    assert!(limit > 0.1);
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 6);
    for r in results {
        assert_eq!(r["backend"], "builtin");
        assert_eq!(r["width"], 1);
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
        if r["engine"] == "batch" {
            assert!(
                r["nr_copied_by_batch"].as_u64().unwrap() > 0,
                "batch engine used the batch copy"
            );
            assert!(r["phases_ns"]["copy"].as_u64().unwrap() > 0);
        } else {
            assert_eq!(r["nr_copied_by_batch"], 0, "vanilla never batch-copies");
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
        (vec!["bench", "--sizes", ""], "empty size list"),
    ] {
        let out = pagemig(&args);
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}
