//! Real, unmodified programs from Debian's packages under `pagemig run`, while their memory
//! is moved back and forth between nodes the whole time: an interpreter computing checksums
//! over large arrays, a database with its integrity check, a key-value server driven by its
//! own benchmark client, and a memory stressor that verifies its own data. Each must give
//! the same results and exit status as when run plainly, and pages must have moved.
//!
//! The programs are Debian's (`python3`, `sqlite3`, `redis-server`/`redis-benchmark`,
//! `stress-ng`); a missing one is installed with apt-get when the tests run as root (as
//! `.ci/run` does anyway), and is a failure otherwise. The tests run one at a time: they
//! are sized for this machine's two cores.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pagemig_live::control::{self, MoveRequest, Reply, Request, Response};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

fn pagemig() -> &'static str {
    env!("CARGO_BIN_EXE_pagemig")
}

/// Builds the preload library beside the `pagemig` executable (`cargo test` does not build
/// a cdylib that no test links).
fn preload() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = Path::new(pagemig()).parent().unwrap().to_path_buf();
            let profile = dir.file_name().unwrap().to_str().unwrap().to_string();
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut c = Command::new(cargo);
            c.args(["build", "--quiet", "-p", "pagemig-preload", "--target-dir"])
                .arg(dir.parent().unwrap());
            if profile == "release" {
                c.arg("--release");
            }
            let out = c.output().expect("run cargo");
            assert!(
                out.status.success(),
                "cargo build -p pagemig-preload failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let lib = dir.join("libpagemig_preload.so");
            assert!(lib.is_file(), "{} was not built", lib.display());
            lib
        })
        .clone()
}

fn on_path(prog: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
}

/// Makes sure Debian's `package` (which gives `prog`) is installed.
fn need(prog: &str, package: &str) {
    static APT: Mutex<()> = Mutex::new(());
    let _g = APT.lock().unwrap_or_else(|p| p.into_inner());
    if on_path(prog) {
        return;
    }
    assert!(
        pagemig_live::kernel::uid() == 0,
        "{prog} is missing: install Debian's {package} (apt-get install {package})"
    );
    let st = Command::new("sh")
        .args([
            "-c",
            &format!(
                "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends {package}"
            ),
        ])
        .status()
        .expect("run apt-get");
    assert!(
        st.success() && on_path(prog),
        "apt-get could not install {package}"
    );
}

/// `pagemig run` with these options, its control socket in `dir`.
fn tiered(dir: &Path, opts: &[&str], prog: &[&str]) -> Command {
    let mut c = Command::new(pagemig());
    c.arg("run").arg("--quiet").args(opts);
    if !opts.iter().any(|o| o.starts_with("--thp")) {
        // Base pages unless asked, whatever this host's transparent_hugepage setting
        // (which `pagemig run` follows by default; tested on its own).
        c.arg("--thp=never");
    }
    c.arg("--")
        .args(prog)
        .env("PAGEMIG_PRELOAD", preload())
        .env("PAGEMIG_RUN_DIR", dir);
    c
}

/// The processes with a control socket in `dir`.
fn tiered_pids(dir: &Path) -> Vec<u32> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let n = e.file_name().into_string().ok()?;
                    n.strip_prefix("run-")?.strip_suffix(".sock")?.parse().ok()
                })
                .filter(|pid| Path::new(&format!("/proc/{pid}")).exists())
                .collect()
        })
        .unwrap_or_default()
}

/// What the mover did.
#[derive(Debug, Default)]
struct Moved {
    moves: u64,
    pages: u64,
    failed: u64,
    processes: std::collections::BTreeSet<u32>,
}

