//! threadprof's heap profiler and jemalloc's, watching the same run.
//!
//! `cargo run --release --manifest-path benches/jemalloc-compare/Cargo.toml -- [--runs N]`
//!
//! The global allocator is `threadprof::Allocator` around `tikv_jemallocator::Jemalloc` built
//! with jemalloc's profiler, and both sample at the same mean interval (512 KiB: threadprof's
//! default, jemalloc's `lg_prof_sample:19`). The workload is case 1 ("accuracy") of
//! benches/heap.rs: tag `A` keeps 64 MiB live in mixed sizes from 16 B to 1 MiB and churns
//! 1.5 GiB more, tag `B` churns 512 MiB and keeps nothing. Each run is a fresh child process of
//! this binary (both profilers' sampling state is per process); it prints one `RESULT` line and
//! the parent prints a markdown table.
//!
//! What each estimate is compared with:
//! - threadprof's `inuse_space` (per tag from `_merged.heap.pb.gz`) with the bytes A's kept
//!   blocks asked for, counted here. Its total covers every sampled thread, but the runtime's
//!   own threads are never sampled, so those 64 MiB are nearly the whole truth for it (the rest:
//!   a few KiB, A's outer `Vec` of blocks and the main thread's own).
//! - jemalloc's in-use estimate (sample type `inuse_space`, as `jemalloc_pprof` names it) with
//!   jemalloc's own `stats.allocated` read just before its dump: jemalloc sees every allocation
//!   of the process, including the threadprof runtime's (symbolizer caches, records of live
//!   samples), and counts each at its size class (`usable_size`), not at the requested size.
//!   The table shows both: A's kept blocks at their usable size, and everything else live.

use std::ffi::c_char;
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: threadprof::Allocator<tikv_jemallocator::Jemalloc> =
    threadprof::Allocator::new(tikv_jemallocator::Jemalloc);

/// jemalloc's options, read once at its initialisation. tikv-jemalloc-sys builds jemalloc with
/// the `_rjem_` prefix, so the weak `malloc_conf` symbol it reads is `_rjem_malloc_conf`.
/// `prof:true` builds the profiler's state, `prof_active:true` samples from the start,
/// `lg_prof_sample:19` sets the mean interval to 2^19 = 512 KiB (jemalloc's default). The child
/// reads these back (`opt.prof`, `prof.active`, `prof.lg_sample`, `opt.lg_prof_sample`) and fails
/// if any differs. `prof_unbias:true` is jemalloc's default, written out because the estimate
/// depends on it: the dump's counts are unbiased per sample, then skewed so that jeprof's
/// per-stack correction, which `jemalloc_pprof` applies too, gives the unbiased figure back
/// (jemalloc's `prof_do_unbias`). jemalloc has no control to read it back. The environment
/// variable `_RJEM_MALLOC_CONF` is read after this symbol and overrides it (the parent removes
/// it from the child's environment); the unprefixed `MALLOC_CONF` is ignored.
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: ConfPtr =
    ConfPtr(c"prof:true,prof_active:true,lg_prof_sample:19,prof_unbias:true".as_ptr());

/// A `const char *` that may sit in a static (it points to a string literal).
#[repr(transparent)]
struct ConfPtr(*const c_char);
// SAFETY: the pointer is to an immutable `'static` C string literal.
unsafe impl Sync for ConfPtr {}

const CHILD: &str = "JEMALLOC_COMPARE_CHILD";
const MIB: usize = 1 << 20;
const MIBF: f64 = MIB as f64;
const LG_SAMPLE: usize = 19;

fn main() {
    if std::env::var_os(CHILD).is_some() {
        child();
    } else {
        parent();
    }
}

fn runs() -> usize {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == "--runs") {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .filter(|&n| n > 0)
            .expect("--runs takes a positive number"),
        None => 10,
    }
}

type Result = std::collections::HashMap<String, f64>;

/// One run in a fresh child process of this binary; its `RESULT` line as key/value pairs.
fn run_child() -> Result {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut cmd = std::process::Command::new(std::env::current_exe().expect("own path"));
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        // The child's own settings, not the caller's: same interval for both profilers.
        if k.starts_with("THREADPROF_") || k.ends_with("MALLOC_CONF") {
            cmd.env_remove(key);
        }
    }
    cmd.env(CHILD, "1").env("THREADPROF_DIR", dir.path());
    let out = cmd.output().expect("child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .expect("a RESULT line");
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.parse().unwrap_or(f64::NAN)))
        .collect()
}

