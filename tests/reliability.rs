//! Production hardening: faults, hostile input, thread churn, panics, shutdown, coexistence.
//!
//! The runtime is process-wide, so every case runs in a child process of this test binary
//! (`child_*` functions do nothing unless the parent started them), with real threads, real
//! signals and real files read back. The parent kills a child that does not finish in time and
//! fails, so a deadlock is a failure, not a hang. Slow cases are `#[ignore]`d: `.ci/run` runs
//! the 60 s signal-safety stress with `--ignored`; the 10-minute soak is run by hand:
//! `cargo test --all-features --test reliability -- --ignored soak --nocapture`
//! (`THREADPROF_SOAK_SECS` shortens or lengthens it).
#![cfg(all(feature = "enabled", target_os = "linux"))]

mod common;

use std::collections::BTreeSet;
use std::hint::black_box;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use threadprof::pprof::Profile;
use threadprof::profiled_thread;

const CHILD: &str = "THREADPROF_RELIABILITY_CHILD";
const ROOT: &str = "THREADPROF_RELIABILITY_ROOT";

// ------------------------------------------------------------------ harness

fn is_child(name: &str) -> bool {
    std::env::var(CHILD).as_deref() == Ok(name)
}

fn root() -> PathBuf {
    PathBuf::from(std::env::var(ROOT).expect("child root"))
}

/// Runs `child_{name}` in a child process with `root` as its scratch directory; fails if it
/// exits unsuccessfully, does not print "CHILD OK", or runs longer than `limit` (then it is
/// killed: a deadlock).
fn run_child(name: &str, root: &Path, env: &[(&str, &str)], limit: Duration) -> Output {
    let out = run_child_unchecked(name, root, env, limit);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && stdout.contains("CHILD OK"),
        "child_{name} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    out
}

/// [`run_child`] without the checks of its outcome (only the time limit).
fn run_child_unchecked(name: &str, root: &Path, env: &[(&str, &str)], limit: Duration) -> Output {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        &format!("child_{name}"),
        "--nocapture",
        "--test-threads=1",
        "--include-ignored",
    ])
    .env(CHILD, name)
    .env(ROOT, root)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    for var in [
        "THREADPROF_ENABLED",
        "THREADPROF_DIR",
        "THREADPROF_FREQUENCY",
        "THREADPROF_DUMP_INTERVAL",
        "THREADPROF_WALL_FREQUENCY",
        "THREADPROF_HTTP_ADDR",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("spawn child");
    let pid = child.id() as libc::pid_t;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(limit) {
        Ok(out) => out.expect("wait for child"),
        Err(_) => {
            // SAFETY: kill has no memory-safety preconditions; pid is our child's.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("child_{name} did not finish within {limit:?}: deadlock or hang");
        }
    };
    out
}

/// A logger that keeps every warning and error, so a child can count them.
struct Capture;

static LOGGED: Mutex<Vec<(log::Level, String)>> = Mutex::new(Vec::new());

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            let line = r.args().to_string();
            eprintln!("[{}] {line}", r.level());
            LOGGED.lock().unwrap().push((r.level(), line));
        }
    }
    fn flush(&self) {}
}

fn capture_logs() {
    log::set_logger(&Capture).expect("logger");
    log::set_max_level(log::LevelFilter::Warn);
}

/// How many captured messages at `level` contain `needle`.
fn logged(level: log::Level, needle: &str) -> usize {
    LOGGED
        .lock()
        .unwrap()
        .iter()
        .filter(|(l, m)| *l == level && m.contains(needle))
        .count()
}

/// The text from `marker` to the end of the first line holding it (libtest may print
/// `test name ... ` before a child's own output on the same line).
fn marked_line(out: &Output, marker: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find_map(|l| l.find(marker).map(|i| l[i..].to_owned()))
        .unwrap_or_else(|| panic!("no {marker:?} line in:\n{stdout}"))
}

/// POSIX timers the process holds, from the kernel's own list.
fn posix_timers() -> usize {
    std::fs::read_to_string("/proc/self/timers")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("ID:"))
        .count()
}

fn samples_total(p: &Profile) -> u64 {
    total(p, "samples") as u64
}

/// Every sample the handler recorded is in `p` (all registered threads have ended).
fn assert_has_every_sample(p: &Profile, what: &str) {
    let stats = threadprof::stats();
    assert_eq!(
        samples_total(p),
        stats.samples,
        "{what}: the profile lacks samples the handler recorded ({stats:?})"
    );
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn temp_files(dir: &Path) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".tmp-"))
        .collect()
}

/// A registered thread that runs `work` (then sleeps `pause`) in a loop until `stop` is set.
fn spawn_busy(
    tag: &str,
    work: fn(u64) -> u64,
    rounds: u64,
    pause: Duration,
    stop: &Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let stop = stop.clone();
    threadprof::spawn(tag, move || {
        while !stop.load(Ordering::Relaxed) {
            black_box(work(rounds));
            if !pause.is_zero() {
                std::thread::sleep(pause);
            }
        }
    })
}

/// The value of environment variable `key`, or `default` if unset or unparsable.
fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Starts the runtime writing to `dir`.
fn start_profiler(dir: &Path, every: Duration, cpu_hz: u32, wall_hz: u32) -> threadprof::Profiler {
    threadprof::Profiler::builder()
        .output_dir(dir)
        .dump_interval(every)
        .frequency(cpu_hz)
        .wall_frequency(wall_hz)
        .start()
        .expect("start")
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

busy_fn!(faulty_work, 1u64);
busy_fn!(reader_a_work, 2u64);
busy_fn!(reader_b_work, 3u64);
busy_fn!(hostile_work, 4u64);
busy_fn!(doomed_work, 5u64);
busy_fn!(after_panic_work, 6u64);
busy_fn!(churn_work, 7u64);
busy_fn!(soak_a_work, 8u64);
busy_fn!(soak_b_work, 9u64);
busy_fn!(shutdown_work, 10u64);
busy_fn!(coexist_work, 11u64);

// ------------------------------------------------------------------ 1. output faults

#[test]
fn child_output_faults() {
    if !is_child("output_faults") {
        return;
    }
    capture_logs();
    let root = root();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        // Root writes through any permission bits: become `nobody` so that they apply.
        chmod(&root, 0o777);
        // SAFETY: plain credential syscalls; glibc applies them to every thread.
        unsafe {
            assert_eq!(libc::setgroups(0, std::ptr::null()), 0);
            assert_eq!(libc::setgid(65534), 0);
            assert_eq!(libc::setuid(65534), 0);
        }
    }
    let dir = root.join("missing/nested/profiles");
    let _p = start_profiler(&dir, Duration::from_secs(3600), 999, 0);
    let file = dir.join("faulty.pb.gz");
    let phase = || {
        threadprof::spawn("faulty", || {
            burn_for(Duration::from_millis(150), faulty_work)
        })
        .join()
        .unwrap();
        assert!(threadprof::flush(), "flush");
    };
    let write_errors = || logged(log::Level::Error, "cannot write");

    // Missing directory: created at the first dump.
    phase();
    assert!(dir.is_dir(), "output directory created");
    assert_has_every_sample(&read_profile(&file), "first dump");
    println!("missing directory: created");

    // Not writable: one error per failed dump, the last good file intact, sampling goes on.
    let good = std::fs::read(&file).unwrap();
    chmod(&dir, 0o555);
    let (failed0, errors0) = (threadprof::stats().failed_dumps, write_errors());
    phase();
    phase();
    assert_eq!(
        threadprof::stats().failed_dumps - failed0,
        2,
        "two failed dumps"
    );
    assert_eq!(write_errors() - errors0, 2, "one error per failed dump");
    assert_eq!(std::fs::read(&file).unwrap(), good, "earlier file intact");
    assert!(temp_files(&root).is_empty(), "no temporary files left");
    chmod(&dir, 0o755);
    phase();
    assert_has_every_sample(&read_profile(&file), "after the directory became writable");
    println!("not writable: errors logged, next good dump complete");

    // Removed while running: recreated, with everything.
    std::fs::remove_dir_all(&dir).unwrap();
    phase();
    assert_has_every_sample(&read_profile(&file), "after removal");
    println!("removed: recreated");

    // Full disk: RLIMIT_FSIZE makes every write past 64 bytes fail (EFBIG), as a full disk
    // fails writes with ENOSPC: same code path, no mount needed.
    let good = std::fs::read(&file).unwrap();
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we own; SIGXFSZ is ignored so the
    // failed write returns EFBIG instead of killing the process.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        assert_eq!(libc::getrlimit(libc::RLIMIT_FSIZE, &mut lim), 0);
        let small = libc::rlimit {
            rlim_cur: 64,
            rlim_max: lim.rlim_max,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &small), 0);
    }
    let (failed0, errors0) = (threadprof::stats().failed_dumps, write_errors());
    phase();
    assert_eq!(
        threadprof::stats().failed_dumps - failed0,
        1,
        "the dump failed"
    );
    assert_eq!(write_errors() - errors0, 1, "one error");
    assert_eq!(std::fs::read(&file).unwrap(), good, "earlier file intact");
    assert!(temp_files(&root).is_empty(), "no temporary files left");
    // SAFETY: restores the limit read above.
    unsafe { assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &lim), 0) };
    phase();
    assert_has_every_sample(&read_profile(&file), "after the disk had room again");
    println!("full disk: errors logged, next good dump complete");
    println!("CHILD OK");
}

