//! Heap profiles: [`Allocator`], a [`GlobalAlloc`] wrapper that samples allocations by bytes,
//! and (on the dump thread) their profiles, `{tag}.heap.pb.gz` and `_merged.heap.pb.gz`.
//!
//! Owns the allocation path (this file), the live table (`live.rs`), the event ring
//! (`events.rs`), the stack walk of a sampled allocation (`capture.rs`) and the dump side
//! (`profile.rs`). May touch: `slot.rs` (reads the calling thread's `CURRENT_SLOT`, its
//! context and stack range), `unwind.rs` and `stackread.rs` (the shared unwinder and its
//! fault-proof reads), `registry::in_forked_child`. Nothing here reaches the signal handler.
//!
//! # Sampling
//!
//! As Go's runtime and tcmalloc do: each thread counts down the bytes it allocates, and when an
//! allocation of `s` bytes reaches the end of the count it is sampled and a new count is
//! drawn from an exponential distribution with mean `interval`
//! (`THREADPROF_HEAP_INTERVAL`, default 512 KiB). So sample points form a Poisson process
//! over allocated bytes: an allocation of `s` bytes is sampled with probability
//! `p(s) = 1 - e^(-s/interval)`, large ones almost always, small ones in proportion. The
//! profile counts a sample of `s` bytes as `1/p(s)` allocations and `s/p(s)` bytes, which
//! makes both figures unbiased (Go's `scaleHeapSample`, applied per sample rather than per
//! averaged bucket). A thread's first count is drawn at its first allocation after sampling
//! started, so that allocation is not favoured. While sampling is off the countdown runs too,
//! and at its end (every 16 KiB a thread allocates) the thread looks whether sampling is on
//! now: so a thread that allocated before the runtime started starts sampling within 16 KiB
//! of allocation after the start (those bytes are not seen). A failed allocation counts down
//! like any other; if its size reaches the end of the count, the sample point passes
//! unrecorded.
//!
//! `realloc` ends the old block's record (if it was sampled) and counts the new size as a new
//! allocation, sampled like any other, at the `realloc` call's stack; a failed `realloc` puts
//! the old record back.
//!
//! # What is recorded
//!
//! A sampled allocation records its stack (walked from the allocation site, `capture.rs`), its
//! size, its thread and, on a registered thread, the tag and label set in force (the ids the
//! signal handler also copies). On an unregistered thread it goes to the tag `untagged`, with
//! the thread's stack range cached on the thread at its first sample. Allocations made before
//! the runtime started, or with `THREADPROF_HEAP_INTERVAL=0`, are not sampled; a later free of
//! such a block is simply not found. The runtime's own threads (dump, HTTP, this module's
//! start-up thread) are never sampled: the dump thread would otherwise feed itself.
//!
//! # Live tracking
//!
//! A sampled allocation goes into the [live table](live::LiveTable), keyed by address, with
//! its id, *before* its pointer is returned, and its event (stack and all) into the [event
//! ring](events::EventRing). Every free first asks the table's filter (one relaxed load of a
//! byte that counts the entries whose address hashes to it); only a block whose counter is
//! not zero is looked up and, if found, removed, before the inner allocator frees it (so the
//! address cannot be handed out again first). Frees produce no event: the dump thread learns which sampled allocations are still live by
//! asking the table for each `(address, id)` it knows, when it writes a profile, and whenever
//! its list of records has doubled since the last check (so that list stays within twice the
//! live count, plus 4,096).
//!
//! # Bounds
//!
//! The table holds at most 262,144 live sampled allocations (4 MiB mapped, and a 32 KiB static
//! filter); past that (both of an address's buckets full, or 255 entries behind its filter
//! counter) a sample counts in `alloc_*` only (`Stats::heap_untracked`,
//! warned once). The ring holds 4,096 events between drains (2.2 MiB mapped; drained every
//! 100 ms, and 25 ms after a drain that found it a quarter full); past that samples are
//! dropped (`Stats::heap_dropped`, warned once). Both are
//! mapped once with `mmap` at start, never through the global allocator, and never freed.
//! The unwind caches (two per core, at most 32) are built once at start, on a thread of their
//! own. The dump side keeps one record per live sampled allocation and one entry per distinct
//! stack (as the CPU profiles do), in the dump thread's ordinary memory: allocated through the
//! global allocator, i.e. through this wrapper, which passes the dump thread's allocations
//! through unsampled (the wrapper cannot name its inner allocator from the runtime, and
//! nothing of it runs on the allocation path). `Stats::heap_tracking_bytes` adds it all up.
//!
//! # The allocation path, call by call
//!
//! Every call made between the wrapper's entry and its return, and why each is safe inside a
//! global allocator (no allocation through it, no recursion, no lock, no panic):
//!
//! - The inner allocator's own method, with the caller's arguments: on the fast path, the
//!   wrapper's last call (so the compiler can make it a tail call).
//! - `THREAD.try_with`: a const-initialised `thread_local!` whose type has no destructor, so no
//!   destructor is registered and access is a plain TLS access that cannot fail. (In a shared
//!   library loaded with `dlopen`, a thread's first access may have glibc allocate the
//!   library's TLS block with its own `malloc`, never through this wrapper.)
//! - The countdown (allocation, `realloc`): a load, a compare and a store of a `Cell` in that
//!   TLS, before the inner allocator is called. This is all an allocation adds until the
//!   countdown ends, with sampling on or off.
//! - The filter (free, `realloc`): a multiply, a shift and one relaxed load of a static byte.
//!   This is all a free of an unsampled block adds, unless the byte is shared with a live
//!   sampled block (a share `1 − e^(−live sampled / 32,768)` of frees: 3% with 1,000 live
//!   sampled blocks).
//! - End of the countdown (cold): `INTERVAL.load` (acquire: it was stored with release after
//!   the table, the ring and the unwind caches were set up); with sampling off
//!   (`THREADPROF_HEAP_INTERVAL=0`, runtime not started or stopped, a forked child) the
//!   countdown restarts at 16 KiB and that is all; with it on, a relaxed load of `SEEN` (and
//!   its store, once per process).
//! - Sampled allocation (cold): the reentrancy guard (a `Cell<bool>` in the same
//!   TLS; an allocation while it is held is not sampled and is counted in
//!   `Stats::heap_skipped`); the next count, `-ln(u) * interval` with `u` from a xorshift
//!   generator in TLS (`f64::ln`, libm's pure `log`); `registry::in_forked_child` (a relaxed
//!   load); `EventRing::claim` (lock-free, see events.rs); `syscall(SYS_gettid)` once per
//!   thread; `CURRENT_SLOT.try_with` (const TLS, no destructor) and `ThreadSlot::context` (two
//!   relaxed loads) on a registered thread, or once per unregistered thread
//!   `pthread_getattr_np` for its stack range (glibc takes the thread's own descriptor lock
//!   and calls its own `malloc`, never this allocator, and on the main thread reads
//!   `/proc/self/maps`; errno is saved and restored around it). A program that routes the C
//!   library's `malloc` into the Rust global allocator is not supported: glibc would call
//!   back into this wrapper while holding that lock; `capture`
//!   (three register reads, an atomic swap to take an unwind cache, `UnwinderUse::begin`/drop,
//!   framehop's allocation-free walk, reads bounded to the thread's own stack);
//!   `LiveTable::remove` of a stale entry for the same address (see `record`) and
//!   `LiveTable::insert` (an atomic read-modify-write of the filter counter, a
//!   compare-and-swap, a `fetch_sub` if it fails); publishing the event (a release store);
//!   counters (relaxed `fetch_add`).
//! - Free or `realloc` of a block whose filter counter is not zero (cold): `LiveTable::remove`
//!   (loads, a store, a `fetch_and` and a `fetch_sub`).
//!
//! Nothing on it formats, logs or indexes out of bounds (slices are read with `get`, and the
//! filter's index is below its length by construction); the
//! warnings about full tables are logged later by the dump thread. It takes no lock, so
//! neither a fork nor a signal can strand one with the host inside the allocator: the unwind
//! cache pool uses try-only flags (a cache taken by a thread that did not survive a fork stays
//! taken, harmlessly), and a forked child samples and tracks nothing (a `pthread_atfork` child
//! handler switches sampling and the table off; the child never drains the ring; a free whose
//! filter counter the parent left above zero looks at the switched-off table and goes on).

