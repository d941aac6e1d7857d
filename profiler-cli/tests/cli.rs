//! The `threadprof` command on dumps written by the real runtime, and on bad input.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use threadprof::pprof::{decode_gz, encode_gz, Profile, ProfileBuilder};

fn cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_threadprof"))
        .args(args)
        .output()
        .expect("run threadprof");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

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