#[test]
fn output_faults_are_logged_and_lose_nothing() {
    let root = tempfile::tempdir().unwrap();
    run_child("output_faults", root.path(), &[], Duration::from_secs(120));
}

// ------------------------------------------------------------------ 2. atomic files

#[test]
fn child_atomic_files() {
    if !is_child("atomic_files") {
        return;
    }
    let dir = root();
    let seconds: f64 = env_or("CHILD_SECONDS", 10.0);
    let _p = start_profiler(&dir, Duration::from_millis(100), 999, 0);
    let stop = Arc::new(AtomicBool::new(false));
    let burners = [
        spawn_busy("reader_a", reader_a_work, 50_000, Duration::ZERO, &stop),
        spawn_busy("reader_b", reader_b_work, 50_000, Duration::ZERO, &stop),
    ];
    let (mut decoded, mut failures) = (0u64, Vec::new());
    let dumps0 = threadprof::stats().dumps;
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    while Instant::now() < until {
        for path in files_under(&dir) {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if !name.ends_with(".pb.gz") {
                continue;
            }
            let result = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| threadprof::pprof::decode_gz(&b).map_err(|e| e.to_string()));
            match result {
                Ok(p) if samples_total(&p) > 0 => decoded += 1,
                Ok(_) => failures.push(format!("{name}: empty profile")),
                Err(e) => failures.push(format!("{name}: {e}")),
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    stop.store(true, Ordering::Relaxed);
    for b in burners {
        b.join().unwrap();
    }
    let dumps = threadprof::stats().dumps - dumps0;
    println!(
        "ATOMIC decoded={decoded} failures={} dumps={dumps}",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "partial or bad files seen: {failures:?}"
    );
    assert!(
        dumps as f64 >= seconds * 5.0,
        "only {dumps} dumps in {seconds} s"
    );
    assert!(decoded as f64 >= seconds * 20.0, "only {decoded} reads");
    threadprof::shutdown();
    assert!(
        temp_files(&dir).is_empty(),
        "temporary files left after shutdown"
    );
    println!("CHILD OK");
}

#[test]
fn a_reader_never_sees_a_partial_file() {
    let root = tempfile::tempdir().unwrap();
    let out = run_child("atomic_files", root.path(), &[], Duration::from_secs(120));
    println!("{}", marked_line(&out, "ATOMIC"));
}

// ------------------------------------------------------------------ 3. hostile tags

/// Tags a program might build at run time, some of them hostile.
fn hostile_tags() -> Vec<String> {
    vec![
        "../../etc/passwd".into(),
        "/abs".into(),
        "a/b".into(),
        "..".into(),
        ".".into(),
        String::new(),
        "x".repeat(10_000),
        "nul\0byte".into(),
        "ünïcødé-ταγ-标签".into(),
        "_merged".into(),
        "-rf".into(),
        "tab\tnewline\n".into(),
        "C:\\windows\\system32".into(),
    ]
}

#[test]
fn child_hostile_tags() {
    if !is_child("hostile_tags") {
        return;
    }
    capture_logs();
    let out = root().join("out");
    let _p = start_profiler(&out, Duration::from_secs(3600), 999, 0);
    for (i, tag) in hostile_tags().into_iter().enumerate() {
        // Threads run one at a time: burn until this thread has a sample (the process-wide
        // count grew), so that every tag has a file to check.
        let work = || {
            let (before, start) = (threadprof::stats().samples, Instant::now());
            while threadprof::stats().samples == before && start.elapsed() < Duration::from_secs(5)
            {
                burn_for(Duration::from_millis(10), hostile_work);
            }
        };
        match i % 3 {
            0 => threadprof::spawn(&tag, work).join().unwrap(),
            1 => std::thread::spawn(move || threadprof::run(&tag, work))
                .join()
                .unwrap(),
            _ => std::thread::spawn(move || {
                let _g = threadprof::enter(&tag);
                work()
            })
            .join()
            .unwrap(),
        }
    }
    assert!(threadprof::flush());
    // Nothing was written anywhere but the output directory, and only plain file names.
    for f in files_under(&root()) {
        assert_eq!(
            f.parent(),
            Some(out.as_path()),
            "file outside the output dir: {f:?}"
        );
        let name = f.file_name().unwrap().to_str().expect("UTF-8 file name");
        let stem = name.strip_suffix(".pb.gz").expect("a .pb.gz file");
        assert!(
            stem == "_merged" || threadprof_runtime::tag::is_safe(stem),
            "unsafe file name {name:?}"
        );
    }
    let merged = read_profile(&out.join(threadprof::MERGED_FILE));
    assert_has_every_sample(&merged, "merged");
    let names: BTreeSet<String> = files_under(&out)
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    println!("FILES {names:?}");
    for want in [
        "etc_passwd.pb.gz",
        "abs.pb.gz",
        "a_b.pb.gz",
        "untagged.pb.gz",
        "merged.pb.gz",
    ] {
        assert!(names.contains(want), "{want} missing from {names:?}");
    }
    let warned = logged(log::Level::Warn, "is not a safe file name");
    assert_eq!(warned, hostile_tags().len(), "one warning per hostile tag");
    println!("CHILD OK");
}

#[test]
fn hostile_tags_never_write_outside_the_output_directory() {
    let root = tempfile::tempdir().unwrap();
    run_child("hostile_tags", root.path(), &[], Duration::from_secs(60));
}

// ------------------------------------------------------------------ 4. panics

#[derive(Debug, PartialEq)]
struct Payload(u32);

#[profiled_thread(tag = "doomed_attr")]
fn doomed_attr() -> u64 {
    let x = burn_for(Duration::from_millis(100), doomed_work);
    if black_box(true) {
        panic!("doomed by design");
    }
    x
}

#[test]
fn child_panics() {
    if !is_child("panics") {
        return;
    }
    capture_logs();
    let dir = root();
    let _p = start_profiler(&dir, Duration::from_millis(200), 999, 0);
    // A registered thread that panics: the payload comes back unchanged.
    let err = threadprof::spawn("doomed", || {
        burn_for(Duration::from_millis(150), doomed_work);
        std::panic::panic_any(Payload(42));
    })
    .join()
    .unwrap_err();
    assert_eq!(err.downcast_ref::<Payload>(), Some(&Payload(42)));
    let err = std::thread::spawn(doomed_attr).join().unwrap_err();
    assert_eq!(err.downcast_ref::<&str>(), Some(&"doomed by design"));
    assert!(threadprof::live_threads().is_empty(), "unregistered");
    assert!(threadprof::flush());
    for tag in ["doomed", "doomed_attr"] {
        let p = read_profile(&dir.join(format!("{tag}.pb.gz")));
        assert!(
            cpu_by_function(&p, "doomed_work").values().sum::<i64>() > 0,
            "{tag} kept its samples"
        );
    }
    assert_has_every_sample(&read_profile(&dir.join(threadprof::MERGED_FILE)), "merged");

    // A panic inside the profiler's own dump path: logged, and dumps go on.
    threadprof_runtime::__inject_dump_panic();
    let deadline = Instant::now() + Duration::from_secs(10);
    while logged(log::Level::Error, "internal error in the profiler") == 0 {
        assert!(Instant::now() < deadline, "injected panic never reported");
        std::thread::sleep(Duration::from_millis(20));
    }
    let dumps = threadprof::stats().dumps;
    threadprof::spawn("after_panic", || {
        burn_for(Duration::from_millis(150), after_panic_work)
    })
    .join()
    .unwrap();
    while threadprof::stats().dumps < dumps + 2 {
        assert!(
            Instant::now() < deadline,
            "periodic dumps stopped after the panic"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(threadprof::flush());
    let p = read_profile(&dir.join("after_panic.pb.gz"));
    assert!(
        cpu_by_function(&p, "after_panic_work")
            .values()
            .sum::<i64>()
            > 0
    );
    assert_has_every_sample(
        &read_profile(&dir.join(threadprof::MERGED_FILE)),
        "after panic",
    );
    println!("CHILD OK");
}

#[test]
fn panics_propagate_unchanged_and_never_stop_the_profiler() {
    let root = tempfile::tempdir().unwrap();
    run_child("panics", root.path(), &[], Duration::from_secs(60));
}

// ------------------------------------------------------------------ 5. thread churn

#[profiled_thread(tag = "churn_attr")]
fn churn_attr(long: bool) -> i64 {
    churn_body(long)
}

fn churn_body(long: bool) -> i64 {
    if long {
        burn_for(Duration::from_millis(40), churn_work);
    } else {
        black_box(churn_work(2_000));
    }
    gettid()
}

#[test]
fn child_churn() {
    if !is_child("churn") {
        return;
    }
    let threads: usize = env_or("THREADS", 20_000);
    let dir = root();
    let _p = start_profiler(&dir, Duration::from_secs(3600), 999, 0);
    // Every 100th thread burns 40 ms of CPU (ten kernel ticks), enough to be sampled for sure;
    // CPU timers fire on kernel ticks, so a thread that lives a few ms may get no sample.
    let run = |range: std::ops::Range<usize>| -> Vec<i64> {
        let mut long_tids = Vec::new();
        for chunk in range.collect::<Vec<_>>().chunks(4) {
            let handles: Vec<_> = chunk
                .iter()
                .map(|&i| {
                    let long = i % 100 == 0;
                    let tag = format!("churn-{}", i % 50);
                    let h = match i % 3 {
                        0 => threadprof::spawn(&tag, move || churn_body(long)),
                        1 => std::thread::spawn(move || churn_attr(long)),
                        _ => std::thread::spawn(move || {
                            let _g = threadprof::enter(&tag);
                            churn_body(long)
                        }),
                    };
                    (long, h)
                })
                .collect();
            for (long, h) in handles {
                let tid = h.join().unwrap();
                if long {
                    long_tids.push(tid);
                }
            }
        }
        long_tids
    };
    run(0..500); // warm-up: tags interned, allocator pools and symbol cache filled
    assert!(threadprof::flush());
    let (rss0, timers0) = (rss_kib(), posix_timers());
    let started = Instant::now();
    let long_tids = run(500..500 + threads);
    let secs = started.elapsed().as_secs_f64();
    assert!(threadprof::flush());
    let (rss1, timers1, live) = (rss_kib(), posix_timers(), threadprof::stats().live_threads);
    println!(
        "CHURN threads={threads} secs={secs:.1} rss_before_kib={rss0} rss_after_kib={rss1} \
         timers_before={timers0} timers_after={timers1} live_after={live}"
    );
    assert_eq!(live, 0, "registry back to empty");
    assert!(threadprof::live_threads().is_empty());
    assert_eq!(timers1, timers0, "every timer deleted");
    assert_eq!(timers1, 0, "no timer left at all");
    assert!(
        rss1 < rss0 + 16 * 1024,
        "RSS grew from {rss0} KiB to {rss1} KiB over {threads} threads"
    );
    let merged = read_profile(&dir.join(threadprof::MERGED_FILE));
    assert_has_every_sample(&merged, "merged");
    let tid_i = |s: &threadprof::pprof::Sample| {
        s.label
            .iter()
            .find(|l| merged.string(l.key) == "thread_id")
            .map(|l| l.num)
    };
    let seen: BTreeSet<i64> = merged.sample.iter().filter_map(tid_i).collect();
    // Every sample the handler recorded is in the dump (checked exactly above). Which threads
    // got a sample at all is up to the kernel: CPU timers are checked on ticks, and on this VM
    // about 1 in 200 threads that burn 20 ms in 4-way contention got none, and 11-13 of 200
    // while other cases of this binary ran beside it (2026-11-28): they burn 40 ms now, and
    // nearly all must be there.
    let missing = long_tids.iter().filter(|t| !seen.contains(t)).count();
    println!("LONG threads={} unsampled={missing}", long_tids.len());
    assert!(
        missing * 20 <= long_tids.len(),
        "{missing} of {} CPU-burning threads missing from the dump",
        long_tids.len()
    );
    println!("CHILD OK");
}

#[test]
fn twenty_thousand_short_threads_leave_nothing_behind() {
    let root = tempfile::tempdir().unwrap();
    let out = run_child("churn", root.path(), &[], Duration::from_secs(300));
    println!("{}", marked_line(&out, "CHURN"));
    println!("{}", marked_line(&out, "LONG"));
}

// ------------------------------------------------------------------ 6. signal safety

#[inline(never)]
fn stress_alloc(i: u64) -> usize {
    let mut v: Vec<String> = (0..64).map(|k| format!("item-{i}-{k}")).collect();
    v.sort();
    let map: std::collections::BTreeMap<_, _> = v.iter().enumerate().collect();
    black_box(map.len() + v.iter().map(String::len).sum::<usize>())
}

#[inline(never)]
fn stress_dlopen() -> f64 {
    // SAFETY: dlopen/dlsym/dlclose of the system math library, calling `cos` with its C
    // signature; the handle is closed after use and the pointer not kept.
    unsafe {
        let lib = libc::dlopen(c"libm.so.6".as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
        assert!(!lib.is_null(), "dlopen libm");
        let sym = libc::dlsym(lib, c"cos".as_ptr());
        assert!(!sym.is_null(), "dlsym cos");
        let cos: extern "C" fn(f64) -> f64 = std::mem::transmute(sym);
        let x = cos(black_box(0.5));
        libc::dlclose(lib);
        x
    }
}

#[inline(never)]
fn stress_panic(i: u64) -> bool {
    std::panic::catch_unwind(|| {
        if black_box(i) < u64::MAX {
            std::panic::panic_any("stress-panic");
        }
    })
    .is_err()
}

#[inline(never)]
fn stress_spawn(i: u64) -> u64 {
    threadprof::spawn(&format!("stress-child-{}", i % 4), move || {
        black_box(churn_work(1_000 + i % 100))
    })
    .join()
    .unwrap()
}

#[test]
fn child_signal_stress() {
    if !is_child("signal_stress") {
        return;
    }
    let seconds: f64 = std::env::var("CHILD_SECONDS").unwrap().parse().unwrap();
    let dir = root();
    let _p = start_profiler(&dir, Duration::from_millis(500), 999, 999);
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info.payload().downcast_ref::<&str>() != Some(&"stress-panic") {
            default_hook(info);
        }
    }));
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let counts: Vec<Arc<AtomicU64>> = (0..5).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let workers: Vec<_> = counts
        .iter()
        .enumerate()
        .map(|(w, count)| {
            let count = count.clone();
            threadprof::spawn(&format!("stress-{w}"), move || {
                let mut i = 0u64;
                while Instant::now() < until {
                    match w {
                        0 => drop(black_box(stress_alloc(i))),
                        1 => drop(black_box(stress_dlopen())),
                        2 => assert!(stress_panic(i)),
                        3 => drop(black_box(format!("{i:>12} {:?} {:e}", [i; 3], i as f64))),
                        _ => drop(black_box(stress_spawn(i))),
                    }
                    i += 1;
                    count.store(i, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    assert!(threadprof::flush());
    let merged = read_profile(&dir.join(threadprof::MERGED_FILE));
    assert_has_every_sample(&merged, "merged");
    let done: Vec<u64> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    println!(
        "STRESS seconds={seconds} iterations={done:?} samples={} dropped={}",
        threadprof::stats().samples,
        threadprof::stats().dropped
    );
    assert!(done.iter().all(|&n| n > 0), "a worker made no progress");
    for f in ["stress_alloc", "stress_panic", "stress_spawn"] {
        assert!(
            merged
                .sample
                .iter()
                .any(|s| merged.stack_names(s).iter().any(|n| n.ends_with(f))),
            "{f} never sampled"
        );
    }
    println!("CHILD OK");
}

/// Runs the stress child for `seconds`, killing it (a failure) after `limit`.
fn signal_stress(seconds: u32, limit: Duration) {
    let root = tempfile::tempdir().unwrap();
    let secs = seconds.to_string();
    let out = run_child(
        "signal_stress",
        root.path(),
        &[("CHILD_SECONDS", &secs)],
        limit,
    );
    println!("{}", marked_line(&out, "STRESS"));
}

#[test]
fn signal_safety_stress_5s() {
    signal_stress(5, Duration::from_secs(120));
}

#[test]
#[ignore = "60 s; .ci/run runs it with --ignored"]
fn signal_safety_stress_60s() {
    signal_stress(60, Duration::from_secs(480));
}

// ------------------------------------------------------------------ 7. blocking syscalls

#[test]
fn child_blocking_syscalls() {
    if !is_child("blocking_syscalls") {
        return;
    }
    let _p = start_profiler(&root(), Duration::from_secs(3600), 999, 999);
    let pause = Duration::from_millis(300);
    threadprof::spawn("blocking", move || {
        // A raw blocking read(2) on a pipe: restarted by SA_RESTART, never EINTR.
        let mut fds = [0; 2];
        // SAFETY: pipe writes two fds into the array we own.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let writer = std::thread::spawn(move || {
            std::thread::sleep(pause);
            // SAFETY: fds[1] is the pipe's open write end; the buffer is valid for 5 bytes.
            unsafe { libc::write(fds[1], b"hello".as_ptr().cast(), 5) }
        });
        let t = Instant::now();
        let mut buf = [0u8; 16];
        // SAFETY: fds[0] is the open read end; buf is valid for its length.
        let n = unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len()) };
        let err = std::io::Error::last_os_error();
        assert_eq!(n, 5, "read returned {n} ({err})");
        assert_eq!(&buf[..5], b"hello");
        assert!(t.elapsed() >= pause);
        writer.join().unwrap();
        // SAFETY: closing the fds we opened.
        unsafe { (libc::close(fds[0]), libc::close(fds[1])) };

        // accept(2) and a plain read_exact over a socket.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = std::thread::spawn(move || {
            std::thread::sleep(pause);
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            std::thread::sleep(pause);
            std::io::Write::write_all(&mut s, b"ping").unwrap();
        });
        let t = Instant::now();
        let (mut conn, _) = listener.accept().expect("accept");
        let mut got = [0u8; 4];
        conn.read_exact(&mut got).expect("read_exact");
        assert_eq!(&got, b"ping");
        assert!(t.elapsed() >= pause * 2);
        client.join().unwrap();

        // Condvar::wait without a timeout, woken after a pause.
        let pair = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let notifier = {
            let pair = pair.clone();
            std::thread::spawn(move || {
                std::thread::sleep(pause);
                *pair.0.lock().unwrap() = true;
                pair.1.notify_one();
            })
        };
        let t = Instant::now();
        let mut ready = pair.0.lock().unwrap();
        while !*ready {
            ready = pair.1.wait(ready).unwrap();
        }
        drop(ready);
        assert!(t.elapsed() >= pause);
        notifier.join().unwrap();

        // nanosleep(2) is one of the calls that return EINTR whatever SA_RESTART says
        // (signal(7)); std::thread::sleep retries, raw callers must. This shows it happens.
        let mut eintr = 0;
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 200_000_000,
        };
        let t = Instant::now();
        loop {
            let mut rem = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: both timespecs are valid and owned.
            if unsafe { libc::nanosleep(&ts, &mut rem) } == 0 {
                break;
            }
            assert_eq!(
                std::io::Error::last_os_error().raw_os_error(),
                Some(libc::EINTR)
            );
            eintr += 1;
            ts = rem;
        }
        assert!(t.elapsed() >= Duration::from_millis(200));
        println!("NANOSLEEP eintr={eintr}");
        assert!(
            eintr > 0,
            "raw nanosleep was never interrupted under wall sampling"
        );
    })
    .join()
    .unwrap();
    println!("CHILD OK");
}

#[test]
fn blocking_syscalls_see_no_spurious_eintr() {
    let root = tempfile::tempdir().unwrap();
    let out = run_child(
        "blocking_syscalls",
        root.path(),
        &[],
        Duration::from_secs(60),
    );
    println!("{}", marked_line(&out, "NANOSLEEP"));
}

// ------------------------------------------------------------------ 8. long run

#[test]
fn child_soak() {
    if !is_child("soak") {
        return;
    }
    let seconds: u64 = env_or("THREADPROF_SOAK_SECS", 600);
    let dir = root();
    let _p = start_profiler(&dir, Duration::from_secs(1), 999, 99);
    let stop = Arc::new(AtomicBool::new(false));
    let pause = Duration::from_millis(2);
    let workers = [
        spawn_busy("soak_a", soak_a_work, 200_000, pause, &stop),
        spawn_busy("soak_b", soak_b_work, 200_000, pause, &stop),
    ];
    let merged = dir.join(threadprof::MERGED_FILE);
    let mut rows = Vec::new();
    let start = Instant::now();
    let step = (seconds / 10).max(1);
    for k in 1..=10 {
        std::thread::sleep(Duration::from_secs(step));
        let size = std::fs::metadata(&merged).map(|m| m.len()).unwrap_or(0);
        let row = (start.elapsed().as_secs(), rss_kib(), size);
        println!("SOAK t={}s rss_kib={} merged_bytes={}", row.0, row.1, row.2);
        rows.push(row);
        let _ = k;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    // After warm-up (the first half), RSS and dump size stop growing. The dump still gains a
    // few distinct leaf addresses for a while (rarely hit instructions of the same loops): in a
    // 10-minute run it grew 15.6% from minute 3 and 6.7% from minute 5, 0.5% in the last one.
    let (warm, last) = (rows[4], rows[9]);
    println!(
        "SOAK_SUMMARY seconds={seconds} rss_warm_kib={} rss_end_kib={} bytes_warm={} bytes_end={}",
        warm.1, last.1, warm.2, last.2
    );
    assert!(last.1 <= warm.1 + 4 * 1024, "RSS kept growing: {rows:?}");
    assert!(
        last.2 as f64 <= warm.2 as f64 * 1.10,
        "dump size kept growing: {rows:?}"
    );
    println!("CHILD OK");
}

#[test]
#[ignore = "10 minutes; run by hand (see the module docs)"]
fn soak_ten_minutes() {
    let root = tempfile::tempdir().unwrap();
    let secs: u64 = env_or("THREADPROF_SOAK_SECS", 600);
    let out = run_child("soak", root.path(), &[], Duration::from_secs(secs + 120));
    print!("{}", String::from_utf8_lossy(&out.stdout));
}

// ------------------------------------------------------------------ 9. shutdown

#[test]
fn child_shutdown() {
    if !is_child("shutdown") {
        return;
    }
    let how = std::env::var("HOW").unwrap();
    let dir = root();
    let handle = (how == "drop").then(|| start_profiler(&dir, Duration::from_secs(3600), 999, 0));
    // Lazily started (from THREADPROF_* set by the parent) unless a handle exists.
    threadprof::spawn("final", || {
        burn_for(Duration::from_millis(200), shutdown_work)
    })
    .join()
    .unwrap();
    let samples = threadprof::stats().samples;
    println!("SAMPLES {samples}");
    match how.as_str() {
        "drop" => drop(handle),
        "shutdown" => threadprof::shutdown(),
        _ => std::process::exit(0), // libc exit: the at-exit hook writes the final dump
    }
    // Harmless afterwards: a second shutdown, a new registration, a flush.
    threadprof::shutdown();
    let g = threadprof::enter("too_late");
    assert!(!g.is_active());
    assert_eq!(posix_timers(), 0);
    assert!(!threadprof::flush());
    drop(g);
    assert_eq!(threadprof::stats().samples, samples);
    println!("CHILD OK");
}

#[test]
fn drop_shutdown_and_exit_each_leave_complete_final_dumps() {
    for how in ["drop", "shutdown", "exit"] {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().to_str().unwrap();
        let mut cmd_env = vec![("HOW", how)];
        if how != "drop" {
            cmd_env.extend([
                ("THREADPROF_DIR", dir),
                ("THREADPROF_DUMP_INTERVAL", "3600"),
                ("THREADPROF_FREQUENCY", "999"),
            ]);
        }
        let limit = Duration::from_secs(60);
        let out = if how == "exit" {
            // exit(0) skips the harness's "CHILD OK"; check the status and the files instead.
            let out = run_child_unchecked("shutdown", root.path(), &cmd_env, limit);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            out
        } else {
            run_child("shutdown", root.path(), &cmd_env, limit)
        };
        let samples: u64 = marked_line(&out, "SAMPLES ")["SAMPLES ".len()..]
            .trim()
            .parse()
            .expect("child printed its sample count");
        assert!(samples > 0);
        for file in ["final.pb.gz", threadprof::MERGED_FILE] {
            let p = read_profile(&root.path().join(file));
            assert_eq!(samples_total(&p), samples, "{how}: {file} is incomplete");
        }
        assert!(temp_files(root.path()).is_empty());
    }
}

// ------------------------------------------------------------------ 10. coexistence

#[test]
fn child_coexistence() {
    if !is_child("coexistence") {
        return;
    }
    capture_logs();
    let dir = root();
    if std::env::var("ORDER").unwrap() == "pprof_first" {
        let guard = pprof::ProfilerGuardBuilder::default()
            .frequency(99)
            .build()
            .expect("pprof-rs");
        let err = threadprof::Profiler::builder()
            .output_dir(&dir)
            .start()
            .expect_err("must refuse to start beside another SIGPROF handler");
        println!("START ERROR: {err}");
        assert!(err
            .to_string()
            .contains("another SIGPROF handler is installed"));
        // A lazy start (first registration) refuses too, with an error, and costs nothing.
        let g = threadprof::enter("lazy");
        assert!(!g.is_active());
        assert_eq!(logged(log::Level::Error, "another SIGPROF handler"), 1);
        drop(g);
        // pprof-rs still works.
        burn_for(Duration::from_millis(300), coexist_work);
        let report = guard.report().build().expect("pprof-rs report");
        let n: isize = report.data.values().sum();
        println!("PPROF samples={n}");
        assert!(n > 5, "pprof-rs kept sampling");
        assert!(files_under(&dir).is_empty());
    } else {
        let _p = start_profiler(&dir, Duration::from_secs(3600), 99, 0);
        let stop = Arc::new(AtomicBool::new(false));
        let worker = spawn_busy("ours", coexist_work, 50_000, Duration::ZERO, &stop);
        std::thread::sleep(Duration::from_millis(200));
        assert!(posix_timers() > 0);
        let guard = pprof::ProfilerGuardBuilder::default()
            .frequency(99)
            .build()
            .expect("pprof-rs");
        let deadline = Instant::now() + Duration::from_secs(5);
        while logged(log::Level::Error, "replaced the profiler's SIGPROF handler") == 0 {
            assert!(Instant::now() < deadline, "replacement never detected");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            posix_timers(),
            0,
            "our timers stopped, so pprof-rs gets only its own"
        );
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        worker.join().unwrap();
        let n: isize = guard.report().build().expect("report").data.values().sum();
        println!("PPROF samples={n}");
        assert!(n > 5);
        // What we recorded before the replacement is kept.
        assert!(threadprof::flush());
        let p = read_profile(&dir.join("ours.pb.gz"));
        assert!(samples_total(&p) > 0);
    }
    println!("CHILD OK");
}

#[test]
fn another_sigprof_profiler_is_detected_either_way() {
    for order in ["pprof_first", "ours_first"] {
        let root = tempfile::tempdir().unwrap();
        run_child(
            "coexistence",
            root.path(),
            &[("ORDER", order)],
            Duration::from_secs(60),
        );
    }
}

// ------------------------------------------------------------------ 11. exec, foreign stacks,
// the handler's own stack (hardening round 2)

busy_fn!(exec_busy_work, 12u64);
busy_fn!(exec_caller_work, 13u64);

/// Child: two busy registered threads under 999 Hz CPU and wall sampling; then a thread
/// (registered or not, `EXEC_FROM`) burns `EXEC_DELAY_US` of CPU and execs `/bin/true`. A
/// signal left pending across `execve` kills the new program (SIGPROF's default action).
#[test]
fn child_exec() {
    if !is_child("exec") {
        return;
    }
    use std::os::unix::process::CommandExt;
    let registered = std::env::var("EXEC_FROM").as_deref() == Ok("registered");
    let delay = Duration::from_micros(env_or("EXEC_DELAY_US", 10_000));
    let _p = start_profiler(&root(), Duration::from_secs(3600), 999, 999);
    let stop = Arc::new(AtomicBool::new(false));
    let _busy: Vec<_> = (0..2)
        .map(|_| spawn_busy("exec_busy", exec_busy_work, 20_000, Duration::ZERO, &stop))
        .collect();
    let go = move || {
        burn_for(delay, exec_caller_work);
        let err = Command::new("/bin/true").exec();
        panic!("exec failed: {err}");
    };
    let caller = if registered {
        threadprof::spawn("exec_caller", go)
    } else {
        std::thread::spawn(go)
    };
    let _ = caller.join();
}

#[test]
fn exec_under_999hz_cpu_and_wall_sampling_never_kills_the_new_program() {
    use std::os::unix::process::ExitStatusExt;
    use std::sync::atomic::AtomicUsize;
    let runs: usize = env_or("THREADPROF_EXEC_RUNS", 300);
    let dir = tempfile::tempdir().unwrap();
    for from in ["registered", "unregistered"] {
        let next = AtomicUsize::new(0);
        let failures = Mutex::new(Vec::new());
        // Two at a time: one per core.
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= runs {
                        break;
                    }
                    // Exec at a different point of the sampling period each run: 2–22 ms.
                    let delay = (2_000 + (i * 7_919) % 20_000).to_string();
                    let out = run_child_unchecked(
                        "exec",
                        dir.path(),
                        &[("EXEC_FROM", from), ("EXEC_DELAY_US", &delay)],
                        Duration::from_secs(60),
                    );
                    if !out.status.success() {
                        failures.lock().unwrap().push((
                            out.status.code(),
                            out.status.signal(),
                            String::from_utf8_lossy(&out.stderr).into_owned(),
                        ));
                    }
                });
            }
        });
        let failures = failures.into_inner().unwrap();
        println!(
            "EXEC from={from} runs={runs} failed={} (SIGPROF: {})",
            failures.len(),
            failures
                .iter()
                .filter(|f| f.1 == Some(libc::SIGPROF))
                .count()
        );
        assert!(
            failures.is_empty(),
            "exec from a {from} thread: {} of {runs} new programs failed, first: {:?}",
            failures.len(),
            failures.first()
        );
    }
}

