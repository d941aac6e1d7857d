//! With the `enabled` feature off, the attribute returns the function untouched and the API is
//! a set of pass-throughs. Run with `cargo test -p threadprof` (no features).
#![cfg(not(feature = "enabled"))]

use threadprof::{profiled, profiled_thread};

// Untouched means still `const`: the enabled attribute rejects `const fn` (it registers at run
// time), so this only compiles if nothing was inserted.
#[profiled_thread(tag = "x")]
const fn answer() -> u32 {
    42
}
const ANSWER: u32 = answer();

// Arguments are not even parsed when off: the item is returned as it came in.
#[profiled_thread(tag = 123, anything = "goes")]
fn ignored_args(x: u8) -> u8 {
    x + 1
}

// An async fn stays an async fn.
#[profiled_thread]
async fn still_async() -> u8 {
    5
}

// The same for #[profiled]: `const` survives, arguments are not parsed, async stays async with
// no task around its body.
#[profiled(tag = "x", labels(region = "eu"))]
const fn answer_too() -> u32 {
    43
}
const ANSWER_TOO: u32 = answer_too();

#[profiled(tag = 123, labels(), labels(tag = 1), anything = "goes")]
fn ignored_args_too(x: u8) -> u8 {
    x + 2
}

#[profiled]
async fn still_async_too() -> u8 {
    6
}

#[test]
fn the_attribute_returns_the_function_untouched() {
    assert_eq!(ANSWER, 42);
    assert_eq!(ignored_args(1), 2);
    let fut = still_async();
    assert!(
        std::mem::size_of_val(&fut) <= 8,
        "the future holds no guard"
    );
    assert_eq!(ANSWER_TOO, 43);
    assert_eq!(ignored_args_too(1), 3);
    let fut = still_async_too();
    assert!(
        std::mem::size_of_val(&fut) <= 8,
        "the future holds no task state"
    );
}

#[test]
fn the_api_passes_through() {
    let guard = threadprof::enter("tag");
    assert!(!guard.is_active());
    assert_eq!(std::mem::size_of_val(&guard), 0);
    assert_eq!(threadprof::run("main_worker", || 7), 7);
    let h = threadprof::spawn("worker\0with nul", || {
        std::thread::current().name().map(str::to_owned)
    });
    assert_eq!(h.join().unwrap().as_deref(), Some("worker_with nul"));
    let p = threadprof::Profiler::builder()
        .frequency(0)
        .output_dir("/nonexistent")
        .start()
        .unwrap();
    assert!(!p.config().enabled);
    assert!(!threadprof::flush());
    threadprof::shutdown();
    assert!(threadprof::live_threads().is_empty());
}

#[test]
fn task_and_label_api_passes_through() {
    use std::future::Future;
    // `task` and `labeled` return the future itself: same type, same size.
    let fut = async { 6 * 7 };
    let size = std::mem::size_of_val(&fut);
    let wrapped = threadprof::labeled(&[("route", "/x")], threadprof::task("t", fut));
    assert_eq!(std::mem::size_of_val(&wrapped), size);
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut wrapped = std::pin::pin!(wrapped);
    assert_eq!(wrapped.as_mut().poll(&mut cx), std::task::Poll::Ready(42));
    assert_eq!(threadprof::with_labels(&[("k", "v")], || 5), 5);
    assert!(!threadprof::register_current_thread("pool"));
    assert!(threadprof::live_threads().is_empty());
    assert_eq!(threadprof::stats(), threadprof::Stats::default());
}

// With `heap` on and `enabled` off (`cargo test -p threadprof --features heap --test
// feature_off`), the wrapper exists, is `const`, and passes every call through.
#[cfg(feature = "heap")]
#[global_allocator]
static ALLOC: threadprof::Allocator = threadprof::Allocator::system();

#[cfg(feature = "heap")]
#[test]
fn the_heap_wrapper_passes_through() {
    const AROUND_SYSTEM: threadprof::Allocator<std::alloc::System> =
        threadprof::Allocator::new(std::alloc::System);
    // Same size as what it wraps: no state of its own.
    assert_eq!(std::mem::size_of_val(&AROUND_SYSTEM), 0);
    let v: Vec<u64> = (0..100_000).collect();
    assert_eq!(v.iter().sum::<u64>(), 4_999_950_000);
    let p = threadprof::Profiler::builder()
        .heap_interval(1)
        .start()
        .unwrap();
    assert_eq!(p.config().heap_interval, 512 * 1024);
    assert_eq!(threadprof::stats().heap_samples, 0);
    assert_eq!(threadprof::MERGED_HEAP_FILE, "_merged.heap.pb.gz");
}
