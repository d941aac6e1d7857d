//! `HeapProfiles`: the dump thread's side of heap profiling. Drains the event ring into
//! cumulative per-stack figures, keeps one record per sampled allocation that may still be
//! live, asks the live table which still are, and builds Go-format heap profiles from it.
//!
//! Owns only ordinary memory of the dump thread. Touches the ring (as its one consumer) and
//! the live table (read-only); names tags and label sets through `aggregate::Names` and
//! addresses through `aggregate::Locations`, as the CPU profiles do.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use super::events::{Event, CUT_SHORT, DISCARD, TRUNCATED, UNTRACKED};
use super::sampling::{DUMP_SIDE_BYTES, EVENTS, LIVE, LIVE_RECORDS, UNREGISTERED};
use crate::aggregate::{Locations, Names};
use crate::objects::LoadedObject;
use crate::pprof::{Profile, ProfileBuilder};
use crate::symbolize::Symbolizer;

/// Records kept beyond twice the live count before a check against the table.
const SWEEP_SLACK: usize = 4096;
/// Thread names remembered (by OS thread id); the map is cleared when it grows past this.
const MAX_THREAD_NAMES: usize = 4096;
/// Events the ring holds between drains.
pub(crate) const EVENT_RING_CELLS: u64 = super::events::CELLS;

/// Which figure a reader shows first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HeapDefault {
    /// `inuse_space` (Go's `/debug/pprof/heap`, and the files).
    InUse,
    /// `alloc_space` (Go's `/debug/pprof/allocs`).
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    Alloc,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct HeapKey {
    tag: u32,
    labels: u32,
    /// Interned thread name.
    thread: u32,
    truncated: bool,
    cut_short: bool,
    frames: Box<[u64]>,
}

struct HeapStack {
    key: HeapKey,
    /// Unbiased estimates: each sample of `s` bytes counts `1/p(s)` allocations.
    alloc_objects: f64,
    alloc_bytes: f64,
}

/// A sampled allocation that was live at its last check.
struct LiveRecord {
    id: u64,
    addr: u64,
    size: u64,
    stack: u32,
}

/// See the module doc.
pub(crate) struct HeapProfiles {
    interval: u64,
    started: SystemTime,
    stack_ids: HashMap<HeapKey, u32>,
    stacks: Vec<HeapStack>,
    live: Vec<LiveRecord>,
    live_at_sweep: usize,
    thread_ids: HashMap<i32, u32>,
    thread_names: Vec<String>,
    thread_name_ids: HashMap<String, u32>,
    /// Per address: what it is at the leaf end of a stack.
    leaf_kinds: HashMap<u64, LeafKind>,
    warned_dropped: bool,
    warned_untracked: bool,
}

/// `1/p(s)`: how many allocations of `size` bytes one sample stands for.
fn weight(size: u64, interval: u64) -> f64 {
    let p = -(-(size as f64) / interval as f64).exp_m1();
    if p > 0.0 {
        1.0 / p
    } else {
        1.0
    }
}

/// Whether a function is this wrapper's own (its allocation path and sampling code).
fn is_ours(name: &str) -> bool {
    name.trim_start_matches('<')
        .starts_with("threadprof_runtime::heap::")
}

/// Whether a function belongs to the allocation machinery, whose frames at the leaf end of a
/// heap sample are hidden (as Go hides `runtime.*`): this wrapper, the allocator shims, and the
/// `alloc`, `core` and `hashbrown` crates and `std::collections`, so that the first frame
/// shown is the code that asked for the memory.
fn is_machinery(name: &str) -> bool {
    let name = name.trim_start_matches('<');
    [
        "threadprof_runtime::heap::",
        "__rust_",
        "__rustc::",
        "__rg_",
        "__rdl_",
        "alloc::",
        "core::",
        "hashbrown::",
        "std::collections::",
        "std::alloc::",
    ]
    .iter()
    .any(|p| name.starts_with(p))
}