/// The calling thread's stack, `(lowest, highest)` address.
fn stack_bounds() -> (usize, usize) {
    let mut attr = std::mem::MaybeUninit::<libc::pthread_attr_t>::uninit();
    // SAFETY: pthread_getattr_np initialises `attr` on success; destroyed after use.
    unsafe {
        assert_eq!(
            libc::pthread_getattr_np(libc::pthread_self(), attr.as_mut_ptr()),
            0
        );
        let (mut addr, mut size) = (std::ptr::null_mut(), 0usize);
        assert_eq!(
            libc::pthread_attr_getstack(attr.as_ptr(), &mut addr, &mut size),
            0
        );
        libc::pthread_attr_destroy(attr.as_mut_ptr());
        (addr as usize, addr as usize + size)
    }
}

/// Recurses until at most `left` bytes of this thread's stack remain below the frame, then
/// runs `at_bottom` there; returns the bytes that remained.
#[inline(never)]
fn descend(lo: usize, left: usize, at_bottom: &mut dyn FnMut()) -> usize {
    let pad = black_box([0u8; 256]);
    let here = black_box(&pad) as *const _ as usize;
    let remaining = here.saturating_sub(lo);
    let r = if remaining <= left + 512 {
        at_bottom();
        remaining
    } else {
        descend(lo, left, at_bottom)
    };
    black_box(&pad);
    r
}

