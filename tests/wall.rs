//! Wall-clock mode: where registered threads wait, and blocking calls that keep working while
//! SIGPROF interrupts them 999 times a second.
#![cfg(all(feature = "enabled", target_os = "linux"))]

mod common;

use std::hint::black_box;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{mpsc, Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::*;

/// One runtime for this binary: CPU at 99 Hz, wall at 999 Hz.
fn dir() -> &'static Path {
    static STATE: OnceLock<(tempfile::TempDir, threadprof::Profiler)> = OnceLock::new();
    STATE
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let handle = threadprof::Profiler::builder()
                .output_dir(dir.path())
                .dump_interval(Duration::from_secs(3600))
                .frequency(99)
                .wall_frequency(999)
                .start()
                .expect("start");
            (dir, handle)
        })
        .0
        .path()
}

fn at_least(start: Instant, d: Duration, what: &str) {
    let took = start.elapsed();
    assert!(took >= d, "{what} ended early: {took:?} < {d:?}");
    assert!(
        took < d * 4 + Duration::from_millis(500),
        "{what} took {took:?}"
    );
}

#[test]
fn std_blocking_calls_complete_with_correct_results_and_durations() {
    dir();
    threadprof::run("blocking_std", || {
        // sleep
        let t = Instant::now();
        std::thread::sleep(Duration::from_millis(200));
        at_least(t, Duration::from_millis(200), "thread::sleep");

        // mpsc recv
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            tx.send(42u32).unwrap();
        });
        let t = Instant::now();
        assert_eq!(rx.recv().unwrap(), 42);
        at_least(t, Duration::from_millis(100), "mpsc recv");

        // Mutex contention
        let m = Arc::new(Mutex::new(0u32));
        let (locked_tx, locked_rx) = mpsc::channel();
        let holder = {
            let m = m.clone();
            std::thread::spawn(move || {
                let mut g = m.lock().unwrap();
                locked_tx.send(()).unwrap();
                std::thread::sleep(Duration::from_millis(100));
                *g = 7;
            })
        };
        locked_rx.recv().unwrap();
        let t = Instant::now();
        assert_eq!(*m.lock().unwrap(), 7);
        at_least(t, Duration::from_millis(90), "Mutex::lock");
        holder.join().unwrap();

        // Condvar::wait_timeout must not end early
        let pair = (Mutex::new(false), Condvar::new());
        let t = Instant::now();
        let (_g, res) = pair
            .1
            .wait_timeout(pair.0.lock().unwrap(), Duration::from_millis(150))
            .unwrap();
        assert!(res.timed_out());
        at_least(t, Duration::from_millis(150), "Condvar::wait_timeout");

        // Process spawn and wait
        let t = Instant::now();
        let status = std::process::Command::new("sleep")
            .arg("0.2")
            .status()
            .unwrap();
        assert!(status.success());
        at_least(t, Duration::from_millis(200), "Command::status");

        // File I/O
        let file = tempfile::NamedTempFile::new().unwrap();
        let data: Vec<u8> = (0..8 << 20).map(|i: u32| (i * 31 % 251) as u8).collect();
        std::fs::write(file.path(), &data).unwrap();
        assert_eq!(std::fs::read(file.path()).unwrap(), data);
    });
}

#[test]
fn tcp_over_loopback_with_a_slow_peer() {
    dir();
    threadprof::run("blocking_tcp", || {
        // read_to_end from a peer that trickles 5 x 10 KB.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            for i in 0..5u8 {
                s.write_all(&[i; 10_000]).unwrap();
                std::thread::sleep(Duration::from_millis(30));
            }
        });
        let t = Instant::now();
        let mut got = Vec::new();
        TcpStream::connect(addr)
            .unwrap()
            .read_to_end(&mut got)
            .unwrap();
        at_least(t, Duration::from_millis(120), "read_to_end");
        assert_eq!(got.len(), 50_000);
        assert!(got
            .chunks(10_000)
            .enumerate()
            .all(|(i, c)| c.iter().all(|&b| b == i as u8)));
        server.join().unwrap();

        // write_all of 4 MiB to a peer that reads slowly.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let reader = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let (mut buf, mut total) = (vec![0u8; 64 << 10], 0usize);
            loop {
                std::thread::sleep(Duration::from_millis(2));
                match s.read(&mut buf).unwrap() {
                    0 => return total,
                    n => total += n,
                }
            }
        });
        let payload = vec![0xabu8; 4 << 20];
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&payload).unwrap();
        drop(s);
        assert_eq!(reader.join().unwrap(), payload.len());
    });
}

