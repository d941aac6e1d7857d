//! Per-thread sampling profiler for long-running Rust services: one standard pprof profile per
//! tagged thread, written to a directory every interval, with no CLI and no restart.
//!
//! ```
//! use threadprof::profiled_thread;
//!
//! #[profiled_thread(tag = "ip_manager")]
//! fn run_ip_monitor(rounds: u64) -> u64 {
//!     (0..rounds).map(|i| i * i).sum()
//! }
//!
//! let monitor = std::thread::spawn(|| run_ip_monitor(1_000_000));
//! let worker = threadprof::spawn("async_worker1", || (0..1_000_000u64).sum::<u64>());
//! let total = threadprof::run("main_worker", || monitor.join().unwrap() + worker.join().unwrap());
//! assert!(total > 0);
//! ```
//!
//! Everything is behind the `enabled` cargo feature (off by default). Off, the attribute
//! returns the function untouched and [`spawn`], [`run`], [`enter`] and the builder are
//! pass-throughs that compile to nothing; no runtime code or dependency is built. On, the first
//! registration starts the runtime from defaults and `THREADPROF_*` environment variables (or
//! start it yourself with [`Profiler::builder`]); it samples each registered thread on its own
//! CPU-time clock and writes `{dir}/{tag}.pb.gz` plus `{dir}/_merged.pb.gz` every interval.
//!
//! Wire the feature to one of your own: `[features] profiling = ["threadprof/enabled"]`.
//!
//! Samples can follow the work rather than the OS thread: [`task`] runs every poll of a future
//! under a tag on whichever thread polls it, [`labeled`] and [`with_labels`] put `key = value`
//! labels on samples (as Go's `pprof.Do`), `#[profiled]` does either for a function, and with
//! the `tracing` feature, `tracing::layer()` turns entered spans into labels.
//!
//! ```
//! # #[cfg(feature = "enabled")] let _p = threadprof::Profiler::builder().enabled(false).start();
//! async fn ingest(batch: u64) -> u64 {
//!     threadprof::with_labels(&[("step", "decode")], || batch * 2)
//! }
//!
//! let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
//! let doubled = rt.block_on(threadprof::task(
//!     "ingest",
//!     threadprof::labeled(&[("route", "/ingest")], ingest(21)),
//! ));
//! assert_eq!(doubled, 42);
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

/// Registers the current thread under a tag while the function runs.
///
/// `#[profiled_thread(tag = "ip_manager")]` on a free function, associated function or method:
/// while it runs, the calling thread is registered under the tag and sampled; on return or
/// panic it is unregistered and its samples are kept. Without `tag`, the function's name is the
/// tag. `crate = "path"` names the `threadprof` crate if you renamed the dependency. With the
/// `enabled` feature off, the function is returned untouched.
pub use threadprof_macros::profiled_thread;

/// Profiles a function under a tag and labels, wherever it runs.
///
/// - On an `async fn` (free function, associated function or method, generic, with `?`,
///   `return` and `impl Trait` returns alike) the signature is kept and the body runs as a
///   task: every poll of its future, on whichever thread polls it, is attributed to the tag
///   and labels.
/// - On a plain fn, the tag and labels are in force from the top of the body until it returns
///   or panics, on the calling thread.
///
/// `#[profiled(tag = "load_user", labels(region = "eu", tier = "gold"))]`. Without `tag`, the
/// function's name is the tag (tags must match `[A-Za-z0-9][A-Za-z0-9._-]{0,63}`, checked at
/// compile time). Label keys are identifiers (`r#type` gives the key `type`) and values string
/// literals; `tag`, `thread_name`, `thread_id`, `state` and `span_id` are the profiler's own
/// keys and cannot be used. `crate = "path"` names the `threadprof` crate if you renamed the
/// dependency. With the `enabled` feature off, the function is returned untouched.
///
/// A plain fn that returns a future (written by hand, or by `#[async_trait]` before this
/// attribute runs) is profiled only while it builds the future, not while the future runs:
/// put the attribute on an `async fn`.
pub use threadprof_macros::profiled;