/// Child: a registered thread with a 64 KiB stack recurses until `STACK_LEFT` bytes are left,
/// then burns 2 s of CPU there under 999 Hz CPU and wall sampling. Before the handler had its
/// own stack, one sample needed 16–20 KiB of the interrupted stack and this aborted ("has
/// overflowed its stack") with less than that left.
#[test]
fn child_small_stack() {
    if !is_child("small_stack") {
        return;
    }
    let left: usize = env_or("STACK_LEFT", 4096);
    let _p = start_profiler(&root(), Duration::from_secs(3600), 999, 999);
    let t = std::thread::Builder::new()
        .name("small_stack".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let _g = threadprof::enter("small_stack");
            let painted = threadprof_runtime::__signal_stack_use(true);
            let (lo, _) = stack_bounds();
            let start = Instant::now();
            let mut spins = 0u64;
            let remaining = descend(lo, left, &mut || {
                // A tight loop in this frame: no deeper calls while it runs.
                while start.elapsed() < Duration::from_secs(2) {
                    for i in 0..20_000u64 {
                        spins = black_box(spins.wrapping_add(i));
                    }
                }
            });
            let deepest = threadprof_runtime::__signal_stack_use(false);
            (remaining, painted, deepest)
        })
        .unwrap();
    let (remaining, painted, deepest) = t.join().unwrap();
    let stats = threadprof::stats();
    println!(
        "SMALL_STACK left={remaining} samples={} handler_stack_deepest={deepest:?} painted={painted:?}",
        stats.samples
    );
    assert!(stats.samples > 500, "sampled at the bottom: {stats:?}");
    if let Some(d) = deepest {
        assert!(d < threadprof_runtime_stack_bytes(), "handler stack {d}");
    }
    println!("CHILD OK");
}

