//! `LiveTable`: the addresses of sampled allocations that are still live, so that a free can
//! tell in one load whether the block it frees may have been sampled.
//!
//! Owns one anonymous mapping (made once, at start, never freed): 32,768 buckets of 8 entries
//! (`addr`, `id`) and one byte per bucket whose bits say which entries are in use. An address
//! hashes to two buckets (two-choice hashing: it goes into the emptier one), so a bucket
//! overflows only when both of an address's buckets are full, which stays rare until the table
//! is most of the way to its 262,144 entries. A full pair of buckets makes the sample
//! *untracked*: it counts in `alloc_*`, not in `inuse_*` (counted in `Stats::heap_untracked`).
//!
//! In front of it, the *filter*: a static array of 32,768 one-byte counters (32 KiB in the
//! program's zeroed data, no pointer to load), each counting the table's entries whose address
//! hashes to it (a third hash, independent of the buckets).
//!
//! - Free of an unsampled block (the hot path): [`maybe_contains`] is one relaxed load of the
//!   address's counter; zero means "not sampled". A counter is raised before its entry is
//!   written and lowered after its entry is cleared, both with atomic read-modify-writes, so
//!   it is never below the number of entries behind it (a counter that would pass 255 refuses
//!   the entry: untracked).
//! - Insert (a sampled allocation, before its pointer is returned): raise the counter, claim a
//!   free bit with a compare-and-swap on the occupancy byte, then write the entry. Lock-free.
//! - Remove (free of a block whose counter is not zero): compare the buckets' occupied entries
//!   with the address; on a match, clear the entry, then its bit, then lower the counter. Only
//!   the owner of a block frees it, so two removes of one address never race, and the insert
//!   of an address happened before any free of it (the pointer was published after the insert).
//! - [`LiveTable::contains`] (dump thread): whether `(addr, id)` is still in the table.
//!
//! No locks anywhere, so a fork or a signal cannot strand one; no allocation.

use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicU8, Ordering};

/// Buckets (a power of two).
const BUCKETS: usize = 1 << 15;
const BUCKET_BITS: u32 = 15;
/// Entries per bucket: one bit each in the occupancy byte.
const SLOTS: usize = 8;
/// Most live sampled allocations the table can hold.
pub(crate) const CAPACITY: usize = BUCKETS * SLOTS;

#[repr(C)]
struct Entry {
    /// Address of the block, 0 when free.
    addr: AtomicU64,
    /// Id of the sampled allocation (its event's position in the ring).
    id: AtomicU64,
}

#[repr(C)]
struct Region {
    masks: [AtomicU8; BUCKETS],
    entries: [[Entry; SLOTS]; BUCKETS],
}

/// Bytes the table maps (virtual; pages become resident as entries are written).
pub(crate) const MAPPED_BYTES: usize = std::mem::size_of::<Region>();

/// Counters in the filter (a power of two).
const FILTER_SLOTS: usize = 1 << 15;
const FILTER_BITS: u32 = 15;
/// Bytes of the filter (static, zeroed).
pub(crate) const FILTER_BYTES: usize = FILTER_SLOTS;

/// See the module doc. Static, so the hot path loads no pointer and checks no null: before
/// the table is mapped every counter is zero; in a forked child the counters the parent left
/// raised stay so, and a free behind one looks at the switched-off table and finds nothing.
static FILTER: [AtomicU8; FILTER_SLOTS] = [const { AtomicU8::new(0) }; FILTER_SLOTS];

/// The filter counter of `addr`.
#[inline(always)]
fn filter_slot(addr: u64) -> usize {
    // The high bits of a 32-bit multiplicative hash of the address's low 32 bits (one
    // multiply by an immediate and one shift on the free path; blocks 4 GiB apart share a
    // counter, which only costs a look). A u32 shifted by 17 leaves 15 bits, so the index is
    // in bounds without a check.
    ((addr as u32).wrapping_mul(0x5bd1_e995) >> (32 - FILTER_BITS)) as usize
}

/// Whether `addr` may be in the table: false means it is not (the hot path of every free).
#[inline(always)]
pub(crate) fn maybe_contains(addr: u64) -> bool {
    FILTER[filter_slot(addr)].load(Ordering::Relaxed) != 0
}

