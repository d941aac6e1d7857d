//! Memory footprint and first-dump time (issue 16).
//!
//! `cargo bench --bench footprint` (add `-- --quick` for 10 s runs; `FOOTPRINT_SECONDS=N` sets
//! the length of a profiled run, default 60; `FOOTPRINT_OFF_SECONDS=N` the length of a run with
//! the profiler off, default the smaller of 10 and the profiled length). About 5 minutes by
//! default, plus two builds of the example the first time.
//!
//! **The example.** The bench builds `examples/ip_monitor.rs` twice with cargo (the commands
//! are printed): release as is, and release with full debug info
//! (`CARGO_PROFILE_RELEASE_DEBUG=true`, in a target directory of its own so both builds stay).
//! It runs each build as a child process (`IP_MONITOR_SECONDS` = the run length; the example
//! dumps every second) with the profiler on under `THREADPROF_DEBUGINFO=auto` and `=on`, and
//! once with `THREADPROF_ENABLED=0`. The parent watches the child from outside; the example is
//! not changed:
//! - every poll reads `/proc/<pid>/smaps_rollup` (`Rss` and `Anonymous`, counted from the page
//!   tables; file-backed = `Rss` - `Anonymous`) and `VmHWM` from `/proc/<pid>/status`;
//! - until the first dump has been written it polls every millisecond, afterwards every 50 ms;
//! - the output directory does not exist before the run, and the runtime creates it at the
//!   start of its first dump (`create_dir_all`, before it symbolizes anything) and writes
//!   `_merged.pb.gz` last. *Before the first dump* is the last reading taken before a check
//!   that still found no directory; *after the first dump* is the first reading taken after
//!   `_merged.pb.gz` appeared;
//! - *first dump, wall*: `_merged.pb.gz`'s modification time minus the later of the
//!   directory's birth time and the last poll that found no directory (both bound the start
//!   from below, so this is an upper bound by at most one poll, 1 ms);
//! - *first dump, CPU*: CPU time of the thread named `threadprof-dump`
//!   (`/proc/<pid>/task/<tid>/schedstat`, nanoseconds) between those two readings: the dump
//!   plus that tick's drain of the rings;
//! - *later dumps*: the dump thread's CPU time from the first dump to the end of the run,
//!   divided by the number of dumps seen in between (each second: one dump and ten 100 ms
//!   drains, so an upper bound of one dump's cost);
//! - *end of run*: the last reading taken 0.25 s before the example's workers stop (the
//!   example then makes its final dump and decodes its profiles to print a summary, which is
//!   not the steady state). `VmHWM` there is the peak over the whole run.
//!
//! With the profiler off there is no dump: its *before* and *after* readings are the ones
//! nearest in time to the profiled run's (on `auto`), and its run is shorter (its RSS does not
//! move after start-up). Growth = on - off.
//!
//! **Per registered thread.** This binary re-executes itself (`FOOTPRINT_CHILD`) and drives
//! `threadprof_runtime` directly, with no dump during the measurement (dump interval one hour):
//! - *one busy thread at 999 Hz*: a thread spins for 2 s, registered or not (runtime on in
//!   both), and the process's RSS is read while the thread is still alive; the figure is
//!   (after - before) registered minus the same unregistered, median of 3 runs each. It covers
//!   what registration and 2,000 samples touch: the thread's ring, its signal stack, the
//!   aggregated stacks;
//! - *1,000 idle threads*: 1,000 threads each call `enter` (same tag) and wait on a barrier;
//!   the process's RSS growth from before they were spawned, profiler on minus
//!   `THREADPROF_ENABLED=0`, divided by 1,000. Default configuration (CPU timers at 99 Hz, no wall
//!   sampling), so an idle thread takes no samples.
//!
//! **Separate debug files.** The header says whether libc's build id has a file under
//! `/usr/lib/debug/.build-id/`, and whether the runtime reads `THREADPROF_DEBUGINFO` at all (it is
//! in `threadprof_runtime::config::ENV_VARS` once it does); until it does, the `auto` and `on`
//! rows measure the same configuration.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Barrier};
use std::time::{Duration, Instant, SystemTime};

