//! The `threadprof` command on heap profiles: hand-built ones in the layout of threadprof's heap
//! dumps (`{tag}.heap.pb.gz`, Go's sample types), and a real one written by Go's runtime/pprof.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use threadprof::pprof::{decode_gz, encode_gz, Profile, ProfileBuilder};

mod common;
use common::{cli, top_row};

const MIB: i64 = 1024 * 1024;

/// One sample of a hand-built heap profile.
struct HeapSample {
    /// Function names, root first, `;`-separated.
    stack: &'static str,
    alloc_objects: i64,
    alloc_space: i64,
    inuse_objects: i64,
    inuse_space: i64,
    /// Its `tag` and `thread_name` label.
    tag: &'static str,
}

/// Writes a heap profile as threadprof's heap dumps are: the four sample types in Go's order,
/// `default_sample_type` naming `inuse_space`, `period_type` `space/bytes`, and the labels of
/// CPU samples (`tag`, `thread_name`, `thread_id`, a user label `route`).
fn write_heap(path: &Path, samples: &[HeapSample]) -> String {
    let mut b = ProfileBuilder::new(
        &[
            ("alloc_objects", "count"),
            ("alloc_space", "bytes"),
            ("inuse_objects", "count"),
            ("inuse_space", "bytes"),
        ],
        3,
    );
    b.period("space", "bytes", 512 * 1024);
    b.time(1_700_000_000_000_000_000, 5_000_000_000);
    let mut addresses: HashMap<&str, u64> = HashMap::new();
    for s in samples {
        let mut locations: Vec<u64> = s
            .stack
            .split(';')
            .map(|f| {
                let next = addresses.len() as u64 + 1;
                let address = *addresses.entry(f).or_insert(next);
                b.location_for_function(f, address)
            })
            .collect();
        locations.reverse();
        let labels = vec![
            b.str_label("tag", s.tag),
            b.str_label("thread_name", s.tag),
            b.num_label("thread_id", if s.tag == "web" { 11 } else { 22 }),
            b.str_label("route", "/ingest"),
        ];
        b.add_sample(
            locations,
            vec![
                s.alloc_objects,
                s.alloc_space,
                s.inuse_objects,
                s.inuse_space,
            ],
            labels,
        );
    }
    std::fs::write(path, encode_gz(&b.finish()).unwrap()).unwrap();
    path.display().to_string()
}

/// A CPU profile as threadprof's CPU dumps: 3 samples, 30 ms of CPU in `web_handler`.
fn write_cpu(path: &Path, tag: &str) -> String {
    let mut b = ProfileBuilder::new(&[("samples", "count"), ("cpu", "nanoseconds")], 1);
    let main = b.location_for_function("main", 1);
    let leaf = b.location_for_function("web_handler", 2);
    let labels = vec![b.str_label("tag", tag)];
    b.add_sample(vec![leaf, main], vec![3, 30_000_000], labels);
    std::fs::write(path, encode_gz(&b.finish()).unwrap()).unwrap();
    path.display().to_string()
}

/// The heap of tag `web`: in use 1.5 MiB + 2 KiB + 512 B (1.50MiB), allocated
/// 3 MiB + 10 MiB + 512 B (13.00MiB); 1,110 objects allocated, 62 in use.
fn web_heap() -> Vec<HeapSample> {
    vec![
        HeapSample {
            stack: "main;serve;cache_insert",
            alloc_objects: 100,
            alloc_space: 3 * MIB,
            inuse_objects: 50,
            inuse_space: 3 * MIB / 2,
            tag: "web",
        },
        HeapSample {
            stack: "main;serve;parse_request",
            alloc_objects: 1000,
            alloc_space: 10 * MIB,
            inuse_objects: 2,
            inuse_space: 2048,
            tag: "web",
        },
        HeapSample {
            stack: "main;serve;cache_insert",
            alloc_objects: 10,
            alloc_space: 512,
            inuse_objects: 10,
            inuse_space: 512,
            tag: "batch",
        },
    ]
}

