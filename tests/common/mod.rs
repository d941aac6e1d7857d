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