#[cfg(threadprof_sampling)]
mod capture;
#[cfg(threadprof_sampling)]
mod events;
#[cfg(threadprof_sampling)]
mod live;
#[cfg(threadprof_sampling)]
pub(crate) mod profile;

use std::alloc::{GlobalAlloc, Layout, System};

/// A global allocator that samples allocations into heap profiles, wrapping another one.
///
/// ```no_run
/// #[global_allocator]
/// static ALLOC: threadprof_runtime::Allocator = threadprof_runtime::Allocator::system();
/// ```
///
/// Every allocation goes to the inner allocator (`A`, [`System`] by default); about one per
/// `THREADPROF_HEAP_INTERVAL` bytes (512 KiB by default) is also recorded with its stack, tag
/// and labels, and the runtime writes `{tag}.heap.pb.gz` and `_merged.heap.pb.gz` every dump
/// interval (Go's heap profile format). Sampling starts with the runtime (the builder's
/// `start`, or the first registered thread) and stops in a forked child. Between samples, and
/// with `THREADPROF_HEAP_INTERVAL=0`, the wrapper adds a thread-local countdown (a load, a
/// compare, a store) to an allocation and one load of a static byte to a free.
#[derive(Debug, Default, Clone, Copy)]
pub struct Allocator<A = System> {
    inner: A,
}

