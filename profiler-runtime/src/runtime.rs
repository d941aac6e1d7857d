//! The process-wide runtime: started once (explicitly with [`Profiler::builder`], or lazily by
//! the first registration), stopped once (handle dropped, [`shutdown`], or process exit).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use crate::config::{Config, Requested};
use crate::diagnostics::{error, warn};
use crate::dump::{DumpCounters, DumpLoop};
use crate::registry::{Registry, ThreadGuard, ThreadInfo};
use crate::sampler::{self, SignalError};

const NOT_STARTED: u8 = 0;
const RUNNING: u8 = 1;
const DISABLED: u8 = 2;
const STOPPED: u8 = 3;

/// Fast-path state: `enter` reads this one atomic before doing anything.
static PHASE: AtomicU8 = AtomicU8::new(NOT_STARTED);
static RUNTIME: OnceLock<Runtime> = OnceLock::new();
static START_LOCK: Mutex<()> = Mutex::new(());
static START_PID: OnceLock<u32> = OnceLock::new();

/// How long shutdown waits for the final dump.
const FINAL_DUMP_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) struct Runtime {
    pub config: Config,
    pub registry: Registry,
    /// Label sets in use (`labels.rs`).
    pub labels: crate::labels::LabelSets,
    pub started: SystemTime,
    /// Whether the signal handler is installed (false when unsupported or refused).
    pub sampling: bool,
    /// Dumps written and failed.
    pub dumps: DumpCounters,
    dump: Mutex<Option<DumpLoop>>,
}

/// Why [`ProfilerBuilder::start`] failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The runtime was already started, explicitly or by the first registered thread.
    #[error(
        "the profiler runtime is already running (started by an earlier start() or lazily by the \
         first registered thread, task or #[profiled] call); call Profiler::builder()...start() \
         before registering threads"
    )]
    AlreadyStarted,
    /// The runtime was shut down; it cannot be restarted in this process.
    #[error("the profiler runtime was shut down and cannot be restarted in this process")]
    Stopped,
    /// The SIGPROF handler could not be installed.
    #[error("cannot start sampling: {0}")]
    Signal(#[from] SignalError),
    /// The dump thread could not be spawned.
    #[error("cannot spawn the profile dump thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Configures and starts the profiler runtime. Environment variables (`THREADPROF_*`) override
/// what is set here.
#[derive(Debug, Default, Clone)]
#[must_use = "call .start() to start the profiler"]
pub struct ProfilerBuilder {
    req: Requested,
}

/// Handle to the running profiler. Dropping it stops sampling and writes the final dumps.
#[must_use = "dropping the Profiler handle stops profiling and writes the final dump at once"]
#[derive(Debug)]
pub struct Profiler {
    config: Config,
}

impl Profiler {
    /// A builder with the defaults (see [`Config`]).
    pub fn builder() -> ProfilerBuilder {
        ProfilerBuilder::default()
    }

    /// The configuration in force, after environment overrides.
    pub fn config(&self) -> &Config {
        &self.config
    }
}

impl Drop for Profiler {
    fn drop(&mut self) {
        shutdown();
    }
}

impl ProfilerBuilder {
    /// Directory for dump files (default `./profiles`, created if missing).
    pub fn output_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.req.output_dir = Some(dir.into());
        self
    }

    /// Time between dumps (default 60 s).
    pub fn dump_interval(mut self, interval: Duration) -> Self {
        self.req.dump_interval = Some(interval);
        self
    }

    /// CPU-time samples per second of each registered thread's CPU time (1..=1000, default 99).
    pub fn frequency(mut self, hz: u32) -> Self {
        self.req.frequency = Some(hz);
        self
    }

    /// Wall-clock samples per second per registered thread (0..=1000, default 0 = off).
    pub fn wall_frequency(mut self, hz: u32) -> Self {
        self.req.wall_frequency = Some(hz);
        self
    }

    /// Serve profiles over HTTP on `addr`, e.g. `127.0.0.1:6060` (needs the `http` feature).
    pub fn http_addr(mut self, addr: impl Into<String>) -> Self {
        self.req.http_addr = Some(addr.into());
        self
    }

    /// Require `Authorization: Bearer <token>` on every HTTP request. An empty token is a
    /// configuration error (one error is logged and no server starts), never "no
    /// authentication".
    pub fn http_token(mut self, token: impl Into<String>) -> Self {
        self.req.http_token = Some(token.into());
        self
    }

    /// Serve a non-loopback HTTP address without a token. Without this (or
    /// `THREADPROF_HTTP_ALLOW_UNAUTHENTICATED=1`), such an address logs one error and no server
    /// starts: anyone who can reach it could read the profiles.
    pub fn http_allow_unauthenticated(mut self) -> Self {
        self.req.http_allow_unauthenticated = Some(true);
        self
    }

    /// Most distinct label sets kept (default 1,024, at most 1,048,576; 0 turns labels off:
    /// every set is then `labels=overflow`). Past the bound, samples of a new set carry
    /// `labels=overflow` and one warning is logged, so request ids used as labels cannot grow
    /// memory or dumps without bound.
    pub fn max_label_sets(mut self, n: usize) -> Self {
        self.req.max_label_sets = Some(n);
        self
    }

    /// How much debug information symbolization reads (default [`DebugInfo::Auto`](crate::DebugInfo::Auto); see
    /// there). `THREADPROF_DEBUGINFO=off|auto|on` overrides it.
    pub fn debuginfo(mut self, debuginfo: crate::config::DebugInfo) -> Self {
        self.req.debuginfo = Some(debuginfo);
        self
    }

    /// Mean bytes allocated between two heap samples (default 512 KiB; 0 turns heap sampling
    /// off; at most 1 TiB). Only used with the cargo feature `heap` and
    /// `threadprof::Allocator` as the global allocator. `THREADPROF_HEAP_INTERVAL` overrides it.
    pub fn heap_interval(mut self, bytes: u64) -> Self {
        self.req.heap_interval = Some(bytes);
        self
    }

    /// Whether to profile at all (default true). When false, registration is one atomic load.
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.req.enabled = Some(enabled);
        self
    }

    /// Starts the runtime.
    pub fn start(self) -> Result<Profiler, StartError> {
        let _lock = START_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        match PHASE.load(Ordering::Acquire) {
            NOT_STARTED => {}
            STOPPED => return Err(StartError::Stopped),
            _ => return Err(StartError::AlreadyStarted),
        }
        let config = Config::from_env(&self.req);
        start_locked(config.clone())?;
        Ok(Profiler { config })
    }
}

