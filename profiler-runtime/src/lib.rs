//! Runtime of the [`threadprof`](https://docs.rs/threadprof) crate: a per-thread sampling profiler
//! that writes one gzipped pprof profile per thread tag.
//!
//! Most users depend on the `threadprof` facade and never name this crate. With the `enabled`
//! feature it holds the registry, the signal-driven sampler, aggregation, symbolization and the
//! dump loop; without it, only the [`pprof`] types and codec (used by the `threadprof` CLI).
//!
//! ```no_run
//! # #[cfg(feature = "enabled")] {
//! let _profiler = threadprof_runtime::Profiler::builder()
//!     .output_dir("/tmp/profiles")
//!     .start()
//!     .expect("threadprof");
//! let worker = threadprof_runtime::spawn("worker", || (0..10_000_000u64).sum::<u64>());
//! worker.join().unwrap();
//! # }
//! ```
//!
//! Layout: `handler.rs` is the signal handler and nothing else; it touches only `slot.rs`
//! (per-thread state), `buffer.rs` (the sample ring), `idle.rs` (wall periods credited to a
//! blocked thread), `unwind.rs` (the shared unwinder), `altstack.rs` (the per-thread signal
//! stack it runs on) and `stackread.rs` (the memory reads it makes, none of which can fault). `registry.rs` owns threads and their
//! timers (`sampler.rs`: a CPU timer per thread, one wall ticker); `dump.rs` drains rings into
//! `aggregate.rs`, resolves names with `symbolize.rs` and writes files; `runtime.rs` starts and
//! stops it all. `task.rs` switches a thread's tag and labels around a future's polls and label
//! scopes, `labels.rs` interns label sets (the handler copies only their ids), and `spans.rs`
//! (feature `tracing`) turns entered `tracing` spans into labels. `heap/` (feature `heap`) is
//! the global-allocator wrapper [`Allocator`]: the allocation path (`heap/mod.rs`), its live
//! table and event ring, the stack walk of a sampled allocation (`heap/capture.rs`, through
//! `unwind.rs` and `stackread.rs`), and the dump thread's heap profiles (`heap/profile.rs`).

#![cfg_attr(docsrs, feature(doc_cfg))]
#![cfg_attr(not(threadprof_sampling), allow(dead_code))]

pub mod pprof;

#[cfg(feature = "flame")]
pub mod flame;

#[cfg(feature = "enabled")]
mod aggregate;
#[cfg(threadprof_sampling)]
mod altstack;
#[cfg(feature = "enabled")]
pub mod buffer;
#[cfg(feature = "enabled")]
pub mod config;
#[cfg(feature = "enabled")]
mod diagnostics;
#[cfg(feature = "enabled")]
mod dump;
#[cfg(threadprof_sampling)]
mod handler;
#[cfg(feature = "heap")]
mod heap;
#[cfg(feature = "http")]
mod http;
#[cfg(feature = "enabled")]
mod idle;
#[cfg(feature = "enabled")]
mod labels;
#[cfg(feature = "enabled")]
mod objects;
#[cfg(feature = "enabled")]
mod registry;
#[cfg(feature = "enabled")]
mod runtime;
#[cfg(feature = "enabled")]
mod sampler;
#[cfg(feature = "enabled")]
mod slot;
#[cfg(feature = "tracing")]
mod spans;
#[cfg(threadprof_sampling)]
mod stackread;
#[cfg(feature = "enabled")]
mod symbolize;
#[cfg(feature = "enabled")]
pub mod tag;
#[cfg(feature = "enabled")]
mod task;
#[cfg(threadprof_sampling)]
mod unwind;

#[cfg(feature = "enabled")]
pub use config::{Config, DebugInfo};
#[cfg(feature = "enabled")]
pub use dump::{__inject_dump_panic, MERGED_FILE, MERGED_HEAP_FILE};
#[cfg(feature = "heap")]
#[cfg_attr(docsrs, doc(cfg(feature = "heap")))]
pub use heap::{__set_sample_hook as __set_heap_sample_hook, Allocator};
#[cfg(feature = "http")]
pub use http::local_addr as http_local_addr;
#[cfg(feature = "enabled")]
pub use registry::{ThreadGuard, ThreadInfo};
#[cfg(feature = "enabled")]
pub use runtime::{
    current_config, enter, flush, live_threads, shutdown, stats, Profiler, ProfilerBuilder,
    StartError, Stats,
};
#[cfg(feature = "enabled")]
pub use sampler::SignalError;
#[cfg(feature = "tracing")]
pub use spans::{layer as tracing_layer, SpanLayer, SPAN_NAME};
#[cfg(feature = "enabled")]
pub use task::{
    label_scope, labeled, register_current_thread, task, with_labels, CallScope, CallSite,
    LabelScope, Profiled,
};

/// Stack use of the signal handler on the calling thread (bench support). Not public API.
#[doc(hidden)]
#[cfg(feature = "enabled")]
pub fn __signal_stack_use(paint: bool) -> Option<usize> {
    #[cfg(threadprof_sampling)]
    return altstack::__signal_stack_use(paint);
    #[cfg(not(threadprof_sampling))]
    {
        let _ = paint;
        None
    }
}

/// Runs `f` on the current thread, registered under `tag` for its duration (also if it
/// panics). Use it for `main` or any thread you did not spawn yourself.
#[cfg(feature = "enabled")]
pub fn run<T>(tag: &str, f: impl FnOnce() -> T) -> T {
    let _guard = enter(tag);
    f()
}

/// Spawns a thread named after `tag`, registered under `tag` while `f` runs.
///
/// # Panics
/// Like [`std::thread::spawn`], if the OS cannot create a thread.
#[cfg(feature = "enabled")]
pub fn spawn<T, F>(tag: &str, f: F) -> std::thread::JoinHandle<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let owned = tag.to_owned();
    std::thread::Builder::new()
        .name(thread_name(tag))
        .spawn(move || run(&owned, f))
        .expect("failed to spawn thread")
}

/// A thread name for `tag`: std refuses names with NUL bytes, so those are replaced.
#[cfg(feature = "enabled")]
fn thread_name(tag: &str) -> String {
    tag.replace('\0', "_")
}
