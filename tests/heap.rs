//! Heap profiles with `threadprof::Allocator` around the system allocator: accuracy per tag,
//! the reentrancy guard, `realloc`, threads that exit with live blocks, sampling switched off,
//! fork, the HTTP endpoint and `go tool pprof`. Each case runs in a child process of this test
//! binary (the interval is read from the environment at start).
#![cfg(all(feature = "enabled", feature = "heap", target_os = "linux"))]

mod common;
mod heap_cases;

use std::hint::black_box;
use std::time::{Duration, Instant};

use common::*;
use heap_cases::*;

#[global_allocator]
static ALLOC: threadprof::Allocator = threadprof::Allocator::system();

fn is_child() -> bool {
    std::env::var_os(CHILD).is_some()
}

/// Ends the child if it hangs (a deadlock in the allocator would).
fn watchdog(limit: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("WATCHDOG: the child did not finish within {limit:?}");
        std::process::abort();
    });
}

#[test]
fn child_accuracy_system() {
    if is_child() {
        child_accuracy();
    }
}

#[test]
fn alloc_and_inuse_space_per_tag_match_the_truth() {
    check_accuracy("child_accuracy_system");
}

// ---- reentrancy --------------------------------------------------------------------------

static HOOK_CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn allocate_inside_the_sampler() {
    // Runs inside the sampling path, guard held: must be passed through, not sampled.
    HOOK_CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    black_box(vec![0u8; 100]);
}

#[test]
fn child_reentrancy() {
    if !is_child() {
        return;
    }
    watchdog(Duration::from_secs(60));
    let _p = threadprof::Profiler::builder()
        .dump_interval(Duration::from_millis(200))
        .start()
        .expect("start");
    threadprof::__private::__set_heap_sample_hook(Some(allocate_inside_the_sampler));
    let deadline = Instant::now() + Duration::from_millis(1500);
    let workers: Vec<_> = (0..8)
        .map(|i| {
            let work = move || {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let v: Vec<String> = (0..64).map(|j| format!("{i}-{j}")).collect();
                    let mut m = std::collections::HashMap::new();
                    for s in &v {
                        m.insert(s.clone(), s.len());
                    }
                    n += black_box(m.len()) as u64;
                }
                n
            };
            if i % 2 == 0 {
                threadprof::spawn(&format!("worker{i}"), move || {
                    threadprof::with_labels(&[("kind", "even")], work)
                })
            } else {
                std::thread::spawn(work) // unregistered: `untagged`
            }
        })
        .collect();
    let total: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    // Read before anything else allocates without the hook (`stats` does not allocate).
    let s = threadprof::stats();
    threadprof::__private::__set_heap_sample_hook(None);
    assert!(threadprof::flush());
    println!(
        "RESULT work={total} samples={} skipped={} dropped={} hooks={}",
        s.heap_samples,
        s.heap_skipped,
        s.heap_dropped,
        HOOK_CALLS.load(std::sync::atomic::Ordering::Relaxed)
    );
    std::process::exit(0);
}

#[test]
fn allocations_inside_the_sampler_are_skipped_not_recursed_with_every_allocation_sampled() {
    let (dir, v) = run_case("child_reentrancy", &[("THREADPROF_HEAP_INTERVAL", "1")]);
    assert!(v["work"] > 0.0);
    // Most are dropped: the ring holds 4,096 between drains, 100 ms apart.
    assert!(v["samples"] + v["dropped"] > 10_000.0, "{v:?}");
    assert!(v["samples"] > 100.0, "{v:?}");
    // Every sampled allocation (but those made at start, before the hook was set) ran the
    // hook, and the hook's allocation was skipped every time.
    assert_eq!(v["skipped"], v["hooks"], "{v:?}");
    assert!(v["hooks"] > 0.99 * (v["samples"] + v["dropped"]), "{v:?}");
    let merged = read_profile(&dir.path().join(threadprof::MERGED_HEAP_FILE));
    let tags = by_tag(&merged, "alloc_objects");
    // Some registered worker's tag (which one gets into the ring is luck: it is full but for
    // a few ms after each drain, and one worker missed every window once under a loaded run).
    assert!(tags.keys().any(|t| t.starts_with("worker")), "{tags:?}");
    assert!(tags.contains_key("untagged"), "{tags:?}");
    assert!(
        merged
            .sample
            .iter()
            .any(|s| merged.label_str(s, "kind") == Some("even")),
        "user labels on heap samples"
    );
    assert!(dir.path().join("untagged.heap.pb.gz").exists());
}