impl Allocator<System> {
    /// The wrapper around the system allocator.
    pub const fn system() -> Allocator<System> {
        Allocator { inner: System }
    }
}

impl<A> Allocator<A> {
    /// The wrapper around `inner` (e.g. `mimalloc::MiMalloc`).
    pub const fn new(inner: A) -> Allocator<A> {
        Allocator { inner }
    }

    /// The wrapped allocator.
    pub const fn inner(&self) -> &A {
        &self.inner
    }
}

// SAFETY: every method forwards to the inner allocator with the caller's arguments and
// returns its result unchanged; the sampling around it neither touches the memory handed out
// nor allocates through this allocator (see the module doc).
unsafe impl<A: GlobalAlloc> GlobalAlloc for Allocator<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counted_down(layout.size()) {
            // SAFETY: forwarded with the caller's guarantees.
            return unsafe { self.inner.alloc(layout) };
        }
        // SAFETY: as above.
        unsafe { alloc_due(&self.inner, layout, false) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if counted_down(layout.size()) {
            // SAFETY: forwarded with the caller's guarantees.
            return unsafe { self.inner.alloc_zeroed(layout) };
        }
        // SAFETY: as above.
        unsafe { alloc_due(&self.inner, layout, true) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if maybe_sampled(ptr) {
            end_record(ptr);
        }
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { self.inner.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !maybe_sampled(ptr) && counted_down(new_size) {
            // SAFETY: forwarded with the caller's guarantees.
            return unsafe { self.inner.realloc(ptr, layout, new_size) };
        }
        // SAFETY: as above.
        unsafe { realloc_slow(&self.inner, ptr, layout, new_size) }
    }
}

/// An allocation whose size reaches the end of the thread's countdown: made, then sampled
/// (a failed one ends the countdown too, as the fast path counts failed allocations).
#[cold]
#[inline(never)]
unsafe fn alloc_due<A: GlobalAlloc>(inner: &A, layout: Layout, zeroed: bool) -> *mut u8 {
    // SAFETY: forwarded with the caller's guarantees (those of `GlobalAlloc::alloc`).
    let p = unsafe {
        if zeroed {
            inner.alloc_zeroed(layout)
        } else {
            inner.alloc(layout)
        }
    };
    due(p, layout.size());
    p
}

/// A `realloc` of a block that may have been sampled, or whose new size reaches the end of the
/// countdown: the old block's record ends (back if the `realloc` fails), the new block counts
/// as an allocation of `new_size`.
#[cold]
#[inline(never)]
unsafe fn realloc_slow<A: GlobalAlloc>(
    inner: &A,
    ptr: *mut u8,
    layout: Layout,
    new_size: usize,
) -> *mut u8 {
    let ended = if maybe_sampled(ptr) {
        end_record(ptr)
    } else {
        None
    };
    // Counted here if the fast path did not get that far; a countdown that was due stays due,
    // so counting it again is the same answer.
    let counted = counted_down(new_size);
    // SAFETY: forwarded with the caller's guarantees (those of `GlobalAlloc::realloc`).
    let q = unsafe { inner.realloc(ptr, layout, new_size) };
    if q.is_null() {
        // The old block is still allocated: it is still what the record described.
        restore(ptr, ended);
    }
    if !counted {
        due(q, new_size);
    }
    q
}

/// Keeps the calling thread's allocations out of the heap profiles (the runtime's own threads).
/// Costs nothing per allocation: the thread's countdown is set beyond reach.
pub(crate) fn exclude_current_thread() {
    #[cfg(threadprof_sampling)]
    let _ = sampling::THREAD.try_with(|t| t.remaining.set(u64::MAX));
}

/// Counts `size` bytes off the calling thread's countdown; false when they reach its end (the
/// allocation is then due: `due` is called once it is made).
#[inline(always)]
fn counted_down(size: usize) -> bool {
    #[cfg(threadprof_sampling)]
    return sampling::counted_down(size as u64);
    #[cfg(not(threadprof_sampling))]
    {
        let _ = size;
        true
    }
}

/// Whether `ptr` may be a sampled block (false: it is not).
#[inline(always)]
fn maybe_sampled(ptr: *mut u8) -> bool {
    #[cfg(threadprof_sampling)]
    return live::maybe_contains(ptr as u64);
    #[cfg(not(threadprof_sampling))]
    {
        let _ = ptr;
        false
    }
}

/// The end of the countdown at an allocation of `size` bytes at `ptr` (null: it failed, and
/// only the countdown moves on).
#[cold]
#[inline(never)]
fn due(ptr: *mut u8, size: usize) {
    #[cfg(threadprof_sampling)]
    sampling::due(ptr as u64, size as u64);
    #[cfg(not(threadprof_sampling))]
    let _ = (ptr, size);
}

/// Ends the record of a block that may have been sampled; its id if it was.
#[cold]
#[inline(never)]
fn end_record(ptr: *mut u8) -> Option<u64> {
    #[cfg(threadprof_sampling)]
    return sampling::LIVE.remove(ptr as u64);
    #[cfg(not(threadprof_sampling))]
    {
        let _ = ptr;
        None
    }
}

#[cold]
fn restore(ptr: *mut u8, ended: Option<u64>) {
    #[cfg(threadprof_sampling)]
    if let Some(id) = ended {
        sampling::restore(ptr as u64, id);
    }
    #[cfg(not(threadprof_sampling))]
    let _ = (ptr, ended);
}

/// Starts heap sampling with mean `interval` bytes between samples (0: off). Called once by
/// the runtime at start, in normal context. False (and sampling stays off) if the tracking
/// memory could not be mapped.
pub(crate) fn start(interval: u64) -> bool {
    #[cfg(threadprof_sampling)]
    return sampling::start(interval);
    #[cfg(not(threadprof_sampling))]
    {
        let _ = interval;
        false
    }
}

/// Stops sampling allocations (shutdown: nothing drains the samples after the last dump).
/// Blocks sampled before keep their table entries, so their frees stay cheap lookups.
pub(crate) fn stop() {
    #[cfg(threadprof_sampling)]
    sampling::INTERVAL.store(0, std::sync::atomic::Ordering::Relaxed);
}

/// Test support, not public API: `hook` runs inside the sampling path of every sampled
/// allocation, with the reentrancy guard held (a test makes it allocate, to check that such
/// allocations are skipped rather than recursed into). `None` removes it.
#[doc(hidden)]
pub fn __set_sample_hook(hook: Option<fn()>) {
    #[cfg(threadprof_sampling)]
    sampling::HOOK.store(
        hook.map_or(std::ptr::null_mut(), |f| f as *mut ()),
        std::sync::atomic::Ordering::Release,
    );
    #[cfg(not(threadprof_sampling))]
    let _ = hook;
}

/// Counters of the heap sampler since start (see `Stats`).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct HeapCounts {
    pub samples: u64,
    pub dropped: u64,
    pub skipped: u64,
    pub untracked: u64,
    pub live: usize,
    pub tracking_bytes: usize,
}

