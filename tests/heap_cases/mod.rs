//! Heap-profile cases shared by the test binaries that install `threadprof::Allocator` around
//! the system allocator (tests/heap.rs) and around mimalloc (tests/heap_mimalloc.rs). Each case
//! is a child-process body (`child_*`) plus the parent's checks.
#![allow(dead_code)]

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Duration;

use threadprof::pprof::Profile;

use crate::common::*;

/// Starts the runtime for a child case: files are written only by `flush` (and at exit).
pub fn start_flushing_only() -> threadprof::Profiler {
    threadprof::Profiler::builder()
        .dump_interval(Duration::from_secs(3600))
        .start()
        .expect("start")
}

/// Runs child case `test` with `env` in a fresh directory; the directory and the child's
/// `RESULT` values.
pub fn run_case(test: &str, env: &[(&str, &str)]) -> (tempfile::TempDir, HashMap<String, f64>) {
    let dir = tempfile::tempdir().unwrap();
    let out = run_child(test, dir.path(), env);
    let v = marked_values(&String::from_utf8_lossy(&out.stdout), "RESULT ");
    (dir, v)
}

/// Value of sample type `ty` per tag (the `tag` label).
pub fn by_tag(p: &Profile, ty: &str) -> HashMap<String, i64> {
    let i = p.sample_type_index(ty).expect("sample type");
    let mut out = HashMap::new();
    for s in &p.sample {
        let tag = p.label_str(s, "tag").unwrap_or("?").to_owned();
        *out.entry(tag).or_default() += s.value[i];
    }
    out
}

/// Value of sample type `ty` per sample whose stack names a function containing `name`.
pub fn by_function(p: &Profile, ty: &str, name: &str) -> i64 {
    let i = p.sample_type_index(ty).expect("sample type");
    p.sample
        .iter()
        .filter(|s| p.stack_names(s).iter().any(|n| n.contains(name)))
        .map(|s| s.value[i])
        .sum()
}

/// The leaf function of the sample with the most of `ty`.
pub fn top_leaf(p: &Profile, ty: &str) -> String {
    let i = p.sample_type_index(ty).expect("sample type");
    let s = p.sample.iter().max_by_key(|s| s.value[i]).expect("samples");
    p.stack_names(s)
        .first()
        .map(|n| n.to_string())
        .unwrap_or_default()
}

/// Allocation sizes cycled through by the accuracy workload: 1 KiB to 64 KiB.
const SIZES: [usize; 7] = [1024, 2048, 4096, 8192, 16384, 32768, 65536];

/// Allocates and frees `total` bytes in mixed sizes; returns the bytes allocated.
#[inline(never)]
pub fn churn_bytes(total: usize) -> usize {
    let mut done = 0;
    let mut i = 0;
    while done < total {
        let size = SIZES[i % SIZES.len()];
        let v: Vec<u8> = Vec::with_capacity(size);
        black_box(&v);
        done += size;
        i += 1;
    }
    done
}

/// Allocates `total` bytes in mixed sizes and keeps them; returns them and their size.
#[inline(never)]
pub fn keep_bytes(total: usize) -> (Vec<Vec<u8>>, usize) {
    let mut kept = Vec::with_capacity(total / 1024 + 1);
    let mut done = 0;
    let mut i = 0;
    while done < total {
        let size = SIZES[i % SIZES.len()];
        kept.push(Vec::<u8>::with_capacity(size));
        done += size;
        i += 1;
    }
    (kept, done)
}

const MIB: usize = 1 << 20;

/// Child: tag `heavy` allocates 3× the bytes of tag `light` and keeps 32 MiB; `light` keeps
/// nothing. Prints the truth.
pub fn child_accuracy() {
    let _p = start_flushing_only();
    let heavy = threadprof::spawn("heavy", || {
        let (kept, kept_bytes) = keep_bytes(32 * MIB);
        let churned = churn_bytes(268 * MIB);
        (kept, kept_bytes, churned)
    });
    let light = threadprof::spawn("light", || churn_bytes(100 * MIB));
    let (kept, kept_bytes, churned) = heavy.join().unwrap();
    let light_bytes = light.join().unwrap();
    assert!(threadprof::flush());
    println!(
        "RESULT heavy_alloc={} heavy_inuse={kept_bytes} light_alloc={light_bytes}",
        kept_bytes + churned
    );
    let s = threadprof::stats();
    println!(
        "STATS samples={} dropped={} untracked={} skipped={}",
        s.heap_samples, s.heap_dropped, s.heap_untracked, s.heap_skipped
    );
    std::mem::forget(kept); // still live at exit's final dump
    std::process::exit(0);
}

/// Parent: runs [`child_accuracy`] at a 64 KiB interval and checks each tag's estimates.
pub fn check_accuracy(test: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out = run_child(test, dir.path(), &[("THREADPROF_HEAP_INTERVAL", "65536")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let truth = marked_values(&stdout, "RESULT ");
    let merged = read_profile(&dir.path().join(threadprof::MERGED_HEAP_FILE));
    let alloc = by_tag(&merged, "alloc_space");
    let inuse = by_tag(&merged, "inuse_space");
    let ratio = |est: i64, truth: f64| est as f64 / truth;
    let heavy_alloc = ratio(alloc["heavy"], truth["heavy_alloc"]);
    let light_alloc = ratio(alloc["light"], truth["light_alloc"]);
    let heavy_inuse = ratio(inuse["heavy"], truth["heavy_inuse"]);
    println!("heavy alloc ×{heavy_alloc:.3}, light alloc ×{light_alloc:.3}, heavy inuse ×{heavy_inuse:.3}");
    // About 4,000 and 1,600 samples of allocated bytes, 500 of live ones: ±20% is more than
    // 4 standard deviations for each.
    assert!(
        (0.8..1.2).contains(&heavy_alloc),
        "heavy alloc_space ×{heavy_alloc}"
    );
    assert!(
        (0.8..1.2).contains(&light_alloc),
        "light alloc_space ×{light_alloc}"
    );
    assert!(
        (0.8..1.2).contains(&heavy_inuse),
        "heavy inuse_space ×{heavy_inuse}"
    );
    let light_inuse = inuse.get("light").copied().unwrap_or(0);
    assert!(
        (light_inuse as f64) < 0.02 * truth["heavy_inuse"],
        "light keeps nothing, yet {light_inuse} bytes in use"
    );
    let ratio3 = alloc["heavy"] as f64 / alloc["light"] as f64;
    assert!((2.4..3.6).contains(&ratio3), "heavy/light alloc {ratio3}");
    // Per-tag files hold their tag only; the live bytes are where they were allocated.
    let heavy = read_profile(&dir.path().join("heavy.heap.pb.gz"));
    assert_eq!(by_tag(&heavy, "inuse_space").len(), 1);
    let kept = by_function(&heavy, "inuse_space", "keep_bytes");
    assert!(
        kept as f64 > 0.95 * inuse["heavy"] as f64,
        "live bytes of heavy under keep_bytes: {kept} of {}",
        inuse["heavy"]
    );
    assert!(top_leaf(&heavy, "inuse_space").contains("keep_bytes"));
    assert_eq!(
        heavy.string(heavy.default_sample_type),
        "inuse_space",
        "default sample type"
    );
}