// ---- realloc -----------------------------------------------------------------------------

/// 1 MiB: above glibc's mmap threshold, so the block's address is not reused by the small
/// allocations that follow (a record left behind by a broken realloc would stay visible).
#[inline(never)]
fn first_site() -> Vec<u64> {
    Vec::with_capacity(131_072)
}

#[inline(never)]
fn grow_site(v: &mut Vec<u64>) {
    v.reserve_exact(1_000_000);
}

#[test]
fn child_realloc() {
    if !is_child() {
        return;
    }
    let _p = start_flushing_only();
    let v = threadprof::spawn("realloc", || {
        let mut v = first_site();
        v.push(1);
        grow_site(&mut v);
        v
    })
    .join()
    .unwrap();
    assert!(threadprof::flush());
    std::mem::forget(v);
    std::process::exit(0);
}

#[test]
fn realloc_ends_the_old_record_and_starts_one_at_the_new_size() {
    let dir = tempfile::tempdir().unwrap();
    run_child(
        "child_realloc",
        dir.path(),
        &[("THREADPROF_HEAP_INTERVAL", "1")],
    );
    let p = read_profile(&dir.path().join("realloc.heap.pb.gz"));
    let leaf = |name: &str, ty: &str| {
        let i = p.sample_type_index(ty).unwrap();
        p.sample
            .iter()
            .filter(|s| p.stack_names(s).first().is_some_and(|n| n.contains(name)))
            .map(|s| s.value[i])
            .sum::<i64>()
    };
    // Interval 1 byte: every allocation is sampled with weight 1.
    assert_eq!(leaf("first_site", "alloc_space"), 1 << 20);
    assert_eq!(
        leaf("first_site", "inuse_space"),
        0,
        "moved away by realloc"
    );
    // reserve_exact(1,000,000) with one element in: 1,000,001 u64s.
    assert_eq!(leaf("grow_site", "alloc_space"), 8_000_008);
    assert_eq!(leaf("grow_site", "inuse_space"), 8_000_008, "the block now");
    assert_eq!(leaf("grow_site", "inuse_objects"), 1);
}

// ---- threads that exit with live blocks --------------------------------------------------

#[inline(never)]
fn leak_in_thread() -> Vec<Vec<u8>> {
    (0..16).map(|_| vec![1u8; 1 << 20]).collect()
}

#[test]
fn child_thread_exit() {
    if !is_child() {
        return;
    }
    let _p = start_flushing_only();
    let registered = threadprof::spawn("exits", leak_in_thread).join().unwrap();
    let unregistered = std::thread::spawn(leak_in_thread).join().unwrap();
    // Wait for the dump thread to drain after both threads are gone.
    std::thread::sleep(Duration::from_millis(300));
    assert!(threadprof::flush());
    std::mem::forget((registered, unregistered));
    std::process::exit(0);
}

#[test]
fn blocks_of_threads_that_exited_stay_in_use() {
    let dir = tempfile::tempdir().unwrap();
    run_child(
        "child_thread_exit",
        dir.path(),
        &[("THREADPROF_HEAP_INTERVAL", "65536")],
    );
    let p = read_profile(&dir.path().join(threadprof::MERGED_HEAP_FILE));
    let inuse = by_tag(&p, "inuse_space");
    // 1 MiB blocks at a 64 KiB interval: each is sampled (probability 1 - e^-16).
    for tag in ["exits", "untagged"] {
        let got = inuse.get(tag).copied().unwrap_or(0) as f64 / (16 << 20) as f64;
        assert!(
            (0.95..1.05).contains(&got),
            "{tag}: inuse ×{got}, {inuse:?}"
        );
    }
}

// ---- a thread that allocated before the runtime started --------------------------------

