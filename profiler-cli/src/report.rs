//! Text reports: `ls`, `top` (also by label value), `folded`, `diff`, and the flame graph.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::time::SystemTime;

use anyhow::{Context, Result};

use crate::load::{human, Kind, Loaded, Stacks};

/// Flat and cum values per function. Cum counts a function once per stack, so recursion does
/// not inflate it.
pub fn flat_cum(stacks: &Stacks) -> HashMap<&str, (i64, i64)> {
    let mut out: HashMap<&str, (i64, i64)> = HashMap::new();
    for (stack, &v) in &stacks.stacks {
        if let Some(leaf) = stack.last() {
            out.entry(leaf).or_default().0 += v;
        }
        let unique: BTreeSet<&str> = stack.iter().map(String::as_str).collect();
        for f in unique {
            out.entry(f).or_default().1 += v;
        }
    }
    out
}

fn pct(v: i64, total: i64) -> f64 {
    if total == 0 {
        0.0
    } else {
        100.0 * v as f64 / total as f64
    }
}

/// `threadprof top`: the functions with the most flat (or cum) value.
pub fn top(
    out: &mut dyn Write,
    title: &str,
    stacks: &Stacks,
    n: usize,
    by_cum: bool,
) -> Result<()> {
    writeln!(
        out,
        "{title}: total {}",
        human(stacks.total(), &stacks.unit)
    )?;
    top_table(out, stacks, n, by_cum)
}

/// One section of `threadprof top --by KEY`: the samples whose label KEY has one value.
pub struct Section {
    /// The value, or `None` for the samples without the key.
    pub value: Option<String>,
    /// Their stacks.
    pub stacks: Stacks,
}

/// `threadprof top --by KEY`: a title line with the whole total, then per section a heading
/// `KEY=value: total T, P% of W` (`KEY=(none)` for samples without the key) and the `top`
/// table of its samples, whose shares are of the section's total. Sections are printed in
/// the order given; `unit` is the values' unit, for when there are no sections.
pub fn top_by(
    out: &mut dyn Write,
    title: &str,
    key: &str,
    unit: &str,
    sections: &[Section],
    n: usize,
    by_cum: bool,
) -> Result<()> {
    let whole: i64 = sections.iter().map(|s| s.stacks.total()).sum();
    writeln!(out, "{title}: total {}, by {key}", human(whole, unit))?;
    for s in sections {
        let total = s.stacks.total();
        writeln!(out)?;
        writeln!(
            out,
            "{key}={}: total {}, {:.2}% of {}",
            s.value.as_deref().unwrap_or("(none)"),
            human(total, unit),
            pct(total, whole),
            human(whole, unit)
        )?;
        top_table(out, &s.stacks, n, by_cum)?;
    }
    Ok(())
}

/// The column header and the `n` top rows; shares are of `stacks`' own total.
fn top_table(out: &mut dyn Write, stacks: &Stacks, n: usize, by_cum: bool) -> Result<()> {
    let total = stacks.total();
    let unit = &stacks.unit;
    let mut rows: Vec<(&str, (i64, i64))> = flat_cum(stacks).into_iter().collect();
    rows.sort_by(|a, b| {
        let key = |r: &(&str, (i64, i64))| {
            if by_cum {
                (r.1 .1, r.1 .0)
            } else {
                (r.1 .0, r.1 .1)
            }
        };
        key(b).cmp(&key(a)).then(a.0.cmp(b.0))
    });
    writeln!(
        out,
        "{:>10} {:>7} {:>7} {:>10} {:>7}  function",
        "flat", "flat%", "sum%", "cum", "cum%"
    )?;
    let mut sum = 0;
    for (name, (flat, cum)) in rows.into_iter().take(n) {
        sum += flat;
        writeln!(
            out,
            "{:>10} {:>6.2}% {:>6.2}% {:>10} {:>6.2}%  {name}",
            human(flat, unit),
            pct(flat, total),
            pct(sum, total),
            human(cum, unit),
            pct(cum, total)
        )?;
    }
    Ok(())
}

