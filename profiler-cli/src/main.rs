//! `threadprof`: list, print, draw, diff and merge the dumps written by the `threadprof` crate.
//!
//! Reads standard gzipped pprof files, so it also works on other tools' profiles. Bad input
//! gets one line on stderr and exit status 1; usage errors (including a `--label` without
//! `KEY=VALUE`) exit with status 2.

mod labels;
mod load;
mod merge;
mod report;

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

use labels::LabelMatch;
use load::{read, read_path, read_single, stacks, Kind, Loaded, Selection, Stacks};
use threadprof_runtime::pprof::Profile;

/// Read the per-thread profiles written by the `threadprof` crate.
#[derive(Parser)]
#[command(name = "threadprof", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The values `--type` names: the sample types of CPU dumps and of heap dumps (Go's names).
#[derive(Clone, Copy, ValueEnum)]
enum SampleType {
    /// CPU time (where threads burn CPU); CPU dumps.
    Cpu,
    /// Wall-clock time (where threads wait, too); CPU dumps, with wall sampling.
    Wall,
    /// Sample counts; CPU dumps.
    Samples,
    /// Objects allocated since the start, freed or not; heap dumps.
    #[value(name = "alloc_objects")]
    AllocObjects,
    /// Bytes allocated since the start, freed or not; heap dumps.
    #[value(name = "alloc_space")]
    AllocSpace,
    /// Objects allocated and not yet freed; heap dumps.
    #[value(name = "inuse_objects")]
    InuseObjects,
    /// Bytes allocated and not yet freed (what leaks grow); heap dumps.
    #[value(name = "inuse_space")]
    InuseSpace,
}

impl SampleType {
    /// The sample type's name in the profile.
    fn name(self) -> &'static str {
        match self {
            SampleType::Cpu => "cpu",
            SampleType::Wall => "wall",
            SampleType::Samples => "samples",
            SampleType::AllocObjects => "alloc_objects",
            SampleType::AllocSpace => "alloc_space",
            SampleType::InuseObjects => "inuse_objects",
            SampleType::InuseSpace => "inuse_space",
        }
    }

    /// The kind of dump that has this sample type.
    fn kind(self) -> Kind {
        Kind::of_sample_type(self.name())
    }
}

/// The sample type shown, if the profile has it, when neither `--type` nor the profile's
/// `default_sample_type` names one it has.
const FALLBACK_SAMPLE_TYPE: &str = "cpu";

#[derive(Args, Clone)]
struct Filter {
    /// Only samples of threads with this name (label `thread_name`).
    #[arg(long)]
    thread: Option<String>,
    /// Only samples with this tag (label `tag`).
    #[arg(long)]
    tag: Option<String>,
    /// Only samples whose label KEY is exactly VALUE, e.g. `route=/ingest` (repeatable).
    ///
    /// A sample without KEY does not match; with several `--label`, a sample must match all.
    /// Numeric labels (`thread_id`) compare as decimal text.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<LabelMatch>,
    /// Which value to show [default: the profile's default sample type: cpu for CPU dumps,
    /// inuse_space for heap dumps].
    ///
    /// Without `--type`: the type the profile's `default_sample_type` names, else `cpu`, else
    /// (as `go tool pprof`) its last type, which is `inuse_space` in Go's heap profiles.
    ///
    /// A heap type on a dump directory reads its heap dumps (`*.heap.pb.gz`); another type, or
    /// none, its CPU dumps (the heap dumps when it has no others).
    #[arg(long = "type", value_enum)]
    sample_type: Option<SampleType>,
}

impl Filter {
    /// The kind of dump `--type` asks for, if it was given.
    fn kind(&self) -> Option<Kind> {
        self.sample_type.map(SampleType::kind)
    }

