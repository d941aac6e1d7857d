//! Label selection: the `--label KEY=VALUE` filter and the `top --by KEY` grouping.
//!
//! Works on a profile's samples only (it keeps or moves them); turning samples into stacks is
//! `load::stacks`' job, and printing is `report`'s.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use threadprof_runtime::pprof::{Profile, Sample};

/// One `--label KEY=VALUE`: a sample matches when its label KEY has exactly VALUE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelMatch {
    /// The label key, e.g. `route`.
    pub key: String,
    /// The value it must have, e.g. `/ingest`.
    pub value: String,
}

impl FromStr for LabelMatch {
    type Err = String;

    /// Splits at the first `=`, so the value may itself contain `=`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((key, value)) = s.split_once('=') else {
            return Err("expected KEY=VALUE, e.g. route=/ingest (no '=' found)".into());
        };
        if key.is_empty() {
            return Err("expected KEY=VALUE, e.g. route=/ingest (the key is empty)".into());
        }
        if value.is_empty() {
            // pprof cannot store an empty string label, so this would match nothing.
            return Err(format!(
                "expected KEY=VALUE, e.g. route=/ingest (the value of {key:?} is empty)"
            ));
        }
        Ok(LabelMatch {
            key: key.to_owned(),
            value: value.to_owned(),
        })
    }
}

impl fmt::Display for LabelMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.key, self.value)
    }
}

/// Parses the KEY of `--by KEY`: not empty, and not a `KEY=VALUE` pair.
pub fn parse_group_key(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("expected a label key, e.g. route (it is empty)".into());
    }
    if s.contains('=') {
        return Err(format!(
            "expected a label key, e.g. route, not KEY=VALUE (to keep only {s} use --label {s})"
        ));
    }
    Ok(s.to_owned())
}

/// The value of label `key` on `sample`: its first string value, else its first numeric value
/// written in decimal (so `thread_id` works too), else `None`.
pub fn label_value<'a>(p: &'a Profile, sample: &Sample, key: &str) -> Option<Cow<'a, str>> {
    p.label_str(sample, key)
        .map(Cow::Borrowed)
        .or_else(|| p.label_num(sample, key).map(|n| Cow::Owned(n.to_string())))
}

/// Keeps only the samples that match every one of `matches` (all of them when it is empty).
pub fn retain_matching(p: &mut Profile, matches: &[LabelMatch]) {
    if matches.is_empty() {
        return;
    }
    let mut samples = std::mem::take(&mut p.sample);
    samples.retain(|s| {
        matches
            .iter()
            .all(|m| label_value(p, s, &m.key).is_some_and(|v| v == m.value.as_str()))
    });
    p.sample = samples;
}

/// The samples that share one value of the grouping key.
pub struct Group {
    /// The value, or `None` for the samples without the key.
    pub value: Option<String>,
    /// Those samples, in profile order.
    pub samples: Vec<Sample>,
}

/// Moves `p`'s samples into one group per value of label `key`, leaving `p` with none; groups
/// come in order of first appearance, the samples without the key (if any) last.
pub fn take_groups(p: &mut Profile, key: &str) -> Vec<Group> {
    let samples = std::mem::take(&mut p.sample);
    let mut groups: Vec<Group> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut none = Vec::new();
    for s in samples {
        let Some(v) = label_value(p, &s, key) else {
            none.push(s);
            continue;
        };
        let i = match index.get(v.as_ref()) {
            Some(&i) => i,
            None => {
                let v = v.into_owned();
                index.insert(v.clone(), groups.len());
                groups.push(Group {
                    value: Some(v),
                    samples: Vec::new(),
                });
                groups.len() - 1
            }
        };
        groups[i].samples.push(s);
    }
    if !none.is_empty() {
        groups.push(Group {
            value: None,
            samples: none,
        });
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_syntax() {
        let m: LabelMatch = "route=/a=b".parse().unwrap();
        assert_eq!((m.key.as_str(), m.value.as_str()), ("route", "/a=b"));
        assert!("route"
            .parse::<LabelMatch>()
            .unwrap_err()
            .contains("no '='"));
        assert!("=x"
            .parse::<LabelMatch>()
            .unwrap_err()
            .contains("key is empty"));
        assert!("k=".parse::<LabelMatch>().unwrap_err().contains("empty"));
        assert_eq!(parse_group_key("route").unwrap(), "route");
        assert!(parse_group_key("").is_err());
        assert!(parse_group_key("route=/a")
            .unwrap_err()
            .contains("--label route=/a"));
    }
}