/// Moves the memory of every process with a socket in `dir` to node 1, then 0, then 1, ...
/// until `stop`, with the engines in turn.
fn mover(dir: &Path, stop: &AtomicBool) -> Moved {
    let mut m = Moved::default();
    let engines = ["batch", "mtcopy:2", "batch", "dcbm:1"];
    let mut k = 0usize;
    while !stop.load(Ordering::Acquire) {
        for pid in tiered_pids(dir) {
            let req = Request::Move(MoveRequest {
                from: None,
                to: vec![(k % 2 + 1) as u32 % 2],
                range: None,
                engine: Some(engines[k % engines.len()].into()),
                rate_mb_s: None,
                batch_pages: None,
                pipeline: false,
            });
            // The process may exit at any moment: a failed request is no failure.
            let path = dir.join(format!("run-{pid}.sock"));
            if let Ok(Response::Ok(Reply::Moved(r))) = control::request_at(&path, pid, &req) {
                m.moves += 1;
                m.pages += r.pages_migrated;
                m.failed += r.pages_failed;
                if r.pages_migrated > 0 {
                    m.processes.insert(pid);
                }
            }
        }
        k += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    m
}

/// Stops the mover when dropped: also when the test panics inside the scope (a failed
/// assertion must fail the test, not leave it waiting for the mover forever).
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Runs `cmd` to its end while the mover moves its memory.
fn run_while_moving(dir: &Path, cmd: &mut Command) -> (Output, Moved) {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let h = s.spawn(|| mover(dir, &stop));
        let _stop = StopOnDrop(&stop);
        let out = cmd.output().expect("start the program");
        stop.store(true, Ordering::Release);
        (out, h.join().unwrap())
    })
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn assert_same(plain: &Output, tiered: &Output, moved: &Moved, what: &str) {
    assert_eq!(
        tiered.status.code(),
        plain.status.code(),
        "{what}: exit status\n{}",
        text(&tiered.stderr)
    );
    assert_eq!(
        text(&tiered.stdout),
        text(&plain.stdout),
        "{what}: output\nstderr: {}",
        text(&tiered.stderr)
    );
    assert!(
        moved.pages > 0,
        "{what}: no page moved during the run ({moved:?})\nstderr: {}",
        text(&tiered.stderr)
    );
    eprintln!(
        "{what}: {} pages migrated in {} moves ({} left in place), same output and status",
        moved.pages, moved.moves, moved.failed
    );
}

const PYTHON: &str = r#"
import hashlib, random, sys
rng = random.Random(12345)
b = bytearray(rng.randbytes(48 << 20))
lst = list(range(1_500_000))
h = hashlib.sha256()
for p in range(24):
    h.update(b)
    d = h.digest()
    off = (p * 7919 * 4096) % (len(b) - 4096)
    b[off:off + 4096] = d * 128
    lst[p * 1000] = int.from_bytes(d[:8], "little")
print(h.hexdigest())
print(sum(x * x for x in lst) % 1_000_000_007)
print(sum(b[::4096]))
"#;

#[test]
fn an_interpreter_computes_the_same_checksums_while_its_arrays_move() {
    let _s = serial();
    need("python3", "python3");
    let plain = Command::new("python3")
        .args(["-c", PYTHON])
        .output()
        .unwrap();
    assert!(plain.status.success(), "{}", text(&plain.stderr));
    let dir = tempfile::tempdir().unwrap();
    let (out, moved) = run_while_moving(
        dir.path(),
        &mut tiered(dir.path(), &[], &["python3", "-c", PYTHON]),
    );
    assert_same(&plain, &out, &moved, "python3");
}

const SQL: &str = r#"
PRAGMA cache_size = -65536;
PRAGMA mmap_size = 0;
PRAGMA temp_store = memory;
CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, w INTEGER);
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 250000)
INSERT INTO t SELECT x, printf('%08d-%s', x, substr('abcdefghijklmnopqrstuvwxyz', 1 + x % 26)), (x * 7919) % 100003 FROM c;
CREATE INDEX tw ON t(w);
CREATE INDEX tv ON t(v);
SELECT count(*), sum(w), total(length(v)) FROM t;
SELECT w % 97 AS k, count(*) FROM t GROUP BY k ORDER BY k LIMIT 5;
UPDATE t SET w = w + 1 WHERE id % 3 = 0;
DELETE FROM t WHERE id % 11 = 0;
SELECT count(*), sum(w) FROM t;
SELECT group_concat(v, ',') FROM (SELECT v FROM t ORDER BY w DESC, id LIMIT 5);
PRAGMA integrity_check;
"#;

#[test]
fn a_database_passes_its_integrity_check_with_the_same_answers_while_its_memory_moves() {
    let _s = serial();
    need("sqlite3", "sqlite3");
    let run = |tier: Option<&Path>| {
        let db = tempfile::tempdir().unwrap();
        let path = db.path().join("t.db");
        let p = path.to_str().unwrap();
        let mut cmd = match tier {
            None => {
                let mut c = Command::new("sqlite3");
                c.arg(p);
                c
            }
            Some(d) => tiered(d, &["--threshold", "64K"], &["sqlite3", p]),
        };
        cmd.stdin(Stdio::piped());
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            let h = tier.map(|d| s.spawn(|| mover(d, &stop)));
            let _stop = StopOnDrop(&stop);
            let mut child = cmd
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write as _;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(SQL.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            stop.store(true, Ordering::Release);
            (out, h.map(|h| h.join().unwrap()).unwrap_or_default())
        })
    };
    let (plain, _) = run(None);
    assert!(plain.status.success(), "{}", text(&plain.stderr));
    assert!(
        text(&plain.stdout).trim_end().ends_with("ok"),
        "{}",
        text(&plain.stdout)
    );
    let dir = tempfile::tempdir().unwrap();
    let (out, moved) = run(Some(dir.path()));
    assert_same(&plain, &out, &moved, "sqlite3");
}

