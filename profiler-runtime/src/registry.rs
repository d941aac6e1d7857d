//! The registry of profiled threads: who is registered under which tag, and their timers.
//!
//! A thread registers with [`Registry::enter`] (through `threadprof::enter`, `run`, `spawn` or the
//! attribute). Its first registration allocates its [`ThreadSlot`], publishes it to the signal
//! handler and starts its timers; nested registrations only switch the tag in force. When the
//! last guard of the thread drops (return or panic), the timers are deleted, the slot is
//! unpublished and handed to the dump thread for a final drain, so no sample is lost.

use std::cell::RefCell;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{compiler_fence, AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::SystemTime;

use crate::config::Config;
use crate::diagnostics::warn;
use crate::sampler::{self, ThreadTimers, WallTicker};
use crate::slot::{ThreadSlot, CURRENT_SLOT};
use crate::tag;

/// Distinct tags at which a warning says that tags are not for unbounded values.
const MANY_TAGS: usize = 1000;

/// Idle slots kept for reuse (a 256 KiB ring each, of which only written pages are resident).
const IDLE_SLOTS: usize = 16;

/// A registered thread as the dump side sees it.
#[derive(Clone)]
pub(crate) struct ThreadRecord {
    /// Registration id, unique for the process's life.
    pub id: u64,
    /// OS thread id.
    pub tid: i64,
    /// Thread name (or `tid-N` for unnamed threads).
    pub name: String,
    pub slot: Arc<ThreadSlot>,
}

struct LiveThread {
    record: ThreadRecord,
    timers: Option<ThreadTimers>,
    since: SystemTime,
}

/// A registered thread, as reported by `threadprof::live_threads`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadInfo {
    /// Tag in force (the innermost one for nested registrations).
    pub tag: String,
    /// Thread name (or `tid-N` for unnamed threads).
    pub name: String,
    /// OS thread id.
    pub tid: i64,
    /// When the thread registered.
    pub since: SystemTime,
}

#[derive(Default)]
struct Inner {
    tags: Vec<String>,
    tag_ids: HashMap<String, u32>,
    threads: HashMap<u64, LiveThread>,
    /// Live threads by the pending index of their ring (`buffer::PENDING`), and the indices
    /// free for reuse.
    by_pending_index: Vec<Option<ThreadRecord>>,
    free_pending_indices: Vec<u32>,
    /// Indices of threads that ended, freed by [`Registry::recycle`] (on the dump thread, the
    /// only one that clears bits, after its drain).
    ended_pending_indices: Vec<u32>,
    /// Live threads without a pending index (past `buffer::PENDING`'s capacity): their flags
    /// are looked at every drain.
    unindexed: HashMap<u64, ThreadRecord>,
    retired: Vec<ThreadRecord>,
    /// Slots of ended, fully drained threads, ready for the next registration: reusing one
    /// skips allocating and mapping a ring, so churning threads register faster.
    idle_slots: Vec<ThreadSlot>,
    next_id: u64,
    /// Whether new timers may be created (false after shutdown).
    sampling: bool,
    /// Periods recorded and samples dropped by threads that have unregistered, folded in when
    /// their timers were deleted (their counts are final then).
    ended_recorded: u64,
    ended_dropped: u64,
    ended_cut_short: u64,
}

/// Registered threads and interned tags.
pub(crate) struct Registry {
    inner: Mutex<Inner>,
    /// Called after a thread unregistered.
    on_retire: OnceLock<Box<dyn Fn() + Send + Sync>>,
    cpu_hz: u32,
    wall_hz: u32,
    /// The wall clock, when wall sampling is on.
    wall: Option<WallTicker>,
    /// Wall periods credited to blocked threads and turned into samples by the dump thread.
    credited: std::sync::atomic::AtomicU64,
}

/// This thread's registration, kept in TLS.
/// What [`Registry::sample_counts`] adds up.
pub(crate) struct SampleCounts {
    /// Periods recorded (handler records and credited periods).
    pub recorded: u64,
    /// Periods dropped (ring full).
    pub dropped: u64,
    /// Samples whose stack was cut short for safety.
    pub cut_short: u64,
    /// Threads registered now.
    pub live: usize,
}

