//! `EventRing`: sampled allocations on their way from the allocating threads to the dump
//! thread.
//!
//! Owns one anonymous mapping (made once, at start, never freed) of 4,096 fixed-size cells, a
//! bounded multi-producer queue in the style of Dmitry Vyukov's: every cell has a sequence
//! word saying whose turn it is. A producer claims the cell at the tail with one
//! compare-and-swap (retried only when another producer moved the tail first: lock-free),
//! writes the event and publishes it with a release store of the sequence word. The dump thread
//! is the only consumer; it stops at the first cell not yet published and resumes there at the
//! next drain. A full ring refuses the claim (the sample is dropped and counted). No locks,
//! no allocation, no system call.
//!
//! An event's position in the ring (`Claim::id`) is unique for the process's life and names
//! the sampled allocation in the live table.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

/// Frames kept per sampled allocation (from the allocation site outwards, allocator frames
/// included); deeper stacks are cut at the root end and marked truncated.
pub(crate) const MAX_FRAMES: usize = 64;
/// Cells in the ring (a power of two).
pub(crate) const CELLS: u64 = 4096;

/// The stack was deeper than [`MAX_FRAMES`].
pub(crate) const TRUNCATED: u32 = 1;
/// The walk stopped at a read it refused (see stackread.rs).
pub(crate) const CUT_SHORT: u32 = 2;
/// The live table had no room: counts in `alloc_*` only.
pub(crate) const UNTRACKED: u32 = 4;
/// Nothing recorded (no unwind cache was free): the consumer skips it.
pub(crate) const DISCARD: u32 = 8;

/// One sampled allocation.
#[repr(C)]
pub(crate) struct Event {
    pub addr: u64,
    pub size: u64,
    /// OS thread id of the allocating thread.
    pub tid: i32,
    /// Tag id in force, or `super::UNREGISTERED`.
    pub tag: u32,
    /// Label-set id in force (0: none).
    pub labels: u32,
    pub flags: u32,
    /// Frames used in `frames`.
    pub len: u32,
    pub frames: [u64; MAX_FRAMES],
}

#[repr(C)]
struct Cell {
    /// `position - index` of the position whose turn it is: `lap` for the producer of
    /// position `lap + index`, `lap + 1` once that producer published, `lap + CELLS` once the
    /// consumer read it. All zero in a fresh mapping, which is the first lap's producer turn.
    seq: AtomicU64,
    event: UnsafeCell<Event>,
}

/// Bytes the ring maps (virtual; a page becomes resident when an event is first written to it).
pub(crate) const MAPPED_BYTES: usize = CELLS as usize * std::mem::size_of::<Cell>();

/// See the module doc.
pub(crate) struct EventRing {
    cells: AtomicPtr<Cell>,
    tail: AtomicU64,
    /// Next position to read; only the consumer writes it.
    head: AtomicU64,
}

// SAFETY: cells are handed to one producer at a time (claimed by compare-and-swap on the
// tail) and to the consumer only after the producer's release store; see `claim` and `drain`.
unsafe impl Sync for EventRing {}

/// A claimed cell; publishing happens when it drops.
pub(crate) struct Claim<'a> {
    cell: &'a Cell,
    pos: u64,
}

impl EventRing {
    pub(crate) const fn new() -> EventRing {
        EventRing {
            cells: AtomicPtr::new(std::ptr::null_mut()),
            tail: AtomicU64::new(0),
            head: AtomicU64::new(0),
        }
    }

    /// Maps the ring (once); false if the mapping failed.
    pub(crate) fn map(&self) -> bool {
        if !self.cells.load(Ordering::Acquire).is_null() {
            return true;
        }
        let Some(cells) = super::map_zeroed(MAPPED_BYTES) else {
            return false;
        };
        self.cells.store(cells.cast(), Ordering::Release);
        true
    }

    fn cell(&self, pos: u64) -> Option<&Cell> {
        let cells = self.cells.load(Ordering::Acquire);
        if cells.is_null() {
            return None;
        }
        // SAFETY: `cells` is the mapping of CELLS cells made by `map` (never unmapped), and
        // the index is below CELLS. Zeroed memory is a valid `Cell` (an atomic and plain
        // integers).
        Some(unsafe { &*cells.add((pos % CELLS) as usize) })
    }

