//! `SampleBuffer`: a fixed-size, single-producer single-consumer ring of sample records.
//!
//! The producer is the signal handler of the one thread that owns the buffer; the consumer is
//! the dump thread. Both sides only load and store atomics: no locks, no allocation after
//! construction. A record is a header word, a weight word, the label-set id and the span id in
//! force (see [`Context`]), and `depth` frame addresses (leaf first); one stack can stand for CPU periods and wall periods at once (a handler run that
//! served both clocks). A *repeat* record has no frames: its wall periods were credited while
//! the thread stayed blocked (see `idle.rs`) and repeat the thread's previous record. When a
//! record does not fit, its periods are counted as dropped.
//!
//! The words live in a mapping, not in the allocator's heap: normally the one that holds the
//! thread's signal stack (`SampleBuffer::in_memory`, one mapping per thread so that ten
//! thousand registered threads stay well under `vm.max_map_count`), else one of their own
//! (`RingMemory`). A registered thread's ring is allocated on that thread, and with glibc each thread
//! allocates from one of several arenas that return freed memory to the OS only from their top.
//! 20,000 short-lived registered threads grew RSS by hundreds of MiB that way; a mapping is
//! returned whole on drop, and only the pages written count as resident.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// Deepest stack recorded; deeper stacks are cut at the root end and flagged truncated.
pub const MAX_DEPTH: usize = 256;

/// Words a record needs besides its frames.
const HEADER_WORDS: u64 = 4;

/// The kind of a sample, stored in its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SampleKind {
    /// A CPU-time timer expiry.
    Cpu = 0,
    /// A wall-clock timer expiry while the thread was running.
    WallRunning = 1,
    /// A wall-clock timer expiry while the thread was off CPU.
    WallWaiting = 2,
}

impl SampleKind {
    fn from_bits(bits: u64) -> SampleKind {
        match bits {
            1 => SampleKind::WallRunning,
            2 => SampleKind::WallWaiting,
            _ => SampleKind::Cpu,
        }
    }
}

/// What a sample is attributed to: the tag, label set and span in force on its thread when it
/// was taken. The handler copies these ids from the thread's slot; their strings live on the
/// dump side (`registry.rs` for tags, `labels.rs` for label sets).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Context {
    /// Interned tag id.
    pub tag: u32,
    /// Interned label-set id (0 = no labels).
    pub labels: u32,
    /// Local root span id of the innermost entered `tracing` span (0 = none).
    pub span: u64,
}

/// How the walk of a record's stack ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StackEnd {
    /// At the root, or where the unwind information ends.
    Complete,
    /// The stack was deeper than [`MAX_DEPTH`]: cut at the root end.
    Truncated,
    /// Memory the walk needed could not be read safely (see `stackread.rs`).
    CutShort,
}

/// One record, as read back by the consumer.
#[derive(Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// The tag, labels and span in force when it was taken.
    pub context: Context,
    /// CPU-time periods it stands for (1 + overrun; 0 if the CPU timer did not fire).
    pub cpu: u64,
    /// Wall-clock periods it stands for (0 if no wall period was due).
    pub wall: u64,
    /// [`SampleKind::WallRunning`] or [`SampleKind::WallWaiting`]: the state of its wall periods.
    pub wall_kind: SampleKind,
    /// Whether its wall periods repeat the thread's previous record (it has no frames then).
    pub repeat: bool,
    /// Whether the stack was deeper than [`MAX_DEPTH`].
    pub truncated: bool,
    /// Whether the walk stopped early because memory it needed could not be read safely.
    pub cut_short: bool,
    /// Frame lookup addresses, leaf first.
    pub frames: &'a [u64],
}