/// What the leaf end of a stack holds, per address.
#[derive(Clone, Copy, PartialEq, Eq)]
enum LeafKind {
    /// Some frame of the wrapper's own code (inlined frames included).
    Ours,
    /// Only allocation machinery.
    Machinery,
    /// Code that asked for memory.
    Caller,
}

impl HeapProfiles {
    pub(crate) fn new(interval: u64, started: SystemTime) -> HeapProfiles {
        HeapProfiles {
            interval,
            started,
            stack_ids: HashMap::new(),
            stacks: Vec::new(),
            live: Vec::new(),
            live_at_sweep: 0,
            thread_ids: HashMap::new(),
            thread_names: Vec::new(),
            thread_name_ids: HashMap::new(),
            leaf_kinds: HashMap::new(),
            warned_dropped: false,
            warned_untracked: false,
        }
    }

    /// Moves the published events out of the ring; `thread_name` names a thread id the first
    /// time it is seen. Checks the records against the table when they have doubled. Returns
    /// how many events the ring held.
    pub(crate) fn drain(&mut self, thread_name: &dyn Fn(i32) -> String) -> usize {
        let mut events: Vec<(u64, HeapKey, u64, u64, u32, i32)> = Vec::new();
        let drained = EVENTS.drain(|id, ev: &Event| {
            if ev.flags & DISCARD != 0 {
                return;
            }
            let len = (ev.len as usize).min(ev.frames.len());
            let key = HeapKey {
                tag: ev.tag,
                labels: ev.labels,
                thread: 0,
                truncated: ev.flags & TRUNCATED != 0,
                cut_short: ev.flags & CUT_SHORT != 0,
                frames: ev.frames.get(..len).unwrap_or_default().into(),
            };
            events.push((id, key, ev.addr, ev.size, ev.flags, ev.tid));
        });
        // Threads are named outside the consumer loop (naming one may read /proc).
        for (id, mut key, addr, size, flags, tid) in events {
            key.thread = self.thread(tid, thread_name);
            let w = weight(size, self.interval);
            let stack = match self.stack_ids.get(&key) {
                Some(&s) => s,
                None => {
                    let s = self.stacks.len() as u32;
                    self.stack_ids.insert(key.clone(), s);
                    self.stacks.push(HeapStack {
                        key,
                        alloc_objects: 0.0,
                        alloc_bytes: 0.0,
                    });
                    s
                }
            };
            if let Some(st) = self.stacks.get_mut(stack as usize) {
                st.alloc_objects += w;
                st.alloc_bytes += w * size as f64;
            }
            if flags & UNTRACKED == 0 {
                self.live.push(LiveRecord {
                    id,
                    addr,
                    size,
                    stack,
                });
            }
        }
        if self.live.len() > 2 * self.live_at_sweep + SWEEP_SLACK {
            self.sweep();
        }
        self.publish();
        drained
    }

    fn thread(&mut self, tid: i32, thread_name: &dyn Fn(i32) -> String) -> u32 {
        if let Some(&id) = self.thread_ids.get(&tid) {
            return id;
        }
        if self.thread_ids.len() >= MAX_THREAD_NAMES {
            self.thread_ids.clear();
        }
        let name = thread_name(tid);
        let id = match self.thread_name_ids.get(&name) {
            Some(&id) => id,
            None => {
                let id = self.thread_names.len() as u32;
                self.thread_names.push(name.clone());
                self.thread_name_ids.insert(name, id);
                id
            }
        };
        self.thread_ids.insert(tid, id);
        id
    }

    /// Drops the records of sampled allocations that were freed since.
    fn sweep(&mut self) {
        self.live.retain(|r| LIVE.contains(r.addr, r.id));
        self.live_at_sweep = self.live.len();
        self.publish();
    }

    fn publish(&self) {
        LIVE_RECORDS.store(self.live.len(), Ordering::Relaxed);
        let per_stack = std::mem::size_of::<HeapStack>() + std::mem::size_of::<HeapKey>() + 8;
        let frames: usize = self.stacks.iter().map(|s| s.key.frames.len() * 8).sum();
        let bytes = self.live.capacity() * std::mem::size_of::<LiveRecord>()
            + self.stacks.len() * per_stack
            + frames;
        DUMP_SIDE_BYTES.store(bytes, Ordering::Relaxed);
    }

