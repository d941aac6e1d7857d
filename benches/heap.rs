//! Heap profiling: accuracy, cost, tracking memory and RSS over time. Prints markdown tables.
//!
//! `cargo bench --bench heap --features enabled,heap` (add `-- --quick` for a short run).
//! Every case runs in a fresh child process of this binary (the interval is read from the
//! environment at start):
//!
//! 1. Accuracy: tag `A` allocates mixed sizes from 16 B to 1 MiB and keeps 64 MiB live, tag
//!    `B` allocates a third as much and keeps nothing; estimated `alloc_space` and
//!    `inuse_space` per tag against the bytes the bench counted itself, at the default interval
//!    and at 64 KiB, 10 runs each (3 in quick mode): the error of one run is a random variable
//!    (about 7% standard deviation for 64 MiB live at 512 KiB), so the table gives them all.
//! 2. Cost: small allocations and frees on 2 threads, through `threadprof::Allocator` around
//!    an allocator and through that allocator alone, alternating in one process; ns per
//!    allocation+free pair, at the default interval, at 64 KiB, and with sampling off. Then the
//!    same comparison on an allocation-heavy workload of ordinary Rust code (strings, a
//!    vector of fields, a hash map, boxed buffers) through the global allocator: this bench's
//!    global allocator sends each call either through the wrapper or straight to the inner
//!    allocator, switched between rounds (the switch, one predictable branch, is in both).
//! 3. Tracking memory for 100,000 live sampled allocations (interval 1 byte: all sampled),
//!    against the same program with sampling off.
//! 4. RSS during a soak of steady allocation (`HEAP_SOAK_SECONDS`, default 10, 3 in quick
//!    mode), with sampling at the default interval and off.
//! 5. Sustained allocation rates at 64 KiB: one thread allocates and frees 1–16 KiB blocks at
//!    1 to 16 GiB/s for 2 s (1 s in quick mode); samples taken and dropped (the event ring
//!    holds 4,096 between drains).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: Switch = Switch;

/// The global allocator of this bench: `threadprof::Allocator` around the system allocator or
/// mimalloc (`HEAP_BENCH_MIMALLOC` set, read at the first allocation), or that inner allocator
/// alone while `MODE` is `PLAIN` or `COUNT` (the workload rows of case 2; everything else runs
/// wrapped).
struct Switch;

const PLAIN: u8 = 0;
const WRAP: u8 = 1;
/// Plain, and allocations are counted per thread (`ALLOCATIONS`).
const COUNT: u8 = 2;
static MODE: AtomicU8 = AtomicU8::new(WRAP);
/// 0: not read yet; 1: the system allocator; 2: mimalloc.
static INNER: AtomicU8 = AtomicU8::new(0);
static W_SYSTEM: threadprof::Allocator = threadprof::Allocator::system();
static W_MIMALLOC: threadprof::Allocator<mimalloc::MiMalloc> =
    threadprof::Allocator::new(mimalloc::MiMalloc);

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

#[inline(always)]
fn inner() -> u8 {
    let v = INNER.load(Ordering::Relaxed);
    if v != 0 {
        return v;
    }
    // SAFETY: getenv with a NUL-terminated name; it neither allocates nor calls back here.
    let mi = unsafe { !libc::getenv(c"HEAP_BENCH_MIMALLOC".as_ptr()).is_null() };
    let v = if mi { 2 } else { 1 };
    INNER.store(v, Ordering::Relaxed);
    v
}

macro_rules! switch {
    ($count:expr, $method:ident($($arg:expr),*)) => {{
        let mode = MODE.load(Ordering::Relaxed);
        if $count && mode == COUNT {
            let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        }
        // SAFETY: forwarded with the caller's guarantees; a process uses one inner allocator
        // for its whole life, so a block always goes back to the allocator that made it.
        unsafe {
            match (inner(), mode == WRAP) {
                (2, true) => W_MIMALLOC.$method($($arg),*),
                (2, false) => mimalloc::MiMalloc.$method($($arg),*),
                (_, true) => W_SYSTEM.$method($($arg),*),
                (_, false) => System.$method($($arg),*),
            }
        }
    }};
}