/// Zero-initialised words for one ring: an anonymous private mapping on Unix, a heap
/// allocation where mapping is unavailable or fails, or memory the caller owns.
struct RingMemory {
    ptr: std::ptr::NonNull<AtomicU64>,
    len: usize,
    owner: RingOwner,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum RingOwner {
    /// Our own mapping: unmapped on drop.
    Mapped,
    /// A leaked boxed slice: freed on drop.
    Boxed,
    /// The caller's memory ([`SampleBuffer::in_memory`]): left alone.
    Borrowed,
}

// SAFETY: the memory is owned by this value and only reached through `&[AtomicU64]`, which is
// itself Send and Sync.
unsafe impl Send for RingMemory {}
// SAFETY: as above.
unsafe impl Sync for RingMemory {}

impl RingMemory {
    fn new(len: usize) -> RingMemory {
        #[cfg(unix)]
        {
            let bytes = len * std::mem::size_of::<AtomicU64>();
            // SAFETY: an anonymous private mapping of `bytes` bytes at an address the kernel
            // picks; no existing memory is affected. The result is checked below.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    bytes,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if ptr != libc::MAP_FAILED {
                if let Some(ptr) = std::ptr::NonNull::new(ptr.cast::<AtomicU64>()) {
                    // Anonymous mappings are zero-filled: valid `AtomicU64(0)` words.
                    return RingMemory {
                        ptr,
                        len,
                        owner: RingOwner::Mapped,
                    };
                }
            }
        }
        let words: Box<[AtomicU64]> = (0..len).map(|_| AtomicU64::new(0)).collect();
        let ptr = std::ptr::NonNull::from(Box::leak(words)).cast::<AtomicU64>();
        RingMemory {
            ptr,
            len,
            owner: RingOwner::Boxed,
        }
    }

    #[inline]
    fn words(&self) -> &[AtomicU64] {
        // SAFETY: `ptr` points to `len` initialised (zero or since stored) words that live
        // until `drop`, and are only accessed atomically.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for RingMemory {
    fn drop(&mut self) {
        if self.owner == RingOwner::Borrowed {
            return;
        }
        if self.owner == RingOwner::Mapped {
            #[cfg(unix)]
            // SAFETY: unmaps exactly the mapping made in `new`, once; no reference into it
            // outlives `self`.
            unsafe {
                libc::munmap(
                    self.ptr.as_ptr().cast(),
                    self.len * std::mem::size_of::<AtomicU64>(),
                );
            }
        } else {
            // SAFETY: the pointer came from `Box::leak` of a boxed slice of `len` words in
            // `new` and is released once, here.
            drop(unsafe {
                Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                    self.ptr.as_ptr(),
                    self.len,
                ))
            });
        }
    }
}

/// The ring. `head` counts words ever written, `tail` words ever consumed.
pub struct SampleBuffer {
    words: RingMemory,
    mask: u64,
    head: AtomicU64,
    tail: AtomicU64,
    /// Timer periods lost because the ring was full.
    dropped: AtomicU64,
    /// Timer periods committed (sum of weights, repeats excluded); written only by the producer.
    recorded: AtomicU64,
    /// Set by every producer-side change (a record published, periods dropped) and by
    /// [`SampleBuffer::mark_pending`]; cleared by [`SampleBuffer::take_pending`]. The consumer
    /// visits only buffers with something new, so idle threads cost their count nothing.
    pending: AtomicBool,
    /// This buffer's bit in [`PENDING`] ([`NO_PENDING_INDEX`]: none), set when `pending`
    /// turns true, so the consumer finds the buffers with something new without looking at
    /// every buffer.
    pending_index: AtomicU32,
}

/// Words of [`PENDING`]: one bit per live registered thread, for up to 65,536 (8 KiB). A
/// thread past that has no bit, and the registry looks at its flag at every drain.
pub(crate) const PENDING_WORDS: usize = 1024;

/// Bit `i` is set when the buffer with pending index `i` gets something new (see
/// [`SampleBuffer::mark_pending`]): the dump thread reads these words instead of every
/// buffer's flag, so a drain costs what changed, not how many threads are registered.
pub(crate) static PENDING: [AtomicU64; PENDING_WORDS] =
    [const { AtomicU64::new(0) }; PENDING_WORDS];

