//! Reading dumps: files or directories, label filters, and stacks as function names.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use threadprof_runtime::pprof::{decode_gz, Profile};

/// Name of the merged profile in a dump directory.
pub const MERGED: &str = "_merged.pb.gz";

/// A profile and where it came from.
pub struct Loaded {
    pub path: PathBuf,
    pub profile: Profile,
}

impl Loaded {
    /// The tag this file holds: the file name without `.pb.gz`.
    pub fn name(&self) -> String {
        let file = self
            .path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned());
        let file = file.unwrap_or_default();
        file.strip_suffix(".pb.gz").unwrap_or(&file).to_owned()
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

/// The `*.pb.gz` files of a directory, sorted, the merged one last (or left out).
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
    files.sort_by_key(|p| (p.ends_with(MERGED), p.clone()));
    if !with_merged {
        files.retain(|p| !p.ends_with(MERGED));
    }
    if files.is_empty() {
        bail!("no profiles (*.pb.gz) in {}", dir.display());
    }
    Ok(files)
}

/// PATH as given on the command line: one file, or every per-tag file of a directory.
pub fn read_path(path: &Path) -> Result<Vec<Loaded>> {
    if path.is_dir() {
        dir_files(path, false)?.iter().map(|p| read(p)).collect()
    } else {
        Ok(vec![read(path)?])
    }
}

pub use threadprof_runtime::flame::{stacks, Selection, Stacks};

/// A value for people: seconds for nanoseconds, else the number.
pub fn human(v: i64, unit: &str) -> String {
    match unit {
        "nanoseconds" if v == 0 => "0".into(),
        "nanoseconds" => {
            let s = v as f64 / 1e9;
            if s.abs() >= 1.0 {
                format!("{s:.2}s")
            } else {
                format!("{:.1}ms", s * 1e3)
            }
        }
        _ => v.to_string(),
    }
}