// SAFETY: every call is forwarded (see `switch!`).
unsafe impl GlobalAlloc for Switch {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        switch!(true, alloc(layout))
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        switch!(true, alloc_zeroed(layout))
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        switch!(false, dealloc(ptr, layout))
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        switch!(true, realloc(ptr, layout, new_size))
    }
}

const CHILD: &str = "HEAP_BENCH_CHILD";
const MIB: usize = 1 << 20;

fn main() {
    match std::env::var(CHILD).ok().as_deref() {
        Some("accuracy") => child_accuracy(),
        Some("cost") => child_cost(),
        Some("workload") => child_workload(),
        Some("tracking") => child_tracking(),
        Some("soak") => child_soak(),
        Some("rate") => child_rate(),
        Some(other) => panic!("unknown case {other}"),
        None => parent(),
    }
}

fn quick() -> bool {
    std::env::args().any(|a| a == "--quick")
}

/// Whether case `n` (1–4) runs: all of them unless `--only N` names one.
fn runs_case(n: &str) -> bool {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == "--only") {
        Some(i) => args.get(i + 1).is_some_and(|v| v == n),
        None => true,
    }
}

/// Runs case `case` in a child with `env`; returns its `RESULT` lines as key/value maps.
fn run(case: &str, env: &[(&str, &str)]) -> Vec<std::collections::HashMap<String, f64>> {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    if quick() {
        cmd.arg("--quick");
    }
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("THREADPROF_") {
            cmd.env_remove(key);
        }
    }
    cmd.env(CHILD, case).env("THREADPROF_DIR", dir.path());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{case} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("RESULT "))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.parse().unwrap_or(f64::NAN)))
                .collect()
        })
        .collect()
}

fn parent() {
    let runs = if quick() { 3 } else { 10 };
    if runs_case("1") {
        accuracy_table(runs);
    }
    if runs_case("2") {
        cost_table();
        workload_table();
    }
    if runs_case("3") {
        tracking_table();
    }
    if runs_case("4") {
        soak_table();
    }
    if runs_case("5") {
        rate_table();
    }
}

fn accuracy_table(runs: usize) {
    println!("## 1. Accuracy ({runs} runs per interval, each a fresh process)\n");
    println!("Estimate ÷ truth per run, then the median and worst |error|. Tag A allocates 16 B–1 MiB blocks (1.6 GiB, at about 1 GiB/s) and keeps 64 MiB of them; tag B allocates a third as much and keeps nothing.\n");
    println!("| interval | A alloc_space | B alloc_space | A inuse_space | B inuse_space (max) | samples per run |");
    println!("|---|---|---|---|---|---|");
    for (label, interval) in [("512 KiB (default)", "524288"), ("64 KiB", "65536")] {
        let results: Vec<_> = (0..runs)
            .map(|_| run("accuracy", &[("THREADPROF_HEAP_INTERVAL", interval)]).remove(0))
            .collect();
        let column = |est: &str, truth: &str| {
            let ratios: Vec<f64> = results.iter().map(|r| r[est] / r[truth]).collect();
            let errors: Vec<f64> = ratios.iter().map(|x| (x - 1.0).abs() * 100.0).collect();
            let worst = errors.iter().cloned().fold(0.0, f64::max);
            let list: Vec<String> = ratios.iter().map(|x| format!("{x:.3}")).collect();
            format!(
                "{} (median {:.1}%, worst {:.1}%)",
                list.join(" "),
                median(errors),
                worst
            )
        };
        let b_inuse = results.iter().map(|r| r["b_inuse_est"]).fold(0.0, f64::max);
        let samples = median(results.iter().map(|r| r["samples"]).collect());
        println!(
            "| {label} | {} | {} | {} | {:.2} MiB | {samples:.0} |",
            column("a_alloc_est", "a_alloc"),
            column("b_alloc_est", "b_alloc"),
            column("a_inuse_est", "a_inuse"),
            b_inuse / MIB as f64,
        );
        let dropped: f64 = results.iter().map(|r| r["dropped"]).sum();
        if dropped > 0.0 {
            println!("\n({dropped} samples dropped at {label})\n");
        }
    }
}