    /// The sample type to show for `p`: `--type`; else the profile's `default_sample_type` if
    /// the profile has that type; else `cpu` if it has that; else its last type, as
    /// `go tool pprof` chooses (Go's heap profiles name no default: `inuse_space` is last).
    /// A profile without any type gets `cpu`, which `stacks` then reports as missing.
    fn type_for(&self, p: &Profile) -> String {
        if let Some(t) = self.sample_type {
            return t.name().to_owned();
        }
        let has = |t: &str| !t.is_empty() && p.sample_type_index(t).is_some();
        let default = p.string(p.default_sample_type);
        let last = p.sample_type.last().map(|t| p.string(t.r#type));
        [Some(default), Some(FALLBACK_SAMPLE_TYPE), last]
            .into_iter()
            .flatten()
            .find(|t| has(t))
            .unwrap_or(FALLBACK_SAMPLE_TYPE)
            .to_owned()
    }

    fn selection(&self, sample_type: &str) -> Selection {
        Selection {
            sample_type: sample_type.to_owned(),
            thread: self.thread.clone(),
            tag: self.tag.clone(),
        }
    }

    /// The sample type shown for `loaded` and the value of its samples that pass every filter,
    /// by stack. A sample type the profile lacks is an error naming the file.
    fn stacks(&self, loaded: Loaded) -> Result<(String, Stacks)> {
        let Loaded { path, mut profile } = loaded;
        let sample_type = self.type_for(&profile);
        labels::retain_matching(&mut profile, &self.labels);
        let s = stacks(&profile, &self.selection(&sample_type))
            .with_context(|| path.display().to_string())?;
        Ok((sample_type, s))
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Sort {
    Flat,
    Cum,
}

#[derive(Subcommand)]
enum Command {
    /// One row per dump in DIR: tag, samples, CPU and wall time, threads, span, age, drops;
    /// then heap dumps: tag, in-use and allocated bytes, threads, span, age, drops.
    Ls { dir: PathBuf },
    /// The hottest functions (like `go tool pprof -top`); PATH is a file or a dump directory.
    Top {
        path: PathBuf,
        /// How many functions to show.
        #[arg(short, default_value_t = 20)]
        n: usize,
        /// Order by flat (own) or cum (own + callees) value.
        #[arg(long, value_enum, default_value_t = Sort::Flat)]
        sort: Sort,
        /// One section per value of label KEY, e.g. `route`, biggest total first.
        ///
        /// Each is headed `KEY=value: total T, P% of W` (W: the total of all sections) and
        /// holds the usual table, its shares of the section's own total. Samples without KEY
        /// come last, under `KEY=(none)`; sections with a zero total are left out. The filters
        /// apply first. Numeric labels (`thread_id`) work too.
        #[arg(long, value_name = "KEY", value_parser = labels::parse_group_key)]
        by: Option<String>,
        #[command(flatten)]
        filter: Filter,
    },
    /// An interactive SVG flame graph.
    Flamegraph {
        path: PathBuf,
        /// Output file.
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        filter: Filter,
    },
    /// Collapsed stacks (`root;...;leaf VALUE`, time in µs, bytes and counts as they are) for
    /// any flame graph tool.
    Folded {
        path: PathBuf,
        #[command(flatten)]
        filter: Filter,
    },
    /// Per-function change between two profiles: share of each one's total, and value
    /// (e.g. the bytes a function's in-use memory grew by).
    ///
    /// Heap types are ordered by the change in flat value (the functions whose own memory grew
    /// or shrank most first), as `go tool pprof -diff_base -top`; CPU types by the change in
    /// share, since CPU dumps cover different spans.
    Diff {
        base: PathBuf,
        new: PathBuf,
        #[arg(short, default_value_t = 20)]
        n: usize,
        #[command(flatten)]
        filter: Filter,
    },
    /// Merge profiles of one kind (CPU or heap) into one file, sample types and labels kept.
    Merge {
        #[arg(required = true, num_args = 1..)]
        inputs: Vec<PathBuf>,
        /// Output file (.pb.gz).
        #[arg(short, long)]
        output: PathBuf,
    },
}

/// `top --by KEY`'s sections for one profile, in print order, and the values' unit.
fn top_sections(
    path: &Path,
    mut profile: Profile,
    sample_type: &str,
    filter: &Filter,
    key: &str,
) -> Result<(String, Vec<report::Section>)> {
    labels::retain_matching(&mut profile, &filter.labels);
    let sel = filter.selection(sample_type);
    let groups = labels::take_groups(&mut profile, key);
    // The profile has no samples now: this only checks the sample type and reads its unit.
    let unit = stacks(&profile, &sel)
        .with_context(|| path.display().to_string())?
        .unit;
    let mut sections = Vec::new();
    for group in groups {
        profile.sample = group.samples;
        let group_stacks = stacks(&profile, &sel)?;
        if group_stacks.total() != 0 {
            sections.push(report::Section {
                value: group.value,
                stacks: group_stacks,
            });
        }
    }
    // Biggest total first, ties by value; the samples without the key last.
    sections.sort_by_cached_key(|s| {
        (
            s.value.is_none(),
            std::cmp::Reverse(s.stacks.total()),
            s.value.clone(),
        )
    });
    Ok((unit, sections))
}

fn run(cli: Cli) -> Result<()> {
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    match cli.command {
        Command::Ls { dir } => {
            let files: Result<Vec<_>> = load::dir_files(&dir, true)?
                .iter()
                .map(|p| read(p))
                .collect();
            report::ls(&mut out, &files?)?;
        }
        Command::Top {
            path,
            n,
            sort,
            by,
            filter,
        } => {
            let by_cum = matches!(sort, Sort::Cum);
            for (i, loaded) in read_path(&path, filter.kind())?.into_iter().enumerate() {
                if i > 0 {
                    writeln!(out)?;
                }
                let name = loaded.name();
                match &by {
                    None => {
                        let (sample_type, s) = filter.stacks(loaded)?;
                        let title = format!("{name} ({sample_type})");
                        report::top(&mut out, &title, &s, n, by_cum)?;
                    }
                    Some(key) => {
                        let Loaded { path, profile } = loaded;
                        let sample_type = filter.type_for(&profile);
                        let (unit, sections) =
                            top_sections(&path, profile, &sample_type, &filter, key)?;
                        let title = format!("{name} ({sample_type})");
                        report::top_by(&mut out, &title, key, &unit, &sections, n, by_cum)?;
                    }
                }
            }
        }
        Command::Flamegraph {
            path,
            output,
            filter,
        } => {
            let loaded = read_single(&path, filter.kind())?;
            let name = loaded.name();
            let (sample_type, s) = filter.stacks(loaded)?;
            let title = format!("{name} ({sample_type})");
            let mut svg = Vec::new();
            report::flamegraph(&mut svg, &title, &s)?;
            std::fs::write(&output, svg)
                .with_context(|| format!("cannot write {}", output.display()))?;
        }
        Command::Folded { path, filter } => {
            let (_, s) = filter.stacks(read_single(&path, filter.kind())?)?;
            for line in report::folded_lines(&s) {
                writeln!(out, "{line}")?;
            }
        }
        Command::Diff {
            base,
            new,
            n,
            filter,
        } => {
            let (base_type, b) = filter.stacks(read_single(&base, filter.kind())?)?;
            let (new_type, nw) = filter.stacks(read_single(&new, filter.kind())?)?;
            if base_type != new_type {
                bail!(
                    "{} shows {base_type} and {} shows {new_type} by default; \
                     choose one with --type",
                    base.display(),
                    new.display()
                );
            }
            let order = match Kind::of_sample_type(&new_type) {
                Kind::Heap => report::DiffOrder::Value,
                Kind::Cpu => report::DiffOrder::Share,
            };
            report::diff(&mut out, &b, &nw, n, order)?;
        }
        Command::Merge { inputs, output } => {
            let profiles: Result<Vec<_>> = inputs.iter().map(|p| read(p)).collect();
            let merged = merge::merge(&profiles?)?;
            let bytes = threadprof_runtime::pprof::encode_gz(&merged)?;
            std::fs::write(&output, bytes)
                .with_context(|| format!("cannot write {}", output.display()))?;
        }
    }
    out.flush()?;
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A closed pipe (`threadprof top ... | head`) is not an error worth a message.
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            {
                return ExitCode::SUCCESS;
            }
            eprintln!("threadprof: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
