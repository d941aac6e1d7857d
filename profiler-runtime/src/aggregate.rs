//! Cumulative per-tag profiles, fed by draining the threads' rings that have something new,
//! and their pprof form.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use crate::buffer::SampleKind;
use crate::labels::LabelSet;
use crate::objects::LoadedObject;
use crate::pprof::{Mapping, Profile, ProfileBuilder};
use crate::registry::ThreadRecord;
use crate::symbolize::Symbolizer;

#[derive(Clone, PartialEq, Eq, Hash)]
struct StackKey {
    thread: u64,
    kind: SampleKind,
    /// Label-set id in force.
    labels: u32,
    /// Local root span id (0 = none; always 0 in the cumulative profiles, see `drain`).
    span: u64,
    truncated: bool,
    cut_short: bool,
    frames: Box<[u64]>,
}

#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
struct Counts {
    samples: u64,
    cpu_ns: u64,
    wall_ns: u64,
}

#[derive(Default)]
struct TagProfile {
    stacks: HashMap<StackKey, Counts>,
    dropped: u64,
}

struct ThreadMeta {
    tid: i64,
    name: String,
    dropped_seen: u64,
    /// Tag and key of the thread's last wall record: what its credited periods repeat.
    last_wall: Option<(u32, StackKey)>,
}

/// Sampling parameters that turn timer expiries into time.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Periods {
    pub cpu_ns: u64,
    /// 0 when wall sampling is off.
    pub wall_ns: u64,
}

/// All samples since start, per tag id.
pub(crate) struct Aggregator {
    periods: Periods,
    tags: BTreeMap<u32, TagProfile>,
    threads: HashMap<u64, ThreadMeta>,
    scratch: Vec<u64>,
    started: SystemTime,
    /// Whether samples keep their span id. Span ids are unbounded, so only HTTP windows (short
    /// lived) keep them; the cumulative profiles fold them away.
    keep_spans: bool,
}

/// Which samples and value columns a profile holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum View {
    /// Every sample, as in the dump files: `samples/count`, `cpu/nanoseconds`, and
    /// `wall/nanoseconds` when wall sampling is on.
    All,
    /// CPU samples only, with `samples/count` and `cpu/nanoseconds` (Go's CPU profile), so a
    /// scraper's CPU profile is not inflated by wall periods.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    Cpu,
    /// Wall samples only, with `samples/count` and `wall/nanoseconds` and their `state` labels.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    Wall,
}

impl View {
    /// Whether a sample of `kind` belongs in this view.
    fn keeps(self, kind: SampleKind) -> bool {
        match self {
            View::All => true,
            View::Cpu => kind == SampleKind::Cpu,
            View::Wall => kind != SampleKind::Cpu,
        }
    }
}

/// Turns the ids in samples back into names.
pub(crate) trait Names {
    /// The name of tag `id`.
    fn tag(&self, id: u32) -> String;
    /// The pairs of label set `id`.
    fn labels(&self, id: u32) -> LabelSet;
}

/// Samples taken during one HTTP profile request, limited to one tag or not.
pub(crate) struct Window {
    pub aggregator: Aggregator,
    pub tag: Option<u32>,
}

/// What one drain found.
#[derive(Default, Debug)]
pub(crate) struct DrainStats {
    pub records: usize,
    pub newly_dropped: u64,
    /// Wall periods credited to blocked threads (repeat records and credits taken).
    pub credited: u64,
}

impl Aggregator {
    pub(crate) fn new(periods: Periods, started: SystemTime) -> Aggregator {
        Aggregator {
            periods,
            tags: BTreeMap::new(),
            threads: HashMap::new(),
            scratch: Vec::new(),
            started,
            keep_spans: false,
        }
    }

    /// An aggregator whose samples keep their span ids (an HTTP window's).
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn keeping_spans(mut self) -> Aggregator {
        self.keep_spans = true;
        self
    }