fn cost_table() {
    println!(
        "\n## 2. Cost: 2 threads, allocation + free of 16–256 B, ns per pair (medians of rounds)\n"
    );
    println!("| interval | inner | inner alone | through the wrapper | ratio |");
    println!("|---|---|---|---|---|");
    for (label, interval) in [
        ("512 KiB (default)", "524288"),
        ("64 KiB", "65536"),
        ("0 (off)", "0"),
    ] {
        for r in run("cost", &[("THREADPROF_HEAP_INTERVAL", interval)]) {
            let inner = if r["inner"] == 0.0 {
                "System (glibc)"
            } else {
                "mimalloc"
            };
            println!(
                "| {label} | {inner} | {:.1} | {:.1} | {:.3} |",
                r["plain_ns"],
                r["wrapped_ns"],
                r["wrapped_ns"] / r["plain_ns"]
            );
        }
    }
}

fn workload_table() {
    println!("\n## 2b. Cost on an allocation-heavy workload: 2 threads of ordinary Rust code (format, split into owned fields, a hash map of 1,000 keys, boxed buffers), ns per iteration (medians of rounds)\n");
    println!("| interval | inner | inner alone | through the wrapper | ratio | allocations per iteration | allocations per second (2 threads, wrapped) |");
    println!("|---|---|---|---|---|---|---|");
    for (label, interval) in [
        ("512 KiB (default)", "524288"),
        ("64 KiB", "65536"),
        ("0 (off)", "0"),
    ] {
        for (inner, mi) in [("System (glibc)", false), ("mimalloc", true)] {
            let mut env = vec![("THREADPROF_HEAP_INTERVAL", interval)];
            if mi {
                env.push(("HEAP_BENCH_MIMALLOC", "1"));
            }
            let r = &run("workload", &env)[0];
            println!(
                "| {label} | {inner} | {:.1} | {:.1} | {:.3} | {:.1} | {:.1} M |",
                r["plain_ns"],
                r["wrapped_ns"],
                r["wrapped_ns"] / r["plain_ns"],
                r["allocs_per_iter"],
                2.0 * r["allocs_per_iter"] / r["wrapped_ns"] * 1e3
            );
        }
    }
}

fn tracking_table() {
    println!("\n## 3. Tracking memory, 100,000 live sampled allocations of 64 B\n");
    let on = &run("tracking", &[("THREADPROF_HEAP_INTERVAL", "1")])[0];
    let off = &run("tracking", &[("THREADPROF_HEAP_INTERVAL", "0")])[0];
    println!(
        "| | RSS growth while allocating | live sampled | Stats::heap_tracking_bytes | dropped |"
    );
    println!("|---|---|---|---|---|");
    for (label, r) in [("every allocation sampled", on), ("sampling off", off)] {
        println!(
            "| {label} | {:.1} MiB | {} | {:.1} MiB | {} |",
            r["rss_growth_kib"] / 1024.0,
            r["live"],
            r["tracking"] / MIB as f64,
            r["dropped"]
        );
    }
    println!(
        "\nDifference: {:.1} MiB, {:.0} bytes per live sampled allocation.",
        (on["rss_growth_kib"] - off["rss_growth_kib"]) / 1024.0,
        (on["rss_growth_kib"] - off["rss_growth_kib"]) * 1024.0 / on["live"].max(1.0)
    );
}