#[cfg(unix)]
extern "C" fn at_exit() {
    // A forked child that exits must not wait for a dump thread it does not have.
    if START_PID.get() == Some(&std::process::id()) {
        let _ = std::panic::catch_unwind(shutdown);
    }
}

/// Starts with `config`; the caller holds START_LOCK and saw NOT_STARTED.
fn start_locked(config: Config) -> Result<(), StartError> {
    if !config.enabled {
        crate::diagnostics::debug(format_args!("threadprof disabled by configuration"));
        PHASE.store(DISABLED, Ordering::Release);
        return Ok(());
    }
    let sampling = match sampler::install() {
        Ok(()) => true,
        Err(SignalError::Unsupported) => {
            warn("unsupported", &SignalError::Unsupported.to_string());
            false
        }
        Err(e) => return Err(e.into()),
    };
    #[cfg(threadprof_sampling)]
    crate::unwind::refresh();
    let rt = Runtime {
        registry: Registry::new(&config, sampling),
        labels: crate::labels::LabelSets::new(config.max_label_sets),
        started: SystemTime::now(),
        sampling,
        dumps: DumpCounters::default(),
        dump: Mutex::new(None),
        config,
    };
    let rt: &'static Runtime = match RUNTIME.set(rt) {
        Ok(()) => RUNTIME.get().ok_or(StartError::AlreadyStarted)?,
        Err(_) => return Err(StartError::AlreadyStarted),
    };
    let dump = DumpLoop::start(rt).map_err(StartError::Thread)?;
    // Allocations are sampled once the dump thread is there to drain them.
    #[cfg(feature = "heap")]
    if rt.sampling && rt.config.heap_interval > 0 {
        crate::heap::start(rt.config.heap_interval);
    }
    let wake = dump.commands();
    rt.registry.set_on_retire(Box::new(move || {
        let _ = wake.send(crate::dump::Command::Retired);
    }));
    if let Some(addr) = &rt.config.http_addr {
        #[cfg(feature = "http")]
        crate::http::serve(rt, addr, dump.commands());
        #[cfg(not(feature = "http"))]
        warn(
            "http-feature",
            &format!("an HTTP address ({addr}) is configured, but threadprof was built without the `http` feature; no server started"),
        );
    }
    *rt.dump.lock().unwrap_or_else(|e| e.into_inner()) = Some(dump);
    #[cfg(unix)]
    if START_PID.set(std::process::id()).is_ok() {
        // SAFETY: at_exit is an extern "C" fn with no arguments that never unwinds.
        unsafe { libc::atexit(at_exit) };
        crate::registry::watch_forks();
    }
    crate::diagnostics::debug(format_args!(
        "threadprof started: dir {}, every {:?}, {} Hz CPU, {} Hz wall",
        rt.config.output_dir.display(),
        rt.config.dump_interval,
        rt.config.frequency,
        rt.config.wall_frequency
    ));
    PHASE.store(RUNNING, Ordering::Release);
    Ok(())
}

