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

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

use labels::LabelMatch;
use load::{read, read_path, stacks, Selection, Stacks};
use threadprof_runtime::pprof::Profile;

/// Read the per-thread profiles written by the `threadprof` crate.
#[derive(Parser)]
#[command(name = "threadprof", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum, Default)]
enum SampleType {
    /// CPU time (where threads burn CPU).
    #[default]
    Cpu,
    /// Wall-clock time (where threads wait, too); needs wall sampling.
    Wall,
    /// Sample counts.
    Samples,
}

impl SampleType {
    fn name(self) -> &'static str {
        match self {
            SampleType::Cpu => "cpu",
            SampleType::Wall => "wall",
            SampleType::Samples => "samples",
        }
    }
}

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
    /// Which value to show.
    #[arg(long = "type", value_enum, default_value_t)]
    sample_type: SampleType,
}

impl Filter {
    fn selection(&self) -> Selection {
        Selection {
            sample_type: self.sample_type.name().to_owned(),
            thread: self.thread.clone(),
            tag: self.tag.clone(),
        }
    }

    /// The selected value of `profile`'s samples that pass every filter, by stack.
    fn stacks(&self, mut profile: Profile) -> Result<Stacks> {
        labels::retain_matching(&mut profile, &self.labels);
        Ok(stacks(&profile, &self.selection())?)
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Sort {
    Flat,
    Cum,
}

#[derive(Subcommand)]
enum Command {
    /// One row per dump in DIR: tag, samples, CPU and wall time, threads, span, age, drops.
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
    /// Collapsed stacks (`root;...;leaf VALUE`, time in µs) for any flame graph tool.
    Folded {
        path: PathBuf,
        #[command(flatten)]
        filter: Filter,
    },
    /// Per-function change of flat and cum share between two profiles.
    Diff {
        base: PathBuf,
        new: PathBuf,
        #[arg(short, default_value_t = 20)]
        n: usize,
        #[command(flatten)]
        filter: Filter,
    },
    /// Merge profiles into one file, labels kept.
    Merge {
        #[arg(required = true, num_args = 1..)]
        inputs: Vec<PathBuf>,
        /// Output file (.pb.gz).
        #[arg(short, long)]
        output: PathBuf,
    },
}

/// One profile for commands that draw a single picture: a file, or a directory's merged file.
fn single(path: &Path) -> Result<load::Loaded> {
    if path.is_dir() {
        read(&path.join(load::MERGED))
    } else {
        read(path)
    }
}

/// `top --by KEY`'s sections for one profile, in print order, and the values' unit.
fn top_sections(
    mut profile: Profile,
    filter: &Filter,
    key: &str,
) -> Result<(String, Vec<report::Section>)> {
    labels::retain_matching(&mut profile, &filter.labels);
    let sel = filter.selection();
    let groups = labels::take_groups(&mut profile, key);
    // The profile has no samples now: this only checks the sample type and reads its unit.
    let unit = stacks(&profile, &sel)?.unit;
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
            for (i, loaded) in read_path(&path)?.into_iter().enumerate() {
                if i > 0 {
                    writeln!(out)?;
                }
                let title = format!("{} ({})", loaded.name(), filter.sample_type.name());
                match &by {
                    None => {
                        let s = filter.stacks(loaded.profile)?;
                        report::top(&mut out, &title, &s, n, by_cum)?;
                    }
                    Some(key) => {
                        let (unit, sections) = top_sections(loaded.profile, &filter, key)?;
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
            let loaded = single(&path)?;
            let title = format!("{} ({})", loaded.name(), filter.sample_type.name());
            let s = filter.stacks(loaded.profile)?;
            let mut svg = Vec::new();
            report::flamegraph(&mut svg, &title, &s)?;
            std::fs::write(&output, svg)
                .with_context(|| format!("cannot write {}", output.display()))?;
        }
        Command::Folded { path, filter } => {
            let loaded = single(&path)?;
            for line in report::folded_lines(&filter.stacks(loaded.profile)?) {
                writeln!(out, "{line}")?;
            }
        }
        Command::Diff {
            base,
            new,
            n,
            filter,
        } => {
            let b = filter.stacks(single(&base)?.profile)?;
            let nw = filter.stacks(single(&new)?.profile)?;
            report::diff(&mut out, &b, &nw, n)?;
        }
        Command::Merge { inputs, output } => {
            let profiles: Result<Vec<_>> =
                inputs.iter().map(|p| read(p).map(|l| l.profile)).collect();
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
