//! Interned label sets: the `key = value` pairs that `with_labels`, `labeled`,
//! `#[profiled(labels(..))]` and the tracing layer attach to samples.
//!
//! Owns the strings. A set is immutable and named by a `u32` id; the thread's slot holds the id
//! in force and the signal handler copies only that id into a record, as Go's profiler copies
//! a goroutine's label pointer. Interning and merging (a nested set over the one in force,
//! inner value winning per key) happen on the calling thread, never in the handler; the dump
//! side turns ids back into strings. It touches nothing else.
//!
//! Memory is bounded: at most `max` distinct sets (`THREADPROF_MAX_LABEL_SETS`). A new set past
//! that is the overflow set, `labels=overflow`, with one warning. The per-thread caches that
//! make entering a known set cheap are bounded too.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rustc_hash::{FxHashMap, FxHasher};

use crate::diagnostics::warn;

/// One interned set: pairs sorted by key, keys unique.
pub(crate) type LabelSet = Arc<[(Arc<str>, Arc<str>)]>;

/// The empty set: no labels.
pub(crate) const EMPTY: u32 = 0;
/// The set samples carry once the bound is reached: `labels=overflow`.
pub(crate) const OVERFLOW: u32 = 1;

/// Label keys the profiler writes itself; a user label with one of them is dropped (warned).
pub const RESERVED_KEYS: &[&str] = &["tag", "thread_name", "thread_id", "state", "span_id"];

/// Longest key and value kept, in bytes (longer ones are cut at a character boundary).
pub const MAX_KEY_LEN: usize = 64;
/// See [`MAX_KEY_LEN`].
pub const MAX_VALUE_LEN: usize = 256;

/// A copy of the pairs passed to [`LabelSets::intern`], to compare a later call with.
type PairsCopy = Box<[(Box<str>, Box<str>)]>;

/// Entries kept per thread in each cache before it is cleared.
const THREAD_CACHE: usize = 256;

struct Inner {
    sets: Vec<LabelSet>,
    index: HashMap<LabelSet, u32>,
    /// `(outer, inner)` → merged id.
    merges: FxHashMap<(u32, u32), u32>,
    overflowed: bool,
    /// Dropped keys already warned about (at most the reserved ones and "").
    warned_keys: Vec<String>,
}

/// Every label set in use, by id.
pub(crate) struct LabelSets {
    inner: Mutex<Inner>,
    max: usize,
    /// Unique per instance: the thread caches hold ids of one instance (the runtime's; tests
    /// make several).
    instance: u64,
}

static INSTANCES: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The instance whose ids the caches below hold.
    static CACHE_OWNER: Cell<u64> = const { Cell::new(0) };
    /// Pairs as passed (hash of the slice) → (a copy to compare, set id).
    static PAIRS_CACHE: RefCell<FxHashMap<u64, (PairsCopy, u32)>> =
        RefCell::new(FxHashMap::default());
    /// `(outer, inner)` → merged id.
    static MERGE_CACHE: RefCell<FxHashMap<(u32, u32), u32>> = RefCell::new(FxHashMap::default());
}

fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn pairs_hash(pairs: &[(&str, &str)]) -> u64 {
    let mut h = FxHasher::default();
    pairs.len().hash(&mut h);
    for (k, v) in pairs {
        k.hash(&mut h);
        v.hash(&mut h);
    }
    h.finish()
}