/// The running runtime, if it runs (never starts it): one atomic load when it does not.
#[inline]
pub(crate) fn running() -> Option<&'static Runtime> {
    if PHASE.load(Ordering::Acquire) != RUNNING
        || crate::registry::in_forked_child()
        || crate::diagnostics::reporting()
    {
        return None;
    }
    RUNTIME.get()
}

/// The running runtime, starting it from defaults and the environment on first use.
pub(crate) fn active() -> Option<&'static Runtime> {
    // In a forked child the runtime's threads do not exist; inside the logger on the
    // runtime's behalf, a runtime lock may be held by this very thread.
    if crate::registry::in_forked_child() || crate::diagnostics::reporting() {
        return None;
    }
    match PHASE.load(Ordering::Acquire) {
        RUNNING => RUNTIME.get(),
        NOT_STARTED => {
            let _lock = START_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            if PHASE.load(Ordering::Acquire) == NOT_STARTED {
                if let Err(e) = start_locked(Config::from_env(&Requested::default())) {
                    error("lazy-start", &format!("profiling is off: {e}"));
                    PHASE.store(DISABLED, Ordering::Release);
                }
            }
            drop(_lock);
            (PHASE.load(Ordering::Acquire) == RUNNING)
                .then(|| RUNTIME.get())
                .flatten()
        }
        _ => None,
    }
}

/// Registers the current thread under `tag` until the returned guard drops.
///
/// Starts the runtime from defaults and `THREADPROF_*` variables if nothing started it yet. Tags
/// that are not safe file names are sanitised with a warning (see [`crate::tag`]). When
/// profiling is disabled or stopped this costs one atomic load and returns an inert guard; so
/// it does in a child process made by `fork`, where the runtime's threads do not exist.
pub fn enter(tag: &str) -> ThreadGuard {
    match active() {
        Some(rt) => rt.registry.enter(tag),
        None => ThreadGuard::inert(),
    }
}

/// Writes every profile now and waits until the files are written (at most 10 s). Returns
/// false if the runtime is not running (or this is a forked child of the process that
/// started it) or the dump did not finish in time.
pub fn flush() -> bool {
    if crate::registry::in_forked_child() {
        return false;
    }
    let Some(rt) = RUNTIME.get() else {
        return false;
    };
    if PHASE.load(Ordering::Acquire) != RUNNING {
        return false;
    }
    let dump = rt.dump.lock().unwrap_or_else(|e| e.into_inner());
    dump.as_ref().is_some_and(|d| d.flush(FINAL_DUMP_TIMEOUT))
}

/// Stops sampling and writes the final dumps. Later registrations are no-ops; calling it
/// again does nothing. Also runs at normal process exit and when the [`Profiler`] drops.
pub fn shutdown() {
    if crate::registry::in_forked_child() {
        return;
    }
    let _lock = START_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if PHASE.swap(STOPPED, Ordering::AcqRel) != RUNNING {
        return;
    }
    let Some(rt) = RUNTIME.get() else { return };
    rt.registry.stop_sampling();
    let dump = rt.dump.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(d) = dump {
        d.stop(FINAL_DUMP_TIMEOUT);
    }
    #[cfg(feature = "heap")]
    crate::heap::stop();
    crate::diagnostics::debug(format_args!("threadprof stopped"));
}