/// The size of the handler's stack (`altstack::STACK_BYTES`, 128 KiB).
fn threadprof_runtime_stack_bytes() -> usize {
    128 * 1024
}

#[test]
fn a_thread_with_4_kib_of_stack_left_survives_999hz_cpu_and_wall_sampling() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_child(
        "small_stack",
        dir.path(),
        &[("STACK_LEFT", "4096")],
        Duration::from_secs(60),
    );
    print_lines(&out, "SMALL_STACK");
}

busy_fn!(host_interrupted_work, 14u64);
busy_fn!(host_handler_work, 15u64);
busy_fn!(stacker_leaf_work, 16u64);

/// How long each foreign-stack scenario runs under 999 Hz sampling.
fn foreign_secs() -> Duration {
    Duration::from_secs_f64(env_or("THREADPROF_FOREIGN_SECS", 3.0))
}

/// A page of machine code made at run time, as a JIT makes it (no unwind information
/// anywhere): `fn(n)` saves rbp, sets it to `rbp`, counts `n` (≥ 1) down to zero, restores rbp
/// and returns. x86_64.
#[cfg(target_arch = "x86_64")]
fn jit_spin(rbp: u64) -> extern "C" fn(u64) {
    let mut code = vec![0x55, 0x48, 0xbd]; // push rbp; movabs rbp, imm64
    code.extend_from_slice(&rbp.to_le_bytes());
    code.extend_from_slice(&[0x48, 0xff, 0xcf, 0x75, 0xfb, 0x5d, 0xc3]); // dec rdi; jnz -5; pop rbp; ret
                                                                         // SAFETY: a fresh anonymous page; written, then made executable and never written again.
    unsafe {
        let page = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(page, libc::MAP_FAILED);
        std::ptr::copy_nonoverlapping(code.as_ptr(), page.cast::<u8>(), code.len());
        assert_eq!(
            libc::mprotect(page, 4096, libc::PROT_READ | libc::PROT_EXEC),
            0
        );
        std::mem::transmute::<*mut libc::c_void, extern "C" fn(u64)>(page)
    }
}