/// Collapsed stacks, `root;...;leaf VALUE` (time in µs).
pub use threadprof_runtime::flame::folded_lines;

/// An interactive SVG flame graph.
pub fn flamegraph(out: &mut dyn Write, title: &str, stacks: &Stacks) -> Result<()> {
    let svg = threadprof_runtime::flame::flamegraph_svg(title, stacks)
        .context("cannot draw the flame graph")?;
    out.write_all(&svg)?;
    Ok(())
}

/// A change for people: `+` before growth, then the value in its unit.
fn signed(v: i64, unit: &str) -> String {
    let sign = if v > 0 { "+" } else { "" };
    format!("{sign}{}", human(v, unit))
}

/// A change in percentage points as printed (hundredths), so that sorting sees the same ties
/// a reader does.
fn pp_key(change: f64) -> u64 {
    (change.abs() * 100.0).round() as u64
}

/// One function's row of `threadprof diff`: flat and cum values in base and new.
struct DiffRow<'a> {
    name: &'a str,
    base: (i64, i64),
    new: (i64, i64),
}

/// How `threadprof diff` orders its rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiffOrder {
    /// The largest change of share (flat or cum) first; among equal ones, the larger change of
    /// flat share (the function itself, before the callers whose cum moved with it), then the
    /// larger change of value (a function that grew, before one whose share only shrank as
    /// the other grew). For CPU dumps, which cover different spans.
    Share,
    /// The largest change of flat value first (the function that allocated it, not its
    /// callers, whose cum holds every change below them); among equal ones, the larger change
    /// of cum value. For heap dumps: snapshots of the same memory, where what grew is the news
    /// (a leak that already dominates barely moves its share). `go tool pprof -diff_base -top`
    /// orders the same way.
    Value,
}

/// `threadprof diff`: per function, the change in flat and cum share of each profile's own
/// total and in value (`+flat`, `+cum`, in the values' unit: bytes for heap types), in
/// `order`; ties by name.
pub fn diff(
    out: &mut dyn Write,
    base: &Stacks,
    new: &Stacks,
    n: usize,
    order: DiffOrder,
) -> Result<()> {
    let (bt, nt) = (base.total(), new.total());
    let (b, nw) = (flat_cum(base), flat_cum(new));
    let names: BTreeSet<&str> = b.keys().chain(nw.keys()).copied().collect();
    let mut rows: Vec<DiffRow> = names
        .into_iter()
        .map(|name| DiffRow {
            name,
            base: b.get(name).copied().unwrap_or_default(),
            new: nw.get(name).copied().unwrap_or_default(),
        })
        .collect();
    let shares = |r: &DiffRow| {
        (
            pct(r.base.0, bt),
            pct(r.new.0, nt),
            pct(r.base.1, bt),
            pct(r.new.1, nt),
        )
    };
    rows.sort_by_cached_key(|r| {
        let (bf, nf, bc, nc) = shares(r);
        let flat_change = (r.new.0 - r.base.0).unsigned_abs();
        let cum_change = (r.new.1 - r.base.1).unsigned_abs();
        let key = match order {
            DiffOrder::Share => [
                pp_key(nf - bf).max(pp_key(nc - bc)),
                pp_key(nf - bf),
                flat_change.max(cum_change),
            ],
            DiffOrder::Value => [flat_change, cum_change, 0],
        };
        (std::cmp::Reverse(key), r.name)
    });
    let unit = &new.unit;
    writeln!(
        out,
        "base total {}, new total {} (shares are of each profile's own total)",
        human(bt, &base.unit),
        human(nt, unit)
    )?;
    writeln!(
        out,
        "{:>8} {:>8} {:>9} {:>8} {:>8} {:>9} {:>10} {:>10}  function",
        "flat%", "new", "Δflat", "cum%", "new", "Δcum", "+flat", "+cum"
    )?;
    for r in rows.into_iter().take(n) {
        let (bf, nf, bc, nc) = shares(&r);
        writeln!(
            out,
            "{bf:>7.2}% {nf:>7.2}% {:>+8.2}pp {bc:>7.2}% {nc:>7.2}% {:>+8.2}pp {:>10} {:>10}  {}",
            nf - bf,
            nc - bc,
            signed(r.new.0 - r.base.0, unit),
            signed(r.new.1 - r.base.1, unit),
            r.name
        )?;
    }
    Ok(())
}