fn soak_table() {
    let secs = std::env::var("HEAP_SOAK_SECONDS")
        .unwrap_or_else(|_| if quick() { "3" } else { "10" }.to_owned());
    println!("\n## 4. Soak: {secs} s of steady allocation (2 threads, 100 MiB/s each, 16 B–64 KiB blocks written, 64 MiB live)\n");
    println!("| sampling | RSS after 1 s | RSS at the end | max RSS | samples | dropped | live sampled (end) | tracking (end) |");
    println!("|---|---|---|---|---|---|---|---|");
    for (label, interval) in [("512 KiB", "524288"), ("off", "0")] {
        let r = &run(
            "soak",
            &[
                ("THREADPROF_HEAP_INTERVAL", interval),
                ("HEAP_SOAK_SECONDS", &secs),
            ],
        )[0];
        println!(
            "| {label} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {} | {} | {} | {:.1} MiB |",
            r["rss_1s_kib"] / 1024.0,
            r["rss_end_kib"] / 1024.0,
            r["rss_max_kib"] / 1024.0,
            r["samples"],
            r["dropped"],
            r["live"],
            r["tracking"] / MIB as f64
        );
    }
}

fn rate_table() {
    let secs = if quick() { "1" } else { "2" };
    println!("\n## 5. Sustained rates at 64 KiB: 1 thread, 1–16 KiB blocks, {secs} s per rate\n");
    println!("| asked | achieved | samples | dropped | dropped share |");
    println!("|---|---|---|---|---|");
    for rate in ["1", "2", "4", "8", "16"] {
        let r = &run(
            "rate",
            &[
                ("THREADPROF_HEAP_INTERVAL", "65536"),
                ("HEAP_BENCH_GIB_PER_SECOND", rate),
                ("HEAP_BENCH_SECONDS", secs),
            ],
        )[0];
        println!(
            "| {rate} GiB/s | {:.1} GiB/s | {} | {} | {:.1}% |",
            r["gib_per_s"],
            r["samples"],
            r["dropped"],
            100.0 * r["dropped"] / (r["samples"] + r["dropped"]).max(1.0)
        );
    }
}

fn child_rate() {
    let rate: f64 = std::env::var("HEAP_BENCH_GIB_PER_SECOND")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    let secs: f64 = std::env::var("HEAP_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2.0);
    let _p = start(Duration::from_secs(3600));
    let done = threadprof::spawn("rate", move || {
        let t0 = Instant::now();
        let mut done = 0usize;
        let mut x = 0x2545_f491u64;
        while t0.elapsed().as_secs_f64() < secs {
            for _ in 0..64 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let s = 1024 + (x % (15 * 1024)) as usize;
                black_box(Vec::<u8>::with_capacity(s));
                done += s;
            }
            let due = Duration::from_secs_f64(done as f64 / (rate * 1024.0 * MIB as f64));
            if let Some(ahead) = due.checked_sub(t0.elapsed()) {
                std::thread::sleep(ahead);
            }
        }
        (done, t0.elapsed())
    });
    let (bytes, took) = done.join().unwrap();
    let s = threadprof::stats();
    println!(
        "RESULT gib_per_s={} samples={} dropped={}",
        bytes as f64 / took.as_secs_f64() / (1024.0 * MIB as f64),
        s.heap_samples,
        s.heap_dropped
    );
}

fn start(dump: Duration) -> threadprof::Profiler {
    threadprof::Profiler::builder()
        .dump_interval(dump)
        .start()
        .expect("start")
}

/// Sizes from 16 B to 1 MiB, log-uniform, from a fixed-seed generator.
fn sizes(seed: u64) -> impl Iterator<Item = usize> {
    let mut x = seed | 1;
    std::iter::from_fn(move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let exp = 4 + (x % 17) as u32; // 2^4 .. 2^20
        let base = 1usize << exp;
        Some(base + (x >> 20) as usize % base)
    })
    .map(|s| s.min(MIB))
}

#[inline(never)]
fn keep_a(total: usize) -> (Vec<Vec<u8>>, usize) {
    let mut kept = Vec::new();
    let mut done = 0;
    for s in sizes(7) {
        if done >= total {
            break;
        }
        kept.push(Vec::<u8>::with_capacity(s));
        done += s;
    }
    (kept, done)
}