#[test]
fn child_thread_older_than_the_runtime() {
    if !is_child() {
        return;
    }
    let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let t = std::thread::spawn(move || {
        // With sampling off: its countdown ends and restarts unarmed.
        black_box(churn_bytes(4 << 20));
        ready_tx.send(()).unwrap();
        started_rx.recv().unwrap();
        churn_bytes(64 << 20)
    });
    ready_rx.recv().unwrap();
    let _p = start_flushing_only();
    started_tx.send(()).unwrap();
    let after = t.join().unwrap();
    assert!(threadprof::flush());
    println!("RESULT after={after}");
    std::process::exit(0);
}

#[test]
fn a_thread_that_allocated_before_the_start_is_sampled_after_it() {
    let (dir, v) = run_case(
        "child_thread_older_than_the_runtime",
        &[("THREADPROF_HEAP_INTERVAL", "65536")],
    );
    let p = read_profile(&dir.path().join(threadprof::MERGED_HEAP_FILE));
    let alloc = by_tag(&p, "alloc_space");
    // About 1,000 samples: the estimate's deviation is about 3%; allocations before the start
    // are not seen, and the main thread's own are a few KiB.
    let got = alloc.get("untagged").copied().unwrap_or(0) as f64 / v["after"];
    assert!((0.85..1.15).contains(&got), "alloc ×{got}, {alloc:?}");
}

#[test]
fn child_little_after_the_start() {
    if !is_child() {
        return;
    }
    // The main thread allocates before the start (its countdown ends with sampling off and
    // restarts unarmed), then only 100 KiB after it.
    black_box(churn_bytes(1 << 20));
    let _p = start_flushing_only();
    let kept: Vec<Vec<u8>> = (0..100).map(|_| vec![1u8; 1024]).collect();
    assert!(threadprof::flush());
    std::mem::forget(kept);
    std::process::exit(0);
}

#[test]
fn heap_files_are_written_when_little_is_allocated_after_the_start() {
    let dir = tempfile::tempdir().unwrap();
    run_child("child_little_after_the_start", dir.path(), &[]);
    assert!(
        dir.path().join(threadprof::MERGED_HEAP_FILE).exists(),
        "no heap file: the wrapper's allocations after the start went unnoticed"
    );
}

// ---- interval 0 --------------------------------------------------------------------------

#[test]
fn child_interval_zero() {
    if !is_child() {
        return;
    }
    let _p = start_flushing_only();
    let t = threadprof::spawn("off", || churn_bytes(64 << 20));
    black_box(t.join().unwrap());
    assert!(threadprof::flush());
    let s = threadprof::stats();
    println!(
        "RESULT samples={} tracking={} dumps={}",
        s.heap_samples, s.heap_tracking_bytes, s.dumps
    );
    std::process::exit(0);
}

#[test]
fn interval_zero_is_a_pass_through() {
    let (dir, v) = run_case("child_interval_zero", &[("THREADPROF_HEAP_INTERVAL", "0")]);
    assert_eq!(v["samples"], 0.0);
    assert_eq!(v["tracking"], 0.0, "nothing mapped");
    assert!(!dir.path().join(threadprof::MERGED_HEAP_FILE).exists());
}

// ---- fork --------------------------------------------------------------------------------

#[test]
fn child_fork() {
    if !is_child() {
        return;
    }
    watchdog(Duration::from_secs(60));
    let _p = threadprof::Profiler::builder()
        .dump_interval(Duration::from_millis(100))
        .start()
        .expect("start");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Threads that sample every allocation while the fork happens.
    let busy: Vec<_> = (0..3)
        .map(|i| {
            let stop = stop.clone();
            threadprof::spawn(&format!("busy{i}"), move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    black_box(vec![0u8; 64].into_boxed_slice());
                }
            })
        })
        .collect();
    let kept = vec![7u8; 1 << 20];
    for round in 0..20 {
        // SAFETY: the forked child only allocates, frees and exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            let mut v: Vec<Vec<u8>> = Vec::new();
            for i in 0..10_000usize {
                v.push(vec![i as u8; 16 + i % 512]);
                if i % 3 == 0 {
                    v.swap_remove(0);
                }
            }
            drop(black_box(v));
            drop(black_box(kept)); // a block sampled in the parent
            std::process::exit(0);
        }
        let mut status = 0;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // SAFETY: waits for our own child without blocking.
            let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if r == pid {
                break;
            }
            assert!(Instant::now() < deadline, "forked child {round} hangs");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "forked child {round} ended with status {status:#x}"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for b in busy {
        b.join().unwrap();
    }
    println!(
        "RESULT forks=20 samples={}",
        threadprof::stats().heap_samples
    );
    std::mem::forget(kept); // still live at exit's final dump
    std::process::exit(0);
}

