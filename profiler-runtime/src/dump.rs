//! `DumpLoop`: the background thread that drains samples and writes profile files.
//!
//! Every 100 ms it drains the rings that have something new into the cumulative profiles;
//! every dump interval (and on flush and shutdown) it writes `{dir}/{tag}.pb.gz` for each tag
//! with samples and `{dir}/_merged.pb.gz`. Each file is written to a temporary file in the same directory and
//! renamed over the old one, so a reader sees either the previous or the new complete file.
//! A failed write is logged and retried at the next dump; the samples stay in memory.

use std::fs;
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::aggregate::{Aggregator, DrainStats, Names, Periods, View, Window};
use crate::diagnostics::{error, warn};
use crate::labels::LabelSet;
use crate::objects::{self, LoadedObject};
use crate::pprof::{encode_gz, Profile};
use crate::registry::ThreadRecord;
use crate::runtime::Runtime;
use crate::symbolize::Symbolizer;

/// Name of the profile of all tags together.
pub const MERGED_FILE: &str = "_merged.pb.gz";
/// Name of the heap profile of all tags together (cargo feature `heap`); per tag,
/// `{tag}.heap.pb.gz`.
pub const MERGED_HEAP_FILE: &str = "_merged.heap.pb.gz";

/// The dump side of heap profiles, where heap sampling is built in.
#[cfg(all(feature = "heap", threadprof_sampling))]
type Heap = crate::heap::profile::HeapProfiles;
#[cfg(all(feature = "heap", threadprof_sampling))]
pub(crate) use crate::heap::profile::HeapDefault;

/// Stand-in where heap sampling is not built in: there are never heap samples.
#[cfg(not(all(feature = "heap", threadprof_sampling)))]
mod no_heap {
    /// Which figure a reader shows first (unused without heap sampling).
    #[derive(Clone, Copy, Debug)]
    #[allow(dead_code)]
    pub(crate) enum HeapDefault {
        InUse,
        Alloc,
    }
}
#[cfg(not(all(feature = "heap", threadprof_sampling)))]
pub(crate) use no_heap::HeapDefault;

/// How the dumps went, readable from any thread (`threadprof::stats`).
#[derive(Default)]
pub(crate) struct DumpCounters {
    /// Dumps that wrote every file.
    pub written: AtomicU64,
    /// Dumps where the directory or at least one file could not be written.
    pub failed: AtomicU64,
    /// HTTP profile windows open now (kept by the dump thread, which owns them).
    pub open_windows: AtomicUsize,
}

static INJECT_PANIC: AtomicBool = AtomicBool::new(false);

/// Makes the next dump panic inside the dump thread, to test that the host program and later
/// dumps survive a bug in the profiler. Not public API.
#[doc(hidden)]
pub fn __inject_dump_panic() {
    INJECT_PANIC.store(true, Ordering::SeqCst);
}

/// How often rings are drained between dumps.
const DRAIN_EVERY: Duration = Duration::from_millis(100);

/// The next drain after one that found the heap event ring at least a quarter full: sooner,
/// so that allocation rates up to four times what the ring holds per [`DRAIN_EVERY`] lose no
/// samples (the ring holds 4,096: 20 GiB/s at the default interval, 2.5 GiB/s at 64 KiB).
const HEAP_BACKLOG_DRAIN: Duration = Duration::from_millis(25);

/// How long the dump thread may wait between drains after one that found nothing: as long as
/// a ring cannot fill meanwhile (about 100 records of the deepest stacks per 1,000 periods a
/// second of the two clocks together, hence 100 ms × 1,000 / (cpu Hz + wall Hz)), and at most
/// 1 s. An idle process then costs its dump thread one wake-up a second at the default 99 Hz,
/// not ten; a drain that finds something goes back to every 100 ms.
fn idle_drain(cpu_hz: u32, wall_hz: u32) -> Duration {
    let hz = u64::from(cpu_hz) + u64::from(wall_hz);
    (DRAIN_EVERY * 1000 / hz.max(1) as u32).clamp(DRAIN_EVERY, Duration::from_secs(1))
}