/// Runs `f` on a registered thread for [`foreign_secs`] under 999 Hz CPU and wall sampling,
/// flushes, and returns the merged profile and the counters.
fn sample_scenario(tag: &str, f: impl FnOnce() + Send + 'static) -> (Profile, threadprof::Stats) {
    let dir = root().join("profiles");
    let _p = start_profiler(&dir, Duration::from_secs(3600), 999, 999);
    threadprof::spawn(tag, f).join().unwrap();
    assert!(threadprof::flush());
    let stats = threadprof::stats();
    let p = read_profile(&dir.join(threadprof::MERGED_FILE));
    println!(
        "FOREIGN {tag}: samples={} cut_short={} dropped={}",
        stats.samples, stats.cut_short, stats.dropped
    );
    (p, stats)
}

/// Whether some sample's stack holds a function containing each of `names`.
#[cfg(target_arch = "x86_64")]
fn some_stack_has_all(p: &Profile, names: &[&str]) -> bool {
    p.sample.iter().any(|s| {
        let stack = p.stack_names(s);
        names.iter().all(|n| stack.iter().any(|f| f.contains(n)))
    })
}

#[cfg(target_arch = "x86_64")]
mod fiber {
    use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

    pub static MAIN: AtomicPtr<libc::ucontext_t> = AtomicPtr::new(std::ptr::null_mut());
    pub static FIBER: AtomicPtr<libc::ucontext_t> = AtomicPtr::new(std::ptr::null_mut());
    pub static JIT: AtomicUsize = AtomicUsize::new(0);
    pub static UNTIL_NS: AtomicU64 = AtomicU64::new(0);

    pub fn now_ns() -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: writes only `ts`.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }

    /// The fiber: runs the JIT code until the deadline, then switches back.
    pub extern "C" fn entry() {
        // SAFETY: JIT holds a `jit_spin` function pointer, stored before the switch.
        let f: extern "C" fn(u64) = unsafe { std::mem::transmute(JIT.load(Ordering::SeqCst)) };
        while now_ns() < UNTIL_NS.load(Ordering::SeqCst) {
            f(2_000_000);
        }
        // SAFETY: both contexts were set up by the thread that switched to us.
        unsafe { libc::swapcontext(FIBER.load(Ordering::SeqCst), MAIN.load(Ordering::SeqCst)) };
    }
}

/// Child: a registered thread switches (`makecontext`/`swapcontext`) to a fiber whose stack is
/// mapped below the thread's own stack, with an inaccessible page between them, and runs
/// machine code made at run time with its frame pointer aimed at that page. Reading
/// `[interrupted sp, thread stack top)` without a check faulted inside the handler.
#[cfg(target_arch = "x86_64")]
#[test]
fn child_fiber_jit() {
    if !is_child("fiber_jit") {
        return;
    }
    let (p, stats) = sample_scenario("fiber_jit", || {
        const FIBER_STACK: usize = 256 * 1024;
        let (lo, _) = stack_bounds();
        // [fiber stack][PROT_NONE page] ... unmapped ... [this thread's stack]
        let mut mapped = None;
        for gap_mib in [1usize, 2, 4, 8, 16, 32, 64] {
            let base = lo - gap_mib * 1024 * 1024 - FIBER_STACK - 4096;
            // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping; checked below.
            let m = unsafe {
                libc::mmap(
                    base as *mut libc::c_void,
                    FIBER_STACK + 4096,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                    -1,
                    0,
                )
            };
            if m as usize == base {
                mapped = Some(base);
                break;
            }
            if m != libc::MAP_FAILED {
                // SAFETY: a mapping we just made elsewhere (old kernels ignore the flag).
                unsafe { libc::munmap(m, FIBER_STACK + 4096) };
            }
        }
        let base = mapped.expect("room below the thread's stack for the fiber");
        let guard = base + FIBER_STACK;
        // SAFETY: the top page of our mapping.
        let protected = unsafe { libc::mprotect(guard as *mut _, 4096, libc::PROT_NONE) };
        assert_eq!(protected, 0);
        fiber::JIT.store(jit_spin(guard as u64 + 64) as usize, Ordering::SeqCst);
        fiber::UNTIL_NS.store(
            fiber::now_ns() + foreign_secs().as_nanos() as u64,
            Ordering::SeqCst,
        );
        // SAFETY: zeroed ucontext_t is filled by getcontext; the fiber's stack is our mapping
        // below the guard; both contexts outlive the switches (leaked boxes).
        unsafe {
            let main: *mut libc::ucontext_t = Box::leak(Box::new(std::mem::zeroed()));
            let fib: *mut libc::ucontext_t = Box::leak(Box::new(std::mem::zeroed()));
            assert_eq!(libc::getcontext(fib), 0);
            (*fib).uc_stack.ss_sp = base as *mut libc::c_void;
            (*fib).uc_stack.ss_size = FIBER_STACK;
            (*fib).uc_link = main;
            libc::makecontext(fib, fiber::entry, 0);
            fiber::MAIN.store(main, Ordering::SeqCst);
            fiber::FIBER.store(fib, Ordering::SeqCst);
            assert_eq!(libc::swapcontext(main, fib), 0);
        }
    });
    assert!(stats.samples > 1000, "{stats:?}");
    assert!(
        stats.cut_short > 0,
        "the fiber's stacks were cut short: {stats:?}"
    );
    assert!(!p.sample.is_empty());
    println!("CHILD OK");
}

#[cfg(target_arch = "x86_64")]
#[test]
fn a_fiber_below_the_thread_stack_running_jit_code_never_crashes_the_sampler() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_child("fiber_jit", dir.path(), &[], Duration::from_secs(120));
    print_lines(&out, "FOREIGN");
}

