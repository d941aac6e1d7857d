//! `LiveTable`: the addresses of sampled allocations that are still live, so that a free can
//! tell in one or two loads whether the block it frees was sampled.
//!
//! Owns one anonymous mapping (made once, at start, never freed): 32,768 buckets of 8 entries
//! (`addr`, `id`) and one byte per bucket whose bits say which entries are in use. An address
//! hashes to two buckets (two-choice hashing: it goes into the emptier one), so a bucket
//! overflows only when both of an address's buckets are full, which stays rare until the table
//! is most of the way to its 262,144 entries. A full pair of buckets makes the sample
//! *untracked*: it counts in `alloc_*`, not in `inuse_*` (counted in `Stats::heap_untracked`).
//!
//! - Free of an unsampled block (the hot path): [`LiveTable::maybe_contains`] loads the two
//!   occupancy bytes (a 32 KiB array, relaxed loads); both zero means "not sampled".
//! - Insert (a sampled allocation, before its pointer is returned): claim a free bit with a
//!   compare-and-swap on the occupancy byte, then write the entry. Lock-free.
//! - Remove (free of a block whose bucket has entries): compare the bucket's occupied entries
//!   with the address; on a match, clear the entry, then its bit. Only the owner of a block
//!   frees it, so two removes of one address never race, and the insert of an address
//!   happened before any free of it (the pointer was published after the insert).
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

    /// Whether `addr` may be in the table: false means it is not (the hot path of every free).
    #[inline(always)]
    pub(crate) fn maybe_contains(&self, addr: u64) -> bool {
        let Some(r) = self.region() else {
            return false;
        };
        let (a, b) = buckets(addr);
        let load = |i: usize| r.masks.get(i).map_or(0, |m| m.load(Ordering::Relaxed));
        load(a) | load(b) != 0
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
        Self::insert_into(r, first, addr, id) || Self::insert_into(r, second, addr, id)
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
        assert!(!t.maybe_contains(0x1000), "unmapped: empty");
        assert!(t.map());
        assert!(!t.maybe_contains(0x1000));
        assert!(t.insert(0x1000, 7));
        assert!(t.maybe_contains(0x1000));
        assert!(t.contains(0x1000, 7));
        assert!(!t.contains(0x1000, 8), "same address, other id");
        assert_eq!(t.remove(0x2000), None);
        assert_eq!(t.remove(0x1000), Some(7));
        assert!(!t.contains(0x1000, 7));
        assert!(!t.maybe_contains(0x1000));
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
        assert!(t.maybe_contains(x), "occupied buckets: looked up");
        assert_eq!(t.remove(x), None);
        // Free one entry of the second bucket by hand (those entries are not at their hash).
        r.entries[b][1].addr.store(0, Ordering::Relaxed);
        r.masks[b].fetch_and(!(1 << 1), Ordering::Relaxed);
        assert!(t.insert(x, 99));
        assert!(t.contains(x, 99));
        t.disable();
        assert!(!t.maybe_contains(x));
    }
}