#[cfg(feature = "enabled")]
pub use threadprof_runtime::{
    enter, flush, labeled, live_threads, pprof, register_current_thread, run, shutdown, spawn,
    stats, task, with_labels, Config, DebugInfo, Profiled, Profiler, ProfilerBuilder, StartError,
    Stats, ThreadGuard, ThreadInfo, MERGED_FILE, MERGED_HEAP_FILE,
};

/// A global allocator that samples allocations into heap profiles (cargo feature `heap`).
///
/// ```
/// #[global_allocator]
/// static ALLOC: threadprof::Allocator = threadprof::Allocator::system();
/// # fn main() {}
/// ```
///
/// `Allocator::new(inner)` wraps another allocator (`threadprof::Allocator::new(mimalloc::MiMalloc)`);
/// both constructors are `const fn`. About one allocation per `THREADPROF_HEAP_INTERVAL` bytes
/// (default 512 KiB) is recorded with its stack, tag and labels, and every dump interval the
/// runtime writes `{tag}.heap.pb.gz` and `_merged.heap.pb.gz` (Go's heap profile). With the
/// `enabled` feature off it is a plain pass-through to the inner allocator.
#[cfg(all(feature = "heap", feature = "enabled"))]
#[cfg_attr(docsrs, doc(cfg(feature = "heap")))]
pub use threadprof_runtime::Allocator;

/// The address the HTTP endpoint listens on, once bound (`http` feature).
#[cfg(feature = "http")]
pub use threadprof_runtime::http_local_addr;

#[cfg(not(feature = "enabled"))]
mod disabled;
#[cfg(not(feature = "enabled"))]
pub use disabled::{
    enter, flush, labeled, live_threads, register_current_thread, run, shutdown, spawn, stats,
    task, with_labels, Config, DebugInfo, Profiler, ProfilerBuilder, StartError, Stats,
    ThreadGuard, ThreadInfo, MERGED_FILE, MERGED_HEAP_FILE,
};

/// A global allocator that samples allocations into heap profiles (cargo feature `heap`);
/// with the `enabled` feature off, a plain pass-through to the inner allocator.
#[cfg(all(feature = "heap", not(feature = "enabled")))]
#[cfg_attr(docsrs, doc(cfg(feature = "heap")))]
pub use disabled::Allocator;

/// `tracing` spans as sample labels (`tracing` feature).
///
/// [`layer()`](tracing::layer) returns a `tracing_subscriber::Layer`: while a span is entered on
/// a registered thread, samples carry `span_name` (the innermost entered span) and the span
/// fields picked with `.with_fields([..])` as labels; `.with_span_ids(true)` adds `span_id` to
/// HTTP profile windows. With the `enabled` feature off the layer does nothing, so code that
/// adds it builds either way.
///
/// ```
/// use tracing_subscriber::prelude::*;
/// let subscriber = tracing_subscriber::registry()
///     .with(threadprof::tracing::layer().with_fields(["route"]));
/// # drop(subscriber);
/// ```
#[cfg(feature = "tracing")]
#[cfg_attr(docsrs, doc(cfg(feature = "tracing")))]
pub mod tracing {
    #[cfg(feature = "enabled")]
    pub use threadprof_runtime::{tracing_layer as layer, SpanLayer};

    #[cfg(not(feature = "enabled"))]
    pub use crate::disabled::tracing::{layer, SpanLayer};
}

/// Support for the code `#[profiled_thread]` and `#[profiled]` generate. Not public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::enter;

    /// The tag and labels of one `#[profiled]` function (a `static` in its expansion).
    #[cfg(feature = "enabled")]
    pub use threadprof_runtime::CallSite;

    /// Test support for the heap sampler's reentrancy guard.
    #[cfg(all(feature = "heap", feature = "enabled"))]
    pub use threadprof_runtime::__set_heap_sample_hook;
}
