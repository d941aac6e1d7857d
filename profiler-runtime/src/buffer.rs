//! `SampleBuffer`: a fixed-size, single-producer single-consumer ring of sample records.
//!
//! The producer is the signal handler of the one thread that owns the buffer; the consumer is
//! the dump thread. Both sides only load and store atomics: no locks, no allocation after
//! construction. A record is a header word, a weight word and `depth` frame addresses (leaf
//! first). When a record does not fit, the sample is counted as dropped.
//!
//! The words live in memory mapped for the ring alone (`RingMemory`), not in the allocator's
//! heap: a registered thread's ring is allocated on that thread, and with glibc each thread
//! allocates from one of several arenas that return freed memory to the OS only from their top.
//! 20,000 short-lived registered threads grew RSS by hundreds of MiB that way; a mapping is
//! returned whole on drop, and only the pages written count as resident.

use std::sync::atomic::{AtomicU64, Ordering};

/// Deepest stack recorded; deeper stacks are cut at the root end and flagged truncated.
pub const MAX_DEPTH: usize = 256;

/// Words a record needs besides its frames.
const HEADER_WORDS: u64 = 2;

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

/// One record, as read back by the consumer.
#[derive(Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// What kind of timer took it.
    pub kind: SampleKind,
    /// The tag id in force when it was taken.
    pub tag: u32,
    /// How many timer periods it stands for (1 + overrun).
    pub weight: u64,
    /// Whether the stack was deeper than [`MAX_DEPTH`].
    pub truncated: bool,
    /// Frame lookup addresses, leaf first.
    pub frames: &'a [u64],
}

/// Zero-initialised words for one ring: an anonymous private mapping on Unix, a heap
/// allocation where mapping is unavailable or fails.
struct RingMemory {
    ptr: std::ptr::NonNull<AtomicU64>,
    len: usize,
    mapped: bool,
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
                        mapped: true,
                    };
                }
            }
        }
        let words: Box<[AtomicU64]> = (0..len).map(|_| AtomicU64::new(0)).collect();
        let ptr = std::ptr::NonNull::from(Box::leak(words)).cast::<AtomicU64>();
        RingMemory {
            ptr,
            len,
            mapped: false,
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
        if self.mapped {
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
    dropped: AtomicU64,
    /// Timer periods committed (sum of weights); written only by the producer.
    recorded: AtomicU64,
}

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
        SampleBuffer {
            words: RingMemory::new(cap),
            mask: cap as u64 - 1,
            head: AtomicU64::new(0),
            tail: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            recorded: AtomicU64::new(0),
        }
    }

    /// Producer: starts a record if a record of the deepest size fits, else counts a drop.
    pub fn begin(&self) -> Option<RecordWriter<'_>> {
        let head = self.head.load(Ordering::Relaxed);
        let tail = self.tail.load(Ordering::Acquire);
        let free = self.words.len as u64 - (head - tail);
        if free < HEADER_WORDS + MAX_DEPTH as u64 {
            self.dropped.fetch_add(1, Ordering::Relaxed);
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
    }

    /// Timer periods committed so far (the sum of the records' weights).
    pub fn recorded(&self) -> u64 {
        self.recorded.load(Ordering::Relaxed)
    }

    /// Samples dropped so far because the buffer was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
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
            f(Record {
                kind: SampleKind::from_bits((header >> 16) & 0xff),
                truncated: (header >> 24) & 1 == 1,
                tag: (header >> 32) as u32,
                weight,
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

    /// Publishes the record to the consumer.
    pub fn commit(self, kind: SampleKind, tag: u32, weight: u64, truncated: bool) {
        let header =
            self.depth | (kind as u64) << 16 | u64::from(truncated) << 24 | u64::from(tag) << 32;
        self.buf.store(self.start, header);
        self.buf.store(self.start + 1, weight);
        self.buf
            .head
            .store(self.start + HEADER_WORDS + self.depth, Ordering::Release);
        // Single producer: a plain load and store, on this buffer's own counter.
        let recorded = &self.buf.recorded;
        recorded.store(
            recorded.load(Ordering::Relaxed).wrapping_add(weight),
            Ordering::Relaxed,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn records_come_back_in_order_and_full_buffer_counts_drops() {
        let buf = SampleBuffer::new(0);
        let cap = buf.words.len;
        let per = 10u64;
        let fits = cap as u64 / (HEADER_WORDS + per);
        let mut written = 0u64;
        for i in 0.. {
            let Some(mut w) = buf.begin() else { break };
            for f in 0..per {
                assert!(w.push(i * 100 + f));
            }
            w.commit(SampleKind::WallWaiting, 7, i + 1, false);
            written += 1;
        }
        assert!(written < fits && written > 0);
        assert!(buf.begin().is_none());
        assert_eq!(buf.dropped(), 2);
        assert_eq!(
            buf.recorded(),
            written * (written + 1) / 2,
            "sum of weights"
        );
        let mut scratch = Vec::new();
        let mut seen = 0u64;
        buf.drain(&mut scratch, |r| {
            assert_eq!(r.kind, SampleKind::WallWaiting);
            assert_eq!((r.tag, r.weight), (7, seen + 1));
            assert_eq!(r.frames[0], seen * 100);
            seen += 1;
        });
        assert_eq!(seen, written);
        assert!(buf.begin().is_some(), "space is reusable after a drain");
    }

    #[test]
    fn deep_stacks_stop_at_max_depth() {
        let buf = SampleBuffer::new(0);
        let mut w = buf.begin().unwrap();
        let pushed = (0..1000).take_while(|&a| w.push(a)).count();
        assert_eq!(pushed, MAX_DEPTH);
        w.commit(SampleKind::Cpu, 1, 1, true);
        let mut scratch = Vec::new();
        buf.drain(&mut scratch, |r| {
            assert!(r.truncated && r.frames.len() == MAX_DEPTH)
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
                        w.commit(SampleKind::Cpu, (i % 3) as u32, i, false);
                        i += 1;
                    }
                }
            })
        };
        let mut expect = 0u64;
        let mut scratch = Vec::new();
        while expect < total {
            buf.drain(&mut scratch, |r| {
                assert_eq!(r.weight, expect);
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