    /// Claims the cell at the tail, or `None` when the ring is full (or not mapped).
    #[inline]
    pub(crate) fn claim(&self) -> Option<Claim<'_>> {
        let mut pos = self.tail.load(Ordering::Relaxed);
        loop {
            let cell = self.cell(pos)?;
            let lap = pos - pos % CELLS;
            let seq = cell.seq.load(Ordering::Acquire);
            if seq == lap {
                match self.tail.compare_exchange_weak(
                    pos,
                    pos + 1,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return Some(Claim { cell, pos }),
                    Err(now) => pos = now,
                }
            } else if seq < lap {
                // The previous lap's event in this cell is not consumed yet: full.
                return None;
            } else {
                pos = self.tail.load(Ordering::Relaxed);
            }
        }
    }

    /// Calls `f` with every published event in order (dump thread only: one consumer);
    /// returns how many.
    pub(crate) fn drain(&self, mut f: impl FnMut(u64, &Event)) -> usize {
        let mut n = 0;
        loop {
            let pos = self.head.load(Ordering::Relaxed);
            let Some(cell) = self.cell(pos) else {
                return n;
            };
            let lap = pos - pos % CELLS;
            if cell.seq.load(Ordering::Acquire) != lap + 1 {
                return n;
            }
            // SAFETY: the producer published this cell (release store of lap + 1, acquired
            // above) and no producer writes it again before we hand it back below.
            f(pos, unsafe { &*cell.event.get() });
            cell.seq.store(lap + CELLS, Ordering::Release);
            self.head.store(pos + 1, Ordering::Relaxed);
            n += 1;
        }
    }
}

impl Claim<'_> {
    /// Unique id of this sampled allocation.
    pub(crate) fn id(&self) -> u64 {
        self.pos
    }

    /// The event to fill in.
    pub(crate) fn event(&mut self) -> &mut Event {
        // SAFETY: this claim won the compare-and-swap for `pos`, so no other producer touches
        // the cell, and the consumer does not read it before `drop` publishes it.
        unsafe { &mut *self.cell.event.get() }
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let lap = self.pos - self.pos % CELLS;
        self.cell.seq.store(lap + 1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_refuses_when_full_and_drains_in_order() {
        let ring = EventRing::new();
        assert!(ring.claim().is_none(), "unmapped");
        assert!(ring.map());
        for i in 0..CELLS {
            let mut c = ring.claim().expect("room");
            assert_eq!(c.id(), i);
            c.event().size = i;
        }
        assert!(ring.claim().is_none(), "full");
        let mut seen = Vec::new();
        assert_eq!(ring.drain(|id, e| seen.push((id, e.size))), CELLS as usize);
        assert!(seen.iter().all(|&(id, size)| id == size));
        // A claimed but unpublished cell stops the consumer until it is published.
        let mut held = ring.claim().expect("room again");
        held.event().size = 1;
        let mut after = ring.claim().expect("room");
        after.event().size = 2;
        drop(after);
        assert_eq!(ring.drain(|_, _| {}), 0, "blocked by the held cell");
        drop(held);
        let mut sizes = Vec::new();
        assert_eq!(ring.drain(|_, e| sizes.push(e.size)), 2);
        assert_eq!(sizes, [1, 2]);
    }

    #[test]
    fn concurrent_producers_lose_nothing_they_were_given() {
        let ring: &'static EventRing = Box::leak(Box::new(EventRing::new()));
        assert!(ring.map());
        let producers: Vec<_> = (0..4u64)
            .map(|t| {
                std::thread::spawn(move || {
                    let mut given = 0u64;
                    for i in 0..20_000u64 {
                        if let Some(mut c) = ring.claim() {
                            c.event().size = t << 32 | i;
                            given += 1;
                        }
                    }
                    given
                })
            })
            .collect();
        let mut drained = 0usize;
        let mut last = [None::<u64>; 4];
        while producers.iter().any(|p| !p.is_finished()) {
            drained += ring.drain(|_, e| {
                let (t, i) = ((e.size >> 32) as usize, e.size & 0xffff_ffff);
                assert!(last[t].is_none_or(|l| l < i), "in order per producer");
                last[t] = Some(i);
            });
        }
        let given: u64 = producers.into_iter().map(|p| p.join().unwrap()).sum();
        drained += ring.drain(|_, _| {});
        assert_eq!(drained as u64, given);
    }
}