    /// Warnings to log about samples lost since the last call, once each per process.
    pub(crate) fn warnings(&mut self) -> Vec<(&'static str, String)> {
        let counts = super::counts();
        let mut out = Vec::new();
        if counts.dropped > 0 && !self.warned_dropped {
            self.warned_dropped = true;
            out.push((
                "heap-dropped",
                format!(
                    "{} sampled allocations were dropped because the heap event ring was full \
                     between drains (or every unwind cache was busy); raise \
                     THREADPROF_HEAP_INTERVAL to sample less often",
                    counts.dropped
                ),
            ));
        }
        if counts.untracked > 0 && !self.warned_untracked {
            self.warned_untracked = true;
            out.push((
                "heap-untracked",
                format!(
                    "the heap live table is full ({} live sampled allocations at most); {} \
                     sampled allocations count in alloc_* but not in inuse_*; raise \
                     THREADPROF_HEAP_INTERVAL to sample less often",
                    super::live::CAPACITY,
                    counts.untracked
                ),
            ));
        }
        out
    }

    /// Tag ids with heap samples.
    pub(crate) fn tags_with_samples(&self) -> Vec<u32> {
        let mut tags: Vec<u32> = self.stacks.iter().map(|s| s.key.tag).collect();
        tags.sort_unstable();
        tags.dedup();
        tags
    }