/// See the module doc.
pub(crate) struct LiveTable {
    region: AtomicPtr<Region>,
}

/// The two buckets of `addr`, never equal.
#[inline(always)]
fn buckets(addr: u64) -> (usize, usize) {
    let k = addr >> 4;
    let a = (k.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - BUCKET_BITS)) as usize;
    let mut b = (k.wrapping_mul(0xc2b2_ae3d_27d4_eb4f) >> (64 - BUCKET_BITS)) as usize;
    if a == b {
        b ^= 1;
    }
    (a, b)
}

impl LiveTable {
    pub(crate) const fn new() -> LiveTable {
        LiveTable {
            region: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    /// Maps the table (once); false if the mapping failed.
    pub(crate) fn map(&self) -> bool {
        if !self.region.load(Ordering::Acquire).is_null() {
            return true;
        }
        let Some(region) = super::map_zeroed(MAPPED_BYTES) else {
            return false;
        };
        // Zeroed memory is a valid `Region`: every field is an atomic integer.
        self.region.store(region.cast(), Ordering::Release);
        true
    }

    /// Stops all tracking (a forked child): every later call sees an empty table. The
    /// mapping stays (another thread of the parent may have been using it at the fork).
    pub(crate) fn disable(&self) {
        self.region.store(std::ptr::null_mut(), Ordering::Relaxed);
    }

    #[inline(always)]
    fn region(&self) -> Option<&Region> {
        // SAFETY: non-null only once `map` stored a mapping of `MAPPED_BYTES` zeroed bytes,
        // which is never unmapped; all-zero bytes are a valid `Region` of atomics. A relaxed
        // load suffices: the mapping's zeroes are visible to every thread by construction, and
        // entries are read with their own acquire loads.
        unsafe { self.region.load(Ordering::Relaxed).as_ref() }
    }

    /// Records `addr` as sampled allocation `id`; false if both its buckets are full.
    pub(crate) fn insert(&self, addr: u64, id: u64) -> bool {
        let Some(r) = self.region() else {
            return false;
        };
        let (a, b) = buckets(addr);
        let ones = |i: usize| {
            r.masks
                .get(i)
                .map_or(8, |m| m.load(Ordering::Relaxed).count_ones())
        };
        let (first, second) = if ones(b) < ones(a) { (b, a) } else { (a, b) };
        // Raised first: from the moment the entry can be found, a free looks for it.
        let counter = &FILTER[filter_slot(addr)];
        if counter
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |c| c.checked_add(1))
            .is_err()
        {
            return false;
        }
        let done = Self::insert_into(r, first, addr, id) || Self::insert_into(r, second, addr, id);
        if !done {
            counter.fetch_sub(1, Ordering::Release);
        }
        done
    }

    fn insert_into(r: &Region, bucket: usize, addr: u64, id: u64) -> bool {
        let (Some(mask), Some(entries)) = (r.masks.get(bucket), r.entries.get(bucket)) else {
            return false;
        };
        let mut m = mask.load(Ordering::Acquire);
        loop {
            if m == u8::MAX {
                return false;
            }
            let bit = (!m).trailing_zeros() as usize;
            match mask.compare_exchange_weak(m, m | (1 << bit), Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    let Some(e) = entries.get(bit) else {
                        return false;
                    };
                    e.id.store(id, Ordering::Relaxed);
                    e.addr.store(addr, Ordering::Release);
                    return true;
                }
                Err(now) => m = now,
            }
        }
    }

    /// Removes `addr`; its id if it was there.
    pub(crate) fn remove(&self, addr: u64) -> Option<u64> {
        let r = self.region()?;
        let (a, b) = buckets(addr);
        for bucket in [a, b] {
            let (Some(mask), Some(entries)) = (r.masks.get(bucket), r.entries.get(bucket)) else {
                continue;
            };
            let mut m = mask.load(Ordering::Acquire);
            while m != 0 {
                let bit = m.trailing_zeros() as usize;
                m &= m - 1;
                let Some(e) = entries.get(bit) else { break };
                if e.addr.load(Ordering::Acquire) == addr {
                    let id = e.id.load(Ordering::Relaxed);
                    e.addr.store(0, Ordering::Relaxed);
                    mask.fetch_and(!(1 << bit), Ordering::Release);
                    FILTER[filter_slot(addr)].fetch_sub(1, Ordering::Release);
                    return Some(id);
                }
            }
        }
        None
    }

