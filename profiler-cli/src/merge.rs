//! `threadprof merge`: several profiles into one, labels kept.

use anyhow::{bail, Result};
use threadprof_runtime::pprof::{FrameInfo, Mapping, Profile, ProfileBuilder};

use crate::load::{Kind, Loaded};

/// The `(type, unit)` pairs of a profile's sample types, in order.
fn sample_types(p: &Profile) -> Vec<(String, String)> {
    p.sample_type
        .iter()
        .map(|t| (p.string(t.r#type).to_owned(), p.string(t.unit).to_owned()))
        .collect()
}

/// `alloc_objects/count, alloc_space/bytes, ...`, for messages.
fn list(types: &[(String, String)]) -> String {
    let names: Vec<String> = types.iter().map(|(t, u)| format!("{t}/{u}")).collect();
    names.join(", ")
}

/// Merges profiles with the same sample types (in the same order), which it keeps, with the
/// first one's default sample type and period. Each input keeps its own mappings, so equal
/// addresses from different processes are never confused.
pub fn merge(inputs: &[Loaded]) -> Result<Profile> {
    let Some(first) = inputs.first() else {
        bail!("nothing to merge")
    };
    let types = sample_types(&first.profile);
    for other in &inputs[1..] {
        let other_types = sample_types(&other.profile);
        if other_types == types {
            continue;
        }
        let (a, b) = (&first.path, &other.path);
        let (ka, kb) = (
            Kind::of_profile(&first.profile),
            Kind::of_profile(&other.profile),
        );
        if ka != kb {
            bail!(
                "cannot merge a {} profile with a {} profile: {} has {}; {} has {} \
                 (merge heap dumps and CPU dumps separately)",
                ka.name(),
                kb.name(),
                a.display(),
                list(&types),
                b.display(),
                list(&other_types)
            );
        }
        bail!(
            "cannot merge profiles with different sample types: {} has {}; {} has {}",
            a.display(),
            list(&types),
            b.display(),
            list(&other_types)
        );
    }
    let first = &first.profile;
    let refs: Vec<(&str, &str)> = types
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    // No default in, none out (an index past the types sets none): readers then choose theirs.
    let default = first
        .sample_type
        .iter()
        .position(|t| t.r#type == first.default_sample_type)
        .unwrap_or(types.len());
    let mut b = ProfileBuilder::new(&refs, default);
    if let Some(pt) = first.period_type {
        b.period(first.string(pt.r#type), first.string(pt.unit), first.period);
    }
    let profiles = || inputs.iter().map(|l| &l.profile);
    let start = profiles().map(|p| p.time_nanos).min().unwrap_or(0);
    let end = profiles()
        .map(|p| p.time_nanos + p.duration_nanos)
        .max()
        .unwrap_or(0);
    b.time(start, end - start);
    for p in profiles() {
        let mappings: std::collections::HashMap<u64, u64> = p
            .mapping
            .iter()
            .map(|m| {
                let copy = Mapping { id: 0, ..m.clone() };
                (
                    m.id,
                    b.mapping(copy, p.string(m.filename), p.string(m.build_id)),
                )
            })
            .collect();
        let functions: std::collections::HashMap<u64, _> =
            p.function.iter().map(|f| (f.id, f)).collect();
        let mut locations = std::collections::HashMap::new();
        for l in &p.location {
            let frames: Vec<FrameInfo> = l
                .line
                .iter()
                .filter_map(|line| functions.get(&line.function_id).map(|f| (f, line.line)))
                .map(|(f, line)| FrameInfo {
                    name: p.string(f.name).to_owned(),
                    file: Some(p.string(f.filename).to_owned()).filter(|s| !s.is_empty()),
                    line: u32::try_from(line).unwrap_or(0),
                })
                .collect();
            let mapping = mappings.get(&l.mapping_id).copied().unwrap_or(0);
            locations.insert(l.id, b.location(mapping, l.address, &frames));
        }
        for s in &p.sample {
            let locs = s
                .location_id
                .iter()
                .filter_map(|id| locations.get(id).copied())
                .collect();
            let labels = s
                .label
                .iter()
                .map(|l| {
                    if l.str != 0 {
                        b.str_label(p.string(l.key), p.string(l.str))
                    } else {
                        b.num_label(p.string(l.key), l.num)
                    }
                })
                .collect();
            b.add_sample(locs, s.value.clone(), labels);
        }
        for c in p.comments() {
            b.comment(c);
        }
    }
    Ok(b.finish())
}
