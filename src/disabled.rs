//! The API with the `enabled` feature off: same names and signatures, no work.

use std::path::PathBuf;
use std::time::Duration;

/// Name of the merged profile file.
pub const MERGED_FILE: &str = "_merged.pb.gz";
/// Name of the merged heap profile file.
pub const MERGED_HEAP_FILE: &str = "_merged.heap.pb.gz";

/// The configuration (feature off: the defaults, never used).
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Whether sampling and dumps run at all (always false here).
    pub enabled: bool,
    /// Where dump files would go.
    pub output_dir: PathBuf,
    /// Time between dumps.
    pub dump_interval: Duration,
    /// CPU sampling frequency in Hz.
    pub frequency: u32,
    /// Wall-clock sampling frequency in Hz; 0 means off.
    pub wall_frequency: u32,
    /// HTTP address (never used with the feature off).
    pub http_addr: Option<String>,
    /// HTTP bearer token (never used with the feature off).
    pub http_token: Option<String>,
    /// Serve a non-loopback address without a token (never used with the feature off).
    pub http_allow_unauthenticated: bool,
    /// Most distinct label sets kept (never used with the feature off).
    pub max_label_sets: usize,
    /// How much debug information names are read from (never used with the feature off).
    pub debuginfo: DebugInfo,
    /// Mean bytes between heap samples (never used with the feature off).
    pub heap_interval: u64,
}

/// How much debug information symbolization reads (no effect with the feature off).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DebugInfo {
    /// Symbol tables only.
    Off,
    /// Also the DWARF inside each object, and a stripped library's separate symbol table.
    #[default]
    Auto,
    /// Also the DWARF of separate debug files.
    On,
}

/// Why the profiler could not start (never happens with the feature off).
#[derive(Debug)]
#[non_exhaustive]
pub enum StartError {}

impl std::fmt::Display for StartError {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {}
    }
}

impl std::error::Error for StartError {}

/// Registration guard (feature off: zero-sized, does nothing).
#[must_use = "the thread is unregistered as soon as the guard is dropped"]
#[derive(Debug)]
pub struct ThreadGuard {
    _not_send: std::marker::PhantomData<*const ()>,
}

impl ThreadGuard {
    /// Always false: nothing is registered with the feature off.
    pub fn is_active(&self) -> bool {
        false
    }
}

/// Builder (feature off: records nothing, starts nothing).
#[derive(Debug, Default, Clone)]
#[must_use = "call .start() to start the profiler"]
pub struct ProfilerBuilder;

/// Profiler handle (feature off: does nothing).
#[must_use = "dropping the Profiler handle stops profiling and writes the final dump at once"]
#[derive(Debug)]
pub struct Profiler {
    config: Config,
}

impl Profiler {
    /// A builder.
    pub fn builder() -> ProfilerBuilder {
        ProfilerBuilder
    }

    /// The configuration (the defaults, with `enabled` false).
    pub fn config(&self) -> &Config {
        &self.config
    }
}

impl ProfilerBuilder {
    /// No effect with the feature off.
    pub fn output_dir(self, _dir: impl Into<PathBuf>) -> Self {
        self
    }
    /// No effect with the feature off.
    pub fn dump_interval(self, _interval: Duration) -> Self {
        self
    }
    /// No effect with the feature off.
    pub fn frequency(self, _hz: u32) -> Self {
        self
    }
    /// No effect with the feature off.
    pub fn wall_frequency(self, _hz: u32) -> Self {
        self
    }
    /// No effect with the feature off.
    pub fn enabled(self, _enabled: bool) -> Self {
        self
    }
    /// No effect with the feature off.
    pub fn heap_interval(self, _bytes: u64) -> Self {
        self
    }
    /// No effect with the feature off.
    pub fn http_addr(self, _addr: impl Into<String>) -> Self {
        self
    }
    /// No effect with the feature off.
    pub fn http_token(self, _token: impl Into<String>) -> Self {
        self
    }
    /// No effect with the feature off.
    pub fn http_allow_unauthenticated(self) -> Self {
        self
    }
    /// No effect with the feature off.
    pub fn max_label_sets(self, _n: usize) -> Self {
        self
    }
    /// No effect with the feature off.
    pub fn debuginfo(self, _debuginfo: DebugInfo) -> Self {
        self
    }
    /// Returns an inert handle.
    pub fn start(self) -> Result<Profiler, StartError> {
        Ok(Profiler {
            config: Config {
                enabled: false,
                output_dir: PathBuf::from("./profiles"),
                dump_interval: Duration::from_secs(60),
                frequency: 99,
                wall_frequency: 0,
                http_addr: None,
                http_token: None,
                http_allow_unauthenticated: false,
                max_label_sets: 1024,
                debuginfo: DebugInfo::Auto,
                heap_interval: 512 * 1024,
            },
        })
    }
}

/// Returns an inert guard.
#[inline(always)]
pub fn enter(_tag: &str) -> ThreadGuard {
    ThreadGuard {
        _not_send: std::marker::PhantomData,
    }
}

/// Calls `f`.
#[inline(always)]
pub fn run<T>(_tag: &str, f: impl FnOnce() -> T) -> T {
    f()
}

