//! The `threadprof` command on dumps written by the real runtime, and on bad input.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use threadprof::pprof::{decode_gz, encode_gz, Profile, ProfileBuilder};

mod common;
use common::{cli, top_row};

#[inline(never)]
fn cli_left_work(n: u64) -> u64 {
    let mut x = black_box(1u64);
    for i in 0..n {
        x = x.rotate_left(5) ^ i;
    }
    black_box(x)
}

#[inline(never)]
fn cli_right_work(n: u64) -> u64 {
    let mut x = black_box(2u64);
    for i in 0..n {
        x = x.rotate_right(3).wrapping_add(i);
    }
    black_box(x)
}

fn burn(cpu: Duration, f: fn(u64) -> u64) {
    let start = Instant::now();
    // Wall time is a fine proxy here: the threads are alone on their core most of the time.
    while start.elapsed() < cpu {
        black_box(f(10_000));
    }
}

/// Dumps written by the real runtime: tags `left` and `right`.
fn dumps() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, threadprof::Profiler)> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let handle = threadprof::Profiler::builder()
            .output_dir(dir.path())
            .dump_interval(Duration::from_secs(3600))
            .frequency(499)
            .start()
            .unwrap();
        let l = threadprof::spawn("left", || burn(Duration::from_millis(300), cli_left_work));
        let r = threadprof::spawn("right", || burn(Duration::from_millis(300), cli_right_work));
        l.join().unwrap();
        r.join().unwrap();
        assert!(threadprof::flush());
        (dir, handle)
    })
    .0
    .path()
}

fn file(tag: &str) -> String {
    dumps().join(format!("{tag}.pb.gz")).display().to_string()
}

fn decode(path: &str) -> Profile {
    decode_gz(&std::fs::read(path).unwrap()).unwrap()
}

fn total(p: &Profile, ty: &str) -> i64 {
    let i = p.sample_type_index(ty).unwrap();
    p.sample.iter().map(|s| s.value[i]).sum()
}

#[test]
fn ls_agrees_with_the_files() {
    let (ok, out, err) = cli(&["ls", dumps().to_str().unwrap()]);
    assert!(ok, "{err}");
    for tag in ["left", "right", "_merged"] {
        let p = decode(&file(tag));
        let row = out
            .lines()
            .find(|l| l.starts_with(&format!("{tag} ")))
            .unwrap_or_else(|| panic!("{out}"));
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols[1], total(&p, "samples").to_string(), "{row}");
    }
}