/// Child: machine code made at run time, on the thread's own stack, with its frame pointer at
/// the null page, an unmapped address, the thread's guard page and below the stack pointer.
#[cfg(target_arch = "x86_64")]
#[test]
fn child_jit_frame_pointers() {
    if !is_child("jit_frame_pointers") {
        return;
    }
    let (_p, stats) = sample_scenario("jit_fp", || {
        let (lo, _) = stack_bounds();
        let here = black_box(&lo) as *const _ as u64;
        let values = [
            16u64,
            0xdead_beef_0000,
            lo as u64 - 4096,
            here - 64 * 1024,
            here,
        ];
        let each = foreign_secs() / values.len() as u32;
        for rbp in values {
            let f = jit_spin(rbp);
            let start = Instant::now();
            while start.elapsed() < each {
                f(2_000_000);
            }
        }
    });
    assert!(stats.samples > 1000, "{stats:?}");
    assert!(stats.cut_short > 0, "{stats:?}");
    println!("CHILD OK");
}

#[cfg(target_arch = "x86_64")]
#[test]
fn jit_code_with_any_frame_pointer_never_crashes_the_sampler() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_child(
        "jit_frame_pointers",
        dir.path(),
        &[],
        Duration::from_secs(120),
    );
    print_lines(&out, "FOREIGN");
}

#[inline(never)]
fn stacker_recurse(depth: u32) -> u64 {
    // 4 KiB a level: with 64 KiB segments, a new segment every dozen levels.
    let pad = black_box([depth as u8; 4096]);
    let below = stacker::maybe_grow(16 * 1024, 64 * 1024, || {
        if depth < 40 {
            stacker_recurse(depth + 1)
        } else {
            burn_for(Duration::from_millis(20), stacker_leaf_work)
        }
    });
    below.wrapping_add(u64::from(black_box(pad)[7]))
}

#[inline(never)]
fn stacker_outer() -> u64 {
    black_box(stacker_recurse(0))
}

/// Child: recursion that grows its stack in `stacker` segments (as recursive-descent parsers
/// do), sampled at 999 Hz; the walk must cross the segments back to the caller.
#[test]
fn child_stacker() {
    if !is_child("stacker") {
        return;
    }
    let (p, stats) = sample_scenario("stacker", || {
        let start = Instant::now();
        while start.elapsed() < foreign_secs() {
            black_box(stacker_outer());
        }
    });
    assert!(stats.samples > 1000, "{stats:?}");
    let deep = p
        .sample
        .iter()
        .filter(|s| {
            let names = p.stack_names(s);
            names.iter().any(|n| n.contains("stacker_leaf_work"))
                && names.iter().any(|n| n.contains("stacker_outer"))
        })
        .count();
    let leaf = p
        .sample
        .iter()
        .filter(|s| {
            p.stack_names(s)
                .iter()
                .any(|n| n.contains("stacker_leaf_work"))
        })
        .count();
    println!("STACKER leaf_samples={leaf} reaching_outer={deep}");
    assert!(
        leaf > 0 && deep * 10 >= leaf * 9,
        "walks cross segments: {deep} of {leaf}"
    );
    println!("CHILD OK");
}

#[test]
fn stacker_segments_are_walked_across_under_999hz_sampling() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_child("stacker", dir.path(), &[], Duration::from_secs(120));
    print_lines(&out, "FOREIGN");
    print_lines(&out, "STACKER");
}

extern "C" fn host_handler(_signal: libc::c_int) {
    black_box(burn_for(Duration::from_millis(2), host_handler_work));
}

/// Child: the host installs its own small alternate signal stack and a SIGUSR1 handler on it
/// that burns 2 ms; the registered thread raises SIGUSR1 between 1 ms bursts of its own work.
#[test]
fn child_host_altstack() {
    if !is_child("host_altstack") {
        return;
    }
    let (p, stats) = sample_scenario("host_altstack", || {
        const SIZE: usize = 16 * 1024;
        // SAFETY: a fresh mapping for the host's alternate stack, installed for this thread
        // and left installed until the process ends (the mapping is never unmapped).
        unsafe {
            let m = libc::mmap(
                std::ptr::null_mut(),
                SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(m, libc::MAP_FAILED);
            let ss = libc::stack_t {
                ss_sp: m,
                ss_flags: 0,
                ss_size: SIZE,
            };
            assert_eq!(libc::sigaltstack(&ss, std::ptr::null_mut()), 0);
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = host_handler as *const () as libc::sighandler_t;
            act.sa_flags = libc::SA_ONSTACK | libc::SA_RESTART;
            libc::sigemptyset(&mut act.sa_mask);
            assert_eq!(
                libc::sigaction(libc::SIGUSR1, &act, std::ptr::null_mut()),
                0
            );
        }
        let start = Instant::now();
        while start.elapsed() < foreign_secs() {
            black_box(burn_for(Duration::from_millis(1), host_interrupted_work));
            // SAFETY: raise sends SIGUSR1 to this thread; its handler is installed above.
            unsafe { libc::raise(libc::SIGUSR1) };
        }
    });
    assert!(stats.samples > 1000, "{stats:?}");
    let in_handler = cpu_by_function(&p, "host_handler_work");
    assert!(!in_handler.is_empty(), "samples in the handler");
    // Stepping through the kernel's signal frame is x86_64-only (README, Limits): on aarch64
    // the walk ends at the host's handler.
    #[cfg(target_arch = "x86_64")]
    assert!(
        some_stack_has_all(&p, &["host_handler_work", "child_host_altstack"]),
        "a walk from the alternate stack back through the signal frame"
    );
    println!("CHILD OK");
}

#[test]
fn a_host_signal_handler_on_its_own_alternate_stack_is_sampled() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_child("host_altstack", dir.path(), &[], Duration::from_secs(120));
    print_lines(&out, "FOREIGN");
}

/// Prints the child's report lines that carry `marker` (libtest may have printed its own
/// "test ... " in front of the first one).
fn print_lines(out: &Output, marker: &str) {
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(at) = line.find(marker) {
            println!("{}", &line[at..]);
        }
    }
}

busy_fn!(storm_target_work, 17u64);

static STORM_HANDLED: AtomicU64 = AtomicU64::new(0);

extern "C" fn storm_handler(_signal: libc::c_int) {
    STORM_HANDLED.fetch_add(1, Ordering::Relaxed);
}

/// Child: a registered std thread (which has std's 8 KiB alternate stack, so the sampler's
/// handler starts there and moves onto its own) burns CPU at 999 Hz CPU + wall sampling while
/// another thread sends it SIGUSR2, whose host handler runs with `SA_ONSTACK`, every few µs.
/// A host signal delivered while the sampler's handler ran on its own stack used to land at
/// the top of the host's alternate stack, over the sampler's signal frame.
#[test]
fn child_host_signal_storm() {
    if !is_child("host_signal_storm") {
        return;
    }
    // SAFETY: installs a handler that only bumps an atomic; SA_ONSTACK as Go's runtime does.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = storm_handler as *const () as libc::sighandler_t;
        act.sa_flags = libc::SA_ONSTACK | libc::SA_RESTART;
        libc::sigemptyset(&mut act.sa_mask);
        assert_eq!(
            libc::sigaction(libc::SIGUSR2, &act, std::ptr::null_mut()),
            0
        );
    }
    let tid = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (tid, stop) = (tid.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = tid.load(Ordering::Relaxed);
                if t != 0 {
                    // SAFETY: tgkill to a thread of this process that is alive until `stop`.
                    unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), t, libc::SIGUSR2) };
                    sent += 1;
                }
                for _ in 0..200 {
                    std::hint::spin_loop();
                }
            }
            sent
        })
    };
    let (_p, stats) = sample_scenario("host_signal_storm", move || {
        tid.store(gettid() as u64, Ordering::Relaxed);
        burn_for(foreign_secs(), storm_target_work);
        tid.store(0, Ordering::Relaxed);
    });
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().unwrap();
    let handled = STORM_HANDLED.load(Ordering::Relaxed);
    println!(
        "STORM sent={sent} handled={handled} samples={}",
        stats.samples
    );
    assert!(handled > 10_000, "the storm reached the thread: {handled}");
    assert!(stats.samples > 1000, "{stats:?}");
    println!("CHILD OK");
}

#[test]
fn host_signals_arriving_during_a_sample_never_corrupt_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_child(
        "host_signal_storm",
        dir.path(),
        &[],
        Duration::from_secs(120),
    );
    print_lines(&out, "STORM");
    print_lines(&out, "FOREIGN");
}

busy_fn!(tiny_altstack_work, 18u64);

