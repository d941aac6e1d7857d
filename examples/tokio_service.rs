//! A tokio service whose work is tasks, not threads: two worker threads poll `ingest` and
//! `compact` tasks and request handlers that run under `#[tracing::instrument]` spans with a
//! `route` field. Samples follow the work: each task's CPU lands under its tag, and each
//! handler's under its route, whichever worker polled it.
//!
//! ```text
//! cargo run --release --features enabled,tracing --example tokio_service
//! threadprof top --by route profiles/_merged.pb.gz
//! go tool pprof -top -tagfocus=route=/ingest profiles/_merged.pb.gz
//! ```
//!
//! It builds with profiling compiled out too (`--features tracing`): `task` and `labeled`
//! return the future unchanged and the layer does nothing.

use std::hint::black_box;
use std::time::{Duration, Instant};

use tracing_subscriber::prelude::*;

/// Busy work whose cost is proportional to `rounds`, opaque to the optimiser.
#[inline(never)]
fn spin(rounds: u64) -> u64 {
    let mut x = black_box(0x9e37_79b9_7f4a_7c15u64);
    for i in 0..rounds {
        x = x.rotate_left(5) ^ i.wrapping_mul(0x2545_f491_4f6c_dd1d);
    }
    black_box(x)
}

#[inline(never)]
fn decode_batch() -> u64 {
    spin(400_000)
}

#[inline(never)]
fn merge_segments() -> u64 {
    spin(250_000)
}

#[inline(never)]
fn run_query(rounds: u64) -> u64 {
    spin(rounds)
}

/// Reads batches forever: CPU in `decode_batch`, a yield between batches.
async fn ingest(until: Instant) -> u64 {
    let mut acc = 0u64;
    while Instant::now() < until {
        acc = acc.wrapping_add(decode_batch());
        tokio::task::yield_now().await;
    }
    acc
}

/// Merges segments, yielding between rounds.
#[threadprof::profiled(tag = "compact", labels(level = "l0"))]
async fn compact(until: Instant) -> u64 {
    let mut acc = 0u64;
    while Instant::now() < until {
        acc = acc.wrapping_add(merge_segments());
        tokio::task::yield_now().await;
    }
    acc
}

/// One request: the span's `route` field becomes a label on its samples.
#[tracing::instrument(skip_all, fields(route = route))]
async fn handle_request(route: &'static str, rounds: u64) -> u64 {
    let a = run_query(rounds);
    tokio::task::yield_now().await;
    a.wrapping_add(run_query(rounds))
}

/// Serves requests: `/search` costs 3× what `/health` does.
async fn serve(until: Instant) -> u64 {
    let mut acc = 0u64;
    while Instant::now() < until {
        acc = acc.wrapping_add(handle_request("/search", 150_000).await);
        acc = acc.wrapping_add(handle_request("/health", 50_000).await);
    }
    acc
}

fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "profiles".into());
    let seconds: u64 = std::env::var("TOKIO_SERVICE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    tracing_subscriber::registry()
        .with(threadprof::tracing::layer().with_fields(["route"]))
        .init();
    let handle = threadprof::Profiler::builder()
        .output_dir(&dir)
        .dump_interval(Duration::from_secs(1))
        .start();
    let handle = match handle {
        Ok(h) => h,
        Err(e) => {
            eprintln!("threadprof did not start: {e}");
            std::process::exit(1);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        // Untagged work on the pool (the runtime's own, and blocking threads) is sampled
        // too, under the worker's tag; tagged tasks switch to their own tag while polled.
        .on_thread_start(|| {
            threadprof::register_current_thread("tokio-runtime-worker");
        })
        .build()
        .expect("tokio runtime");
    let until = Instant::now() + Duration::from_secs(seconds);
    let checksum = runtime.block_on(async move {
        let tasks = [
            tokio::spawn(threadprof::task("ingest", ingest(until))),
            tokio::spawn(compact(until)),
            tokio::spawn(threadprof::task("requests", serve(until))),
        ];
        let mut acc = 0u64;
        for t in tasks {
            acc = acc.wrapping_add(t.await.expect("task"));
        }
        acc
    });
    drop(runtime);
    drop(handle); // final dump
    println!("done (checksum {checksum:x}); profiles in {dir}/");
    summarize(std::path::Path::new(&dir));
}

#[cfg(feature = "enabled")]
fn summarize(dir: &std::path::Path) {
    let path = dir.join(threadprof::MERGED_FILE);
    let profile = match std::fs::read(&path)
        .map_err(|e| e.to_string())
        .and_then(|b| threadprof::pprof::decode_gz(&b).map_err(|e| e.to_string()))
    {
        Ok(p) => p,
        Err(e) => {
            println!("cannot read {}: {e}", path.display());
            return;
        }
    };
    let cpu = profile.sample_type_index("cpu").unwrap_or(1);
    let mut by_tag: std::collections::BTreeMap<&str, (i64, std::collections::BTreeSet<i64>)> =
        Default::default();
    let mut by_route: std::collections::BTreeMap<&str, i64> = Default::default();
    for s in &profile.sample {
        let tag = profile.label_str(s, "tag").unwrap_or("?");
        let entry = by_tag.entry(tag).or_default();
        entry.0 += s.value[cpu];
        entry.1.extend(profile.label_num(s, "thread_id"));
        if let Some(route) = profile.label_str(s, "route") {
            *by_route.entry(route).or_default() += s.value[cpu];
        }
    }
    println!("CPU per tag (threads that polled it):");
    for (tag, (ns, threads)) in &by_tag {
        println!(
            "  {tag:>22}: {:6.2} s on {} thread(s)",
            *ns as f64 / 1e9,
            threads.len()
        );
    }
    println!("CPU per route (tracing span field):");
    for (route, ns) in &by_route {
        println!("  {route:>22}: {:6.2} s", *ns as f64 / 1e9);
    }
}

#[cfg(not(feature = "enabled"))]
fn summarize(_dir: &std::path::Path) {
    println!("profiling is compiled out; run with `--features enabled,tracing`");
}