#[test]
fn a_forked_child_allocates_frees_and_exits_cleanly() {
    let (_dir, v) = run_case("child_fork", &[("THREADPROF_HEAP_INTERVAL", "1")]);
    assert!(v["samples"] > 0.0);
}

// ---- HTTP and go tool pprof ---------------------------------------------------------------

#[cfg(feature = "http")]
#[test]
fn child_http() {
    use std::io::{Read, Write};
    if !is_child() {
        return;
    }
    let _p = threadprof::Profiler::builder()
        .dump_interval(Duration::from_secs(3600))
        .http_addr("127.0.0.1:0")
        .start()
        .expect("start");
    let kept = threadprof::spawn("served", || keep_bytes(16 << 20))
        .join()
        .unwrap();
    let addr = threadprof::http_local_addr().expect("listening");
    let get = |path: &str| {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&raw[..split]).to_string();
        (head, raw[split + 4..].to_vec())
    };
    let (head, body) = get("/debug/pprof/heap");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let p = threadprof::pprof::decode_gz(&body).expect("pprof");
    assert_eq!(p.string(p.default_sample_type), "inuse_space");
    let inuse = by_tag(&p, "inuse_space")["served"] as f64 / kept.1 as f64;
    let (head, body) = get("/debug/pprof/allocs?tag=served");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let allocs = threadprof::pprof::decode_gz(&body).expect("pprof");
    assert_eq!(allocs.string(allocs.default_sample_type), "alloc_space");
    assert_eq!(by_tag(&allocs, "alloc_space").len(), 1, "one tag");
    let (head, _) = get("/debug/pprof/heap?tag=nosuchtag");
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    let (head, body) = get("/profiles/served.heap.pb.gz");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    threadprof::pprof::decode_gz(&body).expect("pprof");
    std::fs::write(
        std::env::var("HEAP_OUT").unwrap(),
        get("/debug/pprof/heap").1,
    )
    .unwrap();
    println!("RESULT inuse_ratio={inuse}");
    std::mem::forget(kept); // still live at exit's final dump
    std::process::exit(0);
}

#[cfg(feature = "http")]
#[test]
fn heap_profile_over_http_and_in_go_tool_pprof() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("heap.pb.gz");
    let out = run_child(
        "child_http",
        dir.path(),
        &[
            ("HEAP_OUT", file.to_str().unwrap()),
            ("THREADPROF_HEAP_INTERVAL", "65536"),
        ],
    );
    let v = marked_values(&String::from_utf8_lossy(&out.stdout), "RESULT ");
    // 16 MiB in 1-64 KiB blocks at a 64 KiB interval: about 256 samples.
    assert!((0.75..1.25).contains(&v["inuse_ratio"]), "{v:?}");
    let go = std::process::Command::new("go").arg("version").output();
    if !go.is_ok_and(|o| o.status.success()) {
        println!("SKIPPED the go tool pprof part: `go` is not installed");
        return;
    }
    let out = std::process::Command::new("go")
        .args(["tool", "pprof", "-sample_index=inuse_space", "-top"])
        .arg(&file)
        .output()
        .expect("go tool pprof");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Type: inuse_space"), "{text}");
    assert!(text.contains("keep_bytes"), "{text}");
}

// ---- feature-off twin ---------------------------------------------------------------------

#[test]
fn the_wrapper_is_const_and_wraps_any_allocator() {
    const WRAPPED: threadprof::Allocator<std::alloc::System> =
        threadprof::Allocator::new(std::alloc::System);
    let layout = std::alloc::Layout::from_size_align(64, 8).unwrap();
    // SAFETY: a valid layout; the block is freed with the same layout.
    unsafe {
        use std::alloc::GlobalAlloc;
        let p = WRAPPED.alloc(layout);
        assert!(!p.is_null());
        let p = WRAPPED.realloc(p, layout, 128);
        assert!(!p.is_null());
        WRAPPED.dealloc(p, std::alloc::Layout::from_size_align(128, 8).unwrap());
    }
}