/// The heap sampler's counters now.
pub(crate) fn counts() -> HeapCounts {
    #[cfg(threadprof_sampling)]
    return sampling::counts();
    #[cfg(not(threadprof_sampling))]
    HeapCounts::default()
}

#[cfg(threadprof_sampling)]
pub(crate) use sampling::in_use;

#[cfg(threadprof_sampling)]
mod sampling {
    use std::cell::Cell;
    use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

    use super::events::{self, EventRing, DISCARD, UNTRACKED};
    use super::live::{self, LiveTable};
    use crate::slot::CURRENT_SLOT;

    /// Mean bytes between samples; 0 while sampling is off.
    pub(super) static INTERVAL: AtomicU64 = AtomicU64::new(0);
    pub(super) static LIVE: LiveTable = LiveTable::new();
    pub(super) static EVENTS: EventRing = EventRing::new();
    /// Set when a thread's countdown first ends while sampling is on (every thread's first
    /// allocation through the wrapper ends one, and a thread's countdown ends at least every
    /// `RECHECK` bytes while it is not armed): the wrapper is the global allocator.
    static SEEN: AtomicBool = AtomicBool::new(false);
    static SAMPLES: AtomicU64 = AtomicU64::new(0);
    static DROPPED: AtomicU64 = AtomicU64::new(0);
    static SKIPPED: AtomicU64 = AtomicU64::new(0);
    static UNTRACKED_COUNT: AtomicU64 = AtomicU64::new(0);
    /// Kept by the dump thread: live records and the bytes its records and stacks take.
    pub(super) static LIVE_RECORDS: AtomicUsize = AtomicUsize::new(0);
    pub(super) static DUMP_SIDE_BYTES: AtomicUsize = AtomicUsize::new(0);
    static CACHES: AtomicUsize = AtomicUsize::new(0);
    static SEED: AtomicU64 = AtomicU64::new(0x853c_49e6_748f_ea9b);
    /// See `__set_sample_hook` (null: none).
    pub(super) static HOOK: AtomicPtr<()> = AtomicPtr::new(std::ptr::null_mut());