const CHILD_ENV: &str = "FOOTPRINT_CHILD";
/// The name the runtime gives its dump thread (`/proc/<pid>/task/<tid>/comm`).
const DUMP_THREAD: &str = "threadprof-dump";
/// How long the busy thread spins.
const BUSY_SECONDS: f64 = 2.0;
/// Idle threads registered at once.
const IDLE_THREADS: usize = 1000;

// ---------------------------------------------------------------- reading /proc

/// Resident memory of a process at one moment, in KiB.
#[derive(Clone, Copy, Debug, Default)]
struct Mem {
    rss: u64,
    anon: u64,
    hwm: u64,
}

impl Mem {
    fn file(&self) -> u64 {
        self.rss.saturating_sub(self.anon)
    }
}

/// The value in KiB of the `key:` line of a `/proc` key-value file.
fn kb_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// RSS and anonymous RSS from the page tables (`smaps_rollup`), peak RSS from `status`. `None`
/// once the process is gone.
fn read_mem(pid: &str) -> Option<Mem> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(Mem {
        rss: kb_field(&rollup, "Rss")?,
        anon: kb_field(&rollup, "Anonymous")?,
        hwm: kb_field(&status, "VmHWM")?,
    })
}

/// The thread id of the child's dump thread, once it exists.
fn find_dump_thread(pid: u32) -> Option<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|tid| {
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
                .is_ok_and(|c| c.trim() == DUMP_THREAD)
        })
}

/// Nanoseconds a thread has run on a CPU (first field of `schedstat`).
fn thread_cpu_ns(pid: u32, tid: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// One mapping of `/proc/<pid>/smaps`: what it maps, its size and resident KiB.
struct Mapping {
    what: String,
    size: u64,
    rss: u64,
}

/// The process's mappings, most resident first.
fn read_mappings(pid: &str) -> Vec<Mapping> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut maps: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let range = fields.next().unwrap_or("");
        if let Some((lo, hi)) = range.split_once('-').filter(|_| !line.ends_with(" kB")) {
            let (Ok(lo), Ok(hi)) = (u64::from_str_radix(lo, 16), u64::from_str_radix(hi, 16))
            else {
                continue;
            };
            let perms = fields.next().unwrap_or("");
            let what = fields.nth(3).unwrap_or("anonymous");
            maps.push(Mapping {
                what: format!("{what} ({perms})"),
                size: (hi - lo) / 1024,
                rss: 0,
            });
        } else if let (Some(m), Some(kb)) = (maps.last_mut(), kb_field(line, "Rss")) {
            m.rss = kb;
        }
    }
    maps.sort_by_key(|m| std::cmp::Reverse(m.rss));
    maps
}

