//! Real threads, real signals, real files: each tag's dump holds what that thread ran.
#![cfg(all(feature = "enabled", target_os = "linux"))]

mod common;

use std::hint::black_box;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use common::*;
use threadprof::profiled_thread;

/// One runtime for this test binary, writing into a temporary directory.
fn dir() -> &'static Path {
    static STATE: OnceLock<(tempfile::TempDir, threadprof::Profiler)> = OnceLock::new();
    STATE
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let handle = threadprof::Profiler::builder()
                .output_dir(dir.path())
                .dump_interval(Duration::from_secs(3600))
                .frequency(499)
                .start()
                .expect("start");
            (dir, handle)
        })
        .0
        .path()
}

fn flush_and_read(tag: &str) -> threadprof::pprof::Profile {
    assert!(threadprof::flush(), "flush");
    read_profile(&dir().join(format!("{tag}.pb.gz")))
}

busy_fn!(alpha_work, 1u64);
busy_fn!(beta_work, 2u64);
busy_fn!(unregistered_work, 3u64);
busy_fn!(panicking_work, 4u64);
busy_fn!(pool_work, 5u64);
busy_fn!(outer_work, 6u64);
busy_fn!(inner_work, 7u64);

#[test]
fn each_tag_holds_its_own_thread_and_unregistered_threads_pay_nothing() {
    dir();
    let stranger = std::thread::spawn(|| {
        let tid = gettid();
        burn_for(Duration::from_millis(400), unregistered_work);
        tid
    });
    let a = threadprof::spawn("alpha", || {
        burn_for(Duration::from_millis(400), alpha_work);
        gettid()
    });
    let b = threadprof::spawn("beta", || {
        burn_for(Duration::from_millis(400), beta_work);
        gettid()
    });
    let (a_tid, b_tid, stranger_tid) = (
        a.join().unwrap(),
        b.join().unwrap(),
        stranger.join().unwrap(),
    );

    let alpha = flush_and_read("alpha");
    let beta = flush_and_read("beta");
    assert_eq!(
        hottest(&alpha, "_work").as_deref(),
        Some("per_thread::alpha_work")
    );
    assert_eq!(
        hottest(&beta, "_work").as_deref(),
        Some("per_thread::beta_work")
    );
    assert!(cpu_by_function(&alpha, "beta_work").is_empty());
    // Yield: the profile's CPU is close to the CPU the thread burned (0.4 s), generously.
    let cpu = total(&alpha, "cpu") as f64 / 1e9;
    assert!((0.3..0.6).contains(&cpu), "alpha cpu {cpu}");
    for s in &alpha.sample {
        assert_eq!(alpha.label_str(s, "tag"), Some("alpha"));
        assert_eq!(alpha.label_str(s, "thread_name"), Some("alpha"));
        assert_eq!(alpha.label_num(s, "thread_id"), Some(a_tid));
    }
    assert!(beta
        .sample
        .iter()
        .all(|s| beta.label_num(s, "thread_id") == Some(b_tid)));

    let merged = read_profile(&dir().join(threadprof::MERGED_FILE));
    assert!(cpu_by_function(&merged, "unregistered_work").is_empty());
    assert!(merged
        .sample
        .iter()
        .all(|s| merged.label_num(s, "thread_id") != Some(stranger_tid)));
    assert!(!cpu_by_function(&merged, "alpha_work").is_empty());
    assert_eq!(merged.string(merged.default_sample_type), "cpu");
    assert_eq!(merged.period, 1_000_000_000 / 499);
}

#[profiled_thread(tag = "panicker")]
fn work_then_panic() {
    burn_for(Duration::from_millis(300), panicking_work);
    panic!("boom from a profiled thread");
}

#[test]
fn a_thread_that_panics_keeps_its_profile_and_the_panic_propagates() {
    dir();
    let joined = std::thread::spawn(work_then_panic).join();
    let payload = joined.expect_err("the panic propagates");
    assert_eq!(
        payload.downcast_ref::<&str>(),
        Some(&"boom from a profiled thread")
    );
    assert!(threadprof::live_threads()
        .iter()
        .all(|t| t.tag != "panicker"));
    let p = flush_and_read("panicker");
    assert_eq!(
        hottest(&p, "_work").as_deref(),
        Some("per_thread::panicking_work")
    );
}

#[test]
fn a_pool_shares_one_profile_labelled_by_thread() {
    dir();
    let workers: Vec<_> = (0..3)
        .map(|_| {
            threadprof::spawn("pool", || {
                burn_for(Duration::from_millis(150), pool_work);
                gettid()
            })
        })
        .collect();
    let mut tids: Vec<i64> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    tids.sort();
    let p = flush_and_read("pool");
    let mut seen: Vec<i64> = p
        .sample
        .iter()
        .filter_map(|s| p.label_num(s, "thread_id"))
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen, tids);
}