    /// The tag of samples taken on unregistered threads (resolved to `untagged`).
    pub(crate) const UNREGISTERED: u32 = u32::MAX;

    /// With sampling off, bytes a thread allocates between two looks at whether it is on: a
    /// thread that allocated before the runtime started starts sampling within this many
    /// bytes after the start (a look costs a call and an atomic load: with sampling off, one
    /// per 16 KiB allocated).
    const RECHECK: u64 = 16 * 1024;

    /// Per-thread sampling state. No field needs dropping, so `thread_local!` registers no
    /// destructor for it and never allocates to reach it.
    pub(super) struct ThreadState {
        /// Bytes this thread may still allocate before its countdown ends: the next sample if
        /// `armed`, else the next look at whether sampling is on (0 at the thread's start, so
        /// its first allocation looks); `u64::MAX` on the runtime's own threads.
        pub(super) remaining: Cell<u64>,
        /// Whether `remaining` counts down to a sample (drawn while sampling was on).
        armed: Cell<bool>,
        rng: Cell<u64>,
        /// Reentrancy guard: set while this thread records a sample.
        busy: Cell<bool>,
        tid: Cell<i32>,
        /// Stack range of an unregistered thread, `(0, 0)` until its first sample.
        stack: Cell<(u64, u64)>,
    }

    thread_local! {
        pub(super) static THREAD: ThreadState = const {
            ThreadState::new()
        };
    }

    impl ThreadState {
        /// A thread's state before its first allocation.
        const fn new() -> ThreadState {
            ThreadState {
                remaining: Cell::new(0),
                armed: Cell::new(false),
                rng: Cell::new(0),
                busy: Cell::new(false),
                tid: Cell::new(0),
                stack: Cell::new((0, 0)),
            }
        }
    }

    /// Whether heap sampling ever saw an allocation through the wrapper (files are written
    /// only then).
    pub(crate) fn in_use() -> bool {
        SEEN.load(Ordering::Relaxed)
    }

    extern "C" fn after_fork_in_child() {
        INTERVAL.store(0, Ordering::Relaxed);
        LIVE.disable();
    }

    pub(super) fn start(interval: u64) -> bool {
        if interval == 0 {
            return false;
        }
        if !LIVE.map() || !EVENTS.map() {
            crate::diagnostics::warn(
                "heap-map",
                "cannot map memory for heap profile tracking; heap profiles are off",
            );
            return false;
        }
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let caches = capture_pool(cores * 2);
        if caches == 0 {
            crate::diagnostics::warn(
                "heap-caches",
                "cannot build unwind caches for heap profiles; heap profiles are off",
            );
            return false;
        }
        CACHES.store(caches, Ordering::Relaxed);
        // SAFETY: registers a child handler that only stores to atomics (async-signal-safe,
        // as code in a forked child of a multithreaded process must be).
        unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
        // Release: a thread that sees the interval (acquire, in `due`) sees the table, the ring
        // and the caches set up above.
        INTERVAL.store(interval, Ordering::Release);
        true
    }