pub(crate) enum Command {
    /// Write now and acknowledge.
    Flush(Sender<()>),
    /// Final drain and write, then exit.
    Stop,
    /// Start collecting window `id` (chosen by the requester, unique) of samples of all tags,
    /// or of one tag id.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    OpenWindow(u64, Option<u32>),
    /// End a window and reply with its profile, holding the samples of one view.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    CloseWindow(u64, View, Sender<Profile>),
    /// Drop a window whose requester gave up (disconnected, timed out); no reply. Sent after
    /// its `OpenWindow` by the same thread, so it is never seen first.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    CancelWindow(u64),
    /// The cumulative profile of one tag id, or of all tags, as in the dump files.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    Cumulative(Option<u32>, Sender<Profile>),
    /// Samples so far per tag name.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    Counts(Sender<Vec<(String, u64)>>),
    /// The heap profile of one tag id, or of all tags; `None` when heap profiling is not in
    /// use (no `heap` feature, another global allocator, or `THREADPROF_HEAP_INTERVAL=0`).
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    Heap(Option<u32>, HeapDefault, Sender<Option<Profile>>),
    /// A thread unregistered: drain its ring now so that its slot can serve the next thread.
    Retired,
}

/// Handle to the dump thread.
pub(crate) struct DumpLoop {
    commands: Sender<Command>,
    thread: Option<JoinHandle<()>>,
}

/// Objects remembered for naming addresses after they are unloaded.
const MAX_SEEN_OBJECTS: usize = 1024;

/// The dump thread's state.
struct DumpState {
    rt: &'static Runtime,
    aggregator: Aggregator,
    symbols: Symbolizer,
    handler_lost_reported: bool,
    /// Whether the last tick found something to drain (records, drops), wrote, or serves a
    /// window or heap samples: then the next drain is due in [`DRAIN_EVERY`], else in
    /// [`idle_drain`].
    busy: bool,
    /// Whether the last heap drain found the event ring at least a quarter full: the next
    /// drain is then due in [`HEAP_BACKLOG_DRAIN`].
    heap_backlog: bool,
    periods: Periods,
    windows: std::collections::HashMap<u64, Window>,
    /// Every object seen loaded (path, addresses, build id; no unwind data), kept after it is
    /// unloaded so that its addresses in earlier samples are still named from its file.
    seen_objects: Vec<LoadedObject>,
    /// The loader's generation `seen_objects` was last updated at.
    seen_generation: Option<objects::Generation>,
    /// Heap profiles, when heap sampling runs.
    #[cfg(all(feature = "heap", threadprof_sampling))]
    heap: Option<Heap>,
}

impl DumpLoop {
    pub(crate) fn start(rt: &'static Runtime) -> std::io::Result<DumpLoop> {
        let (tx, rx) = mpsc::channel();
        let periods = Periods {
            cpu_ns: 1_000_000_000 / u64::from(rt.config.frequency),
            wall_ns: match rt.config.wall_frequency {
                0 => 0,
                hz => 1_000_000_000 / u64::from(hz),
            },
        };
        let state = DumpState {
            rt,
            aggregator: Aggregator::new(periods, rt.started),
            symbols: Symbolizer::new(rt.config.debuginfo),
            handler_lost_reported: false,
            busy: true,
            heap_backlog: false,
            periods,
            windows: std::collections::HashMap::new(),
            seen_objects: Vec::new(),
            seen_generation: None,
            #[cfg(all(feature = "heap", threadprof_sampling))]
            heap: (rt.sampling && rt.config.heap_interval > 0)
                .then(|| Heap::new(rt.config.heap_interval, rt.started)),
        };
        let thread = std::thread::Builder::new()
            .name("threadprof-dump".into())
            .spawn(move || {
                // Its own allocations would feed the heap profiles it builds.
                #[cfg(feature = "heap")]
                crate::heap::exclude_current_thread();
                state.run(rx)
            })?;
        Ok(DumpLoop {
            commands: tx,
            thread: Some(thread),
        })
    }