/// No bit in [`PENDING`].
pub(crate) const NO_PENDING_INDEX: u32 = u32::MAX;

/// A record being written by the producer; nothing is visible until [`RecordWriter::commit`].
pub struct RecordWriter<'a> {
    buf: &'a SampleBuffer,
    start: u64,
    depth: u64,
}

impl SampleBuffer {
    /// A buffer of `capacity_words` 64-bit words (rounded up to a power of two, at least room
    /// for one deepest record).
    pub fn new(capacity_words: usize) -> SampleBuffer {
        let cap = capacity_words
            .max(2 * (MAX_DEPTH + HEADER_WORDS as usize))
            .next_power_of_two();
        SampleBuffer::over(RingMemory::new(cap))
    }

    /// A buffer in memory the caller provides: `words` zeroed, 8-byte aligned words at `ptr`,
    /// with `words` a power of two of at least room for two deepest records (else `None`).
    ///
    /// # Safety
    /// The memory must be valid for reads and writes, zero-filled, used by nothing else, and
    /// outlive the buffer.
    pub(crate) unsafe fn in_memory(ptr: *mut u8, words: usize) -> Option<SampleBuffer> {
        let fits = words.is_power_of_two() && words >= 2 * (MAX_DEPTH + HEADER_WORDS as usize);
        if !fits || ptr.align_offset(std::mem::align_of::<AtomicU64>()) != 0 {
            return None;
        }
        let ptr = std::ptr::NonNull::new(ptr.cast::<AtomicU64>())?;
        Some(SampleBuffer::over(RingMemory {
            ptr,
            len: words,
            owner: RingOwner::Borrowed,
        }))
    }

    /// A buffer over `words` (a power of two long).
    fn over(words: RingMemory) -> SampleBuffer {
        SampleBuffer {
            mask: words.len as u64 - 1,
            words,
            head: AtomicU64::new(0),
            tail: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            recorded: AtomicU64::new(0),
            pending: AtomicBool::new(false),
            pending_index: AtomicU32::new(NO_PENDING_INDEX),
        }
    }