/// Allocates and frees `total` bytes, at about 1 GiB/s (`HEAP_BENCH_GIB_PER_SECOND`; unpaced,
/// blocks that are never touched go by at 50 GiB/s and more, which no program does, and fill
/// the event ring faster than the dump thread drains it).
#[inline(never)]
fn churn(total: usize, seed: u64) -> usize {
    let rate: f64 = std::env::var("HEAP_BENCH_GIB_PER_SECOND")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    let t0 = Instant::now();
    let mut done = 0;
    for s in sizes(seed) {
        if done >= total {
            break;
        }
        black_box(Vec::<u8>::with_capacity(s));
        done += s;
        let due = Duration::from_secs_f64(done as f64 / (rate * 1024.0 * MIB as f64));
        if let Some(ahead) = due.checked_sub(t0.elapsed()) {
            std::thread::sleep(ahead);
        }
    }
    done
}

fn child_accuracy() {
    let _p = start(Duration::from_secs(3600));
    let a = threadprof::spawn("A", || {
        let (kept, live) = keep_a(64 * MIB);
        let churned = churn(1536 * MIB, 11);
        (kept, live, churned)
    });
    let b = threadprof::spawn("B", || churn(512 * MIB, 13));
    let (kept, a_live, a_churned) = a.join().unwrap();
    let b_alloc = b.join().unwrap();
    assert!(threadprof::flush());
    let dir = std::path::PathBuf::from(std::env::var("THREADPROF_DIR").unwrap());
    let bytes = std::fs::read(dir.join(threadprof::MERGED_HEAP_FILE)).unwrap();
    let p = threadprof::pprof::decode_gz(&bytes).unwrap();
    let per_tag = |ty: &str, tag: &str| {
        let i = p.sample_type_index(ty).unwrap();
        p.sample
            .iter()
            .filter(|s| p.label_str(s, "tag") == Some(tag))
            .map(|s| s.value[i])
            .sum::<i64>()
    };
    let s = threadprof::stats();
    println!(
        "RESULT a_alloc={} a_alloc_est={} a_inuse={a_live} a_inuse_est={} b_alloc={b_alloc} b_alloc_est={} b_inuse_est={} samples={} dropped={}",
        a_live + a_churned,
        per_tag("alloc_space", "A"),
        per_tag("inuse_space", "A"),
        per_tag("alloc_space", "B"),
        per_tag("inuse_space", "B"),
        s.heap_samples,
        s.heap_dropped
    );
    std::mem::forget(kept);
}

/// Allocation + free pairs of 16–256 B through `a`, `n` per thread on 2 threads; ns per pair.
fn pairs<A: GlobalAlloc + Sync>(a: &'static A, n: usize) -> f64 {
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..2u64 {
            s.spawn(move || pair_loop(a, n, 0x9e37_79b9u64 + t));
        }
    });
    start.elapsed().as_nanos() as f64 / n as f64
}