#[test]
fn nested_enter_uses_the_innermost_tag_and_restores_the_outer() {
    dir();
    std::thread::spawn(|| {
        let _outer = threadprof::enter("outer");
        burn_for(Duration::from_millis(150), outer_work);
        {
            let _inner = threadprof::enter("inner");
            burn_for(Duration::from_millis(150), inner_work);
        }
        burn_for(Duration::from_millis(150), outer_work);
    })
    .join()
    .unwrap();
    let outer = flush_and_read("outer");
    let inner = flush_and_read("inner");
    assert!(cpu_by_function(&outer, "inner_work").is_empty());
    assert!(cpu_by_function(&inner, "outer_work").is_empty());
    let outer_cpu = total(&outer, "cpu") as f64;
    let inner_cpu = total(&inner, "cpu") as f64;
    assert!(
        (1.3..3.0).contains(&(outer_cpu / inner_cpu)),
        "{outer_cpu} / {inner_cpu}"
    );
}

#[test]
fn run_registers_the_current_thread_and_hostile_tags_stay_inside_the_directory() {
    dir();
    let v = threadprof::run("../../escape/attempt", || {
        burn_for(Duration::from_millis(100), alpha_work)
    });
    black_box(v);
    assert!(threadprof::flush());
    let names: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.contains(&"escape_attempt.pb.gz".to_string()),
        "{names:?}"
    );
    assert!(!dir().parent().unwrap().join("escape").exists());
    assert!(
        names.iter().all(|n| !n.contains(".tmp-")),
        "temporary files left: {names:?}"
    );
}

busy_fn!(three_work, 8u64);
busy_fn!(one_work, 9u64);

#[test]
fn a_3_to_1_cpu_split_lands_between_2_and_4_to_1() {
    dir();
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let heavy = threadprof::spawn("split_heavy", move || {
        let info = threadprof::live_threads()
            .into_iter()
            .find(|t| t.tag == "split_heavy");
        started_tx.send(info).unwrap();
        burn_for(Duration::from_millis(450), three_work)
    });
    let light = threadprof::spawn("split_light", || {
        burn_for(Duration::from_millis(150), one_work)
    });
    let info = started_rx
        .recv()
        .unwrap()
        .expect("registered while running");
    assert_eq!(info.name, "split_heavy");
    assert!(info.since <= std::time::SystemTime::now());
    black_box((heavy.join().unwrap(), light.join().unwrap()));
    let ratio = total(&flush_and_read("split_heavy"), "cpu") as f64
        / total(&flush_and_read("split_light"), "cpu") as f64;
    assert!(
        (2.0..4.0).contains(&ratio),
        "3:1 load profiled as {ratio:.2}:1"
    );
}

/// A library loaded with `dlopen`, sampled, and unloaded before the dump: its functions are
/// still named (from its file), not shown as bare addresses.
#[test]
fn a_library_unloaded_before_the_dump_keeps_its_names() {
    dir();
    let lib_dir = tempfile::tempdir().unwrap();
    let src = lib_dir.path().join("plugin.c");
    let so = lib_dir.path().join("libthreadprof_plugin.so");
    std::fs::write(
        &src,
        "unsigned long plugin_spin(unsigned long n) {\n\
           volatile unsigned long x = 7;\n\
           for (unsigned long i = 0; i < n; i++) x = (x << 7 | x >> 57) ^ i;\n\
           return x;\n\
         }\n",
    )
    .unwrap();
    let cc = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&so)
        .arg(&src)
        .status();
    match cc {
        Ok(s) if s.success() => {}
        other => {
            println!("SKIPPED: no C compiler to build the plugin ({other:?})");
            return;
        }
    }
    let path = std::ffi::CString::new(so.to_str().unwrap()).unwrap();
    threadprof::spawn("plugin_user", move || {
        // SAFETY: the library was just built from the source above; `plugin_spin` has the C
        // signature declared here; the handle is closed once, after the last call.
        unsafe {
            let lib = libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
            assert!(!lib.is_null(), "dlopen");
            let f = libc::dlsym(lib, c"plugin_spin".as_ptr());
            assert!(!f.is_null(), "dlsym");
            let spin: extern "C" fn(u64) -> u64 = std::mem::transmute(f);
            let start = thread_cpu();
            // Long enough for the dump thread to see the library loaded (it looks every 0.1 s).
            while thread_cpu() - start < Duration::from_millis(400) {
                black_box(spin(black_box(100_000)));
            }
            assert_eq!(libc::dlclose(lib), 0);
        }
    })
    .join()
    .unwrap();
    let p = flush_and_read("plugin_user");
    let cpu = p.sample_type_index("cpu").unwrap();
    let mut named = 0;
    let mut unnamed = 0;
    for s in &p.sample {
        let leaf = p.stack_names(s).first().copied().unwrap_or("");
        if leaf == "plugin_spin" {
            named += s.value[cpu];
        } else if leaf.starts_with("libthreadprof_plugin.so+") {
            unnamed += s.value[cpu];
        }
    }
    assert!(named > 200_000_000, "plugin_spin CPU {named} ns");
    assert_eq!(unnamed, 0, "addresses of the unloaded library left unnamed");
}