/// The GNU build id of an ELF64 little-endian file, in hex.
fn build_id(path: &Path) -> Option<String> {
    let elf = std::fs::read(path).ok()?;
    let u16_at = |o: usize| Some(u16::from_le_bytes(elf.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(elf.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| {
        let v = u64::from_le_bytes(elf.get(o..o + 8)?.try_into().ok()?);
        usize::try_from(v).ok()
    };
    if elf.get(..5)? != b"\x7fELF\x02" {
        return None;
    }
    let (phoff, phentsize, phnum) = (u64_at(0x20)?, u16_at(0x36)?, u16_at(0x38)?);
    for i in 0..usize::from(phnum) {
        let ph = phoff + i * usize::from(phentsize);
        if u32_at(ph)? != 4 {
            continue; // not PT_NOTE
        }
        let (mut at, end) = (u64_at(ph + 8)?, u64_at(ph + 8)? + u64_at(ph + 32)?);
        let pad = |n: usize| (n + 3) & !3;
        while at + 12 <= end {
            let (namesz, descsz, kind) = (
                u32_at(at)? as usize,
                u32_at(at + 4)? as usize,
                u32_at(at + 8)?,
            );
            let name = elf.get(at + 12..at + 12 + namesz)?;
            let desc_at = at + 12 + pad(namesz);
            if kind == 3 && name == b"GNU\0" {
                let desc = elf.get(desc_at..desc_at + descsz)?;
                return Some(desc.iter().map(|b| format!("{b:02x}")).collect());
            }
            at = desc_at + pad(descsz);
        }
    }
    None
}

/// The path of the libc this process runs with.
fn libc_path() -> Option<PathBuf> {
    std::fs::read_to_string("/proc/self/maps")
        .ok()?
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.contains("/libc.so") || p.contains("/libc-"))
        .map(PathBuf::from)
}

fn mib(kb: u64) -> String {
    format!("{:.1}", kb as f64 / 1024.0)
}

fn signed_mib(kb: i64) -> String {
    format!("{:+.1}", kb as f64 / 1024.0)
}

fn env_secs(key: &str) -> Option<f64> {
    std::env::var(key).ok()?.parse().ok()
}

// ---------------------------------------------------------------- per-thread children

#[inline(never)]
fn spin(n: u64) -> u64 {
    let mut x = black_box(0x9e37_79b9_7f4a_7c15u64);
    for i in 0..n {
        x = x.rotate_left(5) ^ i.wrapping_mul(0x2545_f491_4f6c_dd1d);
    }
    black_box(x)
}

fn start_runtime(hz: Option<u32>, dir: &Path) -> threadprof_runtime::Profiler {
    let mut builder = threadprof_runtime::Profiler::builder()
        .output_dir(dir)
        .dump_interval(Duration::from_secs(3600));
    if let Some(hz) = hz {
        builder = builder.frequency(hz);
    }
    builder.start().expect("start the runtime")
}

fn own_mem() -> Mem {
    read_mem("self").expect("read /proc/self")
}

/// One thread spins for `BUSY_SECONDS` at 999 Hz, registered or not; prints the process's
/// RSS before it started and while it is still alive.
fn busy_child(register: bool) {
    let dir = std::env::temp_dir().join(format!("footprint-busy-{}", std::process::id()));
    let profiler = start_runtime(Some(999), &dir);
    let before = own_mem();
    let (done_tx, done_rx) = mpsc::channel();
    let release = Arc::new(Barrier::new(2));
    let thread_release = Arc::clone(&release);
    let busy = std::thread::spawn(move || {
        let _guard = register.then(|| threadprof_runtime::enter("busy"));
        let until = Instant::now() + Duration::from_secs_f64(BUSY_SECONDS);
        while Instant::now() < until {
            black_box(spin(100_000));
        }
        done_tx.send(()).expect("parent waits");
        thread_release.wait();
    });
    done_rx.recv().expect("busy thread");
    let after = own_mem();
    let samples = threadprof_runtime::stats().samples;
    release.wait();
    busy.join().expect("busy thread");
    println!(
        "RESULT rss0={} anon0={} rss1={} anon1={} samples={samples}",
        before.rss, before.anon, after.rss, after.anon
    );
    drop(profiler);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `IDLE_THREADS` threads register and block; prints the process's RSS before they were
/// spawned and while they all wait.
fn idle_child() {
    let dir = std::env::temp_dir().join(format!("footprint-idle-{}", std::process::id()));
    let profiler = start_runtime(None, &dir);
    let before = own_mem();
    let ready = Arc::new(Barrier::new(IDLE_THREADS + 1));
    let release = Arc::new(Barrier::new(IDLE_THREADS + 1));
    let threads: Vec<_> = (0..IDLE_THREADS)
        .map(|_| {
            let (ready, release) = (Arc::clone(&ready), Arc::clone(&release));
            std::thread::spawn(move || {
                let _guard = threadprof_runtime::enter("idle");
                ready.wait();
                release.wait();
            })
        })
        .collect();
    ready.wait();
    // Let the dump thread run a few drain ticks over the registered threads.
    std::thread::sleep(Duration::from_millis(300));
    let after = own_mem();
    let live = threadprof_runtime::stats().live_threads;
    release.wait();
    for t in threads {
        t.join().expect("idle thread");
    }
    println!(
        "RESULT rss0={} anon0={} rss1={} anon1={} live={live}",
        before.rss, before.anon, after.rss, after.anon
    );
    drop(profiler);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The value of `key=value` in a line of space-separated pairs.
fn kv(line: &str, key: &str) -> i64 {
    line.split_whitespace()
        .find_map(|p| p.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Runs this binary as a per-thread child; returns its `RESULT` line.
fn self_child(mode: &str, enabled: bool) -> String {
    let out = clean_env(&mut Command::new(
        std::env::current_exe().expect("own path"),
    ))
    .env(CHILD_ENV, mode)
    .env("THREADPROF_ENABLED", if enabled { "1" } else { "0" })
    .output()
    .expect("run child");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child {mode} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .find(|l| l.starts_with("RESULT"))
        .unwrap_or_default()
        .to_owned()
}

/// Removes the runtime's variables that would change what is measured.
fn clean_env(cmd: &mut Command) -> &mut Command {
    for (key, _) in std::env::vars() {
        if key.starts_with("THREADPROF_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

fn median(mut v: Vec<i64>) -> i64 {
    v.sort_unstable();
    v[v.len() / 2]
}

// ---------------------------------------------------------------- the example

/// Builds the example; returns the binary. `debuginfo` builds it with full debug info into
/// its own target directory.
fn build_example(source: &Path, target: &Path, debuginfo: bool) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(source).args([
        "build",
        "--release",
        "--features",
        "enabled",
        "--example",
        "ip_monitor",
        "--target-dir",
    ]);
    cmd.arg(target);
    let shown = format!(
        "(cd {} && {}cargo build --release --features enabled --example ip_monitor --target-dir {})",
        source.display(),
        if debuginfo {
            "CARGO_PROFILE_RELEASE_DEBUG=true "
        } else {
            ""
        },
        target.display()
    );
    if debuginfo {
        cmd.env("CARGO_PROFILE_RELEASE_DEBUG", "true");
    } else {
        cmd.env_remove("CARGO_PROFILE_RELEASE_DEBUG");
    }
    println!("    {shown}");
    let status = cmd.status().expect("run cargo");
    assert!(status.success(), "build failed: {shown}");
    target.join("release/examples/ip_monitor")
}

/// What one run of the example showed.
#[derive(Default)]
struct ExampleRun {
    /// (seconds since spawn, memory) for every poll.
    polls: Vec<(f64, Mem)>,
    /// Seconds since spawn of the readings before and after the first dump.
    first_dump_at: Option<(f64, f64)>,
    before: Mem,
    after: Mem,
    end: Mem,
    first_dump_wall_ms: f64,
    first_dump_cpu_ms: f64,
    /// Dump-thread CPU per later dump (ms) and the number of later dumps seen.
    later_dump_cpu_ms: f64,
    later_dumps: u32,
    /// The mappings right after the first dump, most resident first.
    mappings_after: Vec<Mapping>,
}

impl ExampleRun {
    /// The poll nearest to `t` seconds since spawn.
    fn near(&self, t: f64) -> Mem {
        self.polls
            .iter()
            .min_by(|a, b| (a.0 - t).abs().total_cmp(&(b.0 - t).abs()))
            .map_or_else(Mem::default, |p| p.1)
    }
}

fn run_example(
    exe: &Path,
    seconds: f64,
    profiled: Option<&str>,
    commands: &mut Vec<String>,
) -> ExampleRun {
    let dir = std::env::temp_dir().join(format!(
        "footprint-{}-{}",
        std::process::id(),
        commands.len()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let mut cmd = Command::new(exe);
    clean_env(&mut cmd)
        .arg(&dir)
        .env("IP_MONITOR_SECONDS", format!("{seconds}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let shown_env = match profiled {
        Some(debuginfo) => {
            cmd.env("THREADPROF_ENABLED", "1")
                .env("THREADPROF_DEBUGINFO", debuginfo);
            format!("THREADPROF_ENABLED=1 THREADPROF_DEBUGINFO={debuginfo}")
        }
        None => {
            cmd.env("THREADPROF_ENABLED", "0");
            "THREADPROF_ENABLED=0".to_owned()
        }
    };
    commands.push(format!(
        "IP_MONITOR_SECONDS={seconds} {shown_env} {} {}",
        exe.display(),
        dir.display()
    ));
    let merged = dir.join(threadprof_runtime::MERGED_FILE);
    let spawned = Instant::now();
    let mut child = cmd.spawn().expect("run the example");
    let (pid, pid_s) = (child.id(), child.id().to_string());
    let mut run = ExampleRun::default();
    let mut dump_tid: Option<String> = None;
    // The last reading before the dump started: (memory, dump CPU, wall clock, since spawn).
    let mut last_before: Option<(Mem, u64, SystemTime, f64)> = None;
    let mut started_at: Option<(Mem, u64, SystemTime, f64)> = None;
    // The dump thread's CPU time right after the first dump.
    let mut first_done: Option<u64> = None;
    let mut last_mtime: Option<SystemTime> = None;
    let mut end_cpu: Option<(u64, u32)> = None;
    let end_at = seconds - 0.25;
    loop {
        if child.try_wait().expect("wait for the example").is_some() {
            break;
        }
        let Some(mem) = read_mem(&pid_s) else { break };
        let t = spawned.elapsed().as_secs_f64();
        run.polls.push((t, mem));
        if profiled.is_some() && dump_tid.is_none() {
            dump_tid = find_dump_thread(pid);
        }
        let cpu = dump_tid
            .as_deref()
            .and_then(|tid| thread_cpu_ns(pid, tid))
            .unwrap_or(0);
        if profiled.is_some() && first_done.is_none() {
            if started_at.is_none() {
                let now = SystemTime::now();
                if dir.exists() {
                    started_at = last_before;
                } else {
                    last_before = Some((mem, cpu, now, t));
                }
            }
            if let Some((before, cpu0, poll_time, t0)) = started_at {
                if let Ok(mtime) = std::fs::metadata(&merged).and_then(|m| m.modified()) {
                    // Read again: the reading above may predate the end of the dump.
                    let after = read_mem(&pid_s).unwrap_or(mem);
                    let cpu1 = dump_tid
                        .as_deref()
                        .and_then(|tid| thread_cpu_ns(pid, tid))
                        .unwrap_or(cpu);
                    let t1 = spawned.elapsed().as_secs_f64();
                    run.mappings_after = read_mappings(&pid_s);
                    let born = std::fs::metadata(&dir)
                        .and_then(|m| m.created())
                        .unwrap_or(poll_time);
                    let start = born.max(poll_time);
                    run.before = before;
                    run.after = after;
                    run.first_dump_at = Some((t0, t1));
                    run.first_dump_wall_ms = mtime
                        .duration_since(start)
                        .unwrap_or_default()
                        .as_secs_f64()
                        * 1e3;
                    run.first_dump_cpu_ms = cpu1.saturating_sub(cpu0) as f64 / 1e6;
                    first_done = Some(cpu1);
                    last_mtime = Some(mtime);
                }
            }
        }
        if t >= end_at && end_cpu.is_none() {
            run.end = mem;
            end_cpu = Some((cpu, run.later_dumps));
        }
        if first_done.is_some() && end_cpu.is_none() {
            if let Ok(mtime) = std::fs::metadata(&merged).and_then(|m| m.modified()) {
                if Some(mtime) != last_mtime {
                    last_mtime = Some(mtime);
                    run.later_dumps += 1;
                }
            }
        }
        let pause = if profiled.is_some() && first_done.is_none() {
            Duration::from_millis(1)
        } else {
            Duration::from_millis(50)
        };
        std::thread::sleep(pause);
    }
    let out = child.wait_with_output().expect("example output");
    assert!(
        out.status.success(),
        "{} failed: {}",
        commands.last().map_or("", String::as_str),
        String::from_utf8_lossy(&out.stderr)
    );
    if let (Some(cpu1), Some((cpu_end, dumps))) = (first_done, end_cpu) {
        if dumps > 0 {
            run.later_dump_cpu_ms = cpu_end.saturating_sub(cpu1) as f64 / 1e6 / f64::from(dumps);
            run.later_dumps = dumps;
        }
    }
    if profiled.is_some() {
        assert!(
            first_done.is_some(),
            "no first dump seen in {}",
            dir.display()
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let profiles = stdout.lines().filter(|l| l.contains("s CPU")).count();
        assert_eq!(profiles, 4, "the example's summary:\n{stdout}");
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !stderr.trim().is_empty() {
        eprintln!(
            "{}: {}",
            commands.last().map_or("", String::as_str),
            stderr.trim()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    run
}

// ---------------------------------------------------------------- main

/// Index of the profiler-off run of a build in the results.
const OFF: usize = 3;

fn main() {
    match std::env::var(CHILD_ENV).as_deref() {
        Ok("busy-registered") => return busy_child(true),
        Ok("busy-unregistered") => return busy_child(false),
        Ok("idle") => return idle_child(),
        _ => {}
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let seconds = env_secs("FOOTPRINT_SECONDS").unwrap_or(if quick { 10.0 } else { 60.0 });
    let off_seconds = env_secs("FOOTPRINT_OFF_SECONDS").unwrap_or(seconds.min(10.0));
    assert!(
        seconds >= 3.0 && off_seconds >= 3.0,
        "runs must last at least 3 s"
    );
    let started = Instant::now();

    // <target>/release/deps/footprint-<hash> -> <target>
    let own = std::env::current_exe().expect("own path");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| Some(own.parent()?.parent()?.parent()?.to_path_buf()))
        .expect("target directory");
    println!("# Footprint: RSS and first-dump time of the ip_monitor example");
    println!();
    println!("Builds:");
    println!();
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let release = build_example(here, &target, false);
    let debuginfo = build_example(here, &target.join("footprint-debuginfo"), true);
    // Side by side with another build of the project (e.g. a worktree of the commit before a
    // change): FOOTPRINT_BASELINE=<checkout>; its rows run with the default setting only.
    let baseline = std::env::var_os("FOOTPRINT_BASELINE").map(PathBuf::from);
    let baseline_bins = baseline.as_ref().map(|dir| {
        (
            build_example(dir, &target.join("footprint-baseline"), false),
            build_example(dir, &target.join("footprint-baseline-debuginfo"), true),
        )
    });
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());

    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let libc = libc_path();
    let libc_id = libc.as_deref().and_then(build_id);
    let debug_file = libc_id.as_ref().map(|id| {
        PathBuf::from(format!(
            "/usr/lib/debug/.build-id/{}/{}.debug",
            &id[..2],
            &id[2..]
        ))
    });
    let honoured = threadprof_runtime::config::ENV_VARS.contains(&"THREADPROF_DEBUGINFO");
    println!();
    println!(
        "Machine: {cores} cores. Binaries: release {:.1} MiB, full debug info {:.1} MiB.",
        size(&release) as f64 / 1048576.0,
        size(&debuginfo) as f64 / 1048576.0
    );
    println!(
        "libc: {} (build id {}); separate debug file {}: {}.",
        libc.as_deref()
            .map_or("?".into(), |p| p.display().to_string()),
        libc_id.as_deref().unwrap_or("?"),
        debug_file
            .as_deref()
            .map_or("?".into(), |p| p.display().to_string()),
        if debug_file.as_deref().is_some_and(Path::exists) {
            format!(
                "present, {:.1} MiB",
                size(debug_file.as_deref().unwrap_or(Path::new(""))) as f64 / 1048576.0
            )
        } else {
            "absent".to_owned()
        }
    );
    println!(
        "THREADPROF_DEBUGINFO: {}",
        if honoured {
            "read by the runtime (`off`: symbol tables only; `auto`: also DWARF inside the objects, and a stripped library's separate symbol table; `on`: also separate files' DWARF)."
        } else {
            "NOT read by the runtime at this commit: the `auto` and `on` rows measure the same configuration."
        }
    );

    let mut commands = Vec::new();
    let mut results: BTreeMap<(usize, usize), ExampleRun> = BTreeMap::new();
    let mut builds = vec![("release", &release), ("full debug info", &debuginfo)];
    if let Some((r, d)) = &baseline_bins {
        builds.push(("release, baseline", r));
        builds.push(("full debug info, baseline", d));
    }
    let settings = ["auto", "on", "off"];
    for (b, (name, exe)) in builds.iter().enumerate() {
        let is_baseline = name.ends_with("baseline");
        for (s, setting) in settings.iter().enumerate() {
            if is_baseline && s > 0 {
                continue;
            }
            results.insert(
                (b, s),
                run_example(exe, seconds, Some(setting), &mut commands),
            );
        }
        if !is_baseline {
            // A baseline build is compared with the off run of the same kind of build.
            results.insert((b, OFF), run_example(exe, off_seconds, None, &mut commands));
        }
    }

    println!();
    println!("## RSS of the example (MiB: total = anonymous + file-backed)");
    println!();
    println!(
        "Profiled runs: {seconds} s, a dump every second; profiler off: {off_seconds} s. End of run = 0.25 s before the workers stop."
    );
    println!();
    println!(
        "| binary | profiler | before 1st dump | after 1st dump | end of run | peak (VmHWM) |"
    );
    println!("|---|---|---|---|---|---|");
    let cell = |m: &Mem| format!("{} ({} + {})", mib(m.rss), mib(m.anon), mib(m.file()));
    for (b, (name, _)) in builds.iter().enumerate() {
        for (s, label) in [
            "on, `DEBUGINFO=auto`",
            "on, `DEBUGINFO=on`",
            "on, `DEBUGINFO=off`",
            "off (`ENABLED=0`)",
        ]
        .iter()
        .enumerate()
        {
            let Some(r) = results.get(&(b, s)) else {
                continue;
            };
            let (before, after) = if s == OFF {
                let (t0, t1) = results[&(b, 0)].first_dump_at.unwrap_or((1.0, 1.1));
                (r.near(t0), r.near(t1))
            } else {
                (r.before, r.after)
            };
            println!(
                "| {name} | {label} | {} | {} | {} | {} |",
                cell(&before),
                cell(&after),
                cell(&r.end),
                mib(r.end.hwm)
            );
        }
    }

    println!();
    println!("## Growth (on - off, MiB) and dump times");
    println!();
    println!("| binary | `THREADPROF_DEBUGINFO` | before 1st dump | after 1st dump | end of run (anon) | peak | 1st dump: wall / dump-thread CPU | later dumps: CPU per dump, with 10 drains |");
    println!("|---|---|---|---|---|---|---|---|");
    for (b, (name, _)) in builds.iter().enumerate() {
        let off = &results[&(b % 2, OFF)];
        for (s, setting) in settings.iter().enumerate() {
            let Some(on) = results.get(&(b, s)) else {
                continue;
            };
            let (t0, t1) = on.first_dump_at.unwrap_or((1.0, 1.1));
            let grow = |a: u64, b: u64| signed_mib(a as i64 - b as i64);
            println!(
                "| {name} | `{setting}` | {} | {} | {} ({}) | {} | {:.1} ms / {:.1} ms | {:.2} ms ({} dumps) |",
                grow(on.before.rss, off.near(t0).rss),
                grow(on.after.rss, off.near(t1).rss),
                grow(on.end.rss, off.end.rss),
                grow(on.end.anon, off.end.anon),
                grow(on.end.hwm, off.end.hwm),
                on.first_dump_wall_ms,
                on.first_dump_cpu_ms,
                on.later_dump_cpu_ms,
                on.later_dumps
            );
        }
    }

    println!();
    println!("## Where the RSS is right after the first dump (`THREADPROF_DEBUGINFO=auto`)");
    println!();
    println!("The six most resident mappings of `/proc/<pid>/smaps` (KiB; an anonymous mapping of ~64 MiB reserved is a malloc arena, smaller ones are large allocations, thread stacks, rings).");
    println!();
    println!("| binary | mapping | size | resident |");
    println!("|---|---|---|---|");
    for (b, (name, _)) in builds.iter().enumerate() {
        for m in results[&(b, 0)].mappings_after.iter().take(6) {
            println!("| {name} | {} | {} | {} |", m.what, m.size, m.rss);
        }
    }

    println!();
    println!("## Per registered thread");
    println!();
    let reps = 3;
    let growth =
        |line: &str, key: &str| kv(line, &format!("{key}1")) - kv(line, &format!("{key}0"));
    let busy = |mode: &str| -> Vec<String> { (0..reps).map(|_| self_child(mode, true)).collect() };
    let (registered, unregistered) = (busy("busy-registered"), busy("busy-unregistered"));
    let busy_growth = |key: &str| {
        let of = |lines: &[String]| median(lines.iter().map(|l| growth(l, key)).collect());
        of(&registered) - of(&unregistered)
    };
    let samples = median(registered.iter().map(|l| kv(l, "samples")).collect());
    commands.push(format!(
        "{CHILD_ENV}=busy-registered|busy-unregistered THREADPROF_ENABLED=1 {} (x{reps} each)",
        own.display()
    ));
    let idle_on = self_child("idle", true);
    let idle_off = self_child("idle", false);
    commands.push(format!(
        "{CHILD_ENV}=idle THREADPROF_ENABLED=1|0 {}",
        own.display()
    ));
    let per_thread =
        |key: &str| (growth(&idle_on, key) - growth(&idle_off, key)) as f64 / IDLE_THREADS as f64;
    println!("| what | RSS | of which anonymous |");
    println!("|---|---|---|");
    println!(
        "| one busy thread at 999 Hz for {BUSY_SECONDS} s ({samples} samples): registered minus unregistered, median of {reps} | {} KiB | {} KiB |",
        busy_growth("rss"),
        busy_growth("anon")
    );
    println!(
        "| {IDLE_THREADS} registered idle threads (live: {}), on minus `THREADPROF_ENABLED=0`, per thread | {:.1} KiB | {:.1} KiB |",
        kv(&idle_on, "live"),
        per_thread("rss"),
        per_thread("anon")
    );
    println!(
        "| the runtime started, no thread registered, on minus off (idle child before spawning) | {} KiB | {} KiB |",
        kv(&idle_on, "rss0") - kv(&idle_off, "rss0"),
        kv(&idle_on, "anon0") - kv(&idle_off, "anon0")
    );

    println!();
    println!("Commands (the parent polls /proc/<pid>/smaps_rollup and status):");
    println!();
    for c in &commands {
        println!("    {c}");
    }
    println!();
    println!("Total time: {:.0} s.", started.elapsed().as_secs_f64());
}