    fn capture_pool(n: usize) -> usize {
        super::capture::fill_pool(n)
    }

    pub(super) fn counts() -> super::HeapCounts {
        let mapped = if INTERVAL.load(Ordering::Relaxed) > 0 || SEEN.load(Ordering::Relaxed) {
            live::MAPPED_BYTES + live::FILTER_BYTES + events::MAPPED_BYTES
        } else {
            0
        };
        super::HeapCounts {
            samples: SAMPLES.load(Ordering::Relaxed),
            dropped: DROPPED.load(Ordering::Relaxed),
            skipped: SKIPPED.load(Ordering::Relaxed),
            untracked: UNTRACKED_COUNT.load(Ordering::Relaxed),
            live: LIVE_RECORDS.load(Ordering::Relaxed),
            tracking_bytes: mapped
                + CACHES.load(Ordering::Relaxed) * super::capture::cache_bytes()
                + DUMP_SIDE_BYTES.load(Ordering::Relaxed),
        }
    }

    /// See `super::counted_down`: a thread-local load, compare and store.
    #[inline(always)]
    pub(super) fn counted_down(size: u64) -> bool {
        THREAD
            .try_with(|t| {
                let left = t.remaining.get();
                let fast = size < left;
                if fast {
                    t.remaining.set(left - size);
                }
                fast
            })
            // Cannot fail for a const-initialised TLS without a destructor; if it did, the
            // allocation would simply not be sampled.
            .unwrap_or(true)
    }

    /// An allocation of `size` bytes at `addr` (0: it failed) reached the end of its thread's
    /// countdown.
    pub(super) fn due(addr: u64, size: u64) {
        let _ = THREAD.try_with(|t| {
            let interval = INTERVAL.load(Ordering::Acquire);
            if interval == 0 {
                // Sampling is off: look again after `RECHECK` more bytes.
                t.armed.set(false);
                t.remaining.set(RECHECK);
            } else {
                if !SEEN.load(Ordering::Relaxed) {
                    SEEN.store(true, Ordering::Relaxed);
                }
                sample(t, addr, size, interval);
            }
        });
    }

