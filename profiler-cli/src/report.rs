//! Text reports: `ls`, `top` (also by label value), `folded`, `diff`, and the flame graph.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::time::SystemTime;

use anyhow::{Context, Result};

use crate::load::{human, Loaded, Stacks};

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

/// `threadprof diff`: change in flat and cum share per function, largest first.
pub fn diff(out: &mut dyn Write, base: &Stacks, new: &Stacks, n: usize) -> Result<()> {
    let (bt, nt) = (base.total(), new.total());
    let (b, nw) = (flat_cum(base), flat_cum(new));
    let names: BTreeSet<&str> = b.keys().chain(nw.keys()).copied().collect();
    let mut rows: Vec<(&str, f64, f64, f64, f64)> = names
        .into_iter()
        .map(|f| {
            let (bf, bc) = b.get(f).copied().unwrap_or_default();
            let (nf, nc) = nw.get(f).copied().unwrap_or_default();
            (f, pct(bf, bt), pct(nf, nt), pct(bc, bt), pct(nc, nt))
        })
        .collect();
    let change = |r: &(&str, f64, f64, f64, f64)| (r.2 - r.1).abs().max((r.4 - r.3).abs());
    rows.sort_by(|x, y| change(y).total_cmp(&change(x)).then(x.0.cmp(y.0)));
    writeln!(
        out,
        "base total {}, new total {} (shares are of each profile's own total)",
        human(bt, &base.unit),
        human(nt, &new.unit)
    )?;
    writeln!(
        out,
        "{:>8} {:>8} {:>9} {:>8} {:>8} {:>9}  function",
        "flat%", "new", "Δflat", "cum%", "new", "Δcum"
    )?;
    for (f, bf, nf, bc, nc) in rows.into_iter().take(n) {
        writeln!(
            out,
            "{bf:>7.2}% {nf:>7.2}% {:>+8.2}pp {bc:>7.2}% {nc:>7.2}% {:>+8.2}pp  {f}",
            nf - bf,
            nc - bc
        )?;
    }
    Ok(())
}

/// `threadprof ls`: one row per dump file.
pub fn ls(out: &mut dyn Write, files: &[Loaded]) -> Result<()> {
    writeln!(
        out,
        "{:<24} {:>9} {:>9} {:>9} {:>7} {:>9} {:>14} {:>8}",
        "tag", "samples", "cpu", "wall", "threads", "covers", "written", "dropped"
    )?;
    for f in files {
        let p = &f.profile;
        let sum = |ty: &str| {
            p.sample_type_index(ty).map(|i| {
                p.sample
                    .iter()
                    .map(|s| s.value.get(i).copied().unwrap_or(0))
                    .sum::<i64>()
            })
        };
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
        writeln!(
            out,
            "{:<24} {:>9} {:>9} {:>9} {:>7} {:>9} {:>14} {:>8}",
            f.name(),
            sum("samples").unwrap_or(0),
            sum("cpu").map_or("-".into(), |v| human(v, "nanoseconds")),
            sum("wall").map_or("-".into(), |v| human(v, "nanoseconds")),
            threads.len(),
            human(p.duration_nanos, "nanoseconds"),
            age,
            dropped
        )?;
    }
    Ok(())
}