/// A dump directory with both kinds: `web.pb.gz`, `_merged.pb.gz`, `web.heap.pb.gz` and
/// `_merged.heap.pb.gz` (web's heap plus 4 MiB in use by `batch_load`).
fn dump_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_cpu(&d.join("web.pb.gz"), "web");
    write_cpu(&d.join("_merged.pb.gz"), "web");
    write_heap(&d.join("web.heap.pb.gz"), &web_heap());
    let mut merged = web_heap();
    merged.push(HeapSample {
        stack: "main;batch_load",
        alloc_objects: 4,
        alloc_space: 4 * MIB,
        inuse_objects: 4,
        inuse_space: 4 * MIB,
        tag: "batch",
    });
    write_heap(&d.join("_merged.heap.pb.gz"), &merged);
    dir
}

/// `top` output parsed back: the title line, and the rows as (flat, cum, function).
fn top_table(out: &str) -> (String, Vec<(String, String, String)>) {
    let mut lines = out.lines();
    let title = lines.next().unwrap_or_else(|| panic!("{out}")).to_owned();
    let header = lines.next().unwrap_or_else(|| panic!("{out}"));
    assert!(header.trim_start().starts_with("flat "), "{out}");
    let rows = lines
        .map(|l| {
            let (cols, name) = top_row(l);
            (cols[0].to_owned(), cols[3].to_owned(), name.to_owned())
        })
        .collect();
    (title, rows)
}

fn row(flat: &str, cum: &str, name: &str) -> (String, String, String) {
    (flat.into(), cum.into(), name.into())
}

