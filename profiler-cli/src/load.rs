//! Reading dumps: files or directories, which kind of dump (CPU or heap) a file is, and values
//! for people.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use threadprof_runtime::pprof::{decode_gz, Profile};

/// What a dump holds: CPU (and wall) time, or heap memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `{tag}.pb.gz`: sample types `samples`, `cpu`, maybe `wall`.
    Cpu,
    /// `{tag}.heap.pb.gz`: sample types `alloc_objects`, `alloc_space`, `inuse_objects` and
    /// `inuse_space`, as Go's heap profile.
    Heap,
}

impl Kind {
    /// `CPU` or `heap`, as messages say it.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Cpu => "CPU",
            Kind::Heap => "heap",
        }
    }

    /// The file name ending of this kind of dump.
    fn suffix(self) -> &'static str {
        match self {
            Kind::Cpu => ".pb.gz",
            Kind::Heap => ".heap.pb.gz",
        }
    }

    /// The merged dump of this kind in a dump directory.
    fn merged(self) -> &'static str {
        match self {
            Kind::Cpu => "_merged.pb.gz",
            Kind::Heap => "_merged.heap.pb.gz",
        }
    }

    /// The kind of dump that has sample type `name`: heap for Go's heap types, else CPU.
    pub fn of_sample_type(name: &str) -> Kind {
        if HEAP_TYPES.contains(&name) {
            Kind::Heap
        } else {
            Kind::Cpu
        }
    }

    /// The kind of profile `p` is, by its sample types (whatever its file is called): heap if
    /// it has one of the heap types, else CPU.
    pub fn of_profile(p: &Profile) -> Kind {
        let heap = p
            .sample_type
            .iter()
            .any(|t| Kind::of_sample_type(p.string(t.r#type)) == Kind::Heap);
        if heap {
            Kind::Heap
        } else {
            Kind::Cpu
        }
    }
}

/// The sample types of heap profiles, in the order Go writes them.
const HEAP_TYPES: [&str; 4] = [
    "alloc_objects",
    "alloc_space",
    "inuse_objects",
    "inuse_space",
];

/// A profile and where it came from.
pub struct Loaded {
    pub path: PathBuf,
    pub profile: Profile,
}

impl Loaded {
    /// The tag this file holds: the file name without `.heap.pb.gz` or `.pb.gz`.
    pub fn name(&self) -> String {
        let file = self
            .path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned());
        let file = file.unwrap_or_default();
        [Kind::Heap.suffix(), Kind::Cpu.suffix()]
            .iter()
            .find_map(|s| file.strip_suffix(s))
            .unwrap_or(&file)
            .to_owned()
    }
}

/// Reads and validates one profile file.
pub fn read(path: &Path) -> Result<Loaded> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.is_empty() {
        bail!("{} is empty", path.display());
    }
    let profile =
        decode_gz(&bytes).with_context(|| format!("{} is not a valid profile", path.display()))?;
    Ok(Loaded {
        path: path.to_owned(),
        profile,
    })
}

/// The `*.pb.gz` files of a directory, sorted, the merged ones last (or left out).
pub fn dir_files(dir: &Path, with_merged: bool) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read directory {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.to_string_lossy().ends_with(".pb.gz"))
        .filter(|p| {
            !p.file_name()
                .is_some_and(|f| f.to_string_lossy().starts_with('.'))
        })
        .collect();
    let is_merged = |p: &Path| p.ends_with(Kind::Cpu.merged()) || p.ends_with(Kind::Heap.merged());
    files.sort_by_key(|p| (is_merged(p), p.clone()));
    if !with_merged {
        files.retain(|p| !is_merged(p));
    }
    if files.is_empty() {
        bail!("no profiles (*.pb.gz) in {}", dir.display());
    }
    Ok(files)
}

