//! Helpers shared by the integration tests: burn CPU, read dumps back.
#![allow(dead_code)]

use std::collections::HashMap;
use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use threadprof::pprof::Profile;

/// Defines `fn $name(n: u64) -> u64`, a distinct, never-inlined busy loop whose name a test
/// can look for in a profile.
#[macro_export]
macro_rules! busy_fn {
    ($name:ident, $salt:expr) => {
        #[inline(never)]
        fn $name(n: u64) -> u64 {
            let mut x = ::std::hint::black_box($salt);
            for i in 0..n {
                x = x.rotate_left(7) ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            }
            ::std::hint::black_box(x)
        }
    };
}

/// Burns about `cpu` of this thread's CPU time in `work`.
pub fn burn_for(cpu: Duration, work: fn(u64) -> u64) -> u64 {
    let start = thread_cpu();
    let mut acc = 0;
    while thread_cpu() - start < cpu {
        acc ^= black_box(work(20_000));
    }
    acc
}

/// This thread's CPU time.
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only into `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// This thread's OS id.
pub fn gettid() -> i64 {
    // SAFETY: no preconditions.
    i64::from(unsafe { libc::gettid() })
}

/// Reads and decodes a dump file.
pub fn read_profile(path: &Path) -> Profile {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    threadprof::pprof::decode_gz(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// CPU nanoseconds per leaf-most function whose name contains `filter`.
pub fn cpu_by_function(p: &Profile, filter: &str) -> HashMap<String, i64> {
    let cpu = p.sample_type_index("cpu").expect("cpu sample type");
    let mut out = HashMap::new();
    for s in &p.sample {
        if let Some(f) = p.stack_names(s).into_iter().find(|n| n.contains(filter)) {
            *out.entry(f.to_owned()).or_default() += s.value[cpu];
        }
    }
    out
}

/// Total of sample type `ty` in the profile.
pub fn total(p: &Profile, ty: &str) -> i64 {
    let i = p.sample_type_index(ty).expect("sample type");
    p.sample.iter().map(|s| s.value[i]).sum()
}

/// The function with the most CPU among those containing `filter`.
pub fn hottest(p: &Profile, filter: &str) -> Option<String> {
    cpu_by_function(p, filter)
        .into_iter()
        .max_by_key(|(_, v)| *v)
        .map(|(f, _)| f)
}

/// This process's resident set size in KiB (0 if unknown).
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// The variable that makes a test of this binary run as a child process's body.
pub const CHILD: &str = "THREADPROF_TEST_CHILD";

/// Runs test `test` of this binary as a child process, with `THREADPROF_DIR=dir`, no other
/// `THREADPROF_*` variable of ours, and `env`; fails unless it succeeds.
pub fn run_child(test: &str, dir: &Path, env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", test, "--nocapture", "--test-threads=1"]);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("THREADPROF_") {
            cmd.env_remove(key);
        }
    }
    cmd.env(CHILD, "1").env("THREADPROF_DIR", dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run child");
    assert!(
        out.status.success(),
        "child failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The `key=value` pairs of the first line of `stdout` holding `marker` (e.g. `"RESULT "`),
/// after the marker.
pub fn marked_values(stdout: &str, marker: &str) -> HashMap<String, f64> {
    let line = stdout
        .lines()
        .find_map(|l| l.split_once(marker).map(|(_, r)| r))
        .unwrap_or_else(|| panic!("no {marker:?} line in:\n{stdout}"));
    line.split_whitespace()
        .map(|kv| {
            let (k, v) = kv
                .split_once('=')
                .unwrap_or_else(|| panic!("{kv:?} in {line:?}"));
            (k.to_owned(), v.parse().unwrap_or(f64::NAN))
        })
        .collect()
}
