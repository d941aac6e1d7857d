//! The pprof profile format: message types, gzip codec, validation, and a builder.
//!
//! The messages follow `profile.proto` from github.com/google/pprof field for field, derived
//! with prost (no protoc needed). This module is compiled with or without the sampler, so the
//! `threadprof` command-line tool can read dumps without linking the runtime.
//!
//! ```
//! use threadprof_runtime::pprof::{ProfileBuilder, decode_gz, encode_gz};
//!
//! let mut b = ProfileBuilder::new(&[("samples", "count"), ("cpu", "nanoseconds")], 1);
//! let leaf = b.location_for_function("my_crate::hot", 0x1000);
//! let root = b.location_for_function("main", 0x2000);
//! let labels = [b.str_label("tag", "worker")];
//! b.add_sample(vec![leaf, root], vec![1, 10_101_010], labels.to_vec());
//! let bytes = encode_gz(&b.finish()).unwrap();
//! let profile = decode_gz(&bytes).unwrap();
//! assert_eq!(profile.sample.len(), 1);
//! ```

use std::collections::HashMap;
use std::io::{Read, Write};

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use prost::Message;

/// A whole profile (`perftools.profiles.Profile`).
#[derive(Clone, PartialEq, Message)]
pub struct Profile {
    /// What each value of a sample means, one entry per value.
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    /// The recorded samples.
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<Sample>,
    /// Loaded objects that addresses belong to.
    #[prost(message, repeated, tag = "3")]
    pub mapping: Vec<Mapping>,
    /// Code locations referenced by samples.
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
    /// Functions referenced by locations.
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<Function>,
    /// All strings; index 0 is always the empty string.
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    /// Regex (string index) of frames to drop.
    #[prost(int64, tag = "7")]
    pub drop_frames: i64,
    /// Regex (string index) of frames to keep.
    #[prost(int64, tag = "8")]
    pub keep_frames: i64,
    /// When the profile started, in nanoseconds since the Unix epoch.
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    /// How long the profile covers, in nanoseconds.
    #[prost(int64, tag = "10")]
    pub duration_nanos: i64,
    /// The kind of events between sampled occurrences.
    #[prost(message, optional, tag = "11")]
    pub period_type: Option<ValueType>,
    /// The number of events between sampled occurrences.
    #[prost(int64, tag = "12")]
    pub period: i64,
    /// Free-form comments (string indices).
    #[prost(int64, repeated, tag = "13")]
    pub comment: Vec<i64>,
    /// Index into the string table of the preferred sample type.
    #[prost(int64, tag = "14")]
    pub default_sample_type: i64,
}

