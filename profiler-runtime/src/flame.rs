//! Stacks of a profile as function names, collapsed (`a;b;c N`) and drawn as flame graphs.
//!
//! Shared by the `threadprof` CLI and the HTTP endpoint; built with the `flame` feature.

use std::collections::BTreeMap;

use crate::pprof::Profile;

/// Which samples and which value to look at.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// Sample type name, e.g. `cpu`, `wall` or `samples`.
    pub sample_type: String,
    /// Only samples whose `thread_name` label is this.
    pub thread: Option<String>,
    /// Only samples whose `tag` label is this.
    pub tag: Option<String>,
}

/// Stacks (root first) with their selected value; equal stacks are merged.
#[derive(Clone, Debug, Default)]
pub struct Stacks {
    /// Unit of the values, e.g. `nanoseconds`.
    pub unit: String,
    /// Value per stack of function names, root first.
    pub stacks: BTreeMap<Vec<String>, i64>,
}

impl Stacks {
    /// Sum of all values.
    pub fn total(&self) -> i64 {
        self.stacks.values().sum()
    }
}

/// Why stacks could not be selected.
#[derive(Debug, thiserror::Error)]
#[error("the profile has no sample type {wanted:?} (it has: {have})")]
pub struct NoSuchSampleType {
    wanted: String,
    have: String,
}

/// The selected value of each matching sample, by stack (root first).
pub fn stacks(p: &Profile, sel: &Selection) -> Result<Stacks, NoSuchSampleType> {
    let Some(index) = p.sample_type_index(&sel.sample_type) else {
        let have: Vec<&str> = p.sample_type.iter().map(|t| p.string(t.r#type)).collect();
        return Err(NoSuchSampleType {
            wanted: sel.sample_type.clone(),
            have: have.join(", "),
        });
    };
    let unit = p.string(p.sample_type[index].unit).to_owned();
    let mut stacks = BTreeMap::new();
    for s in &p.sample {
        if sel
            .thread
            .as_deref()
            .is_some_and(|t| p.label_str(s, "thread_name") != Some(t))
        {
            continue;
        }
        if sel
            .tag
            .as_deref()
            .is_some_and(|t| p.label_str(s, "tag") != Some(t))
        {
            continue;
        }
        let v = s.value.get(index).copied().unwrap_or(0);
        if v == 0 {
            continue;
        }
        let mut names: Vec<String> = p.stack_names(s).into_iter().map(str::to_owned).collect();
        names.reverse();
        *stacks.entry(names).or_insert(0) += v;
    }
    Ok(Stacks { unit, stacks })
}

/// Collapsed stacks, `root;...;leaf VALUE`; nanoseconds are given as microseconds.
pub fn folded_lines(stacks: &Stacks) -> Vec<String> {
    let scale = if stacks.unit == "nanoseconds" {
        1000
    } else {
        1
    };
    stacks
        .stacks
        .iter()
        .filter(|(_, &v)| v / scale > 0)
        .map(|(stack, v)| {
            let frames: Vec<String> = stack.iter().map(|f| f.replace(';', ":")).collect();
            format!("{} {}", frames.join(";"), v / scale)
        })
        .collect()
}

/// An interactive SVG flame graph of `stacks`; an error if there is nothing to draw.
pub fn flamegraph_svg(title: &str, stacks: &Stacks) -> std::io::Result<Vec<u8>> {
    let lines = folded_lines(stacks);
    if lines.is_empty() {
        return Err(std::io::Error::other("nothing to draw: no samples match"));
    }
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = title.to_owned();
    opts.count_name = if stacks.unit == "nanoseconds" {
        "µs".into()
    } else {
        stacks.unit.clone()
    };
    let mut svg = Vec::new();
    inferno::flamegraph::from_lines(&mut opts, lines.iter().map(String::as_str), &mut svg)?;
    Ok(svg)
}