/// One thread's loop of `pairs` (not inlined, so that an instruction count per allocator can
/// be read off `valgrind --tool=callgrind`).
#[inline(never)]
fn pair_loop<A: GlobalAlloc>(a: &A, n: usize, seed: u64) {
    let mut live = [std::ptr::null_mut::<u8>(); 16];
    let mut x = seed;
    for i in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let size = 16 + (x % 241) as usize;
        let slot = i % live.len();
        // SAFETY: each block is freed once with the layout it was allocated with (its size is
        // stored in its first word).
        unsafe {
            if !live[slot].is_null() {
                let old = live[slot];
                let old_size = *(old as *const usize);
                a.dealloc(old, Layout::from_size_align_unchecked(old_size, 8));
            }
            let p = a.alloc(Layout::from_size_align_unchecked(size, 8));
            assert!(!p.is_null());
            *(p as *mut usize) = size;
            live[slot] = black_box(p);
        }
    }
    for p in live.into_iter().filter(|p| !p.is_null()) {
        // SAFETY: as above.
        unsafe {
            let size = *(p as *const usize);
            a.dealloc(p, Layout::from_size_align_unchecked(size, 8));
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn child_cost() {
    static SYSTEM: System = System;
    static WRAPPED_SYSTEM: threadprof::Allocator = threadprof::Allocator::system();
    static MI: mimalloc::MiMalloc = mimalloc::MiMalloc;
    static WRAPPED_MI: threadprof::Allocator<mimalloc::MiMalloc> =
        threadprof::Allocator::new(mimalloc::MiMalloc);
    let _p = start(Duration::from_secs(3600));
    let n = if quick() { 1_000_000 } else { 4_000_000 };
    let rounds = if quick() { 5 } else { 9 };
    // Warm-up: both allocators' per-thread state.
    pairs(&SYSTEM, n / 10);
    pairs(&MI, n / 10);
    let (mut ps, mut ws, mut pm, mut wm) = (vec![], vec![], vec![], vec![]);
    for _ in 0..rounds {
        ps.push(pairs(&SYSTEM, n));
        ws.push(pairs(&WRAPPED_SYSTEM, n));
        pm.push(pairs(&MI, n));
        wm.push(pairs(&WRAPPED_MI, n));
    }
    println!(
        "RESULT inner=0 plain_ns={} wrapped_ns={}",
        median(ps),
        median(ws)
    );
    println!(
        "RESULT inner=1 plain_ns={} wrapped_ns={}",
        median(pm),
        median(wm)
    );
    let s = threadprof::stats();
    eprintln!("samples={} dropped={}", s.heap_samples, s.heap_dropped);
}

/// One thread's allocation-heavy loop of ordinary code; returns a checksum. `MODE_COPY` only gives
/// each mode its own copy of the code (the same instructions), so that `valgrind
/// --tool=callgrind` counts them apart.
#[inline(never)]
fn workload<const MODE_COPY: u8>(iterations: usize, seed: u64) -> u64 {
    let mut map: HashMap<String, Vec<u64>> = HashMap::with_capacity(1024);
    let mut x = seed | 1;
    let mut sum = 0u64;
    for _ in 0..iterations {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // A request line, split into owned fields (one String each, one Vec).
        let line = format!("user-{},GET,/items/{},{}", x % 1000, x % 97, x >> 40);
        let fields: Vec<String> = line.split(',').map(str::to_owned).collect();
        // A map of 1,000 keys: the key is allocated, and a new entry's vector grows once.
        let key = fields[0].clone();
        map.entry(key).or_default().push(x);
        if let Some(v) = map.get_mut(&fields[0]) {
            if v.len() > 4 {
                v.clear();
                v.shrink_to_fit();
            }
        }
        // A buffer of 64 B to 1 KiB, written and read.
        let len = 64 + (x % 961) as usize;
        let buf = vec![(x & 0xff) as u8; len].into_boxed_slice();
        sum = sum.wrapping_add(buf[len / 2] as u64 + fields.len() as u64);
    }
    // (MODE_COPY in the result keeps the copies apart: identical functions would be merged.)
    sum.wrapping_add(map.len() as u64 + MODE_COPY as u64)
}

fn child_workload() {
    let _p = start(Duration::from_secs(3600));
    // `HEAP_BENCH_ITERATIONS` shortens a run (e.g. under valgrind).
    let n = std::env::var("HEAP_BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick() { 200_000 } else { 600_000 });
    let rounds = if quick() { 5 } else { 9 };
    let round = |mode: u8| {
        MODE.store(mode, Ordering::Relaxed);
        let t0 = Instant::now();
        let counted = std::thread::scope(|s| {
            let threads: Vec<_> = (0..2u64)
                .map(|t| {
                    s.spawn(move || {
                        let seed = 0x51_7cc1 + t;
                        black_box(match mode {
                            PLAIN => workload::<PLAIN>(n, seed),
                            WRAP => workload::<WRAP>(n, seed),
                            _ => workload::<COUNT>(n, seed),
                        });
                        ALLOCATIONS.with(Cell::get)
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).sum::<u64>()
        });
        let ns = t0.elapsed().as_nanos() as f64 / n as f64;
        MODE.store(WRAP, Ordering::Relaxed);
        (ns, counted)
    };
    // Warm-up, and the allocations per iteration (counted per thread, so nothing else counts).
    let (_, counted) = round(COUNT);
    round(WRAP);
    let (mut plain, mut wrapped) = (vec![], vec![]);
    for _ in 0..rounds {
        plain.push(round(PLAIN).0);
        wrapped.push(round(WRAP).0);
    }
    println!(
        "RESULT plain_ns={} wrapped_ns={} allocs_per_iter={}",
        median(plain),
        median(wrapped),
        counted as f64 / (2 * n) as f64
    );
}

fn rss_kib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0.0)
}

#[inline(never)]
fn tracked_block() -> Box<[u8; 64]> {
    Box::new([1u8; 64])
}

fn child_tracking() {
    let _p = start(Duration::from_secs(3600));
    // Let start-up settle, then measure only the 100,000 blocks.
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_kib();
    let mut kept = Vec::with_capacity(100_000);
    // 2,000 at a time, then a pause for the dump thread to drain (the ring holds 4,096).
    while kept.len() < 100_000 {
        for _ in 0..2_000 {
            kept.push(tracked_block());
        }
        std::thread::sleep(Duration::from_millis(110));
    }
    assert!(threadprof::flush());
    let after = rss_kib();
    let s = threadprof::stats();
    println!(
        "RESULT rss_growth_kib={} live={} tracking={} dropped={}",
        after - before,
        s.heap_live,
        s.heap_tracking_bytes,
        s.heap_dropped
    );
    black_box(&kept);
    std::mem::forget(kept);
}

fn child_soak() {
    let secs: u64 = std::env::var("HEAP_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let _p = start(Duration::from_secs(1));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let watcher = std::thread::spawn(move || {
        let (mut at_1s, mut max, mut last) = (0.0f64, 0.0f64, (0.0, threadprof::stats()));
        let t0 = Instant::now();
        // Stops before the workers end (and free their live sets).
        while Instant::now() + Duration::from_millis(300) < deadline {
            std::thread::sleep(Duration::from_millis(100));
            let r = rss_kib();
            max = max.max(r);
            if at_1s == 0.0 && t0.elapsed() >= Duration::from_secs(1) {
                at_1s = r;
            }
            last = (r, threadprof::stats());
        }
        (at_1s, max, last)
    });
    let workers: Vec<_> = (0..2u64)
        .map(|t| {
            threadprof::spawn(&format!("soak{t}"), move || {
                // A steady live set of 32 MiB per thread, replaced piece by piece, at about
                // 100 MiB/s of writes per thread (a busy service, not a memset loop).
                let mut live: Vec<Vec<u8>> = Vec::new();
                let mut bytes = 0usize;
                let mut total = 0usize;
                let t0 = Instant::now();
                let mut gen = sizes(100 + t);
                while Instant::now() < deadline {
                    let s = gen.next().unwrap_or(64).min(64 << 10);
                    live.push(vec![1u8; s]);
                    bytes += s;
                    total += s;
                    while bytes > 32 * MIB {
                        let old = live.swap_remove(0);
                        bytes -= old.len();
                    }
                    let due = Duration::from_secs_f64(total as f64 / (100.0 * MIB as f64));
                    if let Some(ahead) = due.checked_sub(t0.elapsed()) {
                        std::thread::sleep(ahead);
                    }
                }
                live.len()
            })
        })
        .collect();
    for w in workers {
        black_box(w.join().unwrap());
    }
    let (at_1s, max, (rss_end, s)) = watcher.join().unwrap();
    println!(
        "RESULT rss_1s_kib={at_1s} rss_end_kib={rss_end} rss_max_kib={max} samples={} dropped={} live={} tracking={}",
        s.heap_samples,
        s.heap_dropped,
        s.heap_live,
        s.heap_tracking_bytes
    );
}