    /// Moves every complete record out of the threads' rings into these profiles and into
    /// every window in `windows` (HTTP profile requests in flight) whose tag matches; then takes
    /// the wall periods credited to threads still blocked where their last record was taken.
    pub(crate) fn drain(
        &mut self,
        threads: &[ThreadRecord],
        windows: &mut [&mut Window],
    ) -> DrainStats {
        let mut stats = DrainStats::default();
        let mut batch: Vec<(u32, StackKey, u64)> = Vec::new();
        let keep_spans = self.keep_spans;
        for t in threads {
            batch.clear();
            // Taken before anything is read: a record or credit marked after this is seen by
            // this drain or flags the ring again for the next one.
            t.slot.buffer.take_pending();
            // Read before the ring: credits of this epoch repeat the last record drained below
            // (`IdleCredit::take` refuses them if a handler ran in between).
            let credit = t.slot.idle.load();
            let mut last_wall = self.threads.get_mut(&t.id).and_then(|m| m.last_wall.take());
            let mut credited = 0;
            stats.records += t.slot.buffer.drain(&mut self.scratch, |r| {
                if r.repeat {
                    if let Some((tag, key)) = &last_wall {
                        batch.push((*tag, key.clone(), r.wall));
                    }
                    credited += r.wall;
                    return;
                }
                let key = |kind| StackKey {
                    thread: t.id,
                    kind,
                    labels: r.context.labels,
                    span: r.context.span,
                    truncated: r.truncated,
                    cut_short: r.cut_short,
                    frames: r.frames.into(),
                };
                let tag = r.context.tag;
                if r.cpu > 0 {
                    batch.push((tag, key(SampleKind::Cpu), r.cpu));
                }
                if r.wall > 0 {
                    let k = key(r.wall_kind);
                    batch.push((tag, k.clone(), r.wall));
                    last_wall = Some((tag, k));
                }
            });
            let taken = t.slot.idle.take(credit);
            if taken > 0 {
                if let Some((tag, key)) = &last_wall {
                    batch.push((*tag, key.clone(), taken));
                }
                credited += taken;
            }
            stats.credited += credited;
            let dropped = t.slot.buffer.dropped();
            let seen = self.threads.get(&t.id).map_or(0, |m| m.dropped_seen);
            // A thread that never had a sample leaves no trace here, so short-lived threads
            // cost no memory once they are gone. (A last wall stack implies a sample.)
            if !batch.is_empty() || dropped > seen {
                let meta = self.note_thread(t);
                meta.dropped_seen = dropped;
            }
            if let Some(meta) = self.threads.get_mut(&t.id) {
                meta.last_wall = last_wall;
            }
            if dropped > seen {
                let delta = dropped - seen;
                stats.newly_dropped += delta;
                self.tags.entry(t.slot.tag()).or_default().dropped += delta;
            }
            for w in windows.iter_mut() {
                let only = w.tag;
                let mut matching = batch
                    .iter()
                    .filter(|(tag, ..)| only.is_none_or(|o| o == *tag))
                    .peekable();
                if matching.peek().is_some() {
                    w.aggregator.note_thread(t);
                }
                for (tag, key, weight) in matching {
                    w.aggregator.add(*tag, key.clone(), *weight);
                }
            }
            for (tag, mut key, weight) in batch.drain(..) {
                if !keep_spans {
                    key.span = 0;
                }
                self.add(tag, key, weight);
            }
        }
        stats
    }

    /// Forgets what ended threads' credits would repeat (after their final drain).
    pub(crate) fn forget_wall_stacks(&mut self, ended: &[ThreadRecord]) {
        for t in ended {
            if let Some(m) = self.threads.get_mut(&t.id) {
                m.last_wall = None;
            }
        }
    }

    fn note_thread(&mut self, t: &ThreadRecord) -> &mut ThreadMeta {
        self.threads.entry(t.id).or_insert_with(|| ThreadMeta {
            tid: t.tid,
            name: t.name.clone(),
            dropped_seen: 0,
            last_wall: None,
        })
    }

    fn add(&mut self, tag: u32, key: StackKey, weight: u64) {
        let kind = key.kind;
        let c = self
            .tags
            .entry(tag)
            .or_default()
            .stacks
            .entry(key)
            .or_default();
        c.samples += weight;
        match kind {
            SampleKind::Cpu => c.cpu_ns += weight * self.periods.cpu_ns,
            _ => c.wall_ns += weight * self.periods.wall_ns,
        }
    }