    /// Producer: starts a record if a record of the deepest size fits; if not, the caller
    /// counts its periods with [`Self::count_dropped`].
    pub fn begin(&self) -> Option<RecordWriter<'_>> {
        let head = self.head.load(Ordering::Relaxed);
        let tail = self.tail.load(Ordering::Acquire);
        let free = self.words.len as u64 - (head - tail);
        if free < HEADER_WORDS + MAX_DEPTH as u64 {
            return None;
        }
        Some(RecordWriter {
            buf: self,
            start: head,
            depth: 0,
        })
    }

    fn store(&self, pos: u64, value: u64) {
        self.words.words()[(pos & self.mask) as usize].store(value, Ordering::Relaxed);
    }

    fn load(&self, pos: u64) -> u64 {
        self.words.words()[(pos & self.mask) as usize].load(Ordering::Relaxed)
    }

    /// Empties the buffer for reuse by another thread (exclusive access: no producer or
    /// consumer can be active).
    pub(crate) fn clear(&mut self) {
        *self.head.get_mut() = 0;
        *self.tail.get_mut() = 0;
        *self.dropped.get_mut() = 0;
        *self.recorded.get_mut() = 0;
        *self.pending.get_mut() = false;
    }

    /// Says that there is something new for the consumer: a record or a drop (the producer's
    /// methods call this), or wall periods credited to the thread (the ticker, see `idle.rs`).
    /// Release: what was written before is visible to a consumer that takes the flag.
    pub fn mark_pending(&self) {
        // A read-modify-write, ordered with the consumer's in `take_pending`: either it takes
        // this `true` (and sees what was written before), or this finds the flag cleared and
        // sets the buffer's bit for the next drain.
        if !self.pending.swap(true, Ordering::AcqRel) {
            let index = self.pending_index.load(Ordering::Relaxed) as usize;
            if let Some(word) = PENDING.get(index / 64) {
                word.fetch_or(1 << (index % 64), Ordering::Release);
            }
        }
    }

    /// This buffer's index in [`PENDING`] ([`NO_PENDING_INDEX`]: none).
    pub(crate) fn pending_index(&self) -> u32 {
        self.pending_index.load(Ordering::Relaxed)
    }

    /// Sets (or, with [`NO_PENDING_INDEX`], removes) this buffer's bit in [`PENDING`]; the
    /// registry gives each live thread's buffer a distinct index.
    pub(crate) fn set_pending_index(&self, index: u32) {
        self.pending_index.store(index, Ordering::Relaxed);
        if index != NO_PENDING_INDEX && self.pending.load(Ordering::Acquire) {
            if let Some(word) = PENDING.get(index as usize / 64) {
                word.fetch_or(1 << (index % 64), Ordering::Release);
            }
        }
    }

    /// Consumer: whether anything changed since the last call (and clears the flag and the
    /// buffer's bit). Call it right before draining: what was marked before is then visible
    /// to the drain. The bit is cleared first: a producer that marks in between finds the
    /// flag still set (and this call takes it), or finds it cleared and sets the bit again.
    pub fn take_pending(&self) -> bool {
        let index = self.pending_index.load(Ordering::Relaxed) as usize;
        if let Some(word) = PENDING.get(index / 64) {
            word.fetch_and(!(1 << (index % 64)), Ordering::AcqRel);
        }
        self.pending.swap(false, Ordering::AcqRel)
    }

    /// Whether [`Self::take_pending`] would say so now (a hint: does not clear the flag).
    pub fn has_pending(&self) -> bool {
        self.pending.load(Ordering::Relaxed)
    }

    /// Timer periods committed so far (the sum of the records' weights).
    pub fn recorded(&self) -> u64 {
        self.recorded.load(Ordering::Relaxed)
    }

    /// Timer periods dropped so far because the buffer was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Producer: counts `periods` lost because [`Self::begin`] found no room.
    pub fn count_dropped(&self, periods: u64) {
        self.dropped.fetch_add(periods, Ordering::Relaxed);
        self.mark_pending();
    }

    /// Consumer: hands every complete record to `f`, oldest first, and frees their space.
    /// Returns the number of records read.
    pub fn drain(&self, scratch: &mut Vec<u64>, mut f: impl FnMut(Record<'_>)) -> usize {
        let head = self.head.load(Ordering::Acquire);
        let mut pos = self.tail.load(Ordering::Relaxed);
        let mut n = 0;
        while pos < head {
            let header = self.load(pos);
            let weight = self.load(pos + 1);
            let depth = header & 0xffff;
            scratch.clear();
            scratch.extend((0..depth).map(|i| self.load(pos + HEADER_WORDS + i)));
            let labels = self.load(pos + 2);
            f(Record {
                context: Context {
                    tag: (header >> 32) as u32,
                    labels: labels as u32,
                    span: self.load(pos + 3),
                },
                cpu: weight & 0xffff_ffff,
                wall: weight >> 32,
                wall_kind: SampleKind::from_bits((header >> 16) & 0xff),
                truncated: (header >> 24) & 1 == 1,
                repeat: (header >> 25) & 1 == 1,
                cut_short: (header >> 26) & 1 == 1,
                frames: scratch,
            });
            pos += HEADER_WORDS + depth;
            n += 1;
        }
        self.tail.store(pos, Ordering::Release);
        n
    }
}