/// Child: a thread whose host installed a 2 KiB alternate signal stack (`MINSIGSTKSZ`, smaller
/// than a signal frame on a machine with AVX-512) registers and is sampled at 999 Hz; its
/// alternate stack is ours while it is registered and the host's again afterwards.
#[test]
fn child_tiny_host_altstack() {
    if !is_child("tiny_host_altstack") {
        return;
    }
    let (_p, stats) = sample_scenario("tiny_altstack_outer", || {
        std::thread::spawn(|| {
            let mut tiny = vec![0u8; 2048];
            let ss = libc::stack_t {
                ss_sp: tiny.as_mut_ptr().cast(),
                ss_flags: 0,
                ss_size: tiny.len(),
            };
            // SAFETY: `tiny` outlives its use: it is disabled below before being freed.
            assert_eq!(unsafe { libc::sigaltstack(&ss, std::ptr::null_mut()) }, 0);
            let query = || {
                let mut now: libc::stack_t = libc::stack_t {
                    ss_sp: std::ptr::null_mut(),
                    ss_flags: 0,
                    ss_size: 0,
                };
                // SAFETY: query only.
                assert_eq!(unsafe { libc::sigaltstack(std::ptr::null(), &mut now) }, 0);
                (now.ss_sp as usize, now.ss_size)
            };
            let during = threadprof::run("tiny_altstack", || {
                burn_for(foreign_secs(), tiny_altstack_work);
                query()
            });
            let after = query();
            let off = libc::stack_t {
                ss_sp: std::ptr::null_mut(),
                ss_flags: libc::SS_DISABLE,
                ss_size: 0,
            };
            // SAFETY: disabling has no memory preconditions.
            assert_eq!(unsafe { libc::sigaltstack(&off, std::ptr::null_mut()) }, 0);
            let host = (tiny.as_ptr() as usize, tiny.len());
            assert_ne!(during, host, "ours while registered");
            assert_eq!(after, host, "the host's again afterwards");
            println!("TINY during={during:?} after={after:?}");
        })
        .join()
        .unwrap();
    });
    assert!(stats.samples > 1000, "{stats:?}");
    println!("CHILD OK");
}

#[test]
fn a_host_alternate_stack_too_small_for_a_signal_frame_is_swapped_while_registered() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_child(
        "tiny_host_altstack",
        dir.path(),
        &[],
        Duration::from_secs(120),
    );
    print_lines(&out, "TINY");
    print_lines(&out, "FOREIGN");
}

/// Installs a seccomp filter that answers `process_vm_readv` with `action` (kill the whole
/// process, or trap with SIGSYS), as a sandbox's allow-list does for a call it does not list.
/// Only the seccomp tests use it, which run x86_64 machine code (`jit_spin`).
#[cfg(target_arch = "x86_64")]
fn forbid_process_vm_readv(action: u32) {
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    let nr = libc::SYS_process_vm_readv as u32;
    let mut prog = [
        libc::sock_filter {
            code: LD_W_ABS,
            jt: 0,
            jf: 0,
            k: 0,
        }, // seccomp_data.nr
        libc::sock_filter {
            code: JEQ_K,
            jt: 0,
            jf: 1,
            k: nr,
        },
        libc::sock_filter {
            code: RET_K,
            jt: 0,
            jf: 0,
            k: action,
        },
        libc::sock_filter {
            code: RET_K,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ALLOW,
        },
    ];
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: plain prctl calls with a valid filter program that outlives them; the filter
    // applies to this process (and its children) only.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        assert_eq!(
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &fprog as *const libc::sock_fprog
            ),
            0
        );
    }
}

/// Child: under a seccomp filter that kills the process on `process_vm_readv`, the runtime
/// starts (its probe runs in a child process), warns once, samples, and cuts short the stacks
/// it cannot read safely instead of making the call.
#[cfg(target_arch = "x86_64")]
#[test]
fn child_seccomp() {
    if !is_child("seccomp") {
        return;
    }
    capture_logs();
    if std::env::var("SECCOMP_ACTION").as_deref() == Ok("trap") {
        // The host handles SIGSYS itself (a sandbox's broker would): it must never see one.
        // SAFETY: a handler that only counts.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = sigsys_handler as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut act.sa_mask);
            assert_eq!(libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut()), 0);
        }
        forbid_process_vm_readv(libc::SECCOMP_RET_TRAP);
    } else {
        forbid_process_vm_readv(libc::SECCOMP_RET_KILL_PROCESS);
    }
    let (p, stats) = sample_scenario("seccomp", || {
        let (lo, _) = stack_bounds();
        let each = foreign_secs() / 2;
        // Frame pointer below the stack pointer and at the guard page: reads a copy would make.
        for rbp in [lo as u64 - 4096, 0xdead_beef_0000] {
            let f = jit_spin(rbp);
            let start = Instant::now();
            while start.elapsed() < each {
                f(2_000_000);
            }
        }
    });
    assert_eq!(logged(log::Level::Warn, "process_vm_readv"), 1);
    assert_eq!(
        SIGSYS_SEEN.load(Ordering::Relaxed),
        0,
        "no trapped call in the host"
    );
    assert!(stats.samples > 1000, "{stats:?}");
    assert!(!p.sample.is_empty());
    println!("CHILD OK");
}

#[cfg(target_arch = "x86_64")]
static SIGSYS_SEEN: AtomicU64 = AtomicU64::new(0);

#[cfg(target_arch = "x86_64")]
extern "C" fn sigsys_handler(_signal: libc::c_int) {
    SIGSYS_SEEN.fetch_add(1, Ordering::Relaxed);
}

#[cfg(target_arch = "x86_64")]
#[test]
fn a_sandbox_that_kills_on_process_vm_readv_does_not_kill_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_child("seccomp", dir.path(), &[], Duration::from_secs(120));
    print_lines(&out, "FOREIGN");
}

#[cfg(target_arch = "x86_64")]
#[test]
fn a_sandbox_that_traps_process_vm_readv_never_reaches_the_hosts_sigsys_handler() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_child(
        "seccomp",
        dir.path(),
        &[("SECCOMP_ACTION", "trap")],
        Duration::from_secs(120),
    );
    print_lines(&out, "FOREIGN");
}

busy_fn!(fork_busy_work, 19u64);

/// Child: with the runtime running, registered threads busy and this thread registered, it
/// forks `FORKS` times; each forked child unregisters, registers again, flushes, reads the
/// counters and exits through `exit`. None of that may wait for a thread the child does not
/// have (the dump thread, the wall ticker) or a lock one of them held at the fork.
#[test]
fn child_fork() {
    if !is_child("fork") {
        return;
    }
    let forks: usize = env_or("FORKS", 200);
    let _p = start_profiler(&root(), Duration::from_millis(50), 999, 999);
    let stop = Arc::new(AtomicBool::new(false));
    let busy: Vec<_> = (0..2)
        .map(|_| spawn_busy("fork_busy", fork_busy_work, 20_000, Duration::ZERO, &stop))
        .collect();
    let guard = threadprof::enter("forker");
    let mut failed = Vec::new();
    for i in 0..forks {
        black_box(fork_busy_work(20_000 + i as u64));
        // SAFETY: fork; the child below does only what a forked child of a multithreaded
        // process may risk in a test (it exits with _exit if anything goes wrong).
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // The child ends its copy of the registration; the parent's copy is dropped below.
            // SAFETY: a bitwise copy of a guard this process (the child) never drops again.
            drop(unsafe { std::ptr::read(&guard) });
            let g = threadprof::enter("in_child");
            black_box(fork_busy_work(10_000));
            drop(g);
            let _ = threadprof::flush();
            let _ = threadprof::stats();
            std::process::exit(0);
        }
        assert!(pid > 0, "fork failed");
        // Wait up to 10 s for the child, then kill it: a hang is a failure.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut status = 0;
        loop {
            // SAFETY: waits for our own child without blocking.
            let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if r == pid {
                if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
                    failed.push(format!("fork {i}: status {status:#x}"));
                }
                break;
            }
            if Instant::now() > deadline {
                // SAFETY: kill and reap our own child.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, &mut status, 0);
                }
                failed.push(format!("fork {i}: hung"));
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if failed.len() >= 3 {
            break;
        }
    }
    drop(guard);
    stop.store(true, Ordering::Relaxed);
    for b in busy {
        b.join().unwrap();
    }
    assert!(threadprof::flush(), "the parent's runtime is intact");
    println!("FORK forks={forks} failed={}", failed.len());
    assert!(failed.is_empty(), "{failed:?}");
    println!("CHILD OK");
}

#[test]
fn a_forked_child_never_waits_for_the_parents_profiler_threads() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_child("fork", dir.path(), &[], Duration::from_secs(300));
    print_lines(&out, "FORK");
}