/// What `ls` says of every dump, whatever its kind: threads, age, drops.
struct DumpFacts {
    threads: usize,
    age: String,
    dropped: String,
}

impl DumpFacts {
    fn of(f: &Loaded) -> DumpFacts {
        let p = &f.profile;
        let threads: BTreeSet<i64> = p
            .sample
            .iter()
            .filter_map(|s| p.label_num(s, "thread_id"))
            .collect();
        let dropped = p
            .comments()
            .find_map(|c| c.strip_prefix("dropped_samples="))
            .unwrap_or("0")
            .to_owned();
        let age = std::fs::metadata(&f.path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .map_or("?".into(), |d| format!("{}s ago", d.as_secs()));
        DumpFacts {
            threads: threads.len(),
            age,
            dropped,
        }
    }
}

/// The sum of sample type `ty`'s values in `f`, in its unit, or `-` when `f` lacks the type.
fn total_of(f: &Loaded, ty: &str) -> String {
    let p = &f.profile;
    p.sample_type_index(ty).map_or("-".into(), |i| {
        let sum: i64 = p
            .sample
            .iter()
            .map(|s| s.value.get(i).copied().unwrap_or(0))
            .sum();
        human(sum, p.string(p.sample_type[i].unit))
    })
}

/// `threadprof ls`: one row per dump file; CPU dumps first, then (in a table of their own,
/// headed `heap tag`) heap dumps.
pub fn ls(out: &mut dyn Write, files: &[Loaded]) -> Result<()> {
    let (cpu, heap): (Vec<&Loaded>, Vec<&Loaded>) = files
        .iter()
        .partition(|f| Kind::of_profile(&f.profile) == Kind::Cpu);
    if !cpu.is_empty() {
        writeln!(
            out,
            "{:<24} {:>9} {:>9} {:>9} {:>7} {:>9} {:>14} {:>8}",
            "tag", "samples", "cpu", "wall", "threads", "covers", "written", "dropped"
        )?;
    }
    for f in cpu {
        let facts = DumpFacts::of(f);
        let p = &f.profile;
        // Sample counts print as the plain number, and 0 when the file has none.
        let samples = p.sample_type_index("samples").map_or(0, |i| {
            p.sample
                .iter()
                .map(|s| s.value.get(i).copied().unwrap_or(0))
                .sum::<i64>()
        });
        writeln!(
            out,
            "{:<24} {:>9} {:>9} {:>9} {:>7} {:>9} {:>14} {:>8}",
            f.name(),
            samples,
            total_of(f, "cpu"),
            total_of(f, "wall"),
            facts.threads,
            human(p.duration_nanos, "nanoseconds"),
            facts.age,
            facts.dropped
        )?;
    }
    if heap.is_empty() {
        return Ok(());
    }
    if files.len() > heap.len() {
        writeln!(out)?;
    }
    writeln!(
        out,
        "{:<24} {:>12} {:>12} {:>7} {:>9} {:>14} {:>8}",
        "heap tag", "inuse_space", "alloc_space", "threads", "covers", "written", "dropped"
    )?;
    for f in heap {
        let facts = DumpFacts::of(f);
        writeln!(
            out,
            "{:<24} {:>12} {:>12} {:>7} {:>9} {:>14} {:>8}",
            f.name(),
            total_of(f, "inuse_space"),
            total_of(f, "alloc_space"),
            facts.threads,
            human(f.profile.duration_nanos, "nanoseconds"),
            facts.age,
            facts.dropped
        )?;
    }
    Ok(())
}