struct Registration {
    id: u64,
    /// The alternate signal stack swapped in at registration, to put back at the end.
    altstack: Option<sampler::AltStackSwap>,
    /// `None` only while the registration is being dropped.
    slot: Option<Arc<ThreadSlot>>,
    /// (guard id, tag in force before it), innermost last.
    guards: Vec<(u64, u32)>,
    /// Whether the registration lasts until the thread exits (`register_current_thread`, or a
    /// first poll of a task), not until its last guard drops.
    for_life: bool,
    next_guard: u64,
    registry: &'static Registry,
}

thread_local! {
    static REGISTRATION: RefCell<Option<Registration>> = const { RefCell::new(None) };
}

/// Keeps the current thread registered under a tag; dropping it ends that registration.
///
/// Returned by `threadprof::enter`. Nested guards on one thread stack: the innermost tag is in
/// force, and the outer one is restored when it drops. The guard is `!Send`: it belongs to
/// the thread that created it.
#[must_use = "the thread is unregistered as soon as the guard is dropped"]
pub struct ThreadGuard {
    id: u64,
    _not_send: PhantomData<*const ()>,
}

impl ThreadGuard {
    /// A guard that registered nothing (profiling disabled or stopped).
    pub(crate) fn inert() -> ThreadGuard {
        ThreadGuard {
            id: 0,
            _not_send: PhantomData,
        }
    }

    /// Whether this guard registered the thread (false when profiling is off).
    pub fn is_active(&self) -> bool {
        self.id != 0
    }
}

impl std::fmt::Debug for ThreadGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadGuard")
            .field("active", &self.is_active())
            .finish()
    }
}

impl Drop for ThreadGuard {
    fn drop(&mut self) {
        if self.id == 0 {
            return;
        }
        let ended = REGISTRATION.try_with(|cell| {
            let mut cell = cell.borrow_mut();
            let reg = cell.as_mut()?;
            let i = reg.guards.iter().position(|&(g, _)| g == self.id)?;
            let (_, before) = reg.guards.remove(i);
            if reg.guards.is_empty() && !reg.for_life {
                return cell.take();
            }
            match reg.guards.get_mut(i) {
                // An outer guard dropped first: the next one in restores what this one found.
                Some(next) => next.1 = before,
                // The innermost: put back the tag in force when it was entered (labels stay as
                // they are: label scopes restore their own).
                None => {
                    if let Some(slot) = &reg.slot {
                        let word = slot.context.load(Ordering::Relaxed);
                        slot.context.store(
                            (word & !u64::from(u32::MAX)) | u64::from(before),
                            Ordering::Relaxed,
                        );
                    }
                }
            }
            None
        });
        // Dropped outside the borrow: unregistering takes the registry lock and logs.
        drop(ended);
    }
}

/// Set in a child process made by `fork` (a `pthread_atfork` child handler, installed when
/// the runtime starts): the runtime's own threads (dump loop, wall ticker, HTTP) do not exist
/// there, and a lock one of them held at the fork stays held. Everything then goes inert:
/// registration returns inert guards, a registration inherited from the parent ends without
/// touching the registry, and flush, shutdown and the counters do nothing.
static FORKED_CHILD: AtomicBool = AtomicBool::new(false);

extern "C" fn after_fork_in_child() {
    FORKED_CHILD.store(true, Ordering::Relaxed);
}

/// Installs the fork handler (once per process, when the runtime starts).
pub(crate) fn watch_forks() {
    #[cfg(unix)]
    // SAFETY: registers a child handler that only stores to an atomic (async-signal-safe, as
    // code in a forked child of a multithreaded process must be).
    unsafe {
        libc::pthread_atfork(None, None, Some(after_fork_in_child));
    }
}

/// Whether this process is a forked child of the one that started the runtime.
pub(crate) fn in_forked_child() -> bool {
    FORKED_CHILD.load(Ordering::Relaxed)
}