/// The threads registered now.
pub fn live_threads() -> Vec<ThreadInfo> {
    if crate::registry::in_forked_child() {
        return Vec::new();
    }
    RUNTIME
        .get()
        .map(|rt| rt.registry.live_threads())
        .unwrap_or_default()
}

/// The configuration in force, if the runtime was started.
pub fn current_config() -> Option<Config> {
    RUNTIME.get().map(|rt| rt.config.clone())
}

/// Counters of the profiler since the process started, for health checks and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Timer periods recorded: by the signal handler, plus the wall periods credited to blocked
    /// threads once the dump thread has drained them. Once every sample is drained (after
    /// [`flush`] with no registered thread left running), this equals the sum of `samples/count`
    /// over every tag's profile: a sample taken after N missed timer expirations counts N+1.
    pub samples: u64,
    /// Timer periods lost because a thread's sample buffer was full (also logged).
    pub dropped: u64,
    /// Samples whose stack was cut short for safety: the unwinder needed memory it could not
    /// read without risk of a fault (a fiber's or a JIT's frames, a frame pointer aimed at an
    /// unmapped page). The sample is kept with the frames read up to that point.
    pub cut_short: u64,
    /// Threads registered now.
    pub live_threads: usize,
    /// Dumps that wrote every file.
    pub dumps: u64,
    /// Dumps in which at least one file could not be written (each also logged as an error).
    pub failed_dumps: u64,
    /// HTTP profile windows open now (always 0 without the `http` feature). A window whose
    /// requester disconnected is removed within about 0.1 s.
    pub open_windows: usize,
    /// Distinct label sets interned (at most `THREADPROF_MAX_LABEL_SETS`; see
    /// [`ProfilerBuilder::max_label_sets`]).
    pub label_sets: usize,
    /// Heap: sampled allocations recorded (cargo feature `heap`; 0 without it).
    pub heap_samples: u64,
    /// Heap: sampled allocations lost because the event ring was full between two drains of
    /// the dump thread (or, rarely, every unwind cache was busy). Warned once.
    pub heap_dropped: u64,
    /// Heap: allocations made while their thread was already recording a sample (the
    /// reentrancy guard was held), not sampled.
    pub heap_skipped: u64,
    /// Heap: sampled allocations the live table had no room for: they count in `alloc_*`, not
    /// in `inuse_*`. Warned once.
    pub heap_untracked: u64,
    /// Heap: sampled allocations the dump thread holds as live (as of its last drain; freed
    /// ones leave at the next check).
    pub heap_live: usize,
    /// Heap: memory the heap tracking takes, in bytes: the live table and event ring (mapped;
    /// resident as they are written), the unwind caches, and the dump thread's records.
    pub heap_tracking_bytes: usize,
}

/// The profiler's counters now (all zero before the runtime starts).
pub fn stats() -> Stats {
    if crate::registry::in_forked_child() {
        return Stats::default();
    }
    let Some(rt) = RUNTIME.get() else {
        return Stats::default();
    };
    let counts = rt.registry.sample_counts();
    Stats {
        samples: counts.recorded,
        dropped: counts.dropped,
        cut_short: counts.cut_short,
        live_threads: counts.live,
        dumps: rt.dumps.written.load(Ordering::Relaxed),
        failed_dumps: rt.dumps.failed.load(Ordering::Relaxed),
        open_windows: rt.dumps.open_windows.load(Ordering::Relaxed),
        label_sets: rt.labels.len(),
        ..heap_stats()
    }
}

/// The heap fields of [`Stats`].
fn heap_stats() -> Stats {
    #[cfg(feature = "heap")]
    {
        let h = crate::heap::counts();
        Stats {
            heap_samples: h.samples,
            heap_dropped: h.dropped,
            heap_skipped: h.skipped,
            heap_untracked: h.untracked,
            heap_live: h.live,
            heap_tracking_bytes: h.tracking_bytes,
            ..Stats::default()
        }
    }
    #[cfg(not(feature = "heap"))]
    Stats::default()
}