    /// Every frame address in these profiles (with repeats).
    pub(crate) fn addresses(&self) -> impl Iterator<Item = u64> + '_ {
        self.tags
            .values()
            .flat_map(|p| p.stacks.keys())
            .flat_map(|key| key.frames.iter().copied())
    }

    /// Samples so far per tag id.
    pub(crate) fn sample_counts(&self) -> Vec<(u32, u64)> {
        self.tags
            .iter()
            .map(|(&id, p)| (id, p.stacks.values().map(|c| c.samples).sum()))
            .collect()
    }

    /// Tag ids that have samples.
    pub(crate) fn tags_with_samples(&self) -> Vec<u32> {
        self.tags
            .iter()
            .filter(|(_, p)| !p.stacks.is_empty())
            .map(|(&id, _)| id)
            .collect()
    }

    /// Builds the pprof profile of `only` (one tag id) or of every tag (`None`), holding the
    /// samples and value columns of `view`.
    pub(crate) fn to_profile(
        &self,
        only: Option<u32>,
        view: View,
        names: &dyn Names,
        symbols: &mut Symbolizer,
        objects: &[LoadedObject],
    ) -> Profile {
        let wall = self.periods.wall_ns > 0;
        let mut types = vec![("samples", "count")];
        match view {
            View::All => {
                types.push(("cpu", "nanoseconds"));
                if wall {
                    types.push(("wall", "nanoseconds"));
                }
            }
            View::Cpu => types.push(("cpu", "nanoseconds")),
            View::Wall => types.push(("wall", "nanoseconds")),
        }
        let mut b = ProfileBuilder::new(&types, 1);
        match view {
            View::All | View::Cpu => b.period("cpu", "nanoseconds", self.periods.cpu_ns as i64),
            View::Wall => b.period("wall", "nanoseconds", self.periods.wall_ns as i64),
        }
        stamp_time(&mut b, self.started);
        let mut places = Locations::new(&mut b, objects);
        // Every address this profile needs, resolved in one pass per object file.
        symbols.prepare(
            self.tags
                .iter()
                .filter(|(&tag, _)| only.is_none_or(|o| o == tag))
                .flat_map(|(_, p)| p.stacks.keys())
                .filter(|key| view.keeps(key.kind))
                .flat_map(|key| key.frames.iter().copied()),
            objects,
        );
        let mut dropped = 0;
        let mut label_sets: HashMap<u32, Vec<(String, String)>> = HashMap::new();
        for (&tag, profile) in &self.tags {
            if only.is_some_and(|o| o != tag) {
                continue;
            }
            dropped += profile.dropped;
            let tag_label = b.str_label("tag", &names.tag(tag));
            for (key, counts) in &profile.stacks {
                if !view.keeps(key.kind) {
                    continue;
                }
                let mut locations: Vec<u64> = key
                    .frames
                    .iter()
                    .map(|&addr| places.location(&mut b, symbols, addr))
                    .collect();
                Locations::push_markers(&mut b, key.truncated, key.cut_short, &mut locations);
                let mut labels = vec![tag_label];
                if let Some(t) = self.threads.get(&key.thread) {
                    labels.push(b.str_label("thread_name", &t.name));
                    labels.push(b.num_label("thread_id", t.tid));
                }
                if key.labels != 0 {
                    let set = label_sets.entry(key.labels).or_insert_with(|| {
                        names
                            .labels(key.labels)
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect()
                    });
                    for (k, v) in set.iter() {
                        labels.push(b.str_label(k, v));
                    }
                }
                if key.span != 0 {
                    labels.push(b.str_label("span_id", &format!("{:016x}", key.span)));
                }
                match key.kind {
                    SampleKind::Cpu => {}
                    SampleKind::WallRunning => labels.push(b.str_label("state", "running")),
                    SampleKind::WallWaiting => labels.push(b.str_label("state", "waiting")),
                }
                let values = match view {
                    View::All if wall => vec![
                        counts.samples as i64,
                        counts.cpu_ns as i64,
                        counts.wall_ns as i64,
                    ],
                    View::All | View::Cpu => vec![counts.samples as i64, counts.cpu_ns as i64],
                    View::Wall => vec![counts.samples as i64, counts.wall_ns as i64],
                };
                b.add_sample(locations, values, labels);
            }
        }
        if dropped > 0 {
            b.comment(&format!("dropped_samples={dropped}"));
        }
        b.finish()
    }
}