impl RecordWriter<'_> {
    /// Appends a frame; returns false (and stores nothing) once [`MAX_DEPTH`] frames are in.
    pub fn push(&mut self, addr: u64) -> bool {
        if self.depth as usize == MAX_DEPTH {
            return false;
        }
        self.buf.store(self.start + HEADER_WORDS + self.depth, addr);
        self.depth += 1;
        true
    }

    /// Publishes the record to the consumer: `cpu` CPU periods and `wall` wall periods (each
    /// capped at `u32::MAX`) in state `wall_kind`, on the frames pushed, and how the walk
    /// ended.
    pub fn commit(
        self,
        context: Context,
        cpu: u64,
        wall: u64,
        wall_kind: SampleKind,
        end: StackEnd,
    ) {
        let (cpu, wall) = (cpu.min(u32::MAX.into()), wall.min(u32::MAX.into()));
        self.publish(context, cpu | wall << 32, wall_kind, end, false);
        // Single producer: a plain load and store, on this buffer's own counter.
        let recorded = &self.buf.recorded;
        recorded.store(
            recorded.load(Ordering::Relaxed).wrapping_add(cpu + wall),
            Ordering::Relaxed,
        );
    }

    /// Publishes a repeat record: `wall` credited periods (capped at `u32::MAX`) that repeat
    /// the thread's previous record. Not counted in [`SampleBuffer::recorded`]: credits are
    /// counted where they are turned into samples.
    pub fn commit_repeat(mut self, context: Context, wall: u64) {
        self.depth = 0;
        let wall = wall.min(u32::MAX.into());
        self.publish(
            context,
            wall << 32,
            SampleKind::WallWaiting,
            StackEnd::Complete,
            true,
        );
    }

    fn publish(
        &self,
        context: Context,
        weights: u64,
        wall_kind: SampleKind,
        end: StackEnd,
        repeat: bool,
    ) {
        let header = self.depth
            | (wall_kind as u64) << 16
            | u64::from(end == StackEnd::Truncated) << 24
            | u64::from(repeat) << 25
            | u64::from(end == StackEnd::CutShort) << 26
            | u64::from(context.tag) << 32;
        self.buf.store(self.start, header);
        self.buf.store(self.start + 1, weights);
        self.buf.store(self.start + 2, u64::from(context.labels));
        self.buf.store(self.start + 3, context.span);
        self.buf
            .head
            .store(self.start + HEADER_WORDS + self.depth, Ordering::Release);
        self.buf.mark_pending();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn ctx(tag: u32) -> Context {
        Context {
            tag,
            labels: tag + 1,
            span: u64::from(tag) + 2,
        }
    }

    #[test]
    fn records_come_back_in_order_and_full_buffer_counts_drops() {
        let buf = SampleBuffer::new(0);
        let cap = buf.words.len;
        let per = 10u64;
        let fits = cap as u64 / (HEADER_WORDS + per);
        let mut written = 0u64;
        for i in 0.. {
            let Some(mut w) = buf.begin() else { break };
            if i % 5 == 4 {
                w.commit_repeat(ctx(7), 3);
            } else {
                for f in 0..per {
                    assert!(w.push(i * 100 + f));
                }
                w.commit(
                    ctx(7),
                    i,
                    i + 1,
                    SampleKind::WallWaiting,
                    StackEnd::Complete,
                );
            }
            written += 1;
        }
        assert!(written < fits && written > 0);
        assert!(buf.begin().is_none());
        assert_eq!(buf.dropped(), 0, "the caller counts drops");
        buf.count_dropped(3);
        assert_eq!(buf.dropped(), 3);
        let sum: u64 = (0..written).filter(|i| i % 5 != 4).map(|i| 2 * i + 1).sum();
        assert_eq!(buf.recorded(), sum, "sum of weights, repeats excluded");
        let mut scratch = Vec::new();
        let mut seen = 0u64;
        buf.drain(&mut scratch, |r| {
            assert_eq!((r.context.tag, r.wall_kind), (7, SampleKind::WallWaiting));
            assert_eq!((r.context.labels, r.context.span), (8, 9));
            if seen % 5 == 4 {
                assert!(r.repeat && r.frames.is_empty());
                assert_eq!((r.cpu, r.wall), (0, 3));
            } else {
                assert!(!r.repeat);
                assert_eq!((r.cpu, r.wall), (seen, seen + 1));
                assert_eq!(r.frames[0], seen * 100);
            }
            seen += 1;
        });
        assert_eq!(seen, written);
        assert!(buf.begin().is_some(), "space is reusable after a drain");
    }

    #[test]
    fn pending_says_whether_anything_changed() {
        let buf = SampleBuffer::new(0);
        assert!(!buf.take_pending(), "new buffer");
        let w = buf.begin().unwrap();
        w.commit(ctx(1), 1, 0, SampleKind::Cpu, StackEnd::Complete);
        assert!(buf.take_pending(), "a record");
        assert!(!buf.take_pending(), "taken once");
        buf.count_dropped(2);
        assert!(buf.take_pending(), "drops");
        buf.mark_pending();
        assert!(buf.take_pending(), "marked");
        assert!(!buf.take_pending());
    }

    #[test]
    fn a_consumer_that_drains_only_when_pending_misses_nothing() {
        let buf = Arc::new(SampleBuffer::new(4096));
        let total = 100_000u64;
        let producer = {
            let buf = buf.clone();
            std::thread::spawn(move || {
                let mut i = 0;
                while i < total {
                    if let Some(w) = buf.begin() {
                        w.commit(ctx(0), 1, 0, SampleKind::Cpu, StackEnd::Complete);
                        i += 1;
                    }
                }
            })
        };
        let mut seen = 0u64;
        let mut scratch = Vec::new();
        let mut drain = |seen: &mut u64| {
            if buf.take_pending() {
                buf.drain(&mut scratch, |_| *seen += 1);
            }
        };
        while !producer.is_finished() {
            drain(&mut seen);
        }
        producer.join().unwrap();
        drain(&mut seen);
        assert_eq!(seen, total);
        assert!(!buf.has_pending());
    }

    #[test]
    fn deep_stacks_stop_at_max_depth() {
        let buf = SampleBuffer::new(0);
        let mut w = buf.begin().unwrap();
        let pushed = (0..1000).take_while(|&a| w.push(a)).count();
        assert_eq!(pushed, MAX_DEPTH);
        w.commit(ctx(1), 1, 0, SampleKind::WallRunning, StackEnd::Truncated);
        let mut scratch = Vec::new();
        buf.drain(&mut scratch, |r| {
            assert!(r.truncated && !r.cut_short && r.frames.len() == MAX_DEPTH)
        });
    }

    #[test]
    fn concurrent_producer_and_consumer_lose_nothing() {
        let buf = Arc::new(SampleBuffer::new(4096));
        let total = 200_000u64;
        let producer = {
            let buf = buf.clone();
            std::thread::spawn(move || {
                let mut i = 0;
                while i < total {
                    if let Some(mut w) = buf.begin() {
                        for k in 0..(i % 7) {
                            w.push(i + k);
                        }
                        w.commit(
                            Context {
                                tag: (i % 3) as u32,
                                labels: i as u32,
                                span: i << 20,
                            },
                            i,
                            0,
                            SampleKind::WallRunning,
                            StackEnd::Complete,
                        );
                        i += 1;
                    }
                }
            })
        };
        let mut expect = 0u64;
        let mut scratch = Vec::new();
        while expect < total {
            buf.drain(&mut scratch, |r| {
                assert_eq!(r.cpu, expect);
                assert_eq!(
                    (r.context.labels, r.context.span),
                    (expect as u32, expect << 20)
                );
                assert_eq!(r.frames.len() as u64, expect % 7);
                assert!(r
                    .frames
                    .iter()
                    .enumerate()
                    .all(|(k, &a)| a == expect + k as u64));
                expect += 1;
            });
        }
        producer.join().unwrap();
    }
}