/// Spawns a thread named after `tag` running `f`, like [`std::thread::spawn`].
///
/// # Panics
/// Like [`std::thread::spawn`], if the OS cannot create a thread.
pub fn spawn<T, F>(tag: &str, f: F) -> std::thread::JoinHandle<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    std::thread::Builder::new()
        .name(tag.replace('\0', "_"))
        .spawn(f)
        .expect("failed to spawn thread")
}

/// Returns false: nothing to write.
#[inline(always)]
pub fn flush() -> bool {
    false
}

/// Does nothing.
#[inline(always)]
pub fn shutdown() {}

/// A registered thread (feature off: none ever are).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadInfo {
    /// Tag in force.
    pub tag: String,
    /// Thread name.
    pub name: String,
    /// OS thread id.
    pub tid: i64,
    /// When the thread registered.
    pub since: std::time::SystemTime,
}

/// Always empty.
pub fn live_threads() -> Vec<ThreadInfo> {
    Vec::new()
}

/// Counters of the profiler (feature off: always zero).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Timer periods recorded.
    pub samples: u64,
    /// Timer periods lost because a buffer was full.
    pub dropped: u64,
    /// Samples whose stack was cut short for safety.
    pub cut_short: u64,
    /// Threads registered now.
    pub live_threads: usize,
    /// Dumps that wrote every file.
    pub dumps: u64,
    /// Dumps in which a file could not be written.
    pub failed_dumps: u64,
    /// HTTP profile windows open now.
    pub open_windows: usize,
    /// Distinct label sets interned.
    pub label_sets: usize,
    /// Heap: sampled allocations recorded.
    pub heap_samples: u64,
    /// Heap: sampled allocations lost (event ring full).
    pub heap_dropped: u64,
    /// Heap: allocations not sampled because their thread was recording one.
    pub heap_skipped: u64,
    /// Heap: sampled allocations counted in `alloc_*` only (live table full).
    pub heap_untracked: u64,
    /// Heap: live sampled allocations held.
    pub heap_live: usize,
    /// Heap: memory the heap tracking takes, in bytes.
    pub heap_tracking_bytes: usize,
}

/// Always all zero.
pub fn stats() -> Stats {
    Stats::default()
}

/// The global-allocator wrapper with the `enabled` feature off: every call goes straight to
/// the inner allocator.
#[cfg(feature = "heap")]
#[derive(Debug, Default, Clone, Copy)]
pub struct Allocator<A = std::alloc::System> {
    inner: A,
}

#[cfg(feature = "heap")]
impl Allocator<std::alloc::System> {
    /// The wrapper around the system allocator.
    pub const fn system() -> Allocator<std::alloc::System> {
        Allocator {
            inner: std::alloc::System,
        }
    }
}

#[cfg(feature = "heap")]
impl<A> Allocator<A> {
    /// The wrapper around `inner`.
    pub const fn new(inner: A) -> Allocator<A> {
        Allocator { inner }
    }

    /// The wrapped allocator.
    pub const fn inner(&self) -> &A {
        &self.inner
    }
}

// SAFETY: every method forwards to the inner allocator with the caller's arguments.
#[cfg(feature = "heap")]
unsafe impl<A: std::alloc::GlobalAlloc> std::alloc::GlobalAlloc for Allocator<A> {
    #[inline(always)]
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { self.inner.alloc(layout) }
    }
    #[inline(always)]
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { self.inner.alloc_zeroed(layout) }
    }
    #[inline(always)]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { self.inner.dealloc(ptr, layout) }
    }
    #[inline(always)]
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { self.inner.realloc(ptr, layout, new_size) }
    }
}

/// Returns `fut` unchanged.
#[inline(always)]
pub fn task<F: std::future::Future>(_tag: &str, fut: F) -> F {
    fut
}

/// Returns `fut` unchanged.
#[inline(always)]
pub fn labeled<F: std::future::Future>(_labels: &[(&str, &str)], fut: F) -> F {
    fut
}

/// Calls `f`.
#[inline(always)]
pub fn with_labels<T>(_labels: &[(&str, &str)], f: impl FnOnce() -> T) -> T {
    f()
}

/// Returns false: nothing is registered with the feature off.
#[inline(always)]
pub fn register_current_thread(_tag: &str) -> bool {
    false
}

/// The tracing layer with the `enabled` feature off: a layer that does nothing.
#[cfg(feature = "tracing")]
pub mod tracing {
    /// A `tracing_subscriber::Layer` that does nothing (the `enabled` feature is off).
    #[derive(Clone, Debug, Default)]
    pub struct SpanLayer;

    /// Returns a layer that does nothing.
    pub fn layer() -> SpanLayer {
        SpanLayer
    }

    impl SpanLayer {
        /// No effect with the feature off.
        pub fn with_fields<I, T>(self, _fields: I) -> SpanLayer
        where
            I: IntoIterator<Item = T>,
            T: Into<String>,
        {
            self
        }

        /// No effect with the feature off.
        pub fn with_span_ids(self, _on: bool) -> SpanLayer {
            self
        }
    }

    impl<S: tracing_core::Subscriber> tracing_subscriber::Layer<S> for SpanLayer {}
}