    /// Every frame address of every stack.
    pub(crate) fn addresses(&self) -> impl Iterator<Item = u64> + '_ {
        self.stacks
            .iter()
            .flat_map(|s| s.key.frames.iter().copied())
    }

    /// What `addr` is at the leaf end of a stack.
    fn leaf_kind(
        &mut self,
        addr: u64,
        symbols: &mut Symbolizer,
        objects: &[LoadedObject],
    ) -> LeafKind {
        if let Some(&k) = self.leaf_kinds.get(&addr) {
            return k;
        }
        let frames = symbols.resolve(addr, objects);
        let k = if frames.iter().any(|f| is_ours(&f.name)) {
            LeafKind::Ours
        } else if !frames.is_empty() && frames.iter().all(|f| is_machinery(&f.name)) {
            LeafKind::Machinery
        } else {
            LeafKind::Caller
        };
        self.leaf_kinds.insert(addr, k);
        k
    }

    /// How many leaf-end frames of `frames` to hide: through the last of the wrapper's own,
    /// then the allocation machinery after it; never all of them.
    fn hidden_frames(
        &mut self,
        frames: &[u64],
        symbols: &mut Symbolizer,
        objects: &[LoadedObject],
    ) -> usize {
        let kinds: Vec<LeafKind> = frames
            .iter()
            .map(|&a| self.leaf_kind(a, symbols, objects))
            .collect();
        let ours = kinds
            .iter()
            .rposition(|&k| k == LeafKind::Ours)
            .map_or(0, |i| i + 1);
        let machinery = kinds
            .iter()
            .skip(ours)
            .take_while(|&&k| k != LeafKind::Caller)
            .count();
        (ours + machinery).min(frames.len().saturating_sub(1))
    }

    /// The heap profile of tag `only` (its id, with `untagged` for unregistered threads), or of
    /// every tag. Checks first which sampled allocations are still live.
    pub(crate) fn build_profile(
        &mut self,
        only: Option<u32>,
        default: HeapDefault,
        untagged: u32,
        names: &dyn Names,
        symbols: &mut Symbolizer,
        objects: &[LoadedObject],
    ) -> Profile {
        self.sweep();
        let tag_of = |t: u32| if t == UNREGISTERED { untagged } else { t };
        let mut inuse = vec![(0.0f64, 0.0f64); self.stacks.len()];
        for r in &self.live {
            if let Some(v) = inuse.get_mut(r.stack as usize) {
                let w = weight(r.size, self.interval);
                v.0 += w;
                v.1 += w * r.size as f64;
            }
        }
        let types = [
            ("alloc_objects", "count"),
            ("alloc_space", "bytes"),
            ("inuse_objects", "count"),
            ("inuse_space", "bytes"),
        ];
        let default_index = match default {
            HeapDefault::InUse => 3,
            HeapDefault::Alloc => 1,
        };
        let mut b = ProfileBuilder::new(&types, default_index);
        b.period("space", "bytes", self.interval as i64);
        crate::aggregate::stamp_time(&mut b, self.started);
        let wanted: Vec<usize> = (0..self.stacks.len())
            .filter(|&i| {
                self.stacks
                    .get(i)
                    .is_some_and(|s| only.is_none_or(|o| o == tag_of(s.key.tag)))
            })
            .collect();
        symbols.prepare(
            wanted
                .iter()
                .filter_map(|&i| self.stacks.get(i))
                .flat_map(|s| s.key.frames.iter().copied()),
            objects,
        );
        let mut places = Locations::new(&mut b, objects);
        let mut label_sets: HashMap<u32, Vec<(String, String)>> = HashMap::new();
        let mut tag_names: HashMap<u32, String> = HashMap::new();
        for i in wanted {
            let Some(frames) = self.stacks.get(i).map(|s| s.key.frames.clone()) else {
                continue;
            };
            // Hide the allocation machinery at the leaf end (all of it if nothing else).
            let skip = self.hidden_frames(&frames, symbols, objects);
            let Some(s) = self.stacks.get(i) else {
                continue;
            };
            let mut locations: Vec<u64> = frames
                .iter()
                .skip(skip)
                .map(|&addr| places.location_hiding(&mut b, symbols, addr, &is_machinery))
                .collect();
            Locations::push_markers(&mut b, s.key.truncated, s.key.cut_short, &mut locations);
            let tag = tag_of(s.key.tag);
            let tag_name = tag_names.entry(tag).or_insert_with(|| names.tag(tag));
            let mut labels = vec![b.str_label("tag", tag_name)];
            if let Some(t) = self.thread_names.get(s.key.thread as usize) {
                labels.push(b.str_label("thread_name", t));
            }
            if s.key.labels != 0 {
                let set = label_sets.entry(s.key.labels).or_insert_with(|| {
                    names
                        .labels(s.key.labels)
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect()
                });
                for (k, v) in set.iter() {
                    labels.push(b.str_label(k, v));
                }
            }
            let (inuse_objects, inuse_bytes) = inuse.get(i).copied().unwrap_or_default();
            let values = vec![
                s.alloc_objects.round() as i64,
                s.alloc_bytes.round() as i64,
                inuse_objects.round() as i64,
                inuse_bytes.round() as i64,
            ];
            b.add_sample(locations, values, labels);
        }
        b.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_unbias_counts_and_bytes() {
        // Large allocations are always sampled: weight 1.
        assert!((weight(64 << 20, 512 << 10) - 1.0).abs() < 1e-9);
        // Small ones stand for about interval/size allocations.
        let w = weight(16, 512 << 10);
        assert!((w * 16.0 / (512.0 * 1024.0) - 1.0).abs() < 1e-3, "{w}");
        // Interval 1 byte: everything is sampled.
        assert!((weight(16, 1) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn allocation_machinery_is_recognised() {
        for name in [
            "<threadprof_runtime::heap::Allocator<A> as core::alloc::global::GlobalAlloc>::alloc",
            "__rust_alloc",
            "__rustc::__rust_alloc",
            "alloc::raw_vec::finish_grow",
            "<alloc::raw_vec::RawVecInner<A>>::grow_amortized",
            "hashbrown::raw::RawTableInner::fallible_with_capacity",
        ] {
            assert!(is_machinery(name), "{name}");
        }
        for name in ["leaky_service::grow_cache", "std::io::read_to_end", "main"] {
            assert!(!is_machinery(name), "{name}");
        }
    }
}