impl Registration {
    /// Clears the handler's pointer to the slot, then puts back the thread's previous
    /// alternate stack. The handler runs on this thread, so a compiler fence suffices to keep
    /// the store before what follows (the slot's `Arc` release); a late SIGPROF then returns
    /// at once, whatever stack it runs on.
    fn leave_handler(&mut self) {
        let _ = CURRENT_SLOT.try_with(|c| c.set(std::ptr::null()));
        compiler_fence(Ordering::SeqCst);
        if let Some(swap) = self.altstack.take() {
            if !swap.restore() {
                // This thread may still run on our stack: keep the slot (and that memory)
                // alive for good rather than hand it to another thread.
                if let Some(slot) = &self.slot {
                    std::mem::forget(slot.clone());
                }
            }
        }
    }
}

impl Drop for Registration {
    /// Runs when the last guard drops, or as a TLS destructor if a guard was leaked.
    fn drop(&mut self) {
        if in_forked_child() {
            // No dump thread to drain the slot and maybe a registry lock held forever: stop
            // sampling this thread (its timers did not survive the fork) and leave the rest.
            self.leave_handler();
            return;
        }
        self.registry.unregister(self.id);
        // Timers are deleted: the handler may stop using the slot.
        self.leave_handler();
        // Release this thread's reference before waking the dump thread, so that after its
        // final drain the slot is unique and can serve the next registration.
        self.slot = None;
        if let Some(notify) = self.registry.on_retire.get() {
            notify();
        }
    }
}

impl Registry {
    pub(crate) fn new(config: &Config, sampling: bool) -> Registry {
        Registry {
            inner: Mutex::new(Inner {
                sampling,
                next_id: 1,
                ..Inner::default()
            }),
            on_retire: OnceLock::new(),
            cpu_hz: config.frequency,
            wall_hz: config.wall_frequency,
            wall: (sampling && config.wall_frequency > 0)
                .then(|| WallTicker::new(config.wall_frequency)),
            credited: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The id of `raw` (sanitised if it is not a safe file name), and the warnings to log
    /// once the lock is released: a logger may itself register threads or enter tags.
    fn intern(inner: &mut Inner, raw: &str) -> (u32, Vec<(String, String)>) {
        if let Some(&id) = inner.tag_ids.get(raw) {
            return (id, Vec::new());
        }
        let mut warnings = Vec::new();
        let safe = if tag::is_safe(raw) {
            raw.to_owned()
        } else {
            let s = tag::sanitize(raw);
            let shown: String = raw.chars().take(80).collect();
            warnings.push((
                format!("tag:{shown}"),
                format!(
                    "tag {shown:?} is not a safe file name ([A-Za-z0-9][A-Za-z0-9._-]{{0,63}}); \
                     profiling it as {s:?}"
                ),
            ));
            s
        };
        if let Some(&id) = inner.tag_ids.get(&safe) {
            if safe != raw {
                inner.tag_ids.insert(raw.to_owned(), id); // warned once per spelling
            }
            return (id, warnings);
        }
        let id = inner.tags.len() as u32;
        if inner.tags.len() + 1 == MANY_TAGS {
            warnings.push((
                "many-tags".to_owned(),
                format!(
                    "{MANY_TAGS} distinct tags: each tag is a profile file written at every \
                     dump, and tags are kept for the process's life; for unbounded values \
                     (request ids, user ids) use labels, which are bounded \
                     (THREADPROF_MAX_LABEL_SETS)"
                ),
            ));
        }
        inner.tags.push(safe.clone());
        if safe != raw {
            inner.tag_ids.insert(raw.to_owned(), id); // warned once per spelling
        }
        inner.tag_ids.insert(safe, id);
        (id, warnings)
    }

    /// The id of tag `raw` (sanitised with a warning if it is not a safe file name).
    pub(crate) fn intern_tag(&self, raw: &str) -> u32 {
        let (id, warnings) = Self::intern(&mut self.lock(), raw);
        for (key, message) in warnings {
            warn(&key, &message);
        }
        id
    }

    /// Every tag registered so far, in order of first use.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn tag_names(&self) -> Vec<String> {
        self.lock().tags.clone()
    }

    /// The id of an existing tag.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn tag_id(&self, name: &str) -> Option<u32> {
        self.lock().tag_ids.get(name).copied()
    }

    /// The tag name of `id`.
    pub(crate) fn tag_name(&self, id: u32) -> String {
        self.lock()
            .tags
            .get(id as usize)
            .cloned()
            .unwrap_or_else(|| tag::UNTAGGED.to_owned())
    }