#[test]
fn top_shows_each_threads_hot_function() {
    let (ok, out, err) = cli(&["top", &file("left"), "-n", "100"]);
    assert!(ok, "{err}");
    // Debug builds leave iterator internals un-inlined, so look at this file's functions.
    let first = out
        .lines()
        .find(|l| l.contains(" cli::"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(first.ends_with("cli::cli_left_work"), "{out}");
    assert!(!out.contains("cli_right_work"));
    // A directory gives one section per tag, merged file excluded.
    let (ok, out, _) = cli(&["top", dumps().to_str().unwrap(), "-n", "1"]);
    assert!(ok);
    assert_eq!(out.matches(" (cpu): total").count(), 2, "{out}");
    // Label filters.
    let merged = file("_merged");
    let (_, out, _) = cli(&["top", &merged, "--tag", "right", "-n", "100"]);
    assert!(
        out.contains("cli_right_work") && !out.contains("cli_left_work"),
        "{out}"
    );
    let (_, out, _) = cli(&[
        "top", &merged, "--thread", "left", "--sort", "cum", "-n", "50",
    ]);
    assert!(
        out.contains("cli_left_work") && !out.contains("cli_right_work"),
        "{out}"
    );
    let (ok, _, err) = cli(&["top", &merged, "--type", "wall"]);
    assert!(!ok && err.contains("no sample type \"wall\""), "{err}");
}

#[test]
fn folded_and_flamegraph_cover_every_sample() {
    let merged = file("_merged");
    let (ok, out, _) = cli(&["folded", &merged]);
    assert!(ok);
    let sum: i64 = out
        .lines()
        .map(|l| l.rsplit(' ').next().unwrap().parse::<i64>().unwrap())
        .sum();
    let cpu_us = total(&decode(&merged), "cpu") / 1000;
    assert!(
        (sum - cpu_us).abs() <= out.lines().count() as i64,
        "{sum} vs {cpu_us}"
    );
    assert!(out.lines().all(|l| l.contains(';')));
    let out_dir = tempfile::tempdir().unwrap();
    let svg = out_dir.path().join("flame.svg");
    let (ok, _, err) = cli(&["flamegraph", &merged, "-o", svg.to_str().unwrap()]);
    assert!(ok, "{err}");
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(
        text.starts_with("<?xml")
            && text.contains("cli_left_work")
            && text.contains("cli_right_work")
    );
}

#[test]
fn diff_shows_opposite_shifts() {
    let (ok, out, err) = cli(&["diff", &file("left"), &file("right"), "-n", "50"]);
    assert!(ok, "{err}");
    let row = |f: &str| {
        out.lines()
            .find(|l| l.ends_with(f))
            .unwrap_or_else(|| panic!("{f} in {out}"))
            .to_owned()
    };
    assert!(row("cli::cli_left_work").contains("-"), "{out}");
    assert!(row("cli::cli_right_work").contains("+"), "{out}");
}

#[test]
fn merge_keeps_samples_and_labels() {
    let out_dir = tempfile::tempdir().unwrap();
    let out_path = out_dir.path().join("merged_by_cli.pb.gz");
    let (ok, _, err) = cli(&[
        "merge",
        &file("left"),
        &file("right"),
        "-o",
        out_path.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let m = decode(out_path.to_str().unwrap());
    let (l, r) = (decode(&file("left")), decode(&file("right")));
    assert_eq!(total(&m, "cpu"), total(&l, "cpu") + total(&r, "cpu"));
    let tags: std::collections::BTreeSet<&str> = m
        .sample
        .iter()
        .filter_map(|s| m.label_str(s, "tag"))
        .collect();
    assert_eq!(tags.into_iter().collect::<Vec<_>>(), ["left", "right"]);
}

#[test]
fn recursion_does_not_double_count_cum() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = ProfileBuilder::new(&[("samples", "count"), ("cpu", "nanoseconds")], 1);
    let f = b.location_for_function("recurse", 1);
    let main = b.location_for_function("main", 2);
    b.add_sample(vec![f, f, f, main], vec![1, 1_000_000_000], vec![]);
    let path = dir.path().join("rec.pb.gz");
    std::fs::write(&path, encode_gz(&b.finish()).unwrap()).unwrap();
    let (ok, out, _) = cli(&["top", path.to_str().unwrap()]);
    assert!(ok);
    let row = out.lines().find(|l| l.ends_with("recurse")).unwrap();
    assert!(
        row.contains("1.00s 100.00%   1.00s 100.00%")
            || row.split_whitespace().nth(3) == Some("1.00s"),
        "{out}"
    );
    assert!(!out.contains("3.00s"), "{out}");
}

/// A hand-built profile whose samples carry user labels: `route`, `span_name`, and a numeric
/// `thread_id`. Totals: 20 samples, 180 ms of CPU.
fn labelled_profile(dir: &Path, name: &str) -> String {
    let mut b = ProfileBuilder::new(&[("samples", "count"), ("cpu", "nanoseconds")], 1);
    let main = b.location_for_function("main", 1);
    // (leaf under `main`, samples, cpu in ms, string labels, thread_id)
    #[rustfmt::skip]
    let rows = [
        ("ingest_parse", 3, 30, "tag=web route=/ingest span_name=handle_request", 11),
        ("ingest_write", 2, 20, "tag=web route=/ingest span_name=flush", 11),
        ("query_scan", 4, 40, "tag=web route=/query span_name=handle_request", 11),
        ("query_scan", 6, 60, "tag=batch route=/query span_name=handle_request", 22),
        ("idle_poll", 3, 30, "tag=web", 11),
        ("health_check", 2, 0, "tag=web route=/health", 11),
    ];
    for (i, (func, samples, cpu_ms, labels, tid)) in rows.into_iter().enumerate() {
        let leaf = b.location_for_function(func, 100 + i as u64);
        let mut labels: Vec<_> = labels
            .split(' ')
            .map(|kv| kv.split_once('=').unwrap())
            .map(|(k, v)| b.str_label(k, v))
            .collect();
        labels.push(b.num_label("thread_id", tid));
        b.add_sample(vec![leaf, main], vec![samples, cpu_ms * 1_000_000], labels);
    }
    let path = dir.join(format!("{name}.pb.gz"));
    std::fs::write(&path, encode_gz(&b.finish()).unwrap()).unwrap();
    path.display().to_string()
}

/// `threadprof top` output parsed back: the total of its first line, and (flat, name) rows.
fn top_rows(out: &str) -> (String, Vec<(String, String)>) {
    let total = out
        .lines()
        .next()
        .and_then(|l| l.split(": total ").nth(1))
        .unwrap_or_else(|| panic!("{out}"))
        .to_owned();
    let rows = out
        .lines()
        .skip(2)
        .map(|l| {
            let (cols, name) = top_row(l);
            (cols[0].to_owned(), name.to_owned())
        })
        .collect();
    (total, rows)
}

/// One section of `top --by KEY` output: its heading after `KEY=` and its table rows as
/// (flat, flat%, name).
#[derive(Debug)]
struct BySection {
    heading: String,
    rows: Vec<(String, String, String)>,
}

/// Parses `top --by KEY` output for one profile: the title line, then the sections.
fn by_sections(out: &str, key: &str) -> (String, Vec<BySection>) {
    let mut lines = out.lines();
    let title = lines.next().unwrap_or_else(|| panic!("{out}")).to_owned();
    let mut sections: Vec<BySection> = Vec::new();
    let prefix = format!("{key}=");
    for l in lines {
        if l.is_empty() || l.trim_start().starts_with("flat ") {
            continue;
        }
        if let Some(heading) = l.strip_prefix(&prefix) {
            sections.push(BySection {
                heading: heading.to_owned(),
                rows: Vec::new(),
            });
            continue;
        }
        let (cols, name) = top_row(l);
        let section = sections.last_mut().unwrap_or_else(|| panic!("{out}"));
        section
            .rows
            .push((cols[0].into(), cols[1].into(), name.into()));
    }
    (title, sections)
}

#[test]
fn label_filters_keep_only_matching_samples() {
    let dir = tempfile::tempdir().unwrap();
    let p = labelled_profile(dir.path(), "web");
    let top = |extra: &[&str]| {
        let mut args = vec!["top", p.as_str(), "--type", "samples", "-n", "50"];
        args.extend_from_slice(extra);
        let (ok, out, err) = cli(&args);
        assert!(ok, "{args:?}: {err}");
        top_rows(&out)
    };
    let pairs = |rows: &[(&str, &str)]| -> Vec<(String, String)> {
        rows.iter()
            .map(|(v, f)| (v.to_string(), f.to_string()))
            .collect()
    };
    // No filter: everything.
    assert_eq!(top(&[]).0, "20");
    let (total, rows) = top(&["--label", "route=/ingest"]);
    assert_eq!(total, "5");
    assert_eq!(
        rows,
        pairs(&[("3", "ingest_parse"), ("2", "ingest_write"), ("0", "main")])
    );
    // Combined with --tag, and several --label flags must all match.
    let (total, rows) = top(&["--label", "route=/query", "--tag", "web"]);
    assert_eq!(total, "4");
    assert_eq!(rows, pairs(&[("4", "query_scan"), ("0", "main")]));
    assert_eq!(top(&["--label", "route=/query"]).0, "10");
    let (total, rows) = top(&[
        "--label",
        "route=/ingest",
        "--label",
        "span_name=handle_request",
    ]);
    assert_eq!(total, "3");
    assert_eq!(rows, pairs(&[("3", "ingest_parse"), ("0", "main")]));
    // A sample without the key never matches; nor does a value that is only a prefix.
    assert_eq!(top(&["--label", "span_name=flush"]).0, "2");
    assert_eq!(top(&["--label", "route=/"]).0, "0");
    assert_eq!(top(&["--label", "route=/nope"]).1, vec![]);
    // Numeric labels compare as decimal text.
    assert_eq!(top(&["--label", "thread_id=22"]).0, "6");
    // CPU values: 30 ms + 20 ms.
    let (ok, out, err) = cli(&["top", &p, "--label", "route=/ingest"]);
    assert!(ok, "{err}");
    assert_eq!(top_rows(&out).0, "50.0ms", "{out}");

    // The other commands that take the filters.
    let (ok, out, err) = cli(&["folded", &p, "--label", "route=/ingest"]);
    assert!(ok, "{err}");
    assert_eq!(out, "main;ingest_parse 30000\nmain;ingest_write 20000\n");
    let other = labelled_profile(dir.path(), "other");
    let (ok, out, err) = cli(&[
        "diff",
        &p,
        &other,
        "--label",
        "route=/query",
        "--label",
        "tag=batch",
        "--type",
        "samples",
    ]);
    assert!(ok, "{err}");
    assert!(out.starts_with("base total 6, new total 6 "), "{out}");
    let svg = dir.path().join("flame.svg");
    let (ok, _, err) = cli(&[
        "flamegraph",
        &p,
        "--label",
        "route=/health",
        "-o",
        svg.to_str().unwrap(),
    ]);
    // /health has no CPU time: nothing to draw, which proves the filter reached it.
    assert!(!ok && err.contains("nothing to draw"), "{err}");
    let (ok, _, err) = cli(&[
        "flamegraph",
        &p,
        "--label",
        "route=/query",
        "-o",
        svg.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.contains("query_scan") && !text.contains("ingest_parse"));
}

#[test]
fn top_by_label_prints_one_section_per_value() {
    let dir = tempfile::tempdir().unwrap();
    let p = labelled_profile(dir.path(), "web");
    let by = |extra: &[&str]| {
        let mut args = vec!["top", p.as_str(), "-n", "50"];
        args.extend_from_slice(extra);
        let (ok, out, err) = cli(&args);
        assert!(ok, "{args:?}: {err}");
        let key = args[args.iter().position(|a| *a == "--by").unwrap() + 1];
        by_sections(&out, key)
    };
    let headings = |s: &[BySection]| s.iter().map(|s| s.heading.clone()).collect::<Vec<_>>();

    // Sample counts: biggest first, the samples without `route` last though bigger than /health.
    let (title, s) = by(&["--by", "route", "--type", "samples"]);
    assert_eq!(title, "web (samples): total 20, by route");
    assert_eq!(
        headings(&s),
        [
            "/query: total 10, 50.00% of 20",
            "/ingest: total 5, 25.00% of 20",
            "/health: total 2, 10.00% of 20",
            "(none): total 3, 15.00% of 20",
        ]
    );
    // Each table is the normal top of its samples, shares of the section's own total.
    let row = |f: &str, p: &str, n: &str| (f.to_string(), p.to_string(), n.to_string());
    assert_eq!(
        s[1].rows,
        [
            row("3", "60.00%", "ingest_parse"),
            row("2", "40.00%", "ingest_write"),
            row("0", "0.00%", "main"),
        ]
    );
    assert_eq!(s[0].rows[0], row("10", "100.00%", "query_scan"));
    assert_eq!(s[3].rows[0], row("3", "100.00%", "idle_poll"));

    // CPU: /health has none and is left out.
    let (title, s) = by(&["--by", "route"]);
    assert_eq!(title, "web (cpu): total 180.0ms, by route");
    assert_eq!(
        headings(&s),
        [
            "/query: total 100.0ms, 55.56% of 180.0ms",
            "/ingest: total 50.0ms, 27.78% of 180.0ms",
            "(none): total 30.0ms, 16.67% of 180.0ms",
        ]
    );

    // With filters: --tag, and --label (which here leaves no sample without `route`).
    let (_, s) = by(&["--by", "route", "--type", "samples", "--tag", "web"]);
    assert_eq!(
        headings(&s),
        [
            "/ingest: total 5, 35.71% of 14",
            "/query: total 4, 28.57% of 14",
            "/health: total 2, 14.29% of 14",
            "(none): total 3, 21.43% of 14",
        ]
    );
    let (_, s) = by(&[
        "--by",
        "route",
        "--type",
        "samples",
        "--label",
        "span_name=handle_request",
    ]);
    assert_eq!(
        headings(&s),
        [
            "/query: total 10, 76.92% of 13",
            "/ingest: total 3, 23.08% of 13"
        ]
    );
    assert_eq!(s[1].rows[0], row("3", "100.00%", "ingest_parse"));

    // Another key, and a numeric one.
    let (_, s) = by(&[
        "--by",
        "span_name",
        "--type",
        "samples",
        "--label",
        "route=/ingest",
    ]);
    assert_eq!(
        headings(&s),
        [
            "handle_request: total 3, 60.00% of 5",
            "flush: total 2, 40.00% of 5"
        ]
    );
    let (_, s) = by(&["--by", "thread_id", "--type", "samples"]);
    assert_eq!(
        headings(&s),
        ["11: total 14, 70.00% of 20", "22: total 6, 30.00% of 20"]
    );
    // A key no sample has: everything is in the one (none) section.
    let (_, s) = by(&["--by", "tenant", "--type", "samples"]);
    assert_eq!(headings(&s), ["(none): total 20, 100.00% of 20"]);
}

#[test]
fn top_by_tag_matches_the_per_tag_files() {
    let (ok, out, err) = cli(&["top", &file("_merged"), "--by", "tag", "--type", "samples"]);
    assert!(ok, "{err}");
    let (_, sections) = by_sections(&out, "tag");
    for tag in ["left", "right"] {
        let want = format!("{tag}: total {}, ", total(&decode(&file(tag)), "samples"));
        assert!(
            sections.iter().any(|s| s.heading.starts_with(&want)),
            "{want} in {out}"
        );
    }
    // A directory: one title per file, each with its own sections.
    let (ok, out, err) = cli(&["top", dumps().to_str().unwrap(), "--by", "thread_name"]);
    assert!(ok, "{err}");
    assert_eq!(out.matches(" (cpu): total ").count(), 2, "{out}");
    assert!(
        out.contains("\nthread_name=left: total ") && out.contains("\nthread_name=right: total ")
    );
}

#[test]
fn bad_label_syntax_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = labelled_profile(dir.path(), "web");
    for (args, needle) in [
        (vec!["top", &p, "--label", "route"], "no '=' found"),
        (vec!["top", &p, "--label", "=/ingest"], "the key is empty"),
        (vec!["top", &p, "--label", "route="], "is empty"),
        (vec!["folded", &p, "--label", "route"], "no '=' found"),
        (
            vec!["top", &p, "--by", "route=/ingest"],
            "use --label route=/ingest",
        ),
        (vec!["top", &p, "--by", ""], "it is empty"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_threadprof"))
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        // Usage errors exit with status 2, as clap's own do; no stdout.
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(err.contains(needle), "{args:?}: {err}");
        let flag = if args.contains(&"--by") {
            "--by <KEY>"
        } else {
            "--label <KEY=VALUE>"
        };
        assert!(err.contains(flag), "{args:?}: {err}");
    }
}

#[test]
fn bad_input_gets_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| -> PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let good = std::fs::read(file("left")).unwrap();
    let mut dangling = decode(&file("left"));
    dangling.sample[0].location_id.push(987_654);
    let cases: Vec<(PathBuf, &str)> = vec![
        (dir.path().join("missing.pb.gz"), "cannot read"),
        (
            write("plain.pb.gz", b"hello, not gzip"),
            "not a pprof profile",
        ),
        (write("empty.pb.gz", b""), "is empty"),
        (
            write("gz-not-pprof.pb.gz", &flate2_gzip(b"\xff\xff\xff\xff")),
            "not a pprof profile",
        ),
        (write("truncated.pb.gz", &good[..good.len() / 2]), "gzip"),
        (
            write("dangling.pb.gz", &encode_gz(&dangling).unwrap()),
            "missing location 987654",
        ),
    ];
    for (path, needle) in cases {
        let (ok, out, err) = cli(&["top", path.to_str().unwrap()]);
        assert!(!ok, "{path:?} succeeded: {out}");
        assert_eq!(err.lines().count(), 1, "{path:?}: {err}");
        assert!(
            err.starts_with("threadprof: error:") && err.contains(needle),
            "{path:?}: {err}"
        );
        assert!(!err.contains("panicked"));
    }
    let empty = tempfile::tempdir().unwrap();
    let (ok, _, err) = cli(&["ls", empty.path().to_str().unwrap()]);
    assert!(!ok && err.contains("no profiles (*.pb.gz)"), "{err}");
}

/// Gzip bytes without pulling flate2 into this test's dependencies: a stored (uncompressed)
/// deflate block inside a gzip frame.
fn flate2_gzip(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    out.push(1); // final stored block
    let len = data.len() as u16;
    out.extend(len.to_le_bytes());
    out.extend((!len).to_le_bytes());
    out.extend(data);
    out.extend(crc32(data).to_le_bytes());
    out.extend((data.len() as u32).to_le_bytes());
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn the_decoder_survives_truncation_and_corruption() {
    let good = std::fs::read(file("_merged")).unwrap();
    let raw = threadprof::pprof::encode_raw(&decode_gz(&good).unwrap());
    for input in [&good, &raw] {
        for len in 0..input.len() {
            let _ = decode_gz(&input[..len]);
        }
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut bytes = input.clone();
            for k in 0..(1 + state % 4) {
                let at = ((state >> (8 * k)) as usize) % bytes.len();
                bytes[at] ^= (state >> 40) as u8 | 1;
            }
            if let Ok(p) = decode_gz(&bytes) {
                threadprof::pprof::validate(&p).expect("decode_gz validates");
            }
        }
    }
}