/// Runs the binary expecting failure: exit status 1 and one line on stderr, which it returns.
fn one_line_error(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_threadprof"))
        .args(args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert!(out.stdout.is_empty(), "{args:?}");
    assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    assert!(err.starts_with("threadprof: error: "), "{err}");
    err
}

#[test]
fn top_shows_heap_values_in_their_unit() {
    let dir = tempfile::tempdir().unwrap();
    let heap = write_heap(&dir.path().join("web.heap.pb.gz"), &web_heap());
    let top = |extra: &[&str]| {
        let mut args = vec!["top", heap.as_str(), "-n", "10"];
        args.extend_from_slice(extra);
        let (ok, out, err) = cli(&args);
        assert!(ok, "{args:?}: {err}");
        top_table(&out)
    };

    // No --type: the file's default sample type, inuse_space, in bytes.
    let (title, rows) = top(&[]);
    assert_eq!(title, "web (inuse_space): total 1.50MiB");
    assert_eq!(
        rows,
        [
            row("1.50MiB", "1.50MiB", "cache_insert"),
            row("2.00KiB", "2.00KiB", "parse_request"),
            row("0", "1.50MiB", "main"),
            row("0", "1.50MiB", "serve"),
        ]
    );
    assert_eq!(top(&["--type", "inuse_space"]), (title, rows));
    let (title, rows) = top(&["--type", "alloc_space"]);
    assert_eq!(title, "web (alloc_space): total 13.00MiB");
    assert_eq!(rows[0], row("10.00MiB", "10.00MiB", "parse_request"));
    assert_eq!(rows[1], row("3.00MiB", "3.00MiB", "cache_insert"));
    // Counts are plain numbers.
    let (title, rows) = top(&["--type", "alloc_objects"]);
    assert_eq!(title, "web (alloc_objects): total 1110");
    assert_eq!(rows[0], row("1000", "1000", "parse_request"));
    let (title, rows) = top(&["--type", "inuse_objects"]);
    assert_eq!(title, "web (inuse_objects): total 62");
    assert_eq!(rows[0], row("60", "60", "cache_insert"));
    // Below a KiB: bytes. The label filters work as on CPU profiles.
    assert_eq!(top(&["--tag", "batch"]).0, "web (inuse_space): total 512B");
    assert_eq!(
        top(&["--label", "route=/ingest", "--thread", "web"]).0,
        "web (inuse_space): total 1.50MiB"
    );
    let (ok, out, err) = cli(&["top", &heap, "--by", "tag"]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with("web (inuse_space): total 1.50MiB, by tag\n")
            && out.contains("\ntag=web: total 1.50MiB, 99.97% of 1.50MiB\n")
            && out.contains("\ntag=batch: total 512B, 0.03% of 1.50MiB\n"),
        "{out}"
    );

    // A type the file does not have: one line naming the file's types, exit status 1.
    let err = one_line_error(&["top", &heap, "--type", "cpu"]);
    assert!(
        err.contains(&heap)
            && err.contains(
                "no sample type \"cpu\" (it has: alloc_objects, alloc_space, inuse_objects, \
                 inuse_space)"
            ),
        "{err}"
    );
    let cpu = write_cpu(&dir.path().join("web.pb.gz"), "web");
    let err = one_line_error(&["top", &cpu, "--type", "inuse_space"]);
    assert!(
        err.contains("no sample type \"inuse_space\" (it has: samples, cpu)"),
        "{err}"
    );
    // A CPU profile without --type is shown as before: CPU time.
    let (ok, out, _) = cli(&["top", &cpu]);
    assert!(ok && out.starts_with("web (cpu): total 30.0ms\n"), "{out}");
}

#[test]
fn folded_and_flamegraph_take_heap_types() {
    let dir = tempfile::tempdir().unwrap();
    let heap = write_heap(&dir.path().join("web.heap.pb.gz"), &web_heap());
    let (ok, out, err) = cli(&["folded", &heap]);
    assert!(ok, "{err}");
    // Bytes as they are (time would be in µs).
    assert_eq!(
        out,
        format!(
            "main;serve;cache_insert {}\nmain;serve;parse_request 2048\n",
            3 * MIB / 2 + 512
        )
    );
    let (ok, out, _) = cli(&["folded", &heap, "--type", "alloc_objects"]);
    assert!(ok);
    assert_eq!(
        out,
        "main;serve;cache_insert 110\nmain;serve;parse_request 1000\n"
    );
    let svg = dir.path().join("heap.svg");
    let (ok, _, err) = cli(&[
        "flamegraph",
        &heap,
        "--type",
        "alloc_space",
        "-o",
        svg.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(
        text.contains("web (alloc_space)") && text.contains("parse_request"),
        "{}",
        &text[..text.len().min(500)]
    );
}

/// `ls` output split into its tables: header and rows (as columns) of each.
fn ls_tables(out: &str) -> Vec<(String, Vec<Vec<String>>)> {
    out.split("\n\n")
        .map(|table| {
            let mut lines = table.lines();
            let header = lines.next().unwrap_or_else(|| panic!("{out}")).to_owned();
            let rows = lines
                .map(|l| l.split_whitespace().map(str::to_owned).collect())
                .collect();
            (header, rows)
        })
        .collect()
}

#[test]
fn ls_lists_heap_dumps_beside_cpu_dumps() {
    let dir = dump_dir();
    let (ok, out, err) = cli(&["ls", dir.path().to_str().unwrap()]);
    assert!(ok, "{err}");
    let tables = ls_tables(&out);
    assert_eq!(tables.len(), 2, "{out}");
    // CPU dumps: the table as it was.
    let (header, rows) = &tables[0];
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        ["tag", "samples", "cpu", "wall", "threads", "covers", "written", "dropped"],
        "{out}"
    );
    let tags: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(tags, ["web", "_merged"], "{out}");
    assert_eq!(rows[0][1..4], ["3", "30.0ms", "-"], "{out}");
    // Heap dumps: in use and allocated bytes.
    let (header, rows) = &tables[1];
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        [
            "heap",
            "tag",
            "inuse_space",
            "alloc_space",
            "threads",
            "covers",
            "written",
            "dropped"
        ],
        "{out}"
    );
    let rows: Vec<&[String]> = rows.iter().map(|r| &r[..5]).collect();
    assert_eq!(
        rows,
        [
            ["web", "1.50MiB", "13.00MiB", "2", "5.00s"],
            ["_merged", "5.50MiB", "17.00MiB", "2", "5.00s"],
        ],
        "{out}"
    );

    // Heap dumps only: their table alone.
    let heap_only = tempfile::tempdir().unwrap();
    write_heap(&heap_only.path().join("web.heap.pb.gz"), &web_heap());
    let (ok, out, err) = cli(&["ls", heap_only.path().to_str().unwrap()]);
    assert!(ok, "{err}");
    let tables = ls_tables(&out);
    assert_eq!(tables.len(), 1, "{out}");
    assert!(tables[0].0.starts_with("heap tag "), "{out}");
    assert_eq!(tables[0].1[0][..3], ["web", "1.50MiB", "13.00MiB"], "{out}");
}

#[test]
fn a_directory_gives_the_dumps_of_the_type_asked_for() {
    let dir = dump_dir();
    let d = dir.path().to_str().unwrap();
    // No --type: the CPU dumps, merged one left out, as before.
    let (ok, out, err) = cli(&["top", d, "-n", "1"]);
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "web (cpu): total 30.0ms\n      flat   flat%    sum%        cum    cum%  function\n    \
         30.0ms 100.00% 100.00%     30.0ms 100.00%  web_handler\n"
    );
    // A heap type: the heap dumps.
    let (ok, out, err) = cli(&["top", d, "-n", "1", "--type", "inuse_space"]);
    assert!(ok, "{err}");
    let (title, rows) = top_table(&out);
    assert_eq!(title, "web (inuse_space): total 1.50MiB");
    assert_eq!(rows, [row("1.50MiB", "1.50MiB", "cache_insert")]);
    // Commands that read one profile take the merged dump of that kind.
    let (ok, out, err) = cli(&["folded", d, "--type", "inuse_space"]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with(&format!("main;batch_load {}\n", 4 * MIB)),
        "{out}"
    );
    let (ok, out, _) = cli(&["folded", d]);
    assert!(ok);
    assert_eq!(out, "main;web_handler 30000\n");
    // A directory of heap dumps only needs no --type.
    let heap_only = tempfile::tempdir().unwrap();
    write_heap(&heap_only.path().join("web.heap.pb.gz"), &web_heap());
    let (ok, out, err) = cli(&["top", heap_only.path().to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with("web (inuse_space): total 1.50MiB\n"),
        "{out}"
    );
    // A directory without heap dumps, asked for a heap type.
    let cpu_only = tempfile::tempdir().unwrap();
    write_cpu(&cpu_only.path().join("web.pb.gz"), "web");
    let cpu_dir = cpu_only.path().to_str().unwrap();
    let err = one_line_error(&["top", cpu_dir, "--type", "alloc_space"]);
    assert!(err.contains("no heap profiles in"), "{err}");
}

/// `diff` output parsed back: the totals line, and the rows as (columns, function).
fn diff_rows(out: &str) -> (String, Vec<(Vec<String>, String)>) {
    let mut lines = out.lines();
    let totals = lines.next().unwrap_or_else(|| panic!("{out}")).to_owned();
    let header = lines.next().unwrap_or_else(|| panic!("{out}"));
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        ["flat%", "new", "Δflat", "cum%", "new", "Δcum", "+flat", "+cum", "function"],
        "{out}"
    );
    let rows = lines
        .map(|l| {
            let (cols, name) = l.split_at(l.rfind("  ").unwrap_or_else(|| panic!("{l}")));
            let cols = cols.split_whitespace().map(str::to_owned).collect();
            (cols, name.trim().to_owned())
        })
        .collect();
    (totals, rows)
}

