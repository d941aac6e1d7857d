//! Micro-costs: one sample taken by the signal handler, `enter` + drop of a `ThreadGuard`
//! (runtime on, and runtime switched off at run time with `THREADPROF_ENABLED=0`), the tag
//! switch around one poll of a `task` future, and entering a label set.
//!
//! `cargo bench --bench overhead`. The per-sample cost is measured by having a thread send
//! itself SIGPROF with `si_code = SI_TIMER` (what a timer expiry delivers) through
//! `rt_tgsigqueueinfo`, N times in a row, so the real handler runs synchronously: on a registered
//! thread it takes a full sample (unwind + record); on an unregistered thread it returns at once.
//! The first is the full cost of one sample including kernel signal delivery; the difference is
//! the handler's own work.

use std::hint::black_box;
use std::process::Command;
use std::time::{Duration, Instant};

#[inline(never)]
fn nest(depth: u32, f: &mut dyn FnMut()) {
    if depth == 0 {
        f();
    } else {
        nest(depth - 1, f);
        black_box(depth);
    }
}

/// Sends this thread a SIGPROF that looks like a CPU-timer expiry.
fn self_timer_signal() {
    // SAFETY: all-zero is a valid siginfo_t; we fill the fields the kernel's `_timer` layout
    // defines (signo, code at bytes 0 and 8; sigval at byte 24 on 64-bit). Sending to our own
    // thread with a negative si_code is allowed by rt_tgsigqueueinfo.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let base = &mut info as *mut libc::siginfo_t as *mut u8;
        *(base as *mut i32) = libc::SIGPROF;
        *(base.add(8) as *mut i32) = libc::SI_TIMER;
        *(base.add(24) as *mut usize) = 1; // the runtime's CPU-timer marker
        libc::syscall(
            libc::SYS_rt_tgsigqueueinfo,
            libc::getpid(),
            libc::gettid(),
            libc::SIGPROF,
            &info as *const libc::siginfo_t,
        );
    }
}

/// Nanoseconds per self-sent sample at `depth` extra frames, registered or not. Sent in
/// batches of `batch` with pauses between them (not timed) so the dump thread drains the
/// thread's ring and no sample is dropped.
fn signal_cost_ns(depth: u32, batch: u32, batches: u32, registered: bool) -> f64 {
    std::thread::spawn(move || {
        let _g = registered.then(|| threadprof_runtime::enter("overhead"));
        let mut elapsed = Duration::ZERO;
        nest(depth, &mut || {
            for _ in 0..batches {
                let t = Instant::now();
                for _ in 0..batch {
                    self_timer_signal();
                }
                elapsed += t.elapsed();
                // Drain the ring before the next batch (outside the timing): the runtime runs
                // at 1 Hz here, so its own drain may wait up to 1 s, and a full ring would skip
                // the copy of the next batch's samples.
                threadprof_runtime::flush();
            }
        });
        elapsed.as_nanos() as f64 / f64::from(batch * batches)
    })
    .join()
    .unwrap()
}

/// The deepest stack the handler used over `samples` self-sent samples taken `depth` frames
/// deep on a registered thread (its signal stack is painted first, then inspected).
fn handler_stack_use(depth: u32, samples: u32) -> Option<usize> {
    std::thread::spawn(move || {
        let _g = threadprof_runtime::enter("stack_use");
        threadprof_runtime::__signal_stack_use(true)?;
        nest(depth, &mut || {
            for i in 0..samples {
                self_timer_signal();
                if i % 100 == 99 {
                    threadprof_runtime::flush();
                }
            }
        });
        threadprof_runtime::__signal_stack_use(false)
    })
    .join()
    .unwrap()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Nanoseconds per `enter` + drop on the calling thread.
fn guard_cost_ns(rounds: u32) -> f64 {
    let t = Instant::now();
    for _ in 0..rounds {
        drop(black_box(threadprof_runtime::enter("guard")));
    }
    t.elapsed().as_nanos() as f64 / f64::from(rounds)
}

/// Nanoseconds per poll of `fut` (best of 7 runs of `rounds`).
fn per_poll<F: std::future::Future>(rounds: u32, fut: F) -> f64 {
    use std::task::{Context, Waker};
    let mut cx = Context::from_waker(Waker::noop());
    let mut fut = std::pin::pin!(fut);
    let mut best = f64::MAX;
    for _ in 0..7 {
        let t = Instant::now();
        for _ in 0..rounds {
            black_box(fut.as_mut().poll(&mut cx).is_pending());
        }
        best = best.min(t.elapsed().as_nanos() as f64 / f64::from(rounds));
    }
    best
}

/// Nanoseconds per poll of a future that is always pending, wrapped by `wrap` and bare, on
/// the calling thread: (wrapped, bare).
fn poll_cost_ns<F: std::future::Future<Output = ()>>(
    rounds: u32,
    wrap: impl Fn(std::future::Pending<()>) -> F,
) -> (f64, f64) {
    let w = per_poll(rounds, wrap(std::future::pending::<()>()));
    let b = per_poll(rounds, std::future::pending::<()>());
    (w, b)
}

/// Nanoseconds per call of `f` (best of 7 runs of `rounds`).
fn call_cost_ns(rounds: u32, mut f: impl FnMut()) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..7 {
        let t = Instant::now();
        for _ in 0..rounds {
            f();
        }
        best = best.min(t.elapsed().as_nanos() as f64 / f64::from(rounds));
    }
    best
}