/// A sample type or unit pair (string indices).
#[derive(Clone, Copy, PartialEq, Eq, Message)]
pub struct ValueType {
    /// The type, e.g. `cpu`.
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    /// The unit, e.g. `nanoseconds`.
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

/// One recorded stack with its values and labels.
#[derive(Clone, PartialEq, Message)]
pub struct Sample {
    /// Location ids, leaf first.
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    /// One value per `Profile::sample_type`.
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
    /// Labels such as `tag`, `thread_name`, `thread_id`.
    #[prost(message, repeated, tag = "3")]
    pub label: Vec<Label>,
}

/// A key with a string or a numeric value (string indices).
#[derive(Clone, Copy, PartialEq, Eq, Message)]
pub struct Label {
    /// Key (string index).
    #[prost(int64, tag = "1")]
    pub key: i64,
    /// String value (string index), or 0.
    #[prost(int64, tag = "2")]
    pub str: i64,
    /// Numeric value, when `str` is 0.
    #[prost(int64, tag = "3")]
    pub num: i64,
    /// Unit of `num` (string index), or 0.
    #[prost(int64, tag = "4")]
    pub num_unit: i64,
}

/// A loaded object (executable or shared library).
#[derive(Clone, PartialEq, Eq, Message)]
pub struct Mapping {
    /// Unique non-zero id.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// First address of the mapped code.
    #[prost(uint64, tag = "2")]
    pub memory_start: u64,
    /// One past the last address of the mapped code.
    #[prost(uint64, tag = "3")]
    pub memory_limit: u64,
    /// File offset of `memory_start`.
    #[prost(uint64, tag = "4")]
    pub file_offset: u64,
    /// Path of the object (string index).
    #[prost(int64, tag = "5")]
    pub filename: i64,
    /// GNU build id in hex (string index).
    #[prost(int64, tag = "6")]
    pub build_id: i64,
    /// Locations in this mapping carry function names.
    #[prost(bool, tag = "7")]
    pub has_functions: bool,
    /// Locations in this mapping carry file names.
    #[prost(bool, tag = "8")]
    pub has_filenames: bool,
    /// Locations in this mapping carry line numbers.
    #[prost(bool, tag = "9")]
    pub has_line_numbers: bool,
    /// Locations in this mapping carry inline frames.
    #[prost(bool, tag = "10")]
    pub has_inline_frames: bool,
}

/// A code address with the functions (innermost first) it belongs to.
#[derive(Clone, PartialEq, Message)]
pub struct Location {
    /// Unique non-zero id.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Mapping id, or 0.
    #[prost(uint64, tag = "2")]
    pub mapping_id: u64,
    /// The instruction address.
    #[prost(uint64, tag = "3")]
    pub address: u64,
    /// Functions at this address; the last entry is the outermost caller of an inline chain.
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
    /// Set for folded (merged) locations.
    #[prost(bool, tag = "5")]
    pub is_folded: bool,
}

/// A function and line within a location.
#[derive(Clone, Copy, PartialEq, Eq, Message)]
pub struct Line {
    /// Function id.
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
    /// Source line, or 0.
    #[prost(int64, tag = "2")]
    pub line: i64,
    /// Source column, or 0.
    #[prost(int64, tag = "3")]
    pub column: i64,
}

/// A function (string indices).
#[derive(Clone, Copy, PartialEq, Eq, Message)]
pub struct Function {
    /// Unique non-zero id.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Human-readable (demangled) name.
    #[prost(int64, tag = "2")]
    pub name: i64,
    /// Mangled name, if known.
    #[prost(int64, tag = "3")]
    pub system_name: i64,
    /// Source file.
    #[prost(int64, tag = "4")]
    pub filename: i64,
    /// Line of the function's start.
    #[prost(int64, tag = "5")]
    pub start_line: i64,
}

/// Why a profile could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not gzip, or the gzip stream is truncated.
    #[error("not a gzipped file, or the gzip stream is cut short: {0}")]
    Gzip(#[source] std::io::Error),
    /// The bytes are not a pprof protobuf message.
    #[error("not a pprof profile (protobuf decode failed: {0})")]
    Protobuf(#[from] prost::DecodeError),
    /// The message decoded but breaks a pprof invariant.
    #[error("invalid pprof profile: {0}")]
    Invalid(String),
}

/// The profile as uncompressed protobuf bytes.
pub fn encode_raw(profile: &Profile) -> Vec<u8> {
    profile.encode_to_vec()
}

/// Gzip-compresses the encoded profile.
pub fn encode_gz(profile: &Profile) -> std::io::Result<Vec<u8>> {
    let raw = encode_raw(profile);
    let mut enc = GzEncoder::new(
        Vec::with_capacity(raw.len() / 4 + 64),
        Compression::default(),
    );
    enc.write_all(&raw)?;
    enc.finish()
}

/// Decodes a gzipped (or, as pprof tools also accept, plain) profile and validates it.
pub fn decode_gz(bytes: &[u8]) -> Result<Profile, DecodeError> {
    let raw;
    let body = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        GzDecoder::new(bytes)
            .read_to_end(&mut out)
            .map_err(DecodeError::Gzip)?;
        raw = out;
        &raw[..]
    } else {
        bytes
    };
    let profile = Profile::decode(body)?;
    validate(&profile)?;
    Ok(profile)
}

/// Checks the invariants pprof readers rely on: the string table starts with `""`, every
/// string index is in range, ids are unique and non-zero, and every referenced id exists.
pub fn validate(p: &Profile) -> Result<(), DecodeError> {
    let bad = |msg: String| Err(DecodeError::Invalid(msg));
    if p.string_table.first().map(String::as_str) != Some("") {
        return bad("string table does not start with the empty string".into());
    }
    let nstr = p.string_table.len() as i64;
    let str_ok = |i: i64| (0..nstr).contains(&i);
    let mut strings = vec![p.drop_frames, p.keep_frames, p.default_sample_type];
    strings.extend(p.comment.iter().copied());
    for vt in p.sample_type.iter().chain(p.period_type.iter()) {
        strings.extend([vt.r#type, vt.unit]);
    }
    for s in &p.sample {
        if s.value.len() != p.sample_type.len() {
            return bad(format!(
                "a sample has {} values but the profile has {} sample types",
                s.value.len(),
                p.sample_type.len()
            ));
        }
        for l in &s.label {
            strings.extend([l.key, l.str, l.num_unit]);
        }
    }
    for m in &p.mapping {
        strings.extend([m.filename, m.build_id]);
    }
    for f in &p.function {
        strings.extend([f.name, f.system_name, f.filename]);
    }
    if let Some(i) = strings.into_iter().find(|&i| !str_ok(i)) {
        return bad(format!(
            "string index {i} is outside the string table ({nstr} entries)"
        ));
    }
    let ids = |what: &str, ids: &mut dyn Iterator<Item = u64>| {
        let mut seen = std::collections::HashSet::new();
        for id in ids {
            if id == 0 || !seen.insert(id) {
                return Err(DecodeError::Invalid(format!(
                    "{what} id {id} is zero or repeated"
                )));
            }
        }
        Ok(seen)
    };
    let mappings = ids("mapping", &mut p.mapping.iter().map(|m| m.id))?;
    let functions = ids("function", &mut p.function.iter().map(|f| f.id))?;
    let locations = ids("location", &mut p.location.iter().map(|l| l.id))?;
    for l in &p.location {
        if l.mapping_id != 0 && !mappings.contains(&l.mapping_id) {
            return bad(format!(
                "location {} names missing mapping {}",
                l.id, l.mapping_id
            ));
        }
        if let Some(line) = l.line.iter().find(|x| !functions.contains(&x.function_id)) {
            return bad(format!(
                "location {} names missing function {}",
                l.id, line.function_id
            ));
        }
    }
    for s in &p.sample {
        if let Some(id) = s.location_id.iter().find(|id| !locations.contains(id)) {
            return bad(format!("a sample names missing location {id}"));
        }
    }
    Ok(())
}

impl Profile {
    /// The string at `index`, or `""` when out of range.
    pub fn string(&self, index: i64) -> &str {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.string_table.get(i))
            .map_or("", String::as_str)
    }

    /// Index of the sample type named `name` (e.g. `"cpu"`), if present.
    pub fn sample_type_index(&self, name: &str) -> Option<usize> {
        self.sample_type
            .iter()
            .position(|vt| self.string(vt.r#type) == name)
    }

    /// The string value of label `key` on `sample`, if any.
    pub fn label_str<'a>(&'a self, sample: &Sample, key: &str) -> Option<&'a str> {
        sample
            .label
            .iter()
            .find(|l| self.string(l.key) == key && l.str != 0)
            .map(|l| self.string(l.str))
    }

    /// The numeric value of label `key` on `sample`, if any.
    pub fn label_num(&self, sample: &Sample, key: &str) -> Option<i64> {
        sample
            .label
            .iter()
            .find(|l| self.string(l.key) == key && l.str == 0)
            .map(|l| l.num)
    }

    /// Function names of a sample's stack, leaf first, inline frames expanded.
    pub fn stack_names(&self, sample: &Sample) -> Vec<&str> {
        let locs: HashMap<u64, &Location> = self.location.iter().map(|l| (l.id, l)).collect();
        let funcs: HashMap<u64, &Function> = self.function.iter().map(|f| (f.id, f)).collect();
        let mut out = Vec::new();
        for id in &sample.location_id {
            let Some(loc) = locs.get(id) else { continue };
            for line in &loc.line {
                if let Some(f) = funcs.get(&line.function_id) {
                    out.push(self.string(f.name));
                }
            }
        }
        out
    }

    /// The comments as strings.
    pub fn comments(&self) -> impl Iterator<Item = &str> {
        self.comment.iter().map(|&i| self.string(i))
    }
}

/// One frame of a resolved location: a function, and where in its source.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FrameInfo {
    /// Demangled function name.
    pub name: String,
    /// Source file, if known.
    pub file: Option<String>,
    /// Source line, or 0.
    pub line: u32,
}

/// Builds a valid [`Profile`], interning strings, functions and locations.
pub struct ProfileBuilder {
    profile: Profile,
    strings: HashMap<String, i64>,
    functions: HashMap<(i64, i64), u64>,
    locations: HashMap<(u64, u64), u64>,
}

impl ProfileBuilder {
    /// Starts a profile with the given `(type, unit)` sample types; `default_type` is the index
    /// of the preferred one.
    pub fn new(sample_types: &[(&str, &str)], default_type: usize) -> Self {
        let mut b = ProfileBuilder {
            profile: Profile {
                string_table: vec![String::new()],
                ..Profile::default()
            },
            strings: HashMap::from([(String::new(), 0)]),
            functions: HashMap::new(),
            locations: HashMap::new(),
        };
        for (ty, unit) in sample_types {
            let vt = ValueType {
                r#type: b.string(ty),
                unit: b.string(unit),
            };
            b.profile.sample_type.push(vt);
        }
        if let Some(vt) = b.profile.sample_type.get(default_type) {
            b.profile.default_sample_type = vt.r#type;
        }
        b
    }