/// A free TCP port on loopback.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "redis-cli {args:?}: {}",
        text(&out.stderr)
    );
    text(&out.stdout).trim().to_string()
}

/// Starts redis-server (plainly or tiered), loads a deterministic data set, drives it with
/// redis-benchmark (reads of that data, and writes to keys of its own) while the mover
/// runs, and returns the digests of the data set before and after, the benchmark's status,
/// and what moved.
fn redis_session(tier: Option<&Path>) -> (String, String, bool, Moved) {
    let port = free_port();
    let ps = port.to_string();
    let args = [
        "--port",
        &ps,
        "--save",
        "",
        "--appendonly",
        "no",
        "--enable-debug-command",
        "yes",
    ];
    let mut cmd = match tier {
        None => {
            let mut c = Command::new("redis-server");
            c.args(args);
            c
        }
        Some(d) => {
            let mut prog = vec!["redis-server"];
            prog.extend(args);
            tiered(d, &[], &prog)
        }
    };
    let mut server: Child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Ready when it says so.
    let stdout = server.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let t0 = Instant::now();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.contains("Ready to accept connections") => break,
            Some(Ok(_)) => {}
            _ => panic!("redis-server did not start"),
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "redis-server did not start"
        );
    }
    // The server's log (it logs to standard output): shown if the session fails, since a
    // crash report is all there is to go on then.
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let log2 = log.clone();
    let stderr = server.stderr.take().unwrap();
    let log3 = log.clone();
    std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            log2.lock().unwrap().push(l);
        }
    });
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            log3.lock().unwrap().push(format!("stderr: {l}"));
        }
    });
    let _show_log = LogOnPanic(log, "redis-server");
    let load = "for i = 1, 60000 do redis.call('SET', 'data:' .. i, string.rep(string.char(97 + i % 26), 200 + i % 300)) end \
                for i = 1, 200 do for j = 1, 100 do redis.call('RPUSH', 'list:' .. i, i * j) end end return 1";
    let stop = AtomicBool::new(false);
    let (d1, d2, ok, moved) = std::thread::scope(|s| {
        let h = tier.map(|d| s.spawn(|| mover(d, &stop)));
        let _stop = StopOnDrop(&stop);
        assert_eq!(redis_cli(port, &["EVAL", load, "0"]), "1");
        let digest = || redis_cli(port, &["DEBUG", "DIGEST"]);
        let d1 = digest();
        // redis-benchmark retries for ever when the server is gone: a time limit, so that a
        // server that died fails the test (with its log) instead of hanging it.
        let within = |cmd: &mut Command| {
            output_within(cmd, Duration::from_secs(180))
                .expect("redis-benchmark did not end within 180 s: is the server still up?")
        };
        let bench = within(
            Command::new("redis-benchmark")
                .args(["-p", &ps, "-q", "-n", "60000", "-c", "16", "-P", "8"])
                .args(["-t", "get,lrange_100"]),
        );
        let writes = within(
            Command::new("redis-benchmark")
                .args([
                    "-p", &ps, "-q", "-n", "60000", "-c", "16", "-r", "50000", "-d", "512",
                ])
                .args(["-t", "set,lpush"]),
        );
        let ok = bench.status.success() && writes.status.success();
        // The benchmark's own keys go; the data set must be what it was.
        redis_cli(
            port,
            &["DEL", "key:__rand_int__", "mylist", "counter:__rand_int__"],
        );
        let _ = redis_cli(
            port,
            &["EVAL", "for _, k in ipairs(redis.call('KEYS', 'key:*')) do redis.call('DEL', k) end return 1", "0"],
        );
        let d2 = digest();
        stop.store(true, Ordering::Release);
        (d1, d2, ok, h.map(|h| h.join().unwrap()).unwrap_or_default())
    });
    let _ = redis_cli(port, &["SHUTDOWN", "NOSAVE"]);
    let st = server.wait().unwrap();
    assert!(
        st.success() || st.code().is_none() || st.code() == Some(0),
        "redis-server: {st:?}"
    );
    (d1, d2, ok, moved)
}

/// Prints a program's output on stderr when the test panics while this is alive.
struct LogOnPanic(Arc<Mutex<Vec<String>>>, &'static str);

impl Drop for LogOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Whatever the program still writes has a moment to arrive.
            std::thread::sleep(Duration::from_millis(200));
            let l = self.0.lock().unwrap_or_else(|p| p.into_inner());
            let from = l.len().saturating_sub(200);
            eprintln!(
                "---- {} output (last {} lines) ----",
                self.1,
                l.len() - from
            );
            for line in &l[from..] {
                eprintln!("{line}");
            }
        }
    }
}