fn main() {
    match std::env::var("OVERHEAD_CHILD").as_deref() {
        Ok("task_poll") => {
            let _thread = threadprof_runtime::enter("worker");
            let (w, b) = poll_cost_ns(1_000_000, |f| threadprof_runtime::task("polled", f));
            println!("{:.1}", w - b);
            return;
        }
        Ok("labeled_poll") => {
            let _thread = threadprof_runtime::enter("worker");
            let (w, b) = poll_cost_ns(1_000_000, |f| {
                threadprof_runtime::labeled(&[("route", "/ingest")], f)
            });
            println!("{:.1}", w - b);
            return;
        }
        Ok("call_site") => {
            static SITE: threadprof_runtime::CallSite =
                threadprof_runtime::CallSite::new("annotated", &[("kind", "sync")]);
            let _thread = threadprof_runtime::enter("worker");
            let ns = call_cost_ns(1_000_000, || {
                let _scope = black_box(SITE.scope());
            });
            println!("{ns:.1}");
            return;
        }
        Ok("labels") => {
            let _thread = threadprof_runtime::enter("worker");
            let ns = call_cost_ns(1_000_000, || {
                black_box(threadprof_runtime::with_labels(
                    &[("route", "/ingest")],
                    || black_box(1),
                ));
            });
            println!("{ns:.1}");
            return;
        }
        Ok("labels_nested") => {
            let _thread = threadprof_runtime::enter("worker");
            let ns = threadprof_runtime::with_labels(&[("tenant", "a")], || {
                call_cost_ns(1_000_000, || {
                    black_box(threadprof_runtime::with_labels(
                        &[("route", "/ingest"), ("method", "POST")],
                        || black_box(1),
                    ));
                })
            });
            println!("{ns:.1}");
            return;
        }
        Ok("guard") => {
            let ns = std::thread::spawn(|| guard_cost_ns(20_000)).join().unwrap();
            println!("{ns:.1}");
            return;
        }
        Ok("nested") => {
            let _outer = threadprof_runtime::enter("outer");
            println!("{:.1}", guard_cost_ns(200_000));
            return;
        }
        _ => {}
    }
    let child = |mode: &str, enabled: &str| -> String {
        let out = Command::new(std::env::current_exe().unwrap())
            .env("OVERHEAD_CHILD", mode)
            .env("THREADPROF_ENABLED", enabled)
            .env(
                "THREADPROF_DIR",
                std::env::temp_dir().join("overhead-bench"),
            )
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    println!(
        "# Micro-costs ({} cores)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    println!("| operation | cost |");
    println!("|---|---|");
    println!(
        "| `enter` + drop, runtime on (creates and deletes the thread's timer) | {} ns |",
        child("guard", "1")
    );
    println!(
        "| `enter` + drop, runtime off at run time (`THREADPROF_ENABLED=0`) | {} ns |",
        child("guard", "0")
    );
    println!(
        "| nested `enter` + drop on a registered thread (tag switch only) | {} ns |",
        child("nested", "1")
    );
    println!(
        "| tag switch around one poll of a `task` future, registered thread (wrapped minus bare poll) | {} ns |",
        child("task_poll", "1")
    );
    println!(
        "| labels around one poll of a `labeled` future, registered thread (wrapped minus bare poll) | {} ns |",
        child("labeled_poll", "1")
    );
    println!(
        "| what `#[profiled]` adds to a call of a plain fn (tag and labels), registered thread | {} ns |",
        child("call_site", "1")
    );
    println!(
        "| `with_labels` with an already-seen set, registered thread | {} ns |",
        child("labels", "1")
    );
    println!(
        "| `with_labels` with an already-seen set nested in another (merge) | {} ns |",
        child("labels_nested", "1")
    );

    let _p = threadprof_runtime::Profiler::builder()
        .frequency(1)
        .output_dir(std::env::temp_dir().join("overhead-bench"))
        .dump_interval(Duration::from_secs(3600))
        .start()
        .unwrap();
    for depth in [8u32, 100, 240] {
        // The ring holds 32768 words; a sample takes depth + 4 words.
        let batch = (30_000 / (depth + 22)).min(1000);
        let (mut on, mut off) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            off.push(signal_cost_ns(depth, batch, 8, false));
            on.push(signal_cost_ns(depth, batch, 8, true));
        }
        let (on, off) = (median(on), median(off));
        println!(
            "| one sample, {} frames deep: full cost incl. signal delivery / handler work alone | {:.2} µs / {:.2} µs |",
            depth + 8,
            on / 1e3,
            (on - off) / 1e3
        );
    }
    let deepest = handler_stack_use(240, 2_000);
    println!(
        "| deepest stack one sample used, 248 frames deep (on the thread's signal stack; {} build) | {} |",
        if cfg!(debug_assertions) { "debug" } else { "release" },
        deepest.map_or("n/a (no signal stack)".to_owned(), |b| format!("{:.1} KiB", b as f64 / 1024.0))
    );
    println!();
    println!("At 99 Hz a busy thread pays 99 x the full per-sample cost per CPU second.");
}