    /// Interns `s` and returns its index.
    pub fn string(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.strings.get(s) {
            return i;
        }
        let i = self.profile.string_table.len() as i64;
        self.profile.string_table.push(s.to_owned());
        self.strings.insert(s.to_owned(), i);
        i
    }

    /// Sets the period type and period (e.g. `cpu`/`nanoseconds`, 10 ms).
    pub fn period(&mut self, ty: &str, unit: &str, period: i64) {
        self.profile.period_type = Some(ValueType {
            r#type: self.string(ty),
            unit: self.string(unit),
        });
        self.profile.period = period;
    }

    /// Sets the start time and duration, in nanoseconds.
    pub fn time(&mut self, time_nanos: i64, duration_nanos: i64) {
        self.profile.time_nanos = time_nanos;
        self.profile.duration_nanos = duration_nanos;
    }

    /// Adds a comment line.
    pub fn comment(&mut self, text: &str) {
        let i = self.string(text);
        self.profile.comment.push(i);
    }

    /// Adds a mapping and returns its id.
    pub fn mapping(&mut self, mut m: Mapping, filename: &str, build_id: &str) -> u64 {
        m.id = self.profile.mapping.len() as u64 + 1;
        m.filename = self.string(filename);
        m.build_id = self.string(build_id);
        let id = m.id;
        self.profile.mapping.push(m);
        id
    }