#[test]
fn a_key_value_server_keeps_its_data_under_its_own_benchmark_while_its_memory_moves() {
    let _s = serial();
    need("redis-server", "redis-server");
    need("redis-benchmark", "redis-tools");
    let (p1, p2, ok, _) = redis_session(None);
    assert!(ok, "redis-benchmark failed on the plain server");
    assert_eq!(p1, p2, "the plain server's data set changed");
    let dir = tempfile::tempdir().unwrap();
    let (t1, t2, ok, moved) = redis_session(Some(dir.path()));
    assert!(ok, "redis-benchmark failed on the tiered server");
    assert_eq!(
        (&t1, &t2),
        (&p1, &p1),
        "the tiered server's data set differs"
    );
    assert!(moved.pages > 0, "no page moved: {moved:?}");
    eprintln!(
        "redis: {} pages migrated in {} moves, data set digest {t1} before and after",
        moved.pages, moved.moves
    );
}

#[test]
fn a_memory_stressor_verifies_its_own_data_in_forked_workers_while_it_moves() {
    let _s = serial();
    need("stress-ng", "stress-ng");
    let args = [
        "stress-ng",
        "--vm",
        "2",
        "--vm-bytes",
        "96M",
        "--vm-keep",
        "--verify",
        "--timeout",
        "8s",
    ];
    let plain = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(plain.status.success(), "{}", text(&plain.stderr));
    let dir = tempfile::tempdir().unwrap();
    let (out, moved) = run_while_moving(dir.path(), &mut tiered(dir.path(), &[], &args));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), plain.status.code(), "stress-ng: {err}");
    assert!(
        err.contains("successful run completed") && !err.contains("fail:"),
        "stress-ng: {err}"
    );
    assert!(
        !err.contains("detected") || !err.to_lowercase().contains("memory error"),
        "{err}"
    );
    // Its workers are forked children: each tiers its own new memory.
    assert!(moved.pages > 0, "no page moved: {moved:?}\n{err}");
    assert!(
        moved.processes.len() >= 2,
        "pages moved in only {:?}: {moved:?}",
        moved.processes
    );
    eprintln!(
        "stress-ng: {} pages migrated in {} moves over {} processes, verify passed",
        moved.pages,
        moved.moves,
        moved.processes.len()
    );
}

#[test]
fn without_kernel_mode_faults_the_program_runs_untiered_and_says_so() {
    let _s = serial();
    need("setpriv", "util-linux");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd")
            .unwrap()
            .trim(),
        "0",
        "this test needs vm.unprivileged_userfaultfd=0, this machine's setting"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut c = Command::new("setpriv");
    c.args(["--bounding-set=-sys_ptrace", "--inh-caps=-sys_ptrace", "--"])
        .arg(pagemig())
        .args(["run", "--", "python3", "-c", "print(sum(range(10**6)))"])
        .env("PAGEMIG_PRELOAD", preload())
        .env("PAGEMIG_RUN_DIR", dir.path());
    let out = c.output().unwrap();
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(text(&out.stdout).trim(), "499999500000");
    assert!(
        err.contains("may not handle kernel-mode page faults") && err.contains("untiered"),
        "{err}"
    );
    assert!(tiered_pids(dir.path()).is_empty());
}

/// Starts `cmd` with its standard streams piped and waits for its first line, "ready";
/// the child and the rest of its output's lines.
fn spawn_until_ready(
    cmd: &mut Command,
    what: &str,
) -> (Child, std::io::Lines<BufReader<std::process::ChildStdout>>) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready", "{what}");
    (child, lines)
}