/// Sets a profile's `time_nanos` to `started` and its `duration_nanos` to the time since.
pub(crate) fn stamp_time(b: &mut ProfileBuilder, started: SystemTime) {
    let start = started
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let elapsed = started.elapsed().unwrap_or_default();
    b.time(start.as_nanos() as i64, elapsed.as_nanos() as i64);
}

/// The mappings and locations of a profile being built, shared by the CPU and heap profiles
/// so that both name addresses and objects the same way: one mapping per loaded object, made
/// at its first location (the main program's first, as readers show it as the profile's
/// binary), and every address named through the symbolizer.
pub(crate) struct Locations<'o> {
    objects: &'o [LoadedObject],
    mapping_ids: Vec<Option<u64>>,
}

impl<'o> Locations<'o> {
    pub(crate) fn new(b: &mut ProfileBuilder, objects: &'o [LoadedObject]) -> Locations<'o> {
        let mapping_ids = objects
            .iter()
            .map(|o| {
                o.is_main
                    .then(|| b.mapping(Self::mapping(o), &o.path, &o.build_id))
            })
            .collect();
        Locations {
            objects,
            mapping_ids,
        }
    }

    fn mapping(o: &LoadedObject) -> Mapping {
        Mapping {
            memory_start: o.text.start,
            memory_limit: o.text.end,
            file_offset: o.text_file_offset,
            has_functions: true,
            ..Mapping::default()
        }
    }

    /// The location id of `addr` (a frame lookup address), named and mapped.
    pub(crate) fn location(
        &mut self,
        b: &mut ProfileBuilder,
        symbols: &mut Symbolizer,
        addr: u64,
    ) -> u64 {
        let mapping_id = self.mapping_id(b, addr);
        let frames = symbols.resolve(addr, self.objects);
        b.location(mapping_id, addr, &frames)
    }

    /// The id of the mapping holding `addr` (made at the first location in its object), or 0.
    fn mapping_id(&mut self, b: &mut ProfileBuilder, addr: u64) -> u64 {
        let objects = self.objects;
        match objects.iter().position(|o| o.text.contains(&addr)) {
            Some(i) => match (self.mapping_ids.get_mut(i), objects.get(i)) {
                (Some(id), Some(o)) => {
                    *id.get_or_insert_with(|| b.mapping(Self::mapping(o), &o.path, &o.build_id))
                }
                _ => 0,
            },
            None => 0,
        }
    }

    /// Appends the pseudo-locations that end a stack the walk did not finish: `[truncated
    /// stack]` (deeper than a record holds) and `[stack cut short: unreadable memory]`. They
    /// are told apart by address (0 and 1) and have no mapping.
    pub(crate) fn push_markers(
        b: &mut ProfileBuilder,
        truncated: bool,
        cut_short: bool,
        locations: &mut Vec<u64>,
    ) {
        if truncated {
            locations.push(b.location_for_function("[truncated stack]", 0));
        }
        if cut_short {
            locations.push(b.location_for_function("[stack cut short: unreadable memory]", 1));
        }
    }

    /// As [`Self::location`], with the address's leading (innermost) inline frames whose name
    /// `hide` accepts left out, unless that would leave none (heap profiles hide the
    /// allocation machinery this way).
    #[cfg_attr(not(all(feature = "heap", threadprof_sampling)), allow(dead_code))]
    pub(crate) fn location_hiding(
        &mut self,
        b: &mut ProfileBuilder,
        symbols: &mut Symbolizer,
        addr: u64,
        hide: &dyn Fn(&str) -> bool,
    ) -> u64 {
        let frames = symbols.resolve(addr, self.objects);
        let skip = frames
            .iter()
            .take_while(|f| hide(&f.name))
            .count()
            .min(frames.len().saturating_sub(1));
        if skip == 0 {
            return self.location(b, symbols, addr);
        }
        let mapping_id = self.mapping_id(b, addr);
        b.location(mapping_id, addr, frames.get(skip..).unwrap_or_default())
    }
}
