//! The C example, compiled with the system `cc` against the static library and the header,
//! and run: it tiers its own memory through the C ABI and checks every byte.

use std::path::PathBuf;
use std::process::Command;

/// The directory of this build's artifacts (`target/<profile>`): the test binary is in its
/// `deps/`.
fn artifacts() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

/// Builds the static library. `cargo test` builds this crate as an rlib only, so on a clean
/// checkout `libpagemig_capi.a` is not there yet: the test asks cargo for it, in the same
/// target directory and profile.
fn build_static_library() -> PathBuf {
    let dir = artifacts();
    let profile = dir.file_name().unwrap().to_str().unwrap().to_string();
    let target = dir.parent().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--quiet",
        "-p",
        "pagemig-capi",
        "--lib",
        "--target-dir",
    ])
    .arg(target);
    if profile == "release" {
        cmd.arg("--release");
    }
    let out = cmd.output().expect("run cargo");
    assert!(
        out.status.success(),
        "cargo build -p pagemig-capi failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lib = dir.join("libpagemig_capi.a");
    assert!(lib.exists(), "{} was not built", lib.display());
    lib
}

#[test]
fn the_c_example_builds_with_cc_and_tiers_its_memory() {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let lib = build_static_library();
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("tier");
    let out = Command::new("cc")
        .args(["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(manifest.join("include"))
        .arg(manifest.join("examples/tier.c"))
        .arg(&lib)
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(&exe)
        .output()
        .expect("run cc");
    assert!(
        out.status.success(),
        "cc failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for engine in ["batch", "mtcopy:2", "vanilla"] {
        let out = Command::new(&exe).arg(engine).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{engine}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("round 3: 4096 pages on node 0, every word intact"),
            "{stdout}"
        );
        assert!(stdout.trim_end().ends_with("ok"), "{stdout}");
    }
}