fn parent() {
    let n = runs();
    println!("## threadprof and jemalloc heap profilers, same run ({n} run(s), mean interval 512 KiB both)\n");
    println!("| run | truth: A live | ours total inuse | ours A | ours B | jemalloc stats.allocated (A usable + other) | jemalloc inuse |");
    println!("|---|---|---|---|---|---|---|");
    let (mut e_tot, mut e_a, mut e_b, mut e_je) = (vec![], vec![], vec![], vec![]);
    let mut notes = vec![];
    for i in 1..=n {
        let r = run_child();
        let truth = r["a_live"];
        let je_truth = r["je_allocated"];
        println!(
            "| {i} | {:.2} MiB | {:.2} MiB (×{:.3}) | {:.2} MiB (×{:.3}) | {:.2} MiB | {:.2} MiB ({:.2} + {:.2}) | {:.2} MiB (×{:.3}) |",
            truth / MIBF,
            r["ours_total"] / MIBF,
            r["ours_total"] / truth,
            r["ours_a"] / MIBF,
            r["ours_a"] / truth,
            r["ours_b"] / MIBF,
            je_truth / MIBF,
            r["a_usable"] / MIBF,
            (je_truth - r["a_usable"]) / MIBF,
            r["je_inuse"] / MIBF,
            r["je_inuse"] / je_truth,
        );
        e_tot.push((r["ours_total"] / truth - 1.0).abs());
        e_a.push((r["ours_a"] / truth - 1.0).abs());
        // B keeps nothing: its error is in bytes, as a share of A's live set for scale.
        e_b.push(r["ours_b"].abs() / MIBF);
        e_je.push((r["je_inuse"] / je_truth - 1.0).abs());
        notes.push(format!(
            "- run {i}: ours untagged {:.2} MiB, ours samples {}, dropped {}; jemalloc: live before the workload {:.2} MiB, \
             stats.allocated after its dump {:+.3} MiB, unwinder {}, prof.lg_sample {}; workload and dumps {:.0} ms",
            r["ours_untagged"] / MIBF,
            r["samples"],
            r["dropped"],
            r["je_baseline"] / MIBF,
            (r["je_allocated_after"] - r["je_allocated"]) / MIBF,
            ["libgcc", "libunwind", "frame pointers"]
                .get(r["je_unwinder"] as usize)
                .unwrap_or(&"?"),
            r["je_lg_sample"],
            r["seconds"] * 1000.0,
        ));
    }
    let pct = |v: &[f64]| {
        (
            100.0 * median(v),
            100.0 * v.iter().cloned().fold(0.0, f64::max),
        )
    };
    let (tm, tw) = pct(&e_tot);
    let (am, aw) = pct(&e_a);
    let (jm, jw) = pct(&e_je);
    let bm = median(&e_b);
    let bw = e_b.iter().cloned().fold(0.0, f64::max);
    println!(
        "\nAbsolute error, median / worst: ours total {tm:.1}% / {tw:.1}%, ours A {am:.1}% / {aw:.1}%, \
         ours B {bm:.2} / {bw:.2} MiB (truth 0), jemalloc {jm:.1}% / {jw:.1}% (against stats.allocated)\n"
    );
    for note in notes {
        println!("{note}");
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

// The workload: the same generator and loops as benches/heap.rs case 1 ("accuracy"). They are
// copied, not imported: a bench file is not a library, and this package stays out of the
// workspace. Keep the two in step if either changes.

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

#[inline(never)]
fn churn(total: usize, seed: u64) -> usize {
    let mut done = 0;
    for s in sizes(seed) {
        if done >= total {
            break;
        }
        black_box(Vec::<u8>::with_capacity(s));
        done += s;
    }
    done
}

/// Reads a jemalloc control by name; the type must be the one jemalloc documents for it.
fn je_read<T: Copy>(name: &[u8]) -> T {
    // SAFETY: each caller names a control whose documented type is `T`.
    unsafe { tikv_jemalloc_ctl::raw::read(name) }
        .unwrap_or_else(|e| panic!("{}: {e}", String::from_utf8_lossy(name)))
}

/// jemalloc's count of bytes live in the process (usable sizes), refreshed.
fn je_live() -> f64 {
    tikv_jemalloc_ctl::epoch::advance().expect("epoch");
    tikv_jemalloc_ctl::stats::allocated::read().expect("stats.allocated") as f64
}

fn child() {
    // jemalloc is initialised by now (the runtime's start-up and std's allocated through it).
    let opt_prof: bool = je_read(b"opt.prof\0");
    let active: bool = je_read(b"prof.active\0");
    let lg_sample: usize = je_read(b"prof.lg_sample\0");
    let opt_lg_sample: usize = je_read(b"opt.lg_prof_sample\0");
    assert!(
        opt_prof && active && lg_sample == LG_SAMPLE && opt_lg_sample == LG_SAMPLE,
        "jemalloc profiling not as configured: opt.prof={opt_prof} prof.active={active} \
         prof.lg_sample={lg_sample} opt.lg_prof_sample={opt_lg_sample}"
    );
    let dir = std::path::PathBuf::from(std::env::var("THREADPROF_DIR").expect("THREADPROF_DIR"));
    let _p = threadprof::Profiler::builder()
        .output_dir(&dir)
        .dump_interval(Duration::from_secs(3600))
        .heap_interval(1 << LG_SAMPLE)
        .start()
        .expect("start");
    let je_baseline = je_live();
    // How jemalloc walks stacks: libgcc's unwinder, libunwind or frame pointers.
    let je_unwinder = [
        b"config.prof_libgcc\0".as_slice(),
        b"config.prof_libunwind\0",
        b"config.prof_frameptr\0",
    ]
    .iter()
    .position(|name| je_read::<bool>(name))
    .map_or(-1, |i| i as i32);
    let t0 = Instant::now();

    let a = threadprof::spawn("A", || {
        let (kept, live) = keep_a(64 * MIB);
        let churned = churn(1536 * MIB, 11);
        (kept, live, churned)
    });
    let b = threadprof::spawn("B", || churn(512 * MIB, 13));
    let (kept, a_live, _a_churned) = a.join().unwrap();
    let _b_alloc = b.join().unwrap();
    let a_usable: usize = kept
        .iter()
        // SAFETY: each pointer is a live block from the global allocator, jemalloc's
        // (`with_capacity` of a nonzero size allocated it).
        .map(|v| unsafe { tikv_jemallocator::usable_size(v.as_ptr()) })
        .sum();

    // Ours first: write the heap files now (the dump thread's allocations while it writes are
    // freed before `flush` returns).
    assert!(threadprof::flush(), "threadprof flush");
    // Then jemalloc's truth and its dump, back to back (the control handle first: it is built
    // lazily, and its allocations should be in both or neither). `stats.allocated` is read again
    // after the dump to see what the dump's own temporaries moved.
    let je_ctl = jemalloc_pprof::PROF_CTL
        .as_ref()
        .expect("jemalloc profiling is on");
    let mut je_ctl = je_ctl.blocking_lock();
    assert!(je_ctl.activated(), "jemalloc profiling active");
    let je_allocated = je_live();
    let je_pprof = je_ctl.dump_pprof().expect("jemalloc dump");
    let je_allocated_after = je_live();
    drop(je_ctl);
    let seconds = t0.elapsed().as_secs_f64();

    let je = threadprof::pprof::decode_gz(&je_pprof).expect("jemalloc's pprof decodes");
    let je_i = je
        .sample_type_index("inuse_space")
        .expect("jemalloc_pprof's sample type inuse_space");
    let je_inuse: i64 = je.sample.iter().map(|s| s.value[je_i]).sum();

    let ours = read_ours(&dir.join(threadprof::MERGED_HEAP_FILE));
    let s = threadprof::stats();
    println!(
        "RESULT a_live={a_live} a_usable={a_usable} ours_total={} ours_a={} ours_b={} ours_untagged={} \
         je_baseline={je_baseline} je_allocated={je_allocated} je_allocated_after={je_allocated_after} \
         je_inuse={je_inuse} je_unwinder={je_unwinder} je_lg_sample={lg_sample} samples={} dropped={} seconds={seconds}",
        ours.0, ours.1, ours.2, ours.3, s.heap_samples, s.heap_dropped,
    );
    std::mem::forget(kept);
}

/// `inuse_space` in threadprof's merged heap file: total, tag A, tag B, and the rest.
fn read_ours(path: &Path) -> (i64, i64, i64, i64) {
    let bytes = std::fs::read(path).expect("threadprof's merged heap file");
    let p = threadprof::pprof::decode_gz(&bytes).expect("threadprof's heap profile decodes");
    let i = p.sample_type_index("inuse_space").expect("inuse_space");
    let (mut total, mut a, mut b) = (0, 0, 0);
    for s in &p.sample {
        let v = s.value[i];
        total += v;
        match p.label_str(s, "tag") {
            Some("A") => a += v,
            Some("B") => b += v,
            _ => {}
        }
    }
    (total, a, b, total - a - b)
}