/// PATH as given on the command line: one file, or every per-tag profile of `kind` in a
/// directory. Without a kind, a directory's CPU profiles, or its heap profiles if it has no
/// CPU ones. The kind of a file in a directory is read from its sample types.
pub fn read_path(path: &Path, kind: Option<Kind>) -> Result<Vec<Loaded>> {
    if !path.is_dir() {
        return Ok(vec![read(path)?]);
    }
    let all = dir_files(path, false)?
        .iter()
        .map(|p| read(p))
        .collect::<Result<Vec<_>>>()?;
    let kind = kind.unwrap_or_else(|| {
        if all
            .iter()
            .any(|l| Kind::of_profile(&l.profile) == Kind::Cpu)
        {
            Kind::Cpu
        } else {
            Kind::Heap
        }
    });
    let of_kind: Vec<Loaded> = all
        .into_iter()
        .filter(|l| Kind::of_profile(&l.profile) == kind)
        .collect();
    if of_kind.is_empty() {
        bail!("no {} profiles in {}", kind.name(), path.display());
    }
    Ok(of_kind)
}

/// One profile for commands that need a single one: a file, or a directory's merged dump of
/// `kind` (`_merged.pb.gz` or `_merged.heap.pb.gz`). Without a kind, the CPU one, or the heap
/// one if only that exists.
pub fn read_single(path: &Path, kind: Option<Kind>) -> Result<Loaded> {
    if !path.is_dir() {
        return read(path);
    }
    let kind = kind.unwrap_or_else(|| {
        let heap_only =
            !path.join(Kind::Cpu.merged()).exists() && path.join(Kind::Heap.merged()).exists();
        if heap_only {
            Kind::Heap
        } else {
            Kind::Cpu
        }
    });
    read(&path.join(kind.merged()))
}

pub use threadprof_runtime::flame::{stacks, Selection, Stacks};

/// A value for people, by its unit: seconds or milliseconds for nanoseconds, B, KiB, MiB or
/// GiB for bytes, else (counts) the number.
pub fn human(v: i64, unit: &str) -> String {
    match unit {
        _ if v == 0 => "0".into(),
        "nanoseconds" => {
            let s = v as f64 / 1e9;
            if s.abs() >= 1.0 {
                format!("{s:.2}s")
            } else {
                format!("{:.1}ms", s * 1e3)
            }
        }
        "bytes" => {
            if v.unsigned_abs() < 1024 {
                return format!("{v}B");
            }
            const UNITS: [&str; 3] = ["KiB", "MiB", "GiB"];
            let mut x = v as f64 / 1024.0;
            let mut unit = 0;
            // Up a unit while the value would print as 1024.00 or more.
            while unit + 1 < UNITS.len() && (x.abs() * 100.0).round() >= 102_400.0 {
                x /= 1024.0;
                unit += 1;
            }
            format!("{x:.2}{}", UNITS[unit])
        }
        _ => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_in_their_unit() {
        let bytes = |v| human(v, "bytes");
        assert_eq!(bytes(0), "0");
        assert_eq!(bytes(1023), "1023B");
        assert_eq!(bytes(1024), "1.00KiB");
        assert_eq!(bytes(1536), "1.50KiB");
        assert_eq!(bytes(1024 * 1024 - 1), "1.00MiB");
        assert_eq!(bytes(1023 * 1024), "1023.00KiB");
        assert_eq!(bytes(1024 * 1024), "1.00MiB");
        assert_eq!(bytes(90 * 1024 * 1024), "90.00MiB");
        assert_eq!(bytes(3 << 30), "3.00GiB");
        assert_eq!(bytes(5 << 40), "5120.00GiB");
        assert_eq!(bytes(-2 * 1024 * 1024), "-2.00MiB");
        assert_eq!(bytes(-5), "-5B");
        assert_eq!(human(123_456, "count"), "123456");
        assert_eq!(human(1_500_000_000, "nanoseconds"), "1.50s");
        assert_eq!(human(30_000_000, "nanoseconds"), "30.0ms");
        assert_eq!(human(0, "nanoseconds"), "0");
    }

    #[test]
    fn tags_from_file_names() {
        let loaded = |p: &str| Loaded {
            path: p.into(),
            profile: Profile::default(),
        };
        assert_eq!(loaded("d/web.heap.pb.gz").name(), "web");
        assert_eq!(loaded("d/web.pb.gz").name(), "web");
        assert_eq!(loaded("d/mem.pprof").name(), "mem.pprof");
    }
}