    /// Whether sampled allocation `id` at `addr` is still live (dump thread).
    pub(crate) fn contains(&self, addr: u64, id: u64) -> bool {
        let Some(r) = self.region() else {
            return false;
        };
        let (a, b) = buckets(addr);
        [a, b].into_iter().any(|bucket| {
            let (Some(mask), Some(entries)) = (r.masks.get(bucket), r.entries.get(bucket)) else {
                return false;
            };
            let m = mask.load(Ordering::Acquire);
            entries.iter().enumerate().any(|(bit, e)| {
                m & (1 << bit) != 0
                    && e.addr.load(Ordering::Acquire) == addr
                    && e.id.load(Ordering::Relaxed) == id
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_remove_contains_and_overflow() {
        let t = LiveTable::new();
        assert!(!maybe_contains(0x1000), "nothing inserted: empty");
        assert!(!t.insert(0x1000, 7), "unmapped: refused");
        assert!(
            !maybe_contains(0x1000),
            "a refused insert leaves the filter as it was"
        );
        assert!(t.map());
        assert!(!maybe_contains(0x1000));
        assert!(t.insert(0x1000, 7));
        assert!(maybe_contains(0x1000));
        assert!(t.contains(0x1000, 7));
        assert!(!t.contains(0x1000, 8), "same address, other id");
        assert_eq!(t.remove(0x2000), None);
        assert_eq!(t.remove(0x1000), Some(7));
        assert!(!t.contains(0x1000, 7));
        assert!(
            !maybe_contains(0x1000),
            "the filter counter is back to zero"
        );
        // Both buckets of an address full: it does not fit; once one entry leaves, it does.
        let x = 0x5550u64;
        let (a, b) = buckets(x);
        let r = t.region().expect("mapped");
        for i in 0..16u64 {
            let bucket = if i < 8 { a } else { b };
            assert!(
                LiveTable::insert_into(r, bucket, 0x10_0000 + i * 16, i),
                "entry {i}"
            );
        }
        assert!(!LiveTable::insert_into(r, a, 0x20_0000, 99), "bucket full");
        assert!(!t.insert(x, 99), "both buckets full");
        assert!(!maybe_contains(x), "refused: not in the filter either");
        assert_eq!(t.remove(x), None);
        // Free one entry of the second bucket by hand (those entries are not at their hash).
        r.entries[b][1].addr.store(0, Ordering::Relaxed);
        r.masks[b].fetch_and(!(1 << 1), Ordering::Relaxed);
        assert!(t.insert(x, 99));
        assert!(t.contains(x, 99));
        assert!(maybe_contains(x));
        t.disable();
        assert_eq!(t.remove(x), None, "disabled: nothing is found");
        assert!(!t.contains(x, 99));
    }

    #[test]
    fn a_full_filter_counter_refuses_the_entry() {
        let t = LiveTable::new();
        assert!(t.map());
        // Addresses that share one counter (about one in 32,768 does), away from the
        // counters the other test uses.
        let target = filter_slot(0x7777_0000);
        assert!(target != filter_slot(0x1000) && target != filter_slot(0x5550));
        let same: Vec<u64> = (1u64..)
            .map(|i| 0x7777_0000 + i * 16)
            .filter(|&a| filter_slot(a) == target)
            .take(256)
            .collect();
        for (i, &a) in same.iter().enumerate().take(255) {
            assert!(t.insert(a, i as u64), "entry {i}");
        }
        assert!(
            !t.insert(same[255], 255),
            "the 256th would overflow its counter"
        );
        assert!(!t.contains(same[255], 255));
        for (i, &a) in same.iter().enumerate().take(255) {
            assert_eq!(t.remove(a), Some(i as u64));
        }
        assert!(
            !maybe_contains(same[0]),
            "every entry gone: the counter is zero"
        );
    }
}