    /// Registers the calling thread under `raw_tag`.
    pub(crate) fn enter(&'static self, raw_tag: &str) -> ThreadGuard {
        let tag_id = self.intern_tag(raw_tag);
        let nested = REGISTRATION.try_with(|cell| {
            let mut cell = cell.borrow_mut();
            let reg = cell.as_mut()?;
            let Some(slot) = reg.slot.as_ref() else {
                // Its registration is ending (a logger called back from its drop).
                return Some(0);
            };
            reg.next_guard += 1;
            let guard = reg.next_guard;
            // Only the tag changes, and only the tag is put back: labels in force stay.
            let before = slot.context.load(Ordering::Relaxed);
            reg.guards.push((guard, before as u32));
            slot.context.store(
                (before & !u64::from(u32::MAX)) | u64::from(tag_id),
                Ordering::Relaxed,
            );
            Some(guard)
        });
        match nested {
            Ok(Some(0)) => return ThreadGuard::inert(),
            Ok(Some(guard)) => {
                return ThreadGuard {
                    id: guard,
                    _not_send: PhantomData,
                };
            }
            Ok(None) => {}
            Err(_) => return ThreadGuard::inert(), // thread is exiting
        }
        self.register_thread(tag_id, false)
    }

    /// Registers the calling thread under `raw_tag` until it exits. If it is registered
    /// already, `raw_tag` becomes its tag from now on (also after its guards drop) and its
    /// registration lasts until it exits. Returns whether the thread is registered.
    pub(crate) fn register_for_life(&'static self, raw_tag: &str) -> bool {
        let tag_id = self.intern_tag(raw_tag);
        let done = REGISTRATION.try_with(|cell| {
            let mut cell = cell.borrow_mut();
            let reg = cell.as_mut()?;
            reg.for_life = true;
            // The new tag from now on: in force, and what every guard puts back.
            for guard in &mut reg.guards {
                guard.1 = tag_id;
            }
            if let Some(slot) = &reg.slot {
                let word = slot.context.load(Ordering::Relaxed);
                slot.context.store(
                    (word & !u64::from(u32::MAX)) | u64::from(tag_id),
                    Ordering::Relaxed,
                );
            }
            Some(())
        });
        match done {
            Ok(Some(())) => true,
            Ok(None) => {
                drop(self.register_thread(tag_id, true)); // inert: the registration is for life
                REGISTRATION
                    .try_with(|cell| cell.borrow().is_some())
                    .unwrap_or(false)
            }
            Err(_) => false, // thread is exiting
        }
    }