    /// A handle to send commands to the dump thread.
    pub(crate) fn commands(&self) -> Sender<Command> {
        self.commands.clone()
    }

    /// Writes every profile now; returns once written (or after `timeout`).
    pub(crate) fn flush(&self, timeout: Duration) -> bool {
        let (tx, rx) = mpsc::channel();
        self.commands.send(Command::Flush(tx)).is_ok() && rx.recv_timeout(timeout).is_ok()
    }

    /// Final drain and dump, then waits (up to `timeout`) for the thread to end.
    pub(crate) fn stop(mut self, timeout: Duration) {
        let _ = self.commands.send(Command::Stop);
        let Some(thread) = self.thread.take() else {
            return;
        };
        let deadline = Instant::now() + timeout;
        while !thread.is_finished() {
            if Instant::now() > deadline {
                error(
                    "dump-stop",
                    "the final profile dump did not finish in time; continuing without it",
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = thread.join();
    }
}

impl DumpState {
    fn run(mut self, commands: Receiver<Command>) {
        let interval = self.rt.config.dump_interval;
        let mut next_dump = Instant::now() + interval;
        let mut next_drain = Instant::now() + DRAIN_EVERY;
        loop {
            let wait = next_dump
                .min(next_drain)
                .saturating_duration_since(Instant::now());
            let mut command = match commands.recv_timeout(wait) {
                Ok(c) => Some(c),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => Some(Command::Stop),
            };
            if matches!(command, Some(Command::Retired)) {
                // Cheap path, possibly thousands of times a second under thread churn: only
                // the ended threads' rings, not a full tick. Heap events first, while the
                // ended threads' names are still known.
                self.guarded("retire", |s| {
                    s.drain_heap();
                    s.drain_retired(&mut DrainStats::default())
                });
                if Instant::now() < next_drain.min(next_dump) {
                    continue;
                }
                command = None;
            }
            let due = Instant::now() >= next_dump;
            let write = due || matches!(command, Some(Command::Flush(_) | Command::Stop));
            // Profiles about to be read (written, a window opened or closed, the cumulative
            // view or the counts served) take every thread's wall periods up to now first.
            let every_thread = write
                || matches!(
                    command,
                    Some(
                        Command::OpenWindow(..)
                            | Command::CloseWindow(..)
                            | Command::Cumulative(..)
                            | Command::Counts(..)
                    )
                );
            self.guarded("tick", |s| s.tick(write, every_thread));
            next_drain = Instant::now()
                + if self.heap_backlog {
                    HEAP_BACKLOG_DRAIN
                } else if self.busy {
                    DRAIN_EVERY
                } else {
                    idle_drain(self.rt.config.frequency, self.rt.config.wall_frequency)
                };
            if due {
                // Skip intervals missed while a dump was slow rather than bursting.
                while next_dump <= Instant::now() {
                    next_dump += interval;
                }
            }
            match command {
                Some(Command::Flush(ack)) => {
                    let _ = ack.send(());
                }
                Some(Command::Stop) => return,
                Some(other) => self.guarded("request", |s| s.answer(other)),
                None => {}
            }
        }
    }

    /// Answers a request from the HTTP server; samples were just drained.
    fn answer(&mut self, command: Command) {
        let names = RuntimeNames(self.rt);
        let name = |id: u32| names.tag(id);
        match command {
            Command::OpenWindow(id, tag) => {
                let aggregator =
                    Aggregator::new(self.periods, std::time::SystemTime::now()).keeping_spans();
                self.windows.insert(id, Window { aggregator, tag });
                self.count_windows();
                // Drain into it every 100 ms from now on (the tick before decided without it).
                self.busy = true;
            }
            Command::CloseWindow(id, view, reply) => {
                if let Some(w) = self.windows.remove(&id) {
                    self.count_windows();
                    let objects = self.objects_for_names();
                    let p =
                        w.aggregator
                            .to_profile(None, view, &names, &mut self.symbols, &objects);
                    let _ = reply.send(p);
                }
            }
            Command::CancelWindow(id) => {
                self.windows.remove(&id);
                self.count_windows();
            }
            Command::Cumulative(tag, reply) => {
                let objects = self.objects_for_names();
                let p =
                    self.aggregator
                        .to_profile(tag, View::All, &names, &mut self.symbols, &objects);
                let _ = reply.send(p);
            }
            Command::Counts(reply) => {
                let counts = self.aggregator.sample_counts();
                let _ = reply.send(counts.into_iter().map(|(id, n)| (name(id), n)).collect());
            }
            Command::Heap(tag, default, reply) => {
                let _ = reply.send(self.heap_profile(tag, default));
            }
            Command::Flush(_) | Command::Stop | Command::Retired => {}
        }
    }

    /// Publishes the number of open windows (`threadprof::stats().open_windows`).
    fn count_windows(&self) {
        let open = &self.rt.dumps.open_windows;
        open.store(self.windows.len(), Ordering::Relaxed);
    }

    /// Runs `f`, turning a panic into a logged error so that the next tick still runs.
    fn guarded(&mut self, what: &str, f: impl FnOnce(&mut Self)) {
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| f(self))) {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            error(
                &format!("dump-panic:{what}"),
                &format!("internal error in the profiler's {what} ({msg}); profiling continues"),
            );
        }
    }

    /// Records the objects loaded now, when the loader's list changed since the last call.
    fn note_objects(&mut self) {
        let now = objects::generation();
        if self.seen_generation == Some(now) {
            return;
        }
        let (loaded, generation) = objects::loaded_objects(false);
        self.seen_generation = Some(generation);
        for o in loaded {
            let known = self.seen_objects.iter().any(|s| {
                s.bias == o.bias && s.text == o.text && s.path == o.path && s.build_id == o.build_id
            });
            if !known {
                self.seen_objects.push(o);
            }
        }
        // Bounded under dlopen/dlclose churn at changing addresses: the oldest go first.
        if self.seen_objects.len() > MAX_SEEN_OBJECTS {
            let excess = self.seen_objects.len() - MAX_SEEN_OBJECTS;
            self.seen_objects.drain(..excess);
        }
    }

    /// The objects to name addresses with: those loaded now, then those seen loaded before
    /// (most recent first), so an address in a library unloaded since is still named.
    fn objects_for_names(&mut self) -> Vec<LoadedObject> {
        self.note_objects();
        let (mut objects, _) = objects::loaded_objects(false);
        for o in self.seen_objects.iter().rev() {
            let loaded = objects
                .iter()
                .any(|c| c.bias == o.bias && c.text == o.text && c.path == o.path);
            if !loaded {
                objects.push(o.clone());
            }
        }
        objects
    }

    /// Drains the rings with something new (`every_thread`: every live thread's, so that
    /// wall periods credited to blocked threads are all taken), then writes the files if
    /// `write`.
    fn tick(&mut self, write: bool, every_thread: bool) {
        #[cfg(threadprof_sampling)]
        crate::unwind::refresh();
        self.note_objects();
        if self.rt.sampling && !self.handler_lost_reported && !crate::sampler::still_installed() {
            self.handler_lost_reported = true;
            // Our timers would feed the other handler with signals it did not ask for.
            self.rt.registry.stop_sampling();
            error(
                "sigprof-replaced",
                "another component replaced the profiler's SIGPROF handler; sampling stopped and \
                 the profiles keep what was recorded so far (two SIGPROF profilers cannot run in \
                 one process)",
            );
        }
        // Heap events first, while the names of threads that ended are still known.
        self.drain_heap();
        let mut stats = DrainStats::default();
        self.busy = write || !self.windows.is_empty();
        #[cfg(all(feature = "heap", threadprof_sampling))]
        {
            self.busy |= self.heap.is_some();
        }
        self.drain_retired(&mut stats);
        let live = if every_thread {
            self.rt.registry.live_records()
        } else {
            self.rt.registry.pending_records()
        };
        self.drain(&live, &mut stats);
        self.busy |= stats.records > 0 || stats.newly_dropped > 0;
        if stats.newly_dropped > 0 {
            warn(
                "dropped-samples",
                &format!(
                    "{} sampled periods were dropped because a thread's sample buffer was full",
                    stats.newly_dropped
                ),
            );
        }
        if write {
            self.write_all();
        }
    }

    /// Drains the rings of threads that ended since the last call and hands their slots back
    /// to the registry for reuse.
    fn drain_retired(&mut self, stats: &mut DrainStats) {
        let retired = self.rt.registry.take_retired();
        if retired.is_empty() {
            return;
        }
        self.drain(&retired, stats);
        self.aggregator.forget_wall_stacks(&retired);
        self.rt.registry.recycle(retired);
    }

    /// Drains `threads` into the profiles and the open windows; adds what it found to `stats`
    /// and the credited wall periods to the registry's count.
    fn drain(&mut self, threads: &[ThreadRecord], stats: &mut DrainStats) {
        let mut windows: Vec<&mut Window> = self.windows.values_mut().collect();
        let found = self.aggregator.drain(threads, &mut windows);
        stats.records += found.records;
        stats.newly_dropped += found.newly_dropped;
        self.rt.registry.add_credited(found.credited);
    }

    /// Drains the heap event ring (when heap sampling runs) and logs what it lost, once.
    fn drain_heap(&mut self) {
        #[cfg(all(feature = "heap", threadprof_sampling))]
        if let Some(heap) = &mut self.heap {
            let rt = self.rt;
            let drained = heap.drain(&|tid| thread_name(rt, tid));
            self.heap_backlog = drained as u64 >= crate::heap::profile::EVENT_RING_CELLS / 4;
            for (key, message) in heap.warnings() {
                warn(key, &message);
            }
        }
    }

    /// Whether heap profiles are written: heap sampling runs and the wrapper saw allocations.
    fn heap_in_use(&self) -> bool {
        #[cfg(all(feature = "heap", threadprof_sampling))]
        return self.heap.is_some() && crate::heap::in_use();
        #[cfg(not(all(feature = "heap", threadprof_sampling)))]
        false
    }

    /// Tag ids with heap samples (empty when heap profiles are not in use).
    fn heap_tags(&self) -> Vec<u32> {
        #[cfg(all(feature = "heap", threadprof_sampling))]
        if self.heap_in_use() {
            return self
                .heap
                .as_ref()
                .map(Heap::tags_with_samples)
                .unwrap_or_default();
        }
        Vec::new()
    }

    /// The heap profile of `only` (a tag id) or all tags, if heap profiles are in use. Heap
    /// samples of unregistered threads are under the tag `untagged`.
    fn heap_profile(&mut self, only: Option<u32>, default: HeapDefault) -> Option<Profile> {
        #[cfg(all(feature = "heap", threadprof_sampling))]
        if self.heap_in_use() {
            self.drain_heap();
            let objects = self.objects_for_names();
            let untagged = self.rt.registry.intern_tag(crate::tag::UNTAGGED);
            let names = RuntimeNames(self.rt);
            let heap = self.heap.as_mut()?;
            return Some(heap.build_profile(
                only,
                default,
                untagged,
                &names,
                &mut self.symbols,
                &objects,
            ));
        }
        let _ = (only, default);
        None
    }

    fn write_all(&mut self) {
        let started = Instant::now();
        let dir = self.rt.config.output_dir.clone();
        let dir = dir.as_path();
        let tags = self.aggregator.tags_with_samples();
        let heap_tags = self.heap_tags();
        let heap = self.heap_in_use();
        if tags.is_empty() && !heap {
            log::trace!("profile dump skipped: no samples yet");
            return;
        }
        if let Err(e) = fs::create_dir_all(dir) {
            self.rt.dumps.failed.fetch_add(1, Ordering::Relaxed);
            error(
                "dump-dir",
                &format!(
                    "cannot create profile directory {}: {e}; will retry at the next dump",
                    dir.display()
                ),
            );
            return;
        }
        let objects = self.objects_for_names();
        // Every address of every file, resolved in one pass per object (not once per file).
        self.symbols.prepare(self.aggregator.addresses(), &objects);
        #[cfg(all(feature = "heap", threadprof_sampling))]
        if let Some(h) = self.heap.as_ref().filter(|_| heap) {
            self.symbols.prepare(h.addresses(), &objects);
        }
        let names = RuntimeNames(self.rt);
        let name = |id: u32| names.tag(id);
        let mut files: Vec<(String, Option<u32>, bool)> = Vec::new();
        if !tags.is_empty() {
            files.extend(
                tags.iter()
                    .map(|&id| (format!("{}.pb.gz", name(id)), Some(id), false)),
            );
            files.push((MERGED_FILE.to_owned(), None, false));
        }
        if heap {
            let untagged = self.rt.registry.intern_tag(crate::tag::UNTAGGED);
            let mut ids: Vec<u32> = heap_tags
                .iter()
                .map(|&id| if id == u32::MAX { untagged } else { id })
                .collect();
            ids.sort_unstable();
            ids.dedup();
            files.extend(
                ids.into_iter()
                    .map(|id| (format!("{}.heap.pb.gz", name(id)), Some(id), true)),
            );
            files.push((MERGED_HEAP_FILE.to_owned(), None, true));
        }
        let total = files.len();
        let mut failures: Vec<String> = Vec::new();
        for (file, only, is_heap) in files {
            if INJECT_PANIC.swap(false, Ordering::SeqCst) {
                panic!("injected dump panic (test hook)");
            }
            let profile = if is_heap {
                match self.heap_profile(only, HeapDefault::InUse) {
                    Some(p) => p,
                    None => continue,
                }
            } else {
                self.aggregator
                    .to_profile(only, View::All, &names, &mut self.symbols, &objects)
            };
            let result = encode_gz(&profile).and_then(|bytes| write_atomic(dir, &file, &bytes));
            if let Err(e) = result {
                failures.push(format!("{file}: {e}"));
            }
        }
        let counters = &self.rt.dumps;
        if let Some(first) = failures.first() {
            counters.failed.fetch_add(1, Ordering::Relaxed);
            // One error per failed dump, not one per file.
            error(
                "dump-write",
                &format!(
                    "cannot write {} of {total} profiles in {} (first: {first}); samples are \
                     kept and written at the next dump",
                    failures.len(),
                    dir.display()
                ),
            );
        } else {
            counters.written.fetch_add(1, Ordering::Relaxed);
        }
        log::trace!(
            "profile dump {} wrote {} files ({} failed) in {:?}; {} addresses symbolized",
            counters.written.load(Ordering::Relaxed) + counters.failed.load(Ordering::Relaxed),
            total,
            failures.len(),
            started.elapsed(),
            self.symbols.len()
        );
    }
}

/// The name of OS thread `tid`: a registered thread's, else the kernel's (`comm`, 15 bytes at
/// most), else `tid-N` for a thread that has ended.
#[cfg(all(feature = "heap", threadprof_sampling))]
fn thread_name(rt: &Runtime, tid: i32) -> String {
    if let Some(name) = rt.registry.thread_name_of(i64::from(tid)) {
        return name;
    }
    fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("tid-{tid}"))
}

/// Writes `bytes` to `dir/name` atomically: temporary file in `dir`, then rename over the old
/// one, so a reader sees the old or the new complete file. No fsync: one per file was most of a
/// periodic dump's cost (scenario 3 of `cargo bench --bench accuracy` at 999 Hz: 12.8 ms with
/// it, 1.6 ms without), and a profile is diagnostics: a power cut (not a process crash) may
/// lose the last dump, never the samples of a running process.
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp: PathBuf = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        fs::rename(&tmp, dir.join(name))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Names of tags and label sets, from the runtime's registry and label sets.
struct RuntimeNames(&'static Runtime);

impl Names for RuntimeNames {
    fn tag(&self, id: u32) -> String {
        self.0.registry.tag_name(id)
    }

    fn labels(&self, id: u32) -> LabelSet {
        self.0.labels.get(id)
    }
}
