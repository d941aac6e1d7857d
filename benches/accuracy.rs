//! Accuracy and overhead, side by side: no profiler, pprof-rs's `ProfilerGuard`, and ours.
//!
//! `cargo bench --bench accuracy` (add `-- --quick` for one repetition, `ALLOC_SECONDS=60` for
//! the long allocation run). Every run is a child process of this binary, so each profiler gets
//! a fresh process (both install a SIGPROF handler; pprof-rs resets it to SIG_IGN when done).
//! Threads burn a fixed amount of work in distinct `#[inline(never)]` functions; the ground
//! truth is each thread's own CPU time (`CLOCK_THREAD_CPUTIME_ID`, read inside the thread).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "ACCURACY_CHILD";

#[derive(Clone, Copy, PartialEq)]
enum Work {
    Spin,
    Alloc,
    Recurse,
}

struct ThreadSpec {
    name: String,
    registered: bool,
    /// CPU seconds of work at calibration speed.
    seconds: f64,
    work: Work,
}

fn scenario(n: u32, alloc_seconds: f64) -> (&'static str, Vec<ThreadSpec>) {
    let spin = |i: usize, registered: bool, seconds: f64| ThreadSpec {
        name: format!("t{i}"),
        registered,
        seconds,
        work: Work::Spin,
    };
    match n {
        1 => (
            "2 threads, equal load",
            vec![spin(0, true, 1.0), spin(1, true, 1.0)],
        ),
        2 => (
            "2 threads, 3:1 load",
            vec![spin(0, true, 1.5), spin(1, true, 0.5)],
        ),
        3 => (
            "8 threads on 2 cores, loads 1..8",
            (0..8)
                .map(|i| spin(i, true, 0.1 * (i + 1) as f64))
                .collect(),
        ),
        4 => (
            "32 threads: 16 registered, 16 unregistered and busy",
            (0..32).map(|i| spin(i, i < 16, 0.25)).collect(),
        ),
        5 => (
            "4 allocation-heavy threads",
            (0..4)
                .map(|i| ThreadSpec {
                    name: format!("t{i}"),
                    registered: true,
                    seconds: alloc_seconds,
                    work: Work::Alloc,
                })
                .collect(),
        ),
        _ => (
            "2 threads, recursion depth 250",
            (0..2)
                .map(|i| ThreadSpec {
                    name: format!("t{i}"),
                    registered: true,
                    seconds: 0.5,
                    work: Work::Recurse,
                })
                .collect(),
        ),
    }
}

// ---------------------------------------------------------------- the work

#[inline(never)]
fn spin<const K: u64>(n: u64) -> u64 {
    let mut x = black_box(K.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    for i in 0..n {
        x = x.rotate_left(5 + (K % 7) as u32) ^ i.wrapping_add(K);
    }
    black_box(x)
}

macro_rules! spin_table {
    ($($k:literal)*) => { [$(spin::<$k> as fn(u64) -> u64),*] };
}
static SPIN: [fn(u64) -> u64; 32] = spin_table!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31);

#[inline(never)]
fn allocate(n: u64) -> u64 {
    let mut total = 0u64;
    for i in 0..n / 64 {
        let v: Vec<u64> = (0..(i % 32)).collect();
        let s = format!("item-{i}-{}", v.len());
        total = total.wrapping_add(s.len() as u64 + v.iter().sum::<u64>());
        black_box(&s);
    }
    total
}

#[inline(never)]
fn recurse(depth: u32, n: u64) -> u64 {
    if depth == 0 {
        return spin::<99>(n);
    }
    black_box(recurse(depth - 1, n)).wrapping_add(u64::from(depth))
}

fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only into `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn process_cpu() -> f64 {
    // SAFETY: getrusage writes only into the struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn status_kb(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Iterations of `spin` per CPU second on this machine.
fn calibrate() -> f64 {
    let start = thread_cpu();
    let mut n = 0u64;
    while thread_cpu() - start < 0.3 {
        black_box(SPIN[0](100_000));
        n += 100_000;
    }
    n as f64 / (thread_cpu() - start)
}

fn run_thread(index: usize, spec: &ThreadSpec, ips: f64) -> f64 {
    let iters = (spec.seconds * ips) as u64;
    match spec.work {
        Work::Spin => {
            black_box(SPIN[index % 32](iters));
        }
        Work::Alloc => {
            let until = Instant::now() + Duration::from_secs_f64(spec.seconds);
            while Instant::now() < until {
                black_box(allocate(200_000));
            }
        }
        Work::Recurse => {
            let per = 20_000;
            for _ in 0..iters / per {
                black_box(recurse(250, per));
            }
        }
    }
    thread_cpu()
}

// ---------------------------------------------------------------- one child run

fn child(spec: &str) {
    let arg = |k: &str| kv_str(spec, k);
    let scen: u32 = arg("scenario").parse().unwrap();
    let hz: u32 = arg("hz").parse().unwrap();
    let ips: f64 = arg("ips").parse().unwrap();
    let alloc_seconds: f64 = arg("alloc").parse().unwrap();
    let which = arg("profiler");
    let (_, threads) = scenario(scen, alloc_seconds);
    let rss0 = status_kb("VmRSS:");
    let dir = std::env::temp_dir().join(format!("accuracy-{}", std::process::id()));

    let ours = (which == "ours").then(|| {
        threadprof_runtime::Profiler::builder()
            .output_dir(&dir)
            .frequency(hz)
            .dump_interval(Duration::from_secs(3600))
            .start()
            .expect("start ours")
    });
    let pprof_guard = (which == "pprof").then(|| {
        pprof::ProfilerGuardBuilder::default()
            .frequency(hz as i32)
            .build()
            .expect("start pprof-rs")
    });

    let (wall0, cpu0) = (Instant::now(), process_cpu());
    let results: Vec<(String, bool, f64)> = std::thread::scope(|s| {
        let handles: Vec<_> = threads
            .iter()
            .enumerate()
            .map(|(i, t)| {
                std::thread::Builder::new()
                    .name(t.name.clone())
                    .spawn_scoped(s, move || {
                        let _g = (t.registered && which == "ours")
                            .then(|| threadprof_runtime::enter(&t.name));
                        (t.name.clone(), t.registered, run_thread(i, t, ips))
                    })
                    .unwrap()
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let (wall, cpu) = (wall0.elapsed().as_secs_f64(), process_cpu() - cpu0);

    let mut profiled: BTreeMap<String, f64> = BTreeMap::new();
    let (mut dump_ms, mut dump2_ms, mut max_depth, mut rec_depth) = (0.0, 0.0, 0usize, 0usize);
    if ours.is_some() {
        let t = Instant::now();
        assert!(threadprof_runtime::flush());
        dump_ms = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        assert!(threadprof_runtime::flush());
        dump2_ms = t.elapsed().as_secs_f64() * 1e3;
        let bytes = std::fs::read(dir.join(threadprof_runtime::MERGED_FILE)).unwrap_or_default();
        if let Ok(p) = threadprof_runtime::pprof::decode_gz(&bytes) {
            let cpu_i = p.sample_type_index("cpu").unwrap();
            for smp in &p.sample {
                let name = p.label_str(smp, "thread_name").unwrap_or("?").to_owned();
                *profiled.entry(name).or_default() += smp.value[cpu_i] as f64 / 1e9;
                let names = p.stack_names(smp);
                max_depth = max_depth.max(names.len());
                rec_depth =
                    rec_depth.max(names.iter().filter(|n| n.ends_with("::recurse")).count());
            }
        }
    }
    if let Some(guard) = &pprof_guard {
        let t = Instant::now();
        let report = guard.report().build().expect("pprof-rs report");
        dump_ms = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let _again = guard.report().build().expect("pprof-rs report");
        dump2_ms = t.elapsed().as_secs_f64() * 1e3;
        for (frames, count) in &report.data {
            *profiled.entry(frames.thread_name.clone()).or_default() +=
                *count as f64 / f64::from(hz);
            max_depth = max_depth.max(frames.frames.iter().map(Vec::len).sum());
            let rec = frames
                .frames
                .iter()
                .flatten()
                .filter(|s| s.name().ends_with("::recurse"))
                .count();
            rec_depth = rec_depth.max(rec);
        }
    }
    let rss = status_kb("VmHWM:").saturating_sub(rss0);
    println!(
        "RESULT wall={wall} cpu={cpu} dump_ms={dump_ms} dump2_ms={dump2_ms} rss_kb={rss} max_depth={max_depth} rec_depth={rec_depth}"
    );
    for (name, registered, cpu) in results {
        let prof = profiled.get(&name).copied().unwrap_or(0.0);
        println!(
            "THREAD name={name} reg={} cpu={cpu} prof={prof}",
            u8::from(registered)
        );
    }
    drop(pprof_guard);
    drop(ours);
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------- the parent

#[derive(Default, Clone)]
struct Run {
    wall: f64,
    cpu: f64,
    dump_ms: f64,
    dump2_ms: f64,
    rss_kb: f64,
    max_depth: f64,
    rec_depth: f64,
    /// (registered, real cpu, profiled cpu)
    threads: Vec<(bool, f64, f64)>,
}

/// The value of `key=value` in a line of space-separated pairs ("" if absent).
fn kv_str<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or("")
}

fn kv(line: &str, key: &str) -> f64 {
    kv_str(line, key).parse().unwrap_or(0.0)
}

fn spawn_child(spec: &str) -> Run {
    let out = Command::new(std::env::current_exe().unwrap())
        .env(CHILD_ENV, spec)
        .env_remove("THREADPROF_FREQUENCY")
        .env_remove("THREADPROF_ENABLED")
        .output()
        .expect("child");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child {spec} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut run = Run::default();
    for line in text.lines() {
        if line.starts_with("RESULT") {
            run.wall = kv(line, "wall");
            run.cpu = kv(line, "cpu");
            run.dump_ms = kv(line, "dump_ms");
            run.dump2_ms = kv(line, "dump2_ms");
            run.rss_kb = kv(line, "rss_kb");
            run.max_depth = kv(line, "max_depth");
            run.rec_depth = kv(line, "rec_depth");
        } else if line.starts_with("THREAD") {
            run.threads
                .push((kv(line, "reg") == 1.0, kv(line, "cpu"), kv(line, "prof")));
        }
    }
    run
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Figures {
    yield_: f64,
    attr_pp: f64,
    unregistered_samples: f64,
    unregistered_cpu: f64,
}

fn figures(run: &Run, hz: u32) -> Figures {
    let reg: Vec<&(bool, f64, f64)> = run.threads.iter().filter(|t| t.0).collect();
    let real: f64 = reg.iter().map(|t| t.1).sum();
    let prof: f64 = reg.iter().map(|t| t.2).sum();
    let attr = reg
        .iter()
        .map(|t| (100.0 * (t.2 / prof.max(1e-12) - t.1 / real)).abs())
        .fold(0.0, f64::max);
    let unreg = run.threads.iter().filter(|t| !t.0);
    Figures {
        yield_: prof / real,
        attr_pp: attr,
        unregistered_samples: unreg.clone().map(|t| t.2 * f64::from(hz)).sum(),
        unregistered_cpu: unreg.map(|t| t.1).sum(),
    }
}

// ---------------------------------------------------------------- wall-clock mode

/// Time spent inside each phase function of one thread, measured by the thread itself.
#[derive(Default)]
struct Phases(BTreeMap<&'static str, Duration>);

impl Phases {
    fn time<T>(&mut self, name: &'static str, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let out = f();
        *self.0.entry(name).or_default() += t.elapsed();
        out
    }
}

#[inline(never)]
fn wall_burn(d: Duration) -> u64 {
    let until = Instant::now() + d;
    let mut acc = 0;
    while Instant::now() < until {
        acc ^= spin::<77>(10_000);
    }
    acc
}

#[inline(never)]
fn wall_sleep(d: Duration) {
    std::thread::sleep(black_box(d));
}

#[inline(never)]
fn wall_channel_wait(rx: &std::sync::mpsc::Receiver<u64>) -> u64 {
    rx.recv().unwrap_or(0)
}

#[inline(never)]
fn wall_mutex_wait(m: &std::sync::Mutex<u64>) -> u64 {
    *m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Three registered threads with known phases for `seconds`, profiled at `hz` (CPU and wall),
/// among `idle` registered threads that stay blocked.
fn wall_child(hz: u32, seconds: f64, idle: usize) {
    let dir = std::env::temp_dir().join(format!("accuracy-wall-{}", std::process::id()));
    let _p = threadprof_runtime::Profiler::builder()
        .output_dir(&dir)
        .frequency(hz)
        .wall_frequency(hz)
        .dump_interval(Duration::from_secs(3600))
        .start()
        .expect("start");
    let run_for = Duration::from_secs_f64(seconds);
    let (idle_threads, idle_release) = spawn_idle(idle);
    if idle > 0 {
        // Past their registration: each idle thread's first wall sample, its symbolization
        // on the dump thread, and a second of being parked.
        std::thread::sleep(Duration::from_secs(1));
    }
    let (tx, rx) = std::sync::mpsc::channel::<u64>();
    let lock = std::sync::Arc::new(std::sync::Mutex::new(0u64));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Unregistered helpers: a sender every 50 ms, a lock holder 40 ms of every 50 ms.
    let sender = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
                let _ = tx.send(1);
            }
        })
    };
    let holder = {
        let (lock, stop) = (lock.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let g = lock.lock().unwrap();
                std::thread::sleep(Duration::from_millis(40));
                drop(g);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let phased = |name: &'static str, body: Box<dyn Fn(&mut Phases) + Send>| {
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let _g = threadprof_runtime::enter(name);
                let (start, mut phases) = (Instant::now(), Phases::default());
                while start.elapsed() < run_for {
                    body(&mut phases);
                }
                (name, phases, start.elapsed())
            })
            .unwrap()
    };
    let w0 = phased(
        "sleep_3to1_burn",
        Box::new(|ph| {
            ph.time("wall_burn", || wall_burn(Duration::from_millis(25)));
            ph.time("wall_sleep", || wall_sleep(Duration::from_millis(75)));
        }),
    );
    let rx = std::sync::Mutex::new(rx);
    let w1 = phased(
        "channel_wait",
        Box::new(move |ph| {
            let rx = rx.lock().unwrap();
            ph.time("wall_channel_wait", || wall_channel_wait(&rx));
            ph.time("wall_burn", || wall_burn(Duration::from_millis(10)));
        }),
    );
    let lock2 = lock.clone();
    let w2 = phased(
        "mutex_wait",
        Box::new(move |ph| {
            ph.time("wall_mutex_wait", || wall_mutex_wait(&lock2));
            ph.time("wall_burn", || wall_burn(Duration::from_millis(10)));
        }),
    );
    let results: Vec<_> = [w0, w1, w2]
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = (sender.join(), holder.join());
    idle_release.wait();
    for t in idle_threads {
        t.join().unwrap();
    }
    assert!(threadprof_runtime::flush());
    let bytes = std::fs::read(dir.join(threadprof_runtime::MERGED_FILE)).unwrap();
    let p = threadprof_runtime::pprof::decode_gz(&bytes).unwrap();
    let wall_i = p.sample_type_index("wall").unwrap();
    for (thread, phases, registered) in results {
        let samples: Vec<_> = p
            .sample
            .iter()
            .filter(|s| p.label_str(s, "thread_name") == Some(thread))
            .collect();
        let total: f64 = samples.iter().map(|s| s.value[wall_i] as f64).sum();
        println!(
            "WALLTOTAL thread={thread} prof={} truth={}",
            total / 1e9,
            registered.as_secs_f64()
        );
        for (phase, spent) in &phases.0 {
            let (mut wall, mut waiting) = (0.0, 0.0);
            for s in &samples {
                if p.stack_names(s)
                    .iter()
                    .any(|n| n.ends_with(&format!("::{phase}")))
                {
                    wall += s.value[wall_i] as f64;
                    if p.label_str(s, "state") == Some("waiting") {
                        waiting += s.value[wall_i] as f64;
                    }
                }
            }
            println!(
                "WALL thread={thread} phase={phase} prof={} truth={} waiting={}",
                wall / total.max(1.0),
                spent.as_secs_f64() / registered.as_secs_f64(),
                waiting / wall.max(1.0)
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `n` registered threads (64 KiB stacks) blocked on the returned barrier, once all have
/// registered. Each blocks once: a second barrier would wake all of them in a herd that, at
/// 10,000 threads, lasts into a measurement.
fn spawn_idle(
    n: usize,
) -> (
    Vec<std::thread::JoinHandle<()>>,
    std::sync::Arc<std::sync::Barrier>,
) {
    let registered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let release = std::sync::Arc::new(std::sync::Barrier::new(n + 1));
    let threads = (0..n)
        .map(|i| {
            let (registered, release) = (registered.clone(), release.clone());
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    let _g = threadprof_runtime::enter(&format!("idle{}", i % 16));
                    registered.fetch_add(1, std::sync::atomic::Ordering::Release);
                    release.wait();
                })
                .expect("spawn")
        })
        .collect();
    while registered.load(std::sync::atomic::Ordering::Acquire) < n {
        std::thread::sleep(Duration::from_millis(1));
    }
    (threads, release)
}

/// Process CPU seconds while `n` registered threads sleep for `seconds`, wall sampling at `hz`.
fn idle_child(n: usize, hz: u32, seconds: f64) {
    let _p = threadprof_runtime::Profiler::builder()
        .output_dir(std::env::temp_dir().join(format!("accuracy-idle-{}", std::process::id())))
        .wall_frequency(hz)
        .dump_interval(Duration::from_secs(3600))
        .start()
        .expect("start");
    // All registered, then all blocked (on the second barrier) while the process CPU is
    // measured over `seconds`; registering and unregistering are not in the figure.
    let rss0 = status_kb("VmRSS:");
    let t0 = Instant::now();
    let (threads, release) = spawn_idle(n);
    let register_s = t0.elapsed().as_secs_f64();
    // Let registration settle (first wall signals, the dump thread's first drains).
    std::thread::sleep(Duration::from_millis(300));
    let rss = status_kb("VmRSS:");
    let cpu0 = process_cpu();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let cpu = process_cpu() - cpu0;
    let live = threadprof_runtime::live_threads().len();
    let t1 = Instant::now();
    release.wait();
    for t in threads {
        t.join().unwrap();
    }
    let unregister_s = t1.elapsed().as_secs_f64();
    println!(
        "IDLE cpu={cpu} live={live} register_s={register_s} unregister_s={unregister_s} rss_kb={rss} rss0_kb={rss0}"
    );
}

/// Busy loop for task polls (never inlined, so the profile can name it).
#[inline(never)]
fn task_spin(n: u64) -> u64 {
    let mut x = black_box(0x5eed_u64);
    for i in 0..n {
        x = x.rotate_left(5) ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    black_box(x)
}

/// A task that burns `per_poll` of CPU at each of `polls` polls, yielding in between.
struct TaskLoad {
    per_poll: Duration,
    polls: u32,
}

impl std::future::Future for TaskLoad {
    type Output = ();
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        let start = thread_cpu();
        while thread_cpu() - start < self.per_poll.as_secs_f64() {
            task_spin(2_000);
        }
        self.polls -= 1;
        if self.polls == 0 {
            return std::task::Poll::Ready(());
        }
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

/// Wraps a future and adds the thread CPU time of each of its polls to `cpu`.
struct Measured<F> {
    inner: std::pin::Pin<Box<F>>,
    cpu: Arc<std::sync::atomic::AtomicU64>,
}

impl<F: std::future::Future> std::future::Future for Measured<F> {
    type Output = F::Output;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let start = thread_cpu();
        let r = self.inner.as_mut().poll(cx);
        let ns = ((thread_cpu() - start) * 1e9) as u64;
        self.cpu.fetch_add(ns, std::sync::atomic::Ordering::Relaxed);
        r
    }
}

/// Task kinds of the tasks scenario: (tag, CPU weight).
const TASK_KINDS: [(&str, u32); 3] = [("ingest", 3), ("compact", 2), ("query", 1)];

/// Three task kinds with CPU in ratio 3:2:1 interleaved on a 2-worker tokio runtime for
/// about `seconds` of wall time; the shortest poll is `poll_ms`. Prints per task kind the CPU
/// measured around its polls and the CPU its tag has in the profile.
fn tasks_child(hz: u32, poll_ms: f64, seconds: f64) {
    let dir = tempfile::tempdir().unwrap();
    let _p = threadprof_runtime::Profiler::builder()
        .frequency(hz)
        .output_dir(dir.path())
        .dump_interval(Duration::from_secs(3600))
        .start()
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    // Two workers busy for `seconds`: 2 s of CPU a second, over 2 copies of 3 kinds whose polls
    // last 3, 2 and 1 units, each polled `polls` times: 12 * polls units in all.
    let unit = Duration::from_secs_f64(poll_ms / 1e3);
    let polls = (2.0 * seconds / (12.0 * unit.as_secs_f64())).max(2.0) as u32;
    let measured: Vec<Arc<std::sync::atomic::AtomicU64>> =
        TASK_KINDS.iter().map(|_| Arc::default()).collect();
    rt.block_on(async {
        let mut handles = Vec::new();
        for copy in 0..2u32 {
            for (k, (tag, weight)) in TASK_KINDS.iter().enumerate() {
                // Slightly different poll lengths per copy, so no pattern aliases with the timer.
                let per_poll = unit * *weight + Duration::from_micros(u64::from(copy) * 113);
                let load = TaskLoad { per_poll, polls };
                handles.push(tokio::spawn(Measured {
                    inner: Box::pin(threadprof_runtime::task(tag, load)),
                    cpu: measured[k].clone(),
                }));
            }
        }
        for h in handles {
            h.await.unwrap();
        }
    });
    drop(rt);
    assert!(threadprof_runtime::flush());
    let bytes = std::fs::read(dir.path().join(threadprof_runtime::MERGED_FILE)).unwrap();
    let p = threadprof_runtime::pprof::decode_gz(&bytes).unwrap();
    let cpu = p.sample_type_index("cpu").unwrap();
    for (k, (tag, _)) in TASK_KINDS.iter().enumerate() {
        let prof: i64 = p
            .sample
            .iter()
            .filter(|s| p.label_str(s, "tag") == Some(*tag))
            .map(|s| s.value[cpu])
            .sum();
        println!(
            "TASK tag={tag} truth={} prof={}",
            measured[k].load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e9,
            prof as f64 / 1e9
        );
    }
}

fn tasks_table(quick: bool) {
    let seconds = 3.0;
    let reps = if quick { 1 } else { 3 };
    println!();
    println!(
        "## Tasks: three task kinds (CPU 3:2:1) interleaved on 2 tokio workers for {seconds} s"
    );
    println!();
    println!("Ground truth: thread CPU time around each poll, measured by the task's wrapper. `error` = |profiled CPU share - measured share| among the three tags; yield = profiled CPU / measured CPU. Shortest poll 1 ms (a quarter of the 4 ms kernel tick at which CPU timers are checked) or 10 ms. Median of {reps} run(s), each in a fresh process; `worst` = largest error of any run.");
    println!();
    println!("| Hz | shortest poll | task | measured share | profiled share | error pp | worst pp | yield |");
    println!("|---|---|---|---|---|---|---|---|");
    for hz in [99u32, 999] {
        for poll_ms in [1.0f64, 10.0] {
            // tag -> runs of (measured share, profiled share, yield)
            let mut rows: BTreeMap<&str, Vec<(f64, f64, f64)>> = BTreeMap::new();
            for _ in 0..reps {
                let out = Command::new(std::env::current_exe().unwrap())
                    .env(
                        CHILD_ENV,
                        format!("mode=tasks hz={hz} poll_ms={poll_ms} seconds={seconds}"),
                    )
                    .output()
                    .expect("tasks child");
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let text = String::from_utf8_lossy(&out.stdout);
                let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("TASK ")).collect();
                let truth_sum: f64 = lines.iter().map(|l| kv(l, "truth")).sum();
                let prof_sum: f64 = lines.iter().map(|l| kv(l, "prof")).sum();
                for l in &lines {
                    let tag = TASK_KINDS
                        .iter()
                        .map(|k| k.0)
                        .find(|t| *t == kv_str(l, "tag"))
                        .unwrap();
                    rows.entry(tag).or_default().push((
                        kv(l, "truth") / truth_sum,
                        kv(l, "prof") / prof_sum,
                        kv(l, "prof") / kv(l, "truth"),
                    ));
                }
            }
            for (tag, runs) in &rows {
                let errors: Vec<f64> = runs.iter().map(|r| (r.1 - r.0).abs() * 100.0).collect();
                let worst = errors.iter().copied().fold(0.0, f64::max);
                println!(
                    "| {hz} | {poll_ms} ms | {tag} | {:.1}% | {:.1}% | {:.2} | {worst:.2} | {:.3} |",
                    median(runs.iter().map(|r| r.0).collect()) * 100.0,
                    median(runs.iter().map(|r| r.1).collect()) * 100.0,
                    median(errors),
                    median(runs.iter().map(|r| r.2).collect()),
                );
            }
        }
    }
}

/// Process CPU (% of one core) of an idle child of `exe` (this bench or another build's), and
/// its whole `IDLE` line.
fn idle_cost(exe: &std::path::Path, n: usize, hz: u32, seconds: f64) -> Option<(f64, String)> {
    let out = Command::new(exe)
        .env(
            CHILD_ENV,
            format!("mode=idle n={n} hz={hz} seconds={seconds}"),
        )
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text.lines().find(|l| l.starts_with("IDLE"))?;
    Some((kv(line, "cpu") / seconds * 100.0, line.to_owned()))
}

/// Cost of registered threads that do nothing, by how many there are (issue "Scale"), side by
/// side with another build's bench binary when `SCALE_BASELINE=<path>` is set.
fn scale_table(quick: bool) {
    let seconds = 5.0;
    let reps = if quick { 1 } else { 3 };
    let here = std::env::current_exe().unwrap();
    let baseline = std::env::var_os("SCALE_BASELINE").map(std::path::PathBuf::from);
    println!();
    println!("## Scale: process CPU while N registered threads sleep for {seconds} s");
    println!();
    println!(
        "% of one core, median of {reps} run(s), each in a fresh process. Baseline: {}.",
        baseline.as_ref().map_or(
            "not run (set SCALE_BASELINE to another build's accuracy bench binary)".to_owned(),
            |b| b.display().to_string()
        )
    );
    println!();
    println!("| idle registered threads | wall sampling | this build | baseline |");
    println!("|---|---|---|---|");
    let mut largest = None;
    for n in [1usize, 100, 1000, 5000, 10_000] {
        for hz in [0u32, 99] {
            let mut cost = |exe: &std::path::Path, here: bool| -> String {
                let runs: Vec<(f64, String)> = (0..reps)
                    .filter_map(|_| idle_cost(exe, n, hz, seconds))
                    .collect();
                if here && n == 10_000 && hz > 0 {
                    largest = runs.last().map(|r| r.1.clone());
                }
                if runs.is_empty() {
                    "failed".to_owned()
                } else {
                    format!("{:.2}%", median(runs.iter().map(|r| r.0).collect()))
                }
            };
            let base = baseline
                .as_deref()
                .map_or("-".to_owned(), |b| cost(b, false));
            let this = cost(&here, true);
            println!(
                "| {n} | {} | {this} | {base} |",
                if hz == 0 {
                    "off".to_owned()
                } else {
                    format!("{hz} Hz")
                },
            );
        }
    }
    if let Some(line) = largest {
        println!();
        println!(
            "10,000 registered threads (this build, 99 Hz, 64 KiB thread stacks): RSS {:.0} MiB ({:.0} MiB before they started), registered in {:.2} s, unregistered (released and joined) in {:.2} s.",
            kv(&line, "rss_kb") / 1024.0,
            kv(&line, "rss0_kb") / 1024.0,
            kv(&line, "register_s"),
            kv(&line, "unregister_s")
        );
    }
}

fn wall_tables(quick: bool) {
    wall_table(quick, 0);
    wall_table(quick, 1000);
    idle_table(quick);
}

/// The wall-mode accuracy table, with `idle` registered threads blocked beside the three.
fn wall_table(quick: bool, idle: usize) {
    let seconds = 3.0;
    println!();
    println!("## Wall-clock mode, 99 Hz: three threads with known phases for {seconds} s, among {idle} idle registered threads");
    println!();
    println!("Ground truth: time inside each phase function, measured by the thread. `error` = |profiled wall share - measured share|.");
    println!();
    let reps = if quick { 1 } else { 3 };
    println!("Each cell: median of {reps} run(s), each in a fresh process; `worst` = largest error of any run.");
    println!();
    println!(
        "| thread | phase | measured share | profiled share | error pp | worst pp | `state=waiting` share |"
    );
    println!("|---|---|---|---|---|---|---|");
    /// Per run: measured share, profiled share, waiting share.
    type PhaseRuns = Vec<(f64, f64, f64)>;
    // (thread, phase) -> runs; thread -> per run (prof, truth) totals.
    let mut phases: BTreeMap<(String, String), PhaseRuns> = BTreeMap::new();
    let mut totals: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for _ in 0..reps {
        let out = Command::new(std::env::current_exe().unwrap())
            .env(
                CHILD_ENV,
                format!("mode=wall hz=99 seconds={seconds} idle={idle}"),
            )
            .output()
            .expect("wall child");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        for l in text.lines().filter(|l| l.starts_with("WALL ")) {
            let key = (
                kv_str(l, "thread").to_owned(),
                kv_str(l, "phase").to_owned(),
            );
            let row = (kv(l, "truth"), kv(l, "prof"), kv(l, "waiting"));
            phases.entry(key).or_default().push(row);
        }
        for l in text.lines().filter(|l| l.starts_with("WALLTOTAL")) {
            let row = (kv(l, "prof"), kv(l, "truth"));
            totals
                .entry(kv_str(l, "thread").to_owned())
                .or_default()
                .push(row);
        }
    }
    let mut worst = 0.0f64;
    for ((thread, phase), runs) in &phases {
        let errors: Vec<f64> = runs.iter().map(|r| (r.1 - r.0).abs() * 100.0).collect();
        let run_worst = errors.iter().copied().fold(0.0, f64::max);
        let error = median(errors);
        worst = worst.max(error);
        println!(
            "| {thread} | {phase} | {:.1}% | {:.1}% | {error:.2} | {run_worst:.2} | {:.1}% |",
            median(runs.iter().map(|r| r.0).collect()) * 100.0,
            median(runs.iter().map(|r| r.1).collect()) * 100.0,
            median(runs.iter().map(|r| r.2).collect()) * 100.0
        );
    }
    println!();
    for (thread, runs) in &totals {
        let (prof, truth) = (
            median(runs.iter().map(|r| r.0).collect()),
            median(runs.iter().map(|r| r.1).collect()),
        );
        println!(
            "Total wall of `{thread}`: {prof:.3} s profiled vs {truth:.3} s registered ({:+.2}%)",
            (prof / truth - 1.0) * 100.0
        );
    }
    println!("Worst per-function wall share error (median of runs): {worst:.2} pp");
}

/// Cost of wall sampling on a few idle threads.
fn idle_table(quick: bool) {
    let seconds = 3.0;
    let reps = if quick { 1 } else { 3 };
    println!();
    println!("### Cost of wall sampling on idle (blocked) registered threads, 99 Hz, {seconds} s");
    println!();
    println!("Blocked threads are signalled once per wait, then credited without waking them; the wall ticker wakes once per period for the whole process, so its cost is spread over the threads.");
    println!();
    println!("| idle threads | process CPU, wall off | process CPU, wall 99 Hz | per idle thread (% of one core) | per wall period |");
    println!("|---|---|---|---|---|");
    for n in [1usize, 10, 100] {
        let cpu = |hz: u32| -> f64 {
            median(
                (0..reps)
                    .map(|_| {
                        let out = Command::new(std::env::current_exe().unwrap())
                            .env(
                                CHILD_ENV,
                                format!("mode=idle n={n} hz={hz} seconds={seconds}"),
                            )
                            .output()
                            .expect("idle child");
                        let text = String::from_utf8_lossy(&out.stdout).into_owned();
                        text.lines()
                            .find(|l| l.starts_with("IDLE"))
                            .map_or(0.0, |l| kv(l, "cpu"))
                    })
                    .collect(),
            )
        };
        let (off, on) = (cpu(0), cpu(99));
        let per_thread = (on - off) / seconds / n as f64 * 100.0;
        let per_sample_us = (on - off) / (n as f64 * 99.0 * seconds) * 1e6;
        println!("| {n} | {off:.4} s | {on:.4} s | {per_thread:.4}% | {per_sample_us:.2} µs |");
    }
}

fn main() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        let arg = |k: &str| kv_str(&spec, k);
        match arg("mode") {
            "wall" => wall_child(
                arg("hz").parse().unwrap(),
                arg("seconds").parse().unwrap(),
                spec.split_whitespace()
                    .find_map(|kv| kv.strip_prefix("idle="))
                    .map_or(0, |v| v.parse().unwrap()),
            ),
            "tasks" => tasks_child(
                arg("hz").parse().unwrap(),
                arg("poll_ms").parse().unwrap(),
                arg("seconds").parse().unwrap(),
            ),
            "idle" => idle_child(
                arg("n").parse().unwrap(),
                arg("hz").parse().unwrap(),
                arg("seconds").parse().unwrap(),
            ),
            _ => child(&spec),
        }
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let reps = if quick { 1 } else { 3 };
    let alloc_seconds: f64 = std::env::var("ALLOC_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let ips = calibrate();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("# Accuracy and overhead: none vs pprof-rs 0.15 ProfilerGuard vs threadprof");
    println!();
    println!(
        "Machine: {cores} cores. Each cell: median of {reps} run(s), each in a fresh process."
    );
    println!("yield = profiled CPU / real thread CPU (registered threads); attr = max |sample share - CPU share| (pp);");
    println!("unreg = samples on unregistered threads; wall/CPU = process wall and CPU time vs no profiler;");
    println!("dump = first report/dump, then a second one (ms); RSS = peak RSS growth (MiB).");
    let started = Instant::now();
    if std::env::args().any(|a| a == "--wall-only") {
        wall_tables(quick);
        return;
    }
    if std::env::args().any(|a| a == "--tasks-only") {
        tasks_table(quick);
        return;
    }
    if std::env::args().any(|a| a == "--scale-only") {
        scale_table(quick);
        return;
    }
    let mut summary = Vec::new();
    // `--only N` runs scenario N alone (e.g. `ALLOC_SECONDS=60 cargo bench --bench accuracy --
    // --only 5` for the 60 s allocation run), without the wall tables.
    let only: Option<u32> = std::env::args()
        .skip_while(|a| a != "--only")
        .nth(1)
        .and_then(|n| n.parse().ok());
    let plan: Vec<(u32, u32)> = [99u32, 999]
        .iter()
        .flat_map(|&hz| (1..=4).map(move |s| (s, hz)))
        .chain([(5, 99), (6, 99)])
        .filter(|(s, _)| only.is_none_or(|o| o == *s))
        .collect();
    for (scen, hz) in plan {
        let (title, _) = scenario(scen, alloc_seconds);
        println!();
        println!("## Scenario {scen}: {title}, {hz} Hz");
        println!();
        println!("| profiler | yield | attr pp | unreg samples | unreg CPU s | wall ×none | CPU ×none | dump ms (1st / 2nd) | RSS MiB | max depth | recurse frames |");
        println!("|---|---|---|---|---|---|---|---|---|---|---|");
        let mut base: Option<(f64, f64)> = None;
        for which in ["none", "pprof", "ours"] {
            let spec =
                format!("scenario={scen} hz={hz} ips={ips} profiler={which} alloc={alloc_seconds}");
            let runs: Vec<Run> = (0..reps).map(|_| spawn_child(&spec)).collect();
            let wall = median(runs.iter().map(|r| r.wall).collect());
            let cpu = median(runs.iter().map(|r| r.cpu).collect());
            let (bw, bc) = *base.get_or_insert((wall, cpu));
            let figs: Vec<Figures> = runs.iter().map(|r| figures(r, hz)).collect();
            let y = median(figs.iter().map(|f| f.yield_).collect());
            let a = median(figs.iter().map(|f| f.attr_pp).collect());
            let has_unreg = runs[0].threads.iter().any(|t| !t.0);
            let show = |v: f64, prec: usize| {
                if has_unreg {
                    format!("{v:.prec$}")
                } else {
                    "-".into()
                }
            };
            let us = show(
                median(figs.iter().map(|f| f.unregistered_samples).collect()),
                0,
            );
            let uc = show(median(figs.iter().map(|f| f.unregistered_cpu).collect()), 2);
            let d1 = median(runs.iter().map(|r| r.dump_ms).collect());
            let d2 = median(runs.iter().map(|r| r.dump2_ms).collect());
            let rss = median(runs.iter().map(|r| r.rss_kb).collect()) / 1024.0;
            let depth = median(runs.iter().map(|r| r.max_depth).collect());
            let rec = median(runs.iter().map(|r| r.rec_depth).collect());
            if which == "none" {
                println!("| none | - | - | - | {uc} | 1.000 | 1.000 | - | {rss:.1} | - | - |");
                continue;
            }
            println!(
                "| {which} | {y:.3} | {a:.2} | {us} | {uc} | {:.3} | {:.3} | {d1:.1} / {d2:.1} | {rss:.1} | {depth:.0} | {rec:.0} |",
                wall / bw,
                cpu / bc
            );
            if scen <= 4 {
                summary.push((which, hz, y, a, cpu / bc));
            }
        }
    }
    if only.is_some() {
        println!("Total bench time: {:.0} s", started.elapsed().as_secs_f64());
        return;
    }
    wall_tables(quick);
    tasks_table(quick);
    println!();
    for which in ["pprof", "ours"] {
        for hz in [99, 999] {
            let rows: Vec<_> = summary
                .iter()
                .filter(|r| r.0 == which && r.1 == hz)
                .collect();
            let lo = rows.iter().map(|r| r.2).fold(f64::MAX, f64::min);
            let hi = rows.iter().map(|r| r.2).fold(f64::MIN, f64::max);
            let attr = rows.iter().map(|r| r.3).fold(0.0, f64::max);
            let cpu = rows.iter().map(|r| r.4).fold(0.0, f64::max);
            println!(
                "Summary {which:>5} @ {hz:>3} Hz, scenarios 1-4: yield {lo:.3}-{hi:.3}, max attribution error {attr:.2} pp, worst CPU ×none {cpu:.3}"
            );
        }
    }
    println!("Total bench time: {:.0} s", started.elapsed().as_secs_f64());
}