/// `pagemig run` backs a program's regions of 2 MiB and more with THPs where the kernel
/// would give the program THPs (this host's `transparent_hugepage` setting; for the malloc
/// family's also where `GLIBC_TUNABLES` asks glibc's malloc to advise them; none while the
/// program has THP disabled for itself), and as told with `--thp` or `--thp=never`; a
/// `--thp` it does not know is refused.
#[test]
fn regions_get_the_page_size_the_kernel_would_give_the_program_unless_told() {
    use pagemig_cli::run::{host_thp, KernelThp};
    let _s = serial();
    need("python3", "python3");
    // 64 MiB from malloc (a bytearray) and 64 MiB of a private anonymous mapping, which
    // the program advises MADV_HUGEPAGE before touching it ("huge"), MADV_NOHUGEPAGE
    // ("nohuge"), MADV_HUGEPAGE after touching it ("late"), or not at all ("none"). With
    // "huge" it also maps 3 MiB, advises, touches and unmaps it: a region of 2 MiB folios
    // is 4 MiB long, and the program's munmap of its 3 MiB frees it whole.
    let prog = "import mmap, sys\nif sys.argv[1] == 'off': import ctypes; assert ctypes.CDLL(None).prctl(41, 1, 0, 0, 0) == 0\nadv = sys.argv[2]\nb = bytearray(64 << 20)\nm = mmap.mmap(-1, 64 << 20, flags=mmap.MAP_PRIVATE)\nif adv == 'huge': m.madvise(mmap.MADV_HUGEPAGE)\nif adv == 'nohuge': m.madvise(mmap.MADV_NOHUGEPAGE)\nfor i in range(0, len(b), 4096): b[i] = i % 251; m[i] = i % 241\nif adv == 'late': m.madvise(mmap.MADV_HUGEPAGE)\nif adv == 'huge':\n    x = mmap.mmap(-1, 3 << 20, flags=mmap.MAP_PRIVATE); x.madvise(mmap.MADV_HUGEPAGE); x[0] = 1; x.close()\nprint('ready', flush=True)\nsys.stdin.readline()\nprint(sum(b[::4096]) + sum(m[i] for i in range(0, len(m), 4096)))";
    let plain = Command::new("python3")
        .args(["-c", prog, "on", "none"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let expect_sum = text(&plain.stdout).lines().last().unwrap_or("").to_string();
    let host = host_thp();
    let always = host == KernelThp::Always;
    let advised = host != KernelThp::Never;
    let asks = "glibc.malloc.hugetlb=1";
    // (options, GLIBC_TUNABLES, THP on or off for itself (PR_SET_THP_DISABLE), the
    // mapping's advice, malloc's region huge, the mapping huge)
    for (opts, tunables, own, adv, malloc_huge, mmap_huge) in [
        (&[][..], "", "on", "none", always, always),
        (&["--thp=auto"][..], "", "on", "none", always, always),
        (&[][..], asks, "on", "none", advised, always),
        (&[][..], asks, "off", "none", false, false),
        (&["--thp"][..], "", "on", "none", true, true),
        (&["--thp"][..], "", "off", "none", true, true),
        (&["--thp=never"][..], asks, "on", "none", false, false),
        // The program's own advice, before its first touch, counts as the kernel's would;
        // after it, the folio size stays (the kernel would leave it to khugepaged).
        (&[][..], "", "on", "huge", always, advised),
        (&[][..], "", "off", "huge", false, false),
        (&[][..], "", "on", "nohuge", always, false),
        (&[][..], "", "on", "late", always, always),
        (&["--thp"][..], "", "on", "nohuge", true, true),
        (&["--thp=never"][..], "", "on", "huge", false, false),
    ] {
        let what =
            format!("{opts:?} GLIBC_TUNABLES={tunables:?} THP {own}, advice {adv} (host {host:?})");
        let dir = tempfile::tempdir().unwrap();
        // Not `tiered()`, which asks for base pages unless told: the default is the point.
        let mut cmd = Command::new(pagemig());
        cmd.args(["run", "--quiet"])
            .args(opts)
            .args(["--", "python3", "-c", prog, own, adv])
            .env("PAGEMIG_PRELOAD", preload())
            .env("PAGEMIG_RUN_DIR", dir.path())
            .env("GLIBC_TUNABLES", tunables);
        let (mut child, mut lines) = spawn_until_ready(&mut cmd, &what);
        let st = Command::new(pagemig())
            .args(["ctl", &child.id().to_string(), "stat", "--json", "-"])
            .env("PAGEMIG_RUN_DIR", dir.path())
            .output()
            .unwrap();
        assert!(st.status.success(), "{what}: {}", text(&st.stderr));
        let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
        let folios = |source: &str| -> Vec<u64> {
            v["regions"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| {
                    let len = r["end"].as_u64().unwrap() - r["start"].as_u64().unwrap();
                    len >= 64 << 20 && r["source"] == source
                })
                .map(|r| r["folio_bytes"].as_u64().unwrap())
                .collect()
        };
        for (source, huge) in [("malloc", malloc_huge), ("mmap", mmap_huge)] {
            let got = folios(source);
            let want = if huge { 2 << 20 } else { 4096 };
            assert!(
                !got.is_empty() && got.iter().all(|&f| f == want),
                "{what}: the {source} region's folios: {got:?}, not {want}: {v}"
            );
        }
        // Where the advice changed the folio size, the region was remade; where it came
        // too late to, that is counted.
        let c = &v["counters"];
        let auto = !opts.iter().any(|o| *o == "--thp" || *o == "--thp=never");
        let remade = auto && own == "on" && mmap_huge != always;
        let nr_remade = match (remade, adv) {
            (false, _) => 0,
            (true, "huge") => 2,
            (true, _) => 1,
        };
        assert_eq!(c["regions_remade"], nr_remade, "{what}: {c}");
        assert_eq!(
            v["untiered"]["detached_regions"], 0,
            "{what}: {}",
            v["untiered"]
        );
        let late = auto && adv == "late" && advised && !always;
        assert_eq!(c["thp_advice_not_followed"], u64::from(late), "{what}: {c}");
        // The human form says it too.
        let human = Command::new(pagemig())
            .args(["ctl", &child.id().to_string(), "stat"])
            .env("PAGEMIG_RUN_DIR", dir.path())
            .output()
            .unwrap();
        let shown = if malloc_huge {
            "2M folios"
        } else {
            "4K folios"
        };
        assert!(
            text(&human.stdout).contains(shown),
            "{what}: {}",
            text(&human.stdout)
        );
        child.stdin.take().unwrap().write_all(b"\n").unwrap();
        let sum = lines.next().unwrap().unwrap();
        assert_eq!(sum, expect_sum, "{what}");
        assert!(child.wait().unwrap().success(), "{what}");
    }
    let bad = Command::new(pagemig())
        .args(["run", "--thp=sometimes", "--", "true"])
        .env("PAGEMIG_PRELOAD", preload())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(text(&bad.stderr).contains("--thp"), "{}", text(&bad.stderr));
}

#[test]
fn ctl_shows_moves_and_refuses_what_is_wrong() {
    let _s = serial();
    need("python3", "python3");
    let dir = tempfile::tempdir().unwrap();
    // A program that fills 64 MiB, says so, and waits for a line on stdin.
    let prog = "import sys\nb = bytearray(64 << 20)\nfor i in range(0, len(b), 4096): b[i] = i % 251\nprint('ready', flush=True)\nsys.stdin.readline()\nprint(sum(b[::4096]))";
    let mut cmd = tiered(dir.path(), &[], &["python3", "-c", prog]);
    let (mut child, mut lines) = spawn_until_ready(&mut cmd, "python3");
    let pid = child.id().to_string();
    let ctl = |args: &[&str]| {
        Command::new(pagemig())
            .args(args)
            .env("PAGEMIG_RUN_DIR", dir.path())
            .output()
            .unwrap()
    };
    let st = ctl(&["ctl", &pid, "stat", "--json", "-"]);
    assert!(st.status.success(), "{}", text(&st.stderr));
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    let n0 = v["nodes"][0]["pages"].as_u64().unwrap();
    assert!(n0 >= 16384, "{v}");
    assert_eq!(v["nodes"][1]["pages"].as_u64(), Some(0));
    let mv = ctl(&[
        "ctl", &pid, "move", "--to", "1", "--engine", "mtcopy:2", "--json", "-",
    ]);
    assert!(mv.status.success(), "{}", text(&mv.stderr));
    let r: serde_json::Value = serde_json::from_slice(&mv.stdout).unwrap();
    assert_eq!(r["pages_migrated"].as_u64(), Some(n0), "{r}");
    let st = ctl(&["ctl", &pid, "stat", "--json", "-"]);
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(v["nodes"][0]["pages"].as_u64(), Some(0), "{v}");
    assert_eq!(v["engine"].as_str(), Some("mtcopy:2"));
    // numactl's form, back.
    let mp = ctl(&["migratepages", &pid, "1", "0"]);
    assert!(mp.status.success(), "{}", text(&mp.stderr));
    assert!(
        text(&mp.stdout).contains(&format!("migrated {n0} pages")),
        "{}",
        text(&mp.stdout)
    );
    // Smaller batches (`--batch-pages`), then the pipeline: there and back with each, and
    // the live backend's calls counted. Batches of 16 pages are unmapped on their own (one
    // unmap call at least per 16 pages, where 512-page batches of contiguous memory need
    // one per 512); pipelined batches move back into the program in sub-batches of at most
    // 64 pages (one remap call at least per 64 pages, one per 512 without the pipeline).
    let counter = |key: &str| {
        let st = ctl(&["ctl", &pid, "stat", "--json", "-"]);
        let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
        v["live"][key].as_u64().unwrap()
    };
    for (opts, key, per) in [
        (&["--batch-pages", "16"][..], "unmap_ioctls", 16),
        (&["--pipeline"][..], "remap_ioctls", 64),
    ] {
        for to in ["1", "0"] {
            let before = counter(key);
            let mut args = vec!["ctl", &pid, "move", "--to", to];
            args.extend(opts);
            args.extend(["--json", "-"]);
            let mv = ctl(&args);
            assert!(mv.status.success(), "{opts:?}: {}", text(&mv.stderr));
            let r: serde_json::Value = serde_json::from_slice(&mv.stdout).unwrap();
            assert_eq!(r["pages_migrated"].as_u64(), Some(n0), "{opts:?}: {r}");
            let calls = counter(key) - before;
            assert!(calls >= n0 / per, "{opts:?}: {calls} {key} for {n0} pages");
        }
    }
    // Bad requests: a clear error, a non-zero exit, nothing moved.
    for (args, msg) in [
        (vec!["ctl", &pid, "move", "--to", "7"], "no node 7"),
        (
            vec!["ctl", &pid, "move", "--to", "1", "--engine", "turbo"],
            "engine",
        ),
        (
            vec!["ctl", &pid, "move", "--to", "1", "--range", "0x2000-0x1000"],
            "START must be below END",
        ),
        (
            vec!["ctl", &pid, "move", "--to", "1", "--batch-pages", "0"],
            "1 to 512",
        ),
        (vec!["ctl", "1", "stat"], "no control socket"),
        (
            vec!["migratepages", &pid, "0,1", "0-2"],
            "give one destination or as many",
        ),
    ] {
        let o = ctl(&args);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(
            text(&o.stderr).contains(msg),
            "{args:?}: {}",
            text(&o.stderr)
        );
    }
    let st = ctl(&["ctl", &pid, "stat"]);
    let human = text(&st.stdout);
    assert!(
        human.contains("two pools of one physical node") || !human.contains("host  pool"),
        "{human}"
    );
    // Per region, like numa_maps: the regions' N0= add up to node 0's pages (the array,
    // and the interpreter's own arenas of 1 MiB, mapped with mmap).
    let per_region: u64 = human
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("N0=")?.parse::<u64>().ok())
        .sum();
    assert_eq!(per_region, n0, "{human}");
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(b"\n").unwrap();
    let sum: u64 = (0..(64usize << 20))
        .step_by(4096)
        .map(|i| (i % 251) as u64)
        .sum();
    assert_eq!(lines.next().unwrap().unwrap(), sum.to_string());
    assert!(child.wait().unwrap().success());
}

/// Compiles `tests/programs/NAME.c` with the system `cc` into `dir`; its path.
fn compile(dir: &Path, name: &str, libs: &[&str]) -> PathBuf {
    let exe = dir.join(name);
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/programs/{name}.c"));
    let cc = Command::new("cc")
        .args(["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&exe)
        .arg(&src)
        .args(libs)
        .output()
        .unwrap();
    assert!(cc.status.success(), "cc {name}.c: {}", text(&cc.stderr));
    exe
}

/// What a program may do with its memory (realloc, calloc, `MADV_DONTNEED`/`MADV_FREE`,
/// partial `munmap`, `mremap`, `mprotect`, system calls into it, threads, `fork`), checked
/// by a C program of our own (tests/programs/semantics.c) that verifies every byte, plainly
/// and under `pagemig run` while its memory moves.
#[test]
fn a_program_s_own_checks_of_every_memory_call_pass_while_its_memory_moves() {
    let _s = serial();
    need("cc", "gcc");
    let dir = tempfile::tempdir().unwrap();
    let exe = compile(dir.path(), "semantics", &["-lpthread"]);
    let exe_s = exe.to_str().unwrap();
    let plain = Command::new(exe_s).arg("4").output().unwrap();
    assert!(plain.status.success(), "{}", text(&plain.stdout));
    let sock = tempfile::tempdir().unwrap();
    let (out, moved) = run_while_moving(sock.path(), &mut tiered(sock.path(), &[], &[exe_s, "4"]));
    assert_same(&plain, &out, &moved, "semantics.c");
}

/// `cmd`'s output, or `None` (the program killed) if it has not ended within `limit`. Its
/// pipes are drained while it runs, so a program that writes more than a pipe holds
/// (redis-benchmark's progress lines) is not held up by them.
fn output_within(cmd: &mut Command, limit: Duration) -> Option<Output> {
    use std::io::Read as _;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the program");
    let drain = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let until = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if std::time::Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Some(Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    })
}

#[test]
fn regions_of_base_pages_in_thp_pools_are_first_touched_64_folios_at_a_time_and_none_is_lost() {
    // With `--thp` the pools are THP-advised, so a first touch of a 1.5 MiB region moves
    // base pages out of an arena THP and splits it; its zero-filled pages become the zero
    // page, which the backend makes real again while the woken program writes the pages
    // around them. There the kernel was seen to report a page it had moved as not moved
    // (`EEXIST`); taken at its word, that page's address stayed empty and the program hung
    // on it, in about two runs of three of this program.
    let _s = serial();
    need("cc", "gcc");
    let dir = tempfile::tempdir().unwrap();
    let exe = compile(dir.path(), "blocks", &[]);
    let exe_s = exe.to_str().unwrap();
    let args = [exe_s, "64", "30"];
    let plain = Command::new(exe_s).args(&args[1..]).output().unwrap();
    assert!(plain.status.success(), "{}", text(&plain.stdout));
    for run in 0..3 {
        let sock = tempfile::tempdir().unwrap();
        let stop = AtomicBool::new(false);
        let (out, moved) = std::thread::scope(|s| {
            let h = s.spawn(|| mover(sock.path(), &stop));
            let _stop = StopOnDrop(&stop);
            let mut cmd = tiered(sock.path(), &["--thp"], &args);
            let out = output_within(&mut cmd, Duration::from_secs(60));
            stop.store(true, Ordering::Release);
            (out, h.join().unwrap())
        });
        let out = out.unwrap_or_else(|| panic!("run {run}: still running after 60 s ({moved:?})"));
        assert_same(&plain, &out, &moved, &format!("blocks.c, run {run}"));
        assert!(
            !text(&out.stderr).contains("fix-up failed"),
            "run {run}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn run_bench_runs_the_workload_three_ways_with_the_page_size_and_engine_asked_for() {
    let _s = serial();
    let workload = env!("CARGO_BIN_EXE_pagemig-workload");
    let bench = |opts: &[&str]| {
        Command::new(pagemig())
            .arg("run-bench")
            .args(opts)
            .args([
                "--json",
                "-",
                "--",
                workload,
                "--mib",
                "16",
                "--seconds",
                "1",
            ])
            .env("PAGEMIG_PRELOAD", preload())
            .output()
            .unwrap()
    };
    for (bad, says) in [
        (&["--engine", "warp:9"][..], "--engine"),
        (&["--rate", "0"][..], "--rate"),
        (&["--batch-pages", "0"][..], "--batch-pages"),
        (&["--pool", "3M"][..], "--pool"),
        (&["--runs", "0"][..], "--runs"),
    ] {
        let out = bench(bad);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{bad:?} was accepted");
        assert!(
            err.contains(says) && !err.contains("panicked"),
            "{bad:?}: {err}"
        );
    }
    for (opts, folio, engine) in [
        (
            &["--thp", "--engine", "mtcopy:2"][..],
            2u64 << 20,
            "mtcopy:2",
        ),
        (&[][..], 4096, "batch"),
    ] {
        let mut all = vec!["--runs", "1", "--rate", "300", "--pool", "64M"];
        all.extend_from_slice(opts);
        let out = bench(&all);
        assert!(out.status.success(), "{opts:?}: {}", text(&out.stderr));
        let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(rep["thp"], opts.contains(&"--thp"), "{rep}");
        assert_eq!(rep["engine"], engine, "{rep}");
        let samples = rep["samples"].as_array().unwrap();
        let configs: Vec<&str> = samples
            .iter()
            .map(|s| s["config"].as_str().unwrap())
            .collect();
        assert_eq!(configs, ["plain", "tiered", "moving"]);
        // The workload's own account of its thread, where the kernel keeps schedstat
        // (CONFIG_SCHED_INFO; where it does not, the fields are absent, not made up).
        let schedstat = std::path::Path::new("/proc/thread-self/schedstat").exists();
        let steal = pagemig::sys::CpuTimes::now().is_some();
        for s in samples {
            assert!(s["throughput"].as_f64().unwrap() > 0.0, "{s}");
            assert_eq!(
                s["cpu_steal"]
                    .as_f64()
                    .is_some_and(|f| (0.0..=1.0).contains(&f)),
                steal,
                "{s}"
            );
            if schedstat {
                let on = s["on_cpu"].as_f64().unwrap();
                assert!(on > 0.0 && on <= 1.05, "{s}");
            } else {
                assert!(
                    s["on_cpu"].is_null() && s["switches_per_s"].is_null(),
                    "{s}"
                );
            }
            assert!(s["sleeps_per_s"].as_f64().is_some_and(|v| v >= 0.0), "{s}");
        }
        let moving = &samples[2];
        // Moving 2 MiB at a time under a thread that touches all of 32 MiB at random puts
        // it to sleep on a page under migration, batch after batch; plainly it hardly
        // sleeps. Its sleeps, not its switches-in: those count preemptions too, and with
        // the other tests running on two CPUs the plain run was switched in 270 times a
        // second, the moving one 239.
        let sl = |s: &serde_json::Value| s["sleeps_per_s"].as_f64().unwrap();
        assert!(sl(moving) > sl(&samples[0]) + 20.0, "{samples:?}");
        // What the program under `pagemig run` had: the engine and page size asked for.
        assert_eq!(moving["engine"], engine, "{moving}");
        assert_eq!(moving["largest_folio_bytes"], folio, "{moving}");
        assert!(moving["pages_migrated"].as_u64().unwrap() > 0, "{moving}");
        assert_eq!(samples[1]["pages_migrated"], 0, "{}", samples[1]);
    }
}