#[test]
fn diff_of_two_heap_dumps_puts_the_growing_function_first() {
    let dir = tempfile::tempdir().unwrap();
    // Between the dumps `session_cache_insert` grows from 1 to 90 MiB, its caller's own memory
    // from 1 to 2 MiB; the pool stays at 8 MiB. Heap diffs go by the change in flat bytes: the
    // grower first (though last by name, and though its callers' cum grew more), then the
    // caller, then the rest by cum; the pool, whose share fell most, last.
    let dump = |name: &str, leaked: i64, caller_own: i64| {
        let heap = |stack, bytes: i64| HeapSample {
            stack,
            alloc_objects: bytes / 1024,
            alloc_space: bytes,
            inuse_objects: bytes / 1024,
            inuse_space: bytes,
            tag: "web",
        };
        let samples = [
            heap("main;handle_request;session_cache_insert", leaked),
            heap("main;handle_request", caller_own),
            heap("main;buffer_pool_alloc", 8 * MIB),
        ];
        write_heap(&dir.path().join(name), &samples)
    };
    let base = dump("base.heap.pb.gz", MIB, MIB);
    let new = dump("new.heap.pb.gz", 90 * MIB, 2 * MIB);
    let (ok, out, err) = cli(&["diff", &base, &new, "--type", "inuse_space"]);
    assert!(ok, "{err}");
    let (totals, rows) = diff_rows(&out);
    assert_eq!(
        totals,
        "base total 10.00MiB, new total 100.00MiB (shares are of each profile's own total)"
    );
    let names: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
    assert_eq!(
        names,
        [
            "session_cache_insert",
            "handle_request",
            "main",
            "buffer_pool_alloc"
        ],
        "{out}"
    );
    assert_eq!(
        rows[0].0,
        [
            "10.00%",
            "90.00%",
            "+80.00pp",
            "10.00%",
            "90.00%",
            "+80.00pp",
            "+89.00MiB",
            "+89.00MiB"
        ],
        "{out}"
    );
    assert_eq!(rows[1].0[6..], ["+1.00MiB", "+90.00MiB"], "{out}");
    assert_eq!(rows[2].0[6..], ["0", "+90.00MiB"], "{out}");
    // The pool's share fell, but not its bytes.
    assert_eq!(rows[3].0[2], "-72.00pp", "{out}");
    assert_eq!(rows[3].0[6..], ["0", "0"], "{out}");
    // Heap dumps' default type is inuse_space: the same without --type.
    let (ok, same, err) = cli(&["diff", &base, &new]);
    assert!(ok, "{err}");
    assert_eq!(same, out);
    // Counts: the objects the grower added.
    let (ok, out, err) = cli(&["diff", &base, &new, "--type", "inuse_objects", "-n", "1"]);
    assert!(ok, "{err}");
    let (totals, rows) = diff_rows(&out);
    assert!(
        totals.starts_with("base total 10240, new total 102400 "),
        "{out}"
    );
    assert_eq!(rows[0].0[6..], ["+91136", "+91136"], "{out}");
    assert_eq!(rows[0].1, "session_cache_insert");
    // A heap dump against a CPU dump, without --type: nothing comparable.
    let cpu = write_cpu(&dir.path().join("web.pb.gz"), "web");
    let err = one_line_error(&["diff", &base, &cpu]);
    assert!(
        err.contains("shows inuse_space and") && err.contains("choose one with --type"),
        "{err}"
    );
}