    /// First registration of the calling thread: until its guard drops, or until it exits
    /// (`for_life`, and the guard returned is inert).
    fn register_thread(&'static self, tag_id: u32, for_life: bool) -> ThreadGuard {
        let tag_name = self.tag_name(tag_id);
        let current = std::thread::current();
        let tid = sampler::thread_id();
        let name = current
            .name()
            .map_or_else(|| format!("tid-{tid}"), str::to_owned);
        let wall_period = if self.wall_hz > 0 {
            1_000_000_000 / u64::from(self.wall_hz)
        } else {
            0
        };
        let (stack, cpu_now) = (sampler::stack_bounds(), sampler::thread_cpu_ns());
        let idle = self.lock().idle_slots.pop();
        let slot = Arc::new(match idle {
            Some(mut slot) => {
                slot.reuse(tag_id, stack, cpu_now);
                slot
            }
            None => ThreadSlot::new(tag_id, stack, wall_period, cpu_now),
        });
        // Before the first timer can fire: the handler's stack, unless the host's will do, and
        // whether this thread may make fault-proof copies.
        let altstack = if self.lock().sampling {
            sampler::allow_copies(&slot);
            sampler::use_signal_stack(&slot)
        } else {
            None
        };
        let id = {
            let mut inner = self.lock();
            let id = inner.next_id;
            inner.next_id += 1;
            let record = ThreadRecord {
                id,
                tid,
                name: name.clone(),
                slot: slot.clone(),
            };
            // Publish the slot before the first timer can fire.
            let _ = CURRENT_SLOT.try_with(|c| c.set(Arc::as_ptr(&slot)));
            compiler_fence(Ordering::SeqCst);
            let timers = if inner.sampling {
                match ThreadTimers::start(self.cpu_hz, self.wall.as_ref(), &slot) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        warn(
                            "timer_create",
                            &format!("cannot create a sampling timer for thread {name:?}: {e}; it is registered but not sampled"),
                        );
                        None
                    }
                }
            } else {
                None
            };
            let index = match inner.free_pending_indices.pop() {
                Some(i) => Some(i),
                None if inner.by_pending_index.len() < crate::buffer::PENDING_WORDS * 64 => {
                    inner.by_pending_index.push(None);
                    Some((inner.by_pending_index.len() - 1) as u32)
                }
                None => None,
            };
            match index {
                Some(i) => {
                    slot.buffer.set_pending_index(i);
                    inner.by_pending_index[i as usize] = Some(record.clone());
                }
                None => {
                    inner.unindexed.insert(id, record.clone());
                }
            }
            inner.threads.insert(
                id,
                LiveThread {
                    record,
                    timers,
                    since: SystemTime::now(),
                },
            );
            id
        };
        let registration = Registration {
            id,
            altstack,
            slot: Some(slot),
            guards: if for_life {
                Vec::new()
            } else {
                vec![(1, tag_id)]
            },
            next_guard: 1,
            for_life,
            registry: self,
        };
        let stored = REGISTRATION.try_with(|cell| cell.borrow_mut().replace(registration));
        let Ok(replaced) = stored else {
            // TLS is being torn down: `registration` was dropped, which unregistered it.
            return ThreadGuard::inert();
        };
        // None in practice (callers checked); dropped outside the borrow if not.
        drop(replaced);
        crate::diagnostics::debug(format_args!(
            "registered thread {name:?} (tid {tid}) under tag {tag_name:?}"
        ));
        if for_life {
            return ThreadGuard::inert();
        }
        ThreadGuard {
            id: 1,
            _not_send: PhantomData,
        }
    }

    /// Stops sampling thread `id` and queues its slot for a final drain.
    fn unregister(&self, id: u64) {
        let mut inner = self.lock();
        let Some(t) = inner.threads.remove(&id) else {
            return;
        };
        // Deletes the CPU timer and leaves the wall ticker. We run on the thread itself (its
        // registration is dropping), so a wall period signalled just now is recorded before
        // its counters are read.
        drop(t.timers);
        // After shutdown nothing drains the ring, and periods since are not the profile's.
        if inner.sampling {
            sampler::settle_wall(&t.record.slot);
        }
        inner.ended_recorded += t.record.slot.buffer.recorded();
        inner.ended_dropped += t.record.slot.buffer.dropped();
        inner.ended_cut_short += t.record.slot.cut_short.load(Ordering::Relaxed);
        // Its final drain goes through `retired`; the bit and the index go to the next thread.
        let buffer = &t.record.slot.buffer;
        let index = buffer.pending_index();
        buffer.set_pending_index(crate::buffer::NO_PENDING_INDEX);
        if let Some(entry) = inner.by_pending_index.get_mut(index as usize) {
            *entry = None;
            // Free for reuse only after the dump thread's next drain of ended threads: a
            // drain of this thread in flight may still clear the bit by this index.
            inner.ended_pending_indices.push(index);
            if let Some(word) = crate::buffer::PENDING.get(index as usize / 64) {
                word.fetch_and(!(1 << (index % 64)), Ordering::AcqRel);
            }
        }
        inner.unindexed.remove(&id);
        crate::diagnostics::debug(format_args!(
            "unregistered thread {:?} (tid {})",
            t.record.name, t.record.tid
        ));
        inner.retired.push(t.record);
    }

    /// Sets what to call after a thread unregistered (the dump loop's wake-up), once.
    pub(crate) fn set_on_retire(&self, notify: Box<dyn Fn() + Send + Sync>) {
        let _ = self.on_retire.set(notify);
    }

    /// Threads unregistered since the last call, for their final drain; give them back with
    /// [`Self::recycle`] afterwards.
    pub(crate) fn take_retired(&self) -> Vec<ThreadRecord> {
        std::mem::take(&mut self.lock().retired)
    }

    /// Live threads whose ring has something new (records, drops or credited wall periods),
    /// for draining: found from the bits of `buffer::PENDING`, so a thread that did nothing
    /// since the last drain costs nothing here.
    pub(crate) fn pending_records(&self) -> Vec<ThreadRecord> {
        let inner = self.lock();
        let words = inner
            .by_pending_index
            .len()
            .div_ceil(64)
            .min(crate::buffer::PENDING_WORDS);
        let mut out = Vec::new();
        for (w, word) in crate::buffer::PENDING[..words].iter().enumerate() {
            // Loads, not swaps: a ring's bit is cleared by its drain (`take_pending`), right
            // before it is read, so a thread whose drain did not happen (a panic in an earlier
            // one) stays pending.
            let mut bits = word.load(Ordering::Acquire);
            while bits != 0 {
                let index = w * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                if let Some(Some(record)) = inner.by_pending_index.get(index) {
                    out.push(record.clone());
                }
            }
        }
        out.extend(
            inner
                .unindexed
                .values()
                .filter(|r| r.slot.buffer.has_pending())
                .cloned(),
        );
        out
    }

    /// Every live thread, after bringing blocked threads' wall credits up to now.
    pub(crate) fn live_records(&self) -> Vec<ThreadRecord> {
        if let Some(wall) = &self.wall {
            wall.settle_parked();
        }
        self.lock()
            .threads
            .values()
            .map(|t| t.record.clone())
            .collect()
    }

    /// Takes back the slots of ended threads after their final drain, for reuse.
    pub(crate) fn recycle(&self, retired: Vec<ThreadRecord>) {
        let mut inner = self.lock();
        let ended = std::mem::take(&mut inner.ended_pending_indices);
        inner.free_pending_indices.extend(ended);
        for record in retired {
            if inner.idle_slots.len() >= IDLE_SLOTS {
                break;
            }
            // Unique once the thread's registration has dropped its reference, which it does
            // right after unregistering; if not yet, the slot is simply freed.
            if let Ok(slot) = Arc::try_unwrap(record.slot) {
                inner.idle_slots.push(slot);
            }
        }
    }

    /// Counts wall periods that the dump thread took from idle credits.
    pub(crate) fn add_credited(&self, periods: u64) {
        self.credited.fetch_add(periods, Ordering::Relaxed);
    }

    /// Counts over every thread ever registered.
    pub(crate) fn sample_counts(&self) -> SampleCounts {
        let inner = self.lock();
        let credited = self.credited.load(Ordering::Relaxed);
        let start = SampleCounts {
            recorded: inner.ended_recorded + credited,
            dropped: inner.ended_dropped,
            cut_short: inner.ended_cut_short,
            live: inner.threads.len(),
        };
        inner.threads.values().fold(start, |c, t| {
            let slot = &t.record.slot;
            SampleCounts {
                recorded: c.recorded + slot.buffer.recorded(),
                dropped: c.dropped + slot.buffer.dropped(),
                cut_short: c.cut_short + slot.cut_short.load(Ordering::Relaxed),
                live: c.live,
            }
        })
    }

    /// Live threads.
    pub(crate) fn live_threads(&self) -> Vec<ThreadInfo> {
        let inner = self.lock();
        inner
            .threads
            .values()
            .map(|t| ThreadInfo {
                tag: inner
                    .tags
                    .get(t.record.slot.tag() as usize)
                    .cloned()
                    .unwrap_or_default(),
                name: t.record.name.clone(),
                tid: t.record.tid,
                since: t.since,
            })
            .collect()
    }

    /// Deletes every timer and creates no more (shutdown).
    pub(crate) fn stop_sampling(&self) {
        let mut inner = self.lock();
        inner.sampling = false;
        if let Some(wall) = &self.wall {
            // The final dump takes what blocked threads were credited up to now.
            wall.settle_parked();
            wall.stop();
        }
        for t in inner.threads.values_mut() {
            t.timers = None;
        }
    }

    /// The name of registered thread `tid`, live or ended but not yet drained (heap profiles
    /// name their threads with it).
    #[cfg(feature = "heap")]
    pub(crate) fn thread_name_of(&self, tid: i64) -> Option<String> {
        let inner = self.lock();
        inner
            .threads
            .values()
            .map(|t| &t.record)
            .chain(inner.retired.iter())
            .find(|r| r.tid == tid)
            .map(|r| r.name.clone())
    }
}