impl LabelSets {
    pub(crate) fn new(max: usize) -> LabelSets {
        let empty: LabelSet = Arc::from(Vec::new());
        let overflow: LabelSet = Arc::from(vec![(Arc::from("labels"), Arc::from("overflow"))]);
        let mut index = HashMap::new();
        index.insert(empty.clone(), EMPTY);
        index.insert(overflow.clone(), OVERFLOW);
        LabelSets {
            inner: Mutex::new(Inner {
                sets: vec![empty, overflow],
                index,
                merges: FxHashMap::default(),
                overflowed: false,
                warned_keys: Vec::new(),
            }),
            max,
            instance: INSTANCES.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Empties this thread's caches if they hold another instance's ids.
    fn own_caches(&self) {
        let _ = CACHE_OWNER.try_with(|owner| {
            if owner.get() != self.instance {
                owner.set(self.instance);
                let _ = PAIRS_CACHE.try_with(|c| c.borrow_mut().clear());
                let _ = MERGE_CACHE.try_with(|c| c.borrow_mut().clear());
            }
        });
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The pairs of set `id` (empty for an unknown id).
    pub(crate) fn get(&self, id: u32) -> LabelSet {
        let inner = self.lock();
        inner
            .sets
            .get(id as usize)
            .unwrap_or(&inner.sets[EMPTY as usize])
            .clone()
    }

    /// Distinct sets interned, the empty and overflow sets excluded.
    pub(crate) fn len(&self) -> usize {
        self.lock().sets.len() - 2
    }

    /// The id of the set made of `pairs` (a later pair wins over an earlier one with the same
    /// key). Keys the profiler writes itself, and empty keys, are dropped with a warning.
    pub(crate) fn intern(&self, pairs: &[(&str, &str)]) -> u32 {
        if pairs.is_empty() {
            return EMPTY;
        }
        self.own_caches();
        let hash = pairs_hash(pairs);
        let cached = PAIRS_CACHE.try_with(|c| {
            let c = c.borrow();
            let (copy, id) = c.get(&hash)?;
            let same = copy.len() == pairs.len()
                && copy
                    .iter()
                    .zip(pairs)
                    .all(|((ck, cv), (k, v))| **ck == **k && **cv == **v);
            same.then_some(*id)
        });
        if let Ok(Some(id)) = cached {
            return id;
        }
        let id = self.intern_slow(pairs);
        if pairs.len() > 16
            || pairs
                .iter()
                .any(|(k, v)| k.len() > MAX_KEY_LEN || v.len() > MAX_VALUE_LEN)
        {
            return id; // not cached: the cache keeps its copies small
        }
        let _ = PAIRS_CACHE.try_with(|c| {
            let mut c = c.borrow_mut();
            if c.len() >= THREAD_CACHE {
                c.clear();
            }
            let copy = pairs
                .iter()
                .map(|(k, v)| (Box::from(*k), Box::from(*v)))
                .collect();
            c.insert(hash, (copy, id));
        });
        id
    }

    fn intern_slow(&self, pairs: &[(&str, &str)]) -> u32 {
        let mut set: Vec<(Arc<str>, Arc<str>)> = Vec::with_capacity(pairs.len());
        let mut dropped: Vec<&str> = Vec::new();
        for (k, v) in pairs {
            if k.is_empty() || RESERVED_KEYS.contains(k) {
                dropped.push(k);
                continue;
            }
            let (k, v) = (cut(k, MAX_KEY_LEN), cut(v, MAX_VALUE_LEN));
            match set.iter_mut().find(|(sk, _)| **sk == *k) {
                Some(pair) => pair.1 = Arc::from(v),
                None => set.push((Arc::from(k), Arc::from(v))),
            }
        }
        set.sort_by(|a, b| a.0.cmp(&b.0));
        let (id, overflowed, newly_dropped) = {
            let mut inner = self.lock();
            let newly_dropped: Vec<String> = dropped
                .into_iter()
                .filter(|k| !inner.warned_keys.iter().any(|w| w == k))
                .map(str::to_owned)
                .collect();
            inner.warned_keys.extend(newly_dropped.iter().cloned());
            let (id, overflowed) = self.insert(&mut inner, set);
            (id, overflowed, newly_dropped)
        };
        // Logged with no lock held: a logger may itself enter labels or tags.
        for k in newly_dropped {
            warn(
                &format!("label-key:{k}"),
                &format!(
                    "label key {k:?} is {}; the label is dropped (reserved keys: {})",
                    if k.is_empty() {
                        "empty"
                    } else {
                        "written by the profiler itself"
                    },
                    RESERVED_KEYS.join(", ")
                ),
            );
        }
        if overflowed {
            self.warn_overflow();
        }
        id
    }

    fn warn_overflow(&self) {
        warn(
            "label-sets-overflow",
            &format!(
                "more than {} distinct label sets (THREADPROF_MAX_LABEL_SETS); samples of new \
                 sets carry labels=overflow. Labels with unbounded values (request ids, user \
                 ids) belong in logs or traces, not in profiles",
                self.max
            ),
        );
    }

    /// The id of `set`, interning it if there is room; and whether this call reached the bound
    /// first (the caller warns, once the lock is released).
    fn insert(&self, inner: &mut Inner, set: Vec<(Arc<str>, Arc<str>)>) -> (u32, bool) {
        if set.is_empty() {
            return (EMPTY, false);
        }
        let set: LabelSet = Arc::from(set);
        if let Some(&id) = inner.index.get(&set) {
            return (id, false);
        }
        if inner.sets.len() - 2 >= self.max {
            let first = !inner.overflowed;
            inner.overflowed = true;
            return (OVERFLOW, first);
        }
        let id = inner.sets.len() as u32;
        inner.sets.push(set.clone());
        inner.index.insert(set, id);
        (id, false)
    }

    /// The set in force when `inner` is entered while `outer` is: the union, `inner`'s value
    /// winning per key. Overflow in either gives overflow.
    #[inline]
    pub(crate) fn merge(&self, outer: u32, inner: u32) -> u32 {
        if outer == EMPTY || outer == inner {
            return inner;
        }
        if inner == EMPTY {
            return outer;
        }
        self.merge_both(outer, inner)
    }

    #[inline(never)]
    fn merge_both(&self, outer: u32, inner: u32) -> u32 {
        if outer == OVERFLOW || inner == OVERFLOW {
            return OVERFLOW;
        }
        self.own_caches();
        let key = (outer, inner);
        if let Ok(Some(id)) = MERGE_CACHE.try_with(|c| c.borrow().get(&key).copied()) {
            return id;
        }
        let id = self.merge_slow(outer, inner);
        let _ = MERGE_CACHE.try_with(|c| {
            let mut c = c.borrow_mut();
            if c.len() >= THREAD_CACHE {
                c.clear();
            }
            c.insert(key, id);
        });
        id
    }

    fn merge_slow(&self, outer: u32, inner_id: u32) -> u32 {
        let (id, overflowed) = {
            let mut inner = self.lock();
            if let Some(&id) = inner.merges.get(&(outer, inner_id)) {
                return id;
            }
            let (Some(a), Some(b)) = (
                inner.sets.get(outer as usize).cloned(),
                inner.sets.get(inner_id as usize).cloned(),
            ) else {
                return inner_id;
            };
            let mut set: Vec<(Arc<str>, Arc<str>)> = a
                .iter()
                .filter(|(k, _)| !b.iter().any(|(bk, _)| bk == k))
                .cloned()
                .collect();
            set.extend(b.iter().cloned());
            set.sort_by(|x, y| x.0.cmp(&y.0));
            let (id, overflowed) = self.insert(&mut inner, set);
            // Bounded like the sets: a few entries per set.
            if inner.merges.len() >= 4 * self.max.clamp(THREAD_CACHE, 1 << 16) {
                inner.merges.clear();
            }
            inner.merges.insert((outer, inner_id), id);
            (id, overflowed)
        };
        if overflowed {
            self.warn_overflow();
        }
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(sets: &LabelSets, id: u32) -> Vec<(String, String)> {
        sets.get(id)
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn own(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn same_pairs_same_id_in_any_order() {
        let sets = LabelSets::new(16);
        let a = sets.intern(&[("route", "/a"), ("method", "GET")]);
        let b = sets.intern(&[("method", "GET"), ("route", "/a")]);
        assert_eq!(a, b);
        assert_ne!(a, sets.intern(&[("route", "/b")]));
        assert_eq!(pairs(&sets, a), own(&[("method", "GET"), ("route", "/a")]));
        assert_eq!(sets.intern(&[]), EMPTY);
        // A later pair wins within one call.
        let c = sets.intern(&[("k", "1"), ("k", "2")]);
        assert_eq!(pairs(&sets, c), own(&[("k", "2")]));
    }

    #[test]
    fn merge_inner_wins_and_is_cached() {
        let sets = LabelSets::new(16);
        let outer = sets.intern(&[("route", "/a"), ("user", "x")]);
        let inner = sets.intern(&[("route", "/b"), ("step", "parse")]);
        let m = sets.merge(outer, inner);
        assert_eq!(
            pairs(&sets, m),
            own(&[("route", "/b"), ("step", "parse"), ("user", "x")])
        );
        assert_eq!(sets.merge(outer, inner), m);
        assert_eq!(sets.merge(EMPTY, inner), inner);
        assert_eq!(sets.merge(outer, EMPTY), outer);
        assert_eq!(sets.merge(OVERFLOW, inner), OVERFLOW);
    }

    #[test]
    fn reserved_and_empty_keys_are_dropped_and_long_strings_cut() {
        let sets = LabelSets::new(16);
        let long = "é".repeat(400);
        let id = sets.intern(&[("tag", "x"), ("", "y"), ("ok", &long)]);
        let got = pairs(&sets, id);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "ok");
        assert!(got[0].1.len() <= MAX_VALUE_LEN && got[0].1.len() >= MAX_VALUE_LEN - 1);
        assert_eq!(sets.intern(&[("thread_id", "1")]), EMPTY);
    }

    #[test]
    fn the_bound_holds_and_overflow_is_one_set() {
        let sets = LabelSets::new(8);
        let ids: Vec<u32> = (0..100)
            .map(|i| sets.intern(&[("request", &i.to_string())]))
            .collect();
        assert_eq!(sets.len(), 8);
        assert!(ids[..8].iter().all(|&id| id > OVERFLOW));
        assert!(ids[8..].iter().all(|&id| id == OVERFLOW));
        assert_eq!(pairs(&sets, OVERFLOW), own(&[("labels", "overflow")]));
        // Known sets still resolve after the bound.
        assert_eq!(sets.intern(&[("request", "3")]), ids[3]);
    }
}