#[test]
fn merge_keeps_heap_sample_types() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let a = write_heap(&d.join("web.heap.pb.gz"), &web_heap());
    let b = write_heap(&d.join("other.heap.pb.gz"), &web_heap()[..1]);
    let merged = d.join("fleet.heap.pb.gz");
    let (ok, _, err) = cli(&["merge", &a, &b, "-o", merged.to_str().unwrap()]);
    assert!(ok, "{err}");
    let p: Profile = decode_gz(&std::fs::read(&merged).unwrap()).unwrap();
    let types: Vec<(&str, &str)> = p
        .sample_type
        .iter()
        .map(|t| (p.string(t.r#type), p.string(t.unit)))
        .collect();
    assert_eq!(
        types,
        [
            ("alloc_objects", "count"),
            ("alloc_space", "bytes"),
            ("inuse_objects", "count"),
            ("inuse_space", "bytes"),
        ]
    );
    assert_eq!(p.string(p.default_sample_type), "inuse_space");
    let period_type = p.period_type.unwrap();
    assert_eq!(
        (p.string(period_type.r#type), p.string(period_type.unit)),
        ("space", "bytes")
    );
    let (ok, out, err) = cli(&["top", merged.to_str().unwrap(), "-n", "1"]);
    assert!(ok, "{err}");
    // 1.50 MiB + 2 KiB + 512 B, and 1.5 MiB more.
    assert_eq!(
        top_table(&out),
        (
            "fleet (inuse_space): total 3.00MiB".to_owned(),
            vec![row("3.00MiB", "3.00MiB", "cache_insert")]
        )
    );

    // Heap with CPU: refused, saying so.
    let cpu = write_cpu(&d.join("web.pb.gz"), "web");
    let out_path = d.join("mixed.pb.gz");
    let err = one_line_error(&["merge", &a, &cpu, "-o", out_path.to_str().unwrap()]);
    assert!(
        err.contains("cannot merge a heap profile with a CPU profile")
            && err.contains("samples/count, cpu/nanoseconds")
            && err.contains("merge heap dumps and CPU dumps separately"),
        "{err}"
    );
    assert!(!out_path.exists());
}

/// `go`, from PATH or where Debian's golang-go puts it, if it runs.
fn go() -> Option<PathBuf> {
    ["go", "/usr/lib/go/bin/go", "/usr/bin/go"]
        .into_iter()
        .map(PathBuf::from)
        .find(|go| {
            Command::new(go)
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

/// A Go program that keeps N buffers of 64 KiB from `main.leakyCache` and writes the heap
/// profile (`pprof.Lookup("heap").WriteTo(f, 0)`, as `/debug/pprof/heap` serves it) to a file:
/// `program FILE N`. Every allocation is recorded (`MemProfileRate = 1`), so the numbers are
/// exact.
const GO_HEAP_PROGRAM: &str = r#"package main

import (
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
)

var kept [][]byte

//go:noinline
func leakyCache(n int) {
	for i := 0; i < n; i++ {
		kept = append(kept, make([]byte, 64<<10))
	}
}

func main() {
	runtime.MemProfileRate = 1
	n, err := strconv.Atoi(os.Args[2])
	if err != nil {
		panic(err)
	}
	leakyCache(n)
	runtime.GC() // the heap profile is as of the last GC
	f, err := os.Create(os.Args[1])
	if err != nil {
		panic(err)
	}
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		panic(err)
	}
	if err := f.Close(); err != nil {
		panic(err)
	}
	runtime.KeepAlive(kept)
}
"#;

#[test]
fn reads_a_go_heap_profile() {
    let Some(go) = go() else {
        println!("SKIPPED: `go` is not installed; .ci/run installs it (Debian package golang-go)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("main.go");
    std::fs::write(&src, GO_HEAP_PROGRAM).unwrap();
    let dumps = dir.path().join("dumps");
    std::fs::create_dir(&dumps).unwrap();
    let go_heap = |file: &Path, buffers: u32| {
        let mut run = Command::new(&go);
        run.arg("run")
            .arg(&src)
            .arg(file)
            .arg(buffers.to_string())
            .current_dir(dir.path());
        // A build cache of its own when there is no home to keep one in; no toolchain download.
        if std::env::var_os("HOME").is_none() && std::env::var_os("GOCACHE").is_none() {
            run.env("GOCACHE", dir.path().join("gocache"));
        }
        run.env("GOTOOLCHAIN", "local");
        let out = run.output().unwrap();
        assert!(
            out.status.success(),
            "go run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let file = dumps.join("go.heap.pb.gz");
    go_heap(&file, 64);
    let file = file.to_str().unwrap();
    let p = decode_gz(&std::fs::read(file).unwrap()).unwrap();
    // What this test stands on: Go's sample types, in this order.
    let types: Vec<&str> = p.sample_type.iter().map(|t| p.string(t.r#type)).collect();
    assert_eq!(
        types,
        [
            "alloc_objects",
            "alloc_space",
            "inuse_objects",
            "inuse_space"
        ]
    );

    let (ok, out, err) = cli(&["top", file, "--type", "inuse_space", "-n", "5"]);
    assert!(ok, "{err}");
    let (title, rows) = top_table(&out);
    assert!(title.starts_with("go (inuse_space): total "), "{out}");
    assert!(title.ends_with("MiB"), "{out}");
    // 64 × 64 KiB kept, and nothing else in the program comes near it.
    assert_eq!(
        rows[0],
        row("4.00MiB", "4.00MiB", "main.leakyCache"),
        "{out}"
    );
    // Go's heap profile names no default type; like go tool pprof, the last one is shown.
    let (ok, same, err) = cli(&["top", file, "-n", "5"]);
    assert!(ok, "{err}");
    assert_eq!(same, out);
    let (ok, out, err) = cli(&["top", file, "--type", "alloc_objects", "-n", "1"]);
    assert!(ok, "{err}");
    let (_, rows) = top_table(&out);
    assert_eq!(rows[0].2, "main.leakyCache", "{out}");
    let objects: i64 = rows[0].0.parse().unwrap_or_else(|_| panic!("{out}"));
    assert!(objects >= 64, "{out}");
    let err = one_line_error(&["top", file, "--type", "wall"]);
    assert!(
        err.contains(
            "no sample type \"wall\" (it has: alloc_objects, alloc_space, inuse_objects, \
             inuse_space)"
        ),
        "{err}"
    );
    // `ls` knows it for a heap profile by its sample types.
    let (ok, out, err) = cli(&["ls", dumps.to_str().unwrap()]);
    assert!(ok, "{err}");
    let tables = ls_tables(&out);
    assert_eq!(tables.len(), 1, "{out}");
    assert!(tables[0].0.starts_with("heap tag "), "{out}");
    // 4 MiB kept, and a few KiB the Go runtime allocated, which vary from run to run.
    assert_eq!(tables[0].1[0][0], "go", "{out}");
    assert!(tables[0].1[0][1].starts_with("4.0"), "{out}");
    assert!(tables[0].1[0][1].ends_with("MiB"), "{out}");

    // The leak hunt: the same program keeping 16 buffers, then 64. The leak already holds
    // nearly all the memory in both, so its share barely moves; its bytes do. Its callers' cum
    // grew as much, plus whatever the runtime allocated: the function itself comes first.
    let before = dir.path().join("before.heap.pb.gz");
    go_heap(&before, 16);
    let (ok, out, err) = cli(&[
        "diff",
        before.to_str().unwrap(),
        file,
        "--type",
        "inuse_space",
    ]);
    assert!(ok, "{err}");
    let (totals, rows) = diff_rows(&out);
    assert!(
        totals.starts_with("base total 1.00MiB, new total 4.00MiB "),
        "{out}"
    );
    assert_eq!(rows[0].1, "main.leakyCache", "{out}");
    // 48 more buffers of 64 KiB, and the slice that holds them grew a little.
    assert!(rows[0].0[6].starts_with("+3.00MiB"), "{out}");
}