    fn function(&mut self, name: &str, file: Option<&str>) -> u64 {
        let name = self.string(name);
        let filename = file.map_or(0, |f| self.string(f));
        let next = self.profile.function.len() as u64 + 1;
        let id = *self.functions.entry((name, filename)).or_insert(next);
        if id == next {
            self.profile.function.push(Function {
                id,
                name,
                system_name: name,
                filename,
                start_line: 0,
            });
        }
        id
    }

    /// Returns the location id for `address` in `mapping_id`, creating it from `frames`
    /// (innermost first) on first use.
    pub fn location(&mut self, mapping_id: u64, address: u64, frames: &[FrameInfo]) -> u64 {
        if let Some(&id) = self.locations.get(&(mapping_id, address)) {
            return id;
        }
        let line = frames
            .iter()
            .map(|f| Line {
                function_id: self.function(&f.name, f.file.as_deref()),
                line: i64::from(f.line),
                column: 0,
            })
            .collect();
        let id = self.profile.location.len() as u64 + 1;
        self.profile.location.push(Location {
            id,
            mapping_id,
            address,
            line,
            is_folded: false,
        });
        self.locations.insert((mapping_id, address), id);
        id
    }

    /// A location of one named function at `address`, with no mapping.
    pub fn location_for_function(&mut self, name: &str, address: u64) -> u64 {
        let frame = FrameInfo {
            name: name.to_owned(),
            file: None,
            line: 0,
        };
        self.location(0, address, &[frame])
    }