#[test]
fn a_tokio_runtime_driven_from_a_registered_thread() {
    dir();
    threadprof::spawn("tokio_driver", || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let t = Instant::now();
            tokio::time::sleep(Duration::from_millis(150)).await;
            at_least(t, Duration::from_millis(150), "tokio::time::sleep");

            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let echo = tokio::spawn(async move {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 1 << 20];
                let mut n = 0;
                while n < buf.len() {
                    n += s.read(&mut buf[n..]).await.unwrap();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                s.write_all(&buf).await.unwrap();
            });
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            let msg: Vec<u8> = (0..1u32 << 20).map(|i| (i % 253) as u8).collect();
            c.write_all(&msg).await.unwrap();
            let mut back = vec![0u8; msg.len()];
            let t = tokio::time::timeout(Duration::from_secs(10), c.read_exact(&mut back)).await;
            t.expect("echo in time").unwrap();
            assert_eq!(back, msg);
            echo.await.unwrap();
        });
    })
    .join()
    .unwrap();
}

#[inline(never)]
fn burn_phase(cpu: Duration) -> u64 {
    burn_for(cpu, |n| (0..n).fold(1u64, |a, i| a.rotate_left(3) ^ i))
}

#[inline(never)]
fn sleep_phase(d: Duration) {
    std::thread::sleep(d);
    black_box(());
}

#[test]
fn a_sleep_burn_split_lands_in_the_right_functions_and_states() {
    dir();
    // Ground truth: the wall time of each phase, measured inside the thread.
    let (asleep, registered) = threadprof::spawn("split_wall", || {
        let (start, mut asleep) = (Instant::now(), Duration::ZERO);
        for _ in 0..6 {
            black_box(burn_phase(Duration::from_millis(50)));
            let t = Instant::now();
            sleep_phase(Duration::from_millis(150));
            asleep += t.elapsed();
        }
        (asleep.as_nanos() as f64, start.elapsed().as_nanos() as f64)
    })
    .join()
    .unwrap();
    assert!(threadprof::flush());
    let p = read_profile(&dir().join("split_wall.pb.gz"));
    let (wall, cpu) = (
        p.sample_type_index("wall").unwrap(),
        p.sample_type_index("cpu").unwrap(),
    );
    assert_eq!(p.string(p.default_sample_type), "cpu");
    let (mut sleep_wall, mut burn_wall, mut total_wall) = (0.0, 0.0, 0.0);
    let (mut sleep_waiting, mut sleep_cpu, mut burn_running) = (0.0, 0.0, 0.0);
    for s in &p.sample {
        let names = p.stack_names(s);
        let in_sleep = names.iter().any(|n| n.ends_with("::sleep_phase"));
        let in_burn = names.iter().any(|n| n.ends_with("::burn_phase"));
        let w = s.value[wall] as f64;
        total_wall += w;
        if s.value[wall] > 0 {
            assert_eq!(s.value[cpu], 0, "a wall sample carries no CPU");
            assert!(p.label_str(s, "state").is_some());
        } else {
            assert!(p.label_str(s, "state").is_none());
        }
        if in_sleep {
            sleep_wall += w;
            sleep_cpu += s.value[cpu] as f64;
            if p.label_str(s, "state") == Some("waiting") {
                sleep_waiting += w;
            }
        }
        if in_burn {
            burn_wall += w;
            if p.label_str(s, "state") == Some("running") {
                burn_running += w;
            }
        }
    }
    let (share, truth) = (sleep_wall / total_wall, asleep / registered);
    assert!(
        (share - truth).abs() < 0.1,
        "sleep share of wall {share:.2}, measured {truth:.2}"
    );
    assert!(
        burn_wall / total_wall > 0.1,
        "burn share {:.2}",
        burn_wall / total_wall
    );
    assert!(
        sleep_waiting / sleep_wall > 0.9,
        "asleep but not waiting: {:.2}",
        sleep_waiting / sleep_wall
    );
    // A burst right after a sleep is on CPU: the thread woke since the previous wall sample.
    assert!(
        burn_running / burn_wall > 0.8,
        "burning but not running: {:.2}",
        burn_running / burn_wall
    );
    // ~75% of the wall time is asleep; CPU samples there come only from timer expiries that fall
    // in the syscall's own entry/exit path (a few at most, one per transition).
    let cpu_total = total(&p, "cpu") as f64;
    assert!(
        sleep_cpu <= 0.15 * cpu_total,
        "CPU while asleep: {sleep_cpu} of {cpu_total}"
    );
    let coverage = total_wall / registered;
    assert!(
        (0.85..1.1).contains(&coverage),
        "wall {total_wall} vs registered {registered}"
    );
}

