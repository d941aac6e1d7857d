//! The classic service shape: an `ip_manager` monitor thread, two workers and the main thread,
//! each burning CPU in its own functions, profiled per thread.
//!
//! ```text
//! cargo run --release --features enabled --example ip_monitor
//! go tool pprof -top profiles/ip_manager.pb.gz
//! ```

use std::hint::black_box;
use std::time::{Duration, Instant};

use threadprof::profiled_thread;

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
fn scan_interfaces() -> u64 {
    black_box(spin(3_000_000)).rotate_left(9) ^ black_box(spin(4_000))
}

#[inline(never)]
fn wait_for_link_events() {
    std::thread::sleep(Duration::from_millis(30));
}

/// Polls "interfaces" in bursts and waits for events in between.
#[profiled_thread(tag = "ip_manager")]
fn run_ip_monitor(until: Instant) -> u64 {
    let mut acc = 0;
    while Instant::now() < until {
        acc ^= scan_interfaces();
        wait_for_link_events();
    }
    acc
}

#[inline(never)]
fn parse_packets(rounds: u64) -> u64 {
    black_box(spin(rounds)) ^ black_box(spin(1_000))
}

#[inline(never)]
fn compress_batches(rounds: u64) -> u64 {
    black_box(spin(rounds)).wrapping_mul(3) ^ black_box(spin(2_000))
}

#[inline(never)]
fn reconcile_routes() -> u64 {
    black_box(spin(1_000_000)).wrapping_add(7) ^ black_box(spin(3_000))
}

fn worker(until: Instant, work: fn(u64) -> u64) -> u64 {
    let mut acc = 0;
    while Instant::now() < until {
        acc ^= work(1_000_000);
    }
    acc
}

fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "profiles".into());
    let seconds: u64 = std::env::var("IP_MONITOR_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let handle = threadprof::Profiler::builder()
        .output_dir(&dir)
        .dump_interval(Duration::from_secs(1))
        .wall_frequency(99)
        .start();
    let handle = match handle {
        Ok(h) => h,
        Err(e) => {
            eprintln!("threadprof did not start: {e}");
            std::process::exit(1);
        }
    };
    let until = Instant::now() + Duration::from_secs(seconds);
    let monitor = std::thread::Builder::new()
        .name("ip-monitor".into())
        .spawn(move || run_ip_monitor(until))
        .expect("spawn ip monitor");
    let w1 = threadprof::spawn("async_worker1", move || worker(until, parse_packets));
    let w2 = threadprof::spawn("async_worker2", move || worker(until, compress_batches));
    let main_result = threadprof::run("main_worker", || {
        let mut acc = 0;
        while Instant::now() < until {
            acc ^= reconcile_routes();
            std::thread::sleep(Duration::from_millis(5));
        }
        acc
    });
    let checksum = main_result
        ^ monitor.join().expect("monitor")
        ^ w1.join().expect("worker 1")
        ^ w2.join().expect("worker 2");
    drop(handle); // final dump
    println!("done (checksum {checksum:x}); profiles in {dir}/");
    summarize(std::path::Path::new(&dir));
}

#[cfg(feature = "enabled")]
fn summarize(dir: &std::path::Path) {
    for tag in [
        "ip_manager",
        "async_worker1",
        "async_worker2",
        "main_worker",
    ] {
        let path = dir.join(format!("{tag}.pb.gz"));
        let profile = match std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| threadprof::pprof::decode_gz(&b).map_err(|e| e.to_string()))
        {
            Ok(p) => p,
            Err(e) => {
                println!("{tag:>14}: cannot read {}: {e}", path.display());
                continue;
            }
        };
        let cpu = profile.sample_type_index("cpu").unwrap_or(1);
        let wall = profile.sample_type_index("wall");
        let mut by_fn: std::collections::HashMap<&str, i64> = Default::default();
        let (mut cpu_ns, mut wall_ns) = (0i64, 0i64);
        for s in &profile.sample {
            cpu_ns += s.value[cpu];
            wall_ns += wall.map_or(0, |w| s.value[w]);
            let leaf_app_fn = profile
                .stack_names(s)
                .into_iter()
                .find(|n| n.starts_with("ip_monitor::") && !n.ends_with("::spin"));
            if let Some(f) = leaf_app_fn {
                *by_fn.entry(f).or_default() += s.value[cpu];
            }
        }
        let top = by_fn
            .iter()
            .max_by_key(|(_, v)| **v)
            .map_or("-", |(f, _)| f);
        println!(
            "{tag:>14}: {:6.2} s CPU, {:6.2} s wall, hottest: {top}  ({})",
            cpu_ns as f64 / 1e9,
            wall_ns as f64 / 1e9,
            path.display()
        );
    }
}

#[cfg(not(feature = "enabled"))]
fn summarize(_dir: &std::path::Path) {
    println!("profiling is compiled out; run with `--features enabled`");
}