    /// A string label.
    pub fn str_label(&mut self, key: &str, value: &str) -> Label {
        Label {
            key: self.string(key),
            str: self.string(value),
            num: 0,
            num_unit: 0,
        }
    }

    /// A numeric label.
    pub fn num_label(&mut self, key: &str, value: i64) -> Label {
        Label {
            key: self.string(key),
            str: 0,
            num: value,
            num_unit: 0,
        }
    }

    /// Adds a sample; `location_id` is leaf first and `value` has one entry per sample type.
    pub fn add_sample(&mut self, location_id: Vec<u64>, value: Vec<i64>, label: Vec<Label>) {
        self.profile.sample.push(Sample {
            location_id,
            value,
            label,
        });
    }

    /// The finished profile.
    pub fn finish(self) -> Profile {
        self.profile
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_profile() -> Profile {
        let mut b = ProfileBuilder::new(&[("samples", "count"), ("cpu", "nanoseconds")], 1);
        b.period("cpu", "nanoseconds", 10_000_000);
        let a = b.location_for_function("a", 1);
        let c = b.location_for_function("c", 2);
        let l = b.str_label("tag", "t");
        b.add_sample(vec![a, c], vec![2, 20], vec![l]);
        b.add_sample(vec![c], vec![1, 10], vec![l]);
        b.finish()
    }

    #[test]
    fn round_trips_through_gzip() {
        let p = sample_profile();
        let back = decode_gz(&encode_gz(&p).unwrap()).unwrap();
        assert_eq!(back, p);
        assert_eq!(back.string(back.default_sample_type), "cpu");
        assert_eq!(back.stack_names(&back.sample[0]), ["a", "c"]);
        assert_eq!(back.label_str(&back.sample[0], "tag"), Some("t"));
    }

    #[test]
    fn rejects_garbage_truncation_and_dangling_ids() {
        assert!(matches!(
            decode_gz(b"\x1f\x8bnot gzip"),
            Err(DecodeError::Gzip(_))
        ));
        let gz = encode_gz(&sample_profile()).unwrap();
        assert!(decode_gz(&gz[..gz.len() / 2]).is_err());
        assert!(decode_gz(&[0xff; 16]).is_err());

        let mut p = sample_profile();
        p.sample[0].location_id.push(99);
        assert!(matches!(validate(&p), Err(DecodeError::Invalid(m)) if m.contains("99")));
        let mut p = sample_profile();
        p.string_table[0] = "x".into();
        assert!(validate(&p).is_err());
        let mut p = sample_profile();
        p.location[1].id = p.location[0].id;
        assert!(validate(&p).is_err());
        let mut p = sample_profile();
        p.sample[0].label[0].str = 1000;
        assert!(validate(&p).is_err());
    }
}