    /// Puts back the record of a block that a failed `realloc` left allocated.
    pub(super) fn restore(addr: u64, id: u64) {
        if !LIVE.insert(addr, id) {
            UNTRACKED_COUNT.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The end of a thread's countdown with sampling on: draw the next one, and record this
    /// allocation, unless the countdown was not armed (the thread's first allocation since
    /// sampling started), whose count starts now: then this allocation is sampled only if it
    /// reaches the end of that new count.
    fn sample(t: &ThreadState, addr: u64, size: u64, interval: u64) {
        if t.busy.get() {
            SKIPPED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        t.busy.set(true);
        let first = !t.armed.get();
        t.armed.set(true);
        let next = next_count(t, interval);
        if first && size < next {
            t.remaining.set(next - size);
        } else {
            t.remaining
                .set(if first { next_count(t, interval) } else { next });
            // A failed allocation's sample point is passed, not recorded (so the next
            // allocation is sampled with the same chance as any other).
            if addr != 0 && !crate::registry::in_forked_child() {
                record(t, addr, size);
                let hook = HOOK.load(Ordering::Acquire);
                if !hook.is_null() {
                    // SAFETY: only `__set_sample_hook` stores here, a `fn()` cast to a pointer.
                    let hook: fn() = unsafe { std::mem::transmute::<*mut (), fn()>(hook) };
                    hook();
                }
            }
        }
        t.busy.set(false);
    }

    /// Bytes until the next sample: exponential with mean `interval`, at least 1.
    fn next_count(t: &ThreadState, interval: u64) -> u64 {
        let mut x = t.rng.get();
        if x == 0 {
            // Seeded from a process-wide sequence and this thread's TLS address.
            let salt = SEED.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
            x = splitmix(salt ^ (t as *const ThreadState as u64)) | 1;
        }
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        t.rng.set(x);
        let r = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
        // Uniform in (0, 1]: never 0, so the logarithm is finite.
        let u = ((r >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64);
        let count = -u.ln() * interval as f64;
        // Rounded up, so that an allocation of s bytes at the start of a countdown is sampled
        // with probability exactly 1 − e^(−s/interval), as the weights assume (rounding down
        // and then at least 1 over-sampled small allocations at small intervals). `as`
        // saturates; NaN cannot occur (u is in (0, 1]).
        (count.ceil() as u64).max(1)
    }

    fn splitmix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Records one sampled allocation: its event into the ring, its address into the table.
    #[inline(never)]
    fn record(t: &ThreadState, addr: u64, size: u64) {
        let tid = thread_id(t);
        let slot = CURRENT_SLOT
            .try_with(Cell::get)
            .ok()
            // SAFETY: a non-null CURRENT_SLOT points to this thread's live slot: the thread
            // clears it before releasing the slot, and we are running on that thread.
            .and_then(|p| unsafe { p.as_ref() });
        let (tag, labels, stack) = match slot {
            Some(s) => {
                let c = s.context();
                let stack = (
                    s.stack_lo.load(Ordering::Relaxed),
                    s.stack_top.load(Ordering::Relaxed),
                );
                (c.tag, c.labels, stack)
            }
            None => (UNREGISTERED, 0, own_stack(t)),
        };
        // The walk goes into this thread's stack first, and a ring cell is claimed only to
        // copy it: a slow or stopped walk holds no cell that the dump thread would wait for.
        let mut frames = [0u64; super::events::MAX_FRAMES];
        let (len, mut flags) = super::capture::capture(stack, &mut frames, tid as usize);
        if flags & DISCARD != 0 {
            DROPPED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let Some(mut claim) = EVENTS.claim() else {
            DROPPED.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let id = claim.id();
        // An entry for this address can only be stale (a block freed without this wrapper,
        // e.g. by C code): drop it, so that the next free ends this record, not that one.
        while LIVE.remove(addr).is_some() {}
        if !LIVE.insert(addr, id) {
            flags |= UNTRACKED;
            UNTRACKED_COUNT.fetch_add(1, Ordering::Relaxed);
        }
        SAMPLES.fetch_add(1, Ordering::Relaxed);
        let ev = claim.event();
        ev.addr = addr;
        ev.size = size;
        ev.tid = tid;
        ev.tag = tag;
        ev.labels = labels;
        ev.frames = frames;
        ev.len = len;
        ev.flags = flags;
        // Published when `claim` drops, after the table insert: an event the dump thread
        // reads always has its table entry (unless already freed).
        drop(claim);
    }

    fn thread_id(t: &ThreadState) -> i32 {
        let tid = t.tid.get();
        if tid != 0 {
            return tid;
        }
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) } as i32;
        t.tid.set(tid);
        tid
    }

    /// The stack range of the calling (unregistered) thread, looked up at its first sample.
    fn own_stack(t: &ThreadState) -> (u64, u64) {
        let known = t.stack.get();
        if known != (0, 0) {
            return known;
        }
        // The C library may set errno on the way (musl's probe of the main thread's stack,
        // glibc's read of /proc/self/maps): the host must not see it change across an
        // allocation.
        // SAFETY: __errno_location returns this thread's errno slot.
        let errno = unsafe { *libc::__errno_location() };
        let bounds = crate::sampler::stack_bounds();
        // SAFETY: as above.
        unsafe { *libc::__errno_location() = errno };
        // (1, 1): looked up and unknown; reads are then all refused.
        t.stack.set(if bounds == (0, 0) { (1, 1) } else { bounds });
        bounds
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn counts_are_exponential_with_the_interval_as_mean() {
            let t = ThreadState::new();
            let n = 200_000;
            let interval = 512 * 1024;
            let draws: Vec<u64> = (0..n).map(|_| next_count(&t, interval)).collect();
            let mean = draws.iter().sum::<u64>() as f64 / n as f64;
            assert!((mean / interval as f64 - 1.0).abs() < 0.02, "mean {mean}");
            // P(X > interval) = 1/e for an exponential.
            let above = draws.iter().filter(|&&d| d > interval).count() as f64 / n as f64;
            assert!((above - (-1f64).exp()).abs() < 0.01, "tail {above}");
            assert!(draws.iter().all(|&d| d >= 1));
        }
    }
}

/// Maps `bytes` of zeroed, private, anonymous memory; `None` if the kernel refuses.
#[cfg(threadprof_sampling)]
fn map_zeroed(bytes: usize) -> Option<*mut u8> {
    // SAFETY: a fresh anonymous private mapping; no existing memory is affected.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    (p != libc::MAP_FAILED).then_some(p.cast())
}