/// Sleeps `d` with raw `nanosleep(2)` (which returns `EINTR` on every signal, whatever
/// `SA_RESTART` says), resuming with the time left; returns how often it was interrupted.
#[inline(never)]
fn raw_nanosleep_phase(d: Duration) -> u32 {
    let mut left = libc::timespec {
        tv_sec: d.as_secs() as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    };
    let mut interrupted = 0;
    loop {
        let mut rem = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: both timespecs are valid for the call.
        if unsafe { libc::nanosleep(&left, &mut rem) } == 0 {
            return interrupted;
        }
        let err = std::io::Error::last_os_error().raw_os_error();
        assert_eq!(err, Some(libc::EINTR), "nanosleep failed");
        interrupted += 1;
        left = rem;
    }
}

#[test]
fn a_blocked_thread_is_sampled_without_being_woken_each_period() {
    dir();
    let blocked = Duration::from_secs(2);
    let (interrupted, took) = threadprof::spawn("idle_credit", move || {
        let t = Instant::now();
        (raw_nanosleep_phase(blocked), t.elapsed())
    })
    .join()
    .unwrap();
    // At 999 Hz a signal every period would interrupt the sleep ~2000 times. The first wall
    // signal finds the thread blocked; after that, periods are credited without a signal for
    // as long as its CPU clock does not move.
    println!("IDLE_CREDIT interrupted={interrupted} in {took:?}");
    assert!(
        (1..=20).contains(&interrupted),
        "interrupted {interrupted} times in {took:?}"
    );
    assert!(threadprof::flush());
    let p = read_profile(&dir().join("idle_credit.pb.gz"));
    let wall = p.sample_type_index("wall").unwrap();
    let (mut total_wall, mut asleep_waiting) = (0i64, 0i64);
    for s in &p.sample {
        total_wall += s.value[wall];
        let in_sleep = p
            .stack_names(s)
            .iter()
            .any(|n| n.ends_with("::raw_nanosleep_phase"));
        if in_sleep && p.label_str(s, "state") == Some("waiting") {
            asleep_waiting += s.value[wall];
        }
    }
    // The credited periods carry the blocked stack: the whole sleep is there, waiting.
    let coverage = total_wall as f64 / took.as_nanos() as f64;
    assert!(
        (0.9..1.1).contains(&coverage),
        "wall {total_wall} ns vs {took:?} registered"
    );
    assert!(
        asleep_waiting as f64 >= 0.95 * total_wall as f64,
        "waiting in the sleep: {asleep_waiting} of {total_wall}"
    );
}
