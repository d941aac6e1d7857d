//! The HTTP endpoint over real sockets on 127.0.0.1, read by our decoder and by `go tool pprof`.
#![cfg(all(feature = "http", target_os = "linux"))]

mod common;

use std::hint::black_box;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::*;
use threadprof::pprof::{decode_gz, Profile};

const CHILD: &str = "THREADPROF_HTTP_TEST_CHILD";

/// Tests that open profile windows take this, so the window limit can be checked exactly.
static WINDOWS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn windows_lock() -> std::sync::MutexGuard<'static, ()> {
    WINDOWS.lock().unwrap_or_else(|e| e.into_inner())
}

fn server() -> SocketAddr {
    static STATE: OnceLock<(tempfile::TempDir, threadprof::Profiler)> = OnceLock::new();
    STATE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let handle = threadprof::Profiler::builder()
            .output_dir(dir.path())
            .dump_interval(Duration::from_secs(3600))
            .frequency(199)
            .http_addr("127.0.0.1:0")
            .start()
            .expect("start");
        (dir, handle)
    });
    threadprof::http_local_addr().expect("server listening")
}

struct Response {
    status: u16,
    /// Header lines after the status line, as sent.
    head: String,
    body: Vec<u8>,
}

impl Response {
    /// The value of header `name` (case-insensitive), if present.
    fn header(&self, name: &str) -> Option<&str> {
        self.head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    }
}

fn request(addr: SocketAddr, raw: &str) -> Response {
    try_request(addr, raw).unwrap()
}

fn try_request(addr: SocketAddr, raw: &str) -> std::io::Result<Response> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.write_all(raw.as_bytes())?;
    let mut bytes = Vec::new();
    s.read_to_end(&mut bytes)?;
    let split = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&bytes[..split]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    Ok(Response {
        status,
        body: bytes[split + 4..].to_vec(),
        head,
    })
}

fn get(addr: SocketAddr, path: &str) -> Response {
    request(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n"),
    )
}

fn cpu_of(p: &Profile) -> f64 {
    let i = p.sample_type_index("cpu").unwrap();
    p.sample.iter().map(|s| s.value[i]).sum::<i64>() as f64 / 1e9
}

/// CPU seconds consumed so far by another thread.
fn thread_cpu_of(handle: &std::thread::JoinHandle<u64>) -> f64 {
    let mut clock: libc::clockid_t = 0;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: the thread is alive (joined later); both calls write only to our locals.
    unsafe {
        libc::pthread_getcpuclockid(handle.as_pthread_t(), &mut clock);
        libc::clock_gettime(clock, &mut ts);
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

#[inline(never)]
fn http_hot_a(n: u64) -> u64 {
    (0..n).fold(3u64, |a, i| a.rotate_left(7) ^ i)
}

#[inline(never)]
fn http_hot_b(n: u64) -> u64 {
    (0..n).fold(5u64, |a, i| a.rotate_right(3).wrapping_add(i))
}

/// A registered thread that burns CPU in `work` until `stop` is set.
fn busy(tag: &str, work: fn(u64) -> u64, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    threadprof::spawn(tag, move || {
        let mut acc = 0;
        while !stop.load(Ordering::Relaxed) {
            acc ^= black_box(work(20_000));
        }
        acc
    })
}

#[test]
fn a_window_holds_the_cpu_burned_during_it_and_the_tag_filter_works() {
    let addr = server();
    let _serial = windows_lock();
    let stop = Arc::new(AtomicBool::new(false));
    let a = busy("http_a", http_hot_a, stop.clone());
    let b = busy("http_b", http_hot_b, stop.clone());
    std::thread::sleep(Duration::from_millis(200));
    let before = thread_cpu_of(&a);
    let all_and_a = std::thread::scope(|s| {
        let all = s.spawn(|| get(addr, "/debug/pprof/profile?seconds=2"));
        let only_a = s.spawn(|| get(addr, "/debug/pprof/profile?seconds=3&tag=http_a"));
        (all.join().unwrap(), only_a.join().unwrap())
    });
    let burned_a = thread_cpu_of(&a) - before;
    stop.store(true, Ordering::Relaxed);
    black_box((a.join().unwrap(), b.join().unwrap()));

    let (all, only_a) = all_and_a;
    assert_eq!((all.status, only_a.status), (200, 200));
    let all = decode_gz(&all.body).unwrap();
    let only_a = decode_gz(&only_a.body).unwrap();
    let tags = |p: &Profile| -> std::collections::BTreeSet<String> {
        p.sample
            .iter()
            .filter_map(|s| p.label_str(s, "tag").map(str::to_owned))
            .collect()
    };
    assert!(
        tags(&all).contains("http_a") && tags(&all).contains("http_b"),
        "{:?}",
        tags(&all)
    );
    assert_eq!(tags(&only_a).into_iter().collect::<Vec<_>>(), ["http_a"]);
    assert!(only_a
        .sample
        .iter()
        .all(|s| only_a.label_str(s, "thread_name") == Some("http_a")));
    // The 3 s window of tag A holds about the CPU A burned during it (~3 s window of ~3.2 s).
    let ratio = cpu_of(&only_a) / burned_a;
    assert!(
        (0.75..1.1).contains(&ratio),
        "window CPU {} vs burned {burned_a}",
        cpu_of(&only_a)
    );
    assert!(hottest(&only_a, "http_hot").as_deref() == Some("http::http_hot_a"));
    // Cumulative profiles are unaffected by windows, and served from memory.
    let cumulative = get(addr, "/profiles/http_a.pb.gz");
    assert_eq!(cumulative.status, 200);
    assert!(cpu_of(&decode_gz(&cumulative.body).unwrap()) >= cpu_of(&only_a));
    assert_eq!(get(addr, "/profiles/_merged.pb.gz").status, 200);
}

#[test]
fn every_bad_request_gets_its_status() {
    let addr = server();
    threadprof::run("http_known", || black_box(http_hot_a(1000)));
    for (path, status) in [
        ("/nope", 404),
        ("/profiles/no_such_tag.pb.gz", 404),
        ("/profiles/../../etc/passwd", 404),
        ("/debug/pprof/profile?seconds=301", 400),
        ("/debug/pprof/profile?seconds=1&tag=no_such_tag", 400),
        ("/debug/fgprof?seconds=1", 404),
    ] {
        let r = get(addr, path);
        let body = String::from_utf8_lossy(&r.body);
        assert_eq!(r.status, status, "{path}: {body}");
        assert_eq!(body.matches('\n').count(), 1, "one-line body for {path}");
        assert_eq!(r.header("X-Go-Pprof"), Some("1"), "{path}");
        assert_eq!(r.header("X-Content-Type-Options"), Some("nosniff"));
    }
    let r = get(addr, "/debug/fgprof");
    assert!(
        String::from_utf8_lossy(&r.body).contains("wall-clock sampling is off"),
        "says why"
    );
    let r = get(addr, "/debug/pprof/profile?seconds=301");
    assert!(
        String::from_utf8_lossy(&r.body).contains("maximum of 300"),
        "names the maximum"
    );
    let index = get(addr, "/debug/pprof/");
    assert_eq!(index.status, 200);
    assert_eq!(index.header("X-Content-Type-Options"), Some("nosniff"));
    assert_eq!(index.header("X-Go-Pprof"), None);
    assert!(String::from_utf8_lossy(&index.body).contains("http_known"));
}

#[test]
fn methods_and_request_bodies_are_handled_as_http_says() {
    let addr = server();
    for method in ["POST", "PUT", "DELETE", "HEAD", "OPTIONS"] {
        let r = request(
            addr,
            &format!("{method} /debug/pprof/profile HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"),
        );
        assert_eq!(
            (r.status, r.header("Allow")),
            (405, Some("GET")),
            "{method}"
        );
        assert_eq!(r.header("X-Go-Pprof"), Some("1"));
        assert_eq!(r.header("X-Content-Type-Options"), Some("nosniff"));
    }
    // A GET with a small body: the body is drained and the request served.
    let body = "x".repeat(8 * 1024);
    let r = request(
        addr,
        &format!(
            "GET /debug/pprof/ HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // Above 8 KiB: 413 without reading it; of unknown length: 411.
    let r = request(
        addr,
        "GET /debug/pprof/ HTTP/1.1\r\nContent-Length: 8193\r\n\r\n",
    );
    assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("X-Go-Pprof"), Some("1"));
    let r = request(
        addr,
        "GET /debug/pprof/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    );
    assert_eq!(r.status, 411);
    // Malformed heads are refused by the parser.
    for raw in [
        "GET /debug/pprof/ HTTP/1.1\r\nBad Header: x\r\n\r\n",
        "GET /debug/pprof/ HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        "GARBAGE\r\n\r\n",
    ] {
        assert_eq!(request(addr, raw).status, 400, "{raw:?}");
    }
}

/// Sends a request head one byte every 4 s; returns how long until the server answered, and
/// the answer's first line.
fn trickle(addr: SocketAddr) -> (Duration, String) {
    let t = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(4))).unwrap();
    let mut got = Vec::new();
    for byte in b"GET /debug/pprof/ HTTP/1.1\r\nHost: x\r\n".iter().cycle() {
        if s.write_all(&[*byte]).is_err() {
            let _ = s.read_to_end(&mut got);
            break;
        }
        let mut buf = [0u8; 512];
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let _ = s.read_to_end(&mut got);
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
        if t.elapsed() > Duration::from_secs(30) {
            break;
        }
    }
    let first = String::from_utf8_lossy(&got)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    (t.elapsed(), first)
}

#[test]
fn a_trickling_client_is_cut_at_five_seconds() {
    let addr = server();
    let (took, first) = trickle(addr);
    println!("a client sending a byte every 4 s was answered after {took:?}: {first}");
    assert!(first.starts_with("HTTP/1.1 408"), "{first:?}");
    assert!(
        (Duration::from_millis(4900)..Duration::from_millis(6500)).contains(&took),
        "cut after {took:?}, not at 5 s"
    );
}

#[test]
fn child_trickling_clients() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let _p = threadprof::Profiler::builder()
        .http_addr("127.0.0.1:0")
        .output_dir(std::env::var("THREADPROF_DIR").unwrap())
        .start()
        .unwrap();
    let addr = threadprof::http_local_addr().unwrap();
    let t = Instant::now();
    let clients: Vec<_> = (0..24)
        .map(|_| std::thread::spawn(move || trickle(addr)))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut refused = 0;
    let served_after = loop {
        // A refused connection may also be reset before its 503 is read.
        let raw = "GET /debug/pprof/ HTTP/1.1\r\n\r\n";
        match try_request(addr, raw).map(|r| r.status) {
            Ok(200) => break t.elapsed(),
            Ok(503) | Err(_) => refused += 1,
            Ok(other) => panic!("status {other}"),
        }
        assert!(t.elapsed() < Duration::from_secs(30), "never served");
        std::thread::sleep(Duration::from_millis(50));
    };
    let answers: Vec<(Duration, String)> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let cut = answers
        .iter()
        .filter(|(_, a)| a.starts_with("HTTP/1.1 408"))
        .count();
    let busy = answers
        .iter()
        .filter(|(_, a)| a.starts_with("HTTP/1.1 503"))
        .count();
    println!(
        "SERVED_AFTER {:.2} REFUSED {refused} CUT {cut} BUSY {busy}",
        served_after.as_secs_f64()
    );
    std::process::exit(0);
}

#[test]
fn trickling_clients_cannot_lock_others_out() {
    let dir = tempfile::tempdir().unwrap();
    let (stdout, _) = run_child("child_trickling_clients", dir.path());
    let line = printed(&stdout, "SERVED_AFTER");
    println!("24 clients sending a byte every 4 s, then a 25th: {line}");
    let fields: Vec<&str> = line.split_whitespace().collect();
    let served_after: f64 = fields[0].parse().unwrap();
    let refused: u32 = fields[2].parse().unwrap();
    // The 16 connection slots were full (the 25th was refused at first) ...
    assert!(refused > 0, "{line}");
    assert_eq!(fields[4..], ["16", "BUSY", "8"], "{line}");
    // ... for no longer than the 5 s head deadline.
    assert!(
        served_after < 6.0,
        "locked out for {served_after} s: {line}"
    );
}

#[test]
fn more_than_four_windows_get_429() {
    let addr = server();
    let _serial = windows_lock();
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..6)
            .map(|i| {
                s.spawn(move || {
                    std::thread::sleep(Duration::from_millis(50 * i));
                    get(addr, "/debug/pprof/profile?seconds=2").status
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        statuses.iter().filter(|&&s| s == 429).count(),
        2,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        4,
        "{statuses:?}"
    );
}

/// Waits until `threadprof::stats().open_windows` is `n`; how long that took.
fn open_windows_reach(n: usize) -> Duration {
    let t = Instant::now();
    while threadprof::stats().open_windows != n {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{} windows open, not {n}",
            threadprof::stats().open_windows
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    t.elapsed()
}

/// Closes `s` with a reset (SO_LINGER 0) instead of a FIN.
fn reset(s: TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a correctly sized option value that outlives the call.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    drop(s);
}

#[test]
fn aborted_windows_are_removed_at_once_and_free_their_slots() {
    let addr = server();
    let _serial = windows_lock();
    open_windows_reach(0);
    let ask = || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /debug/pprof/profile?seconds=300 HTTP/1.1\r\n\r\n")
            .unwrap();
        s
    };
    let mut slowest = Duration::ZERO;
    // 5 rounds of 4 aborted 300 s windows, the clients closing or resetting the connection.
    for round in 0..5 {
        let clients: Vec<TcpStream> = (0..4).map(|_| ask()).collect();
        open_windows_reach(4);
        for c in clients {
            if round % 2 == 1 {
                reset(c);
            } else {
                drop(c);
            }
        }
        slowest = slowest.max(open_windows_reach(0));
    }
    println!("20 aborted windows: 0 open, each round gone within {slowest:?}");
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
    // The slots of the 4 aborted windows are free: a fifth request is served, not 429.
    let r = get(addr, "/debug/pprof/profile?seconds=1");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(threadprof::stats().open_windows, 0);
}

#[test]
fn a_silent_client_neither_blocks_others_nor_stays_forever() {
    let addr = server();
    let mut silent = TcpStream::connect(addr).unwrap();
    let t = Instant::now();
    assert_eq!(get(addr, "/debug/pprof/").status, 200);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "served while a client is silent"
    );
    silent
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut got = Vec::new();
    let _ = silent.read_to_end(&mut got);
    let waited = t.elapsed();
    assert!(
        waited < Duration::from_secs(12),
        "silent connection held for {waited:?}"
    );
    assert!(
        String::from_utf8_lossy(&got).starts_with("HTTP/1.1 408"),
        "{got:?}"
    );
}

#[test]
fn the_flamegraph_endpoint_draws_the_window() {
    let addr = server();
    let _serial = windows_lock();
    let stop = Arc::new(AtomicBool::new(false));
    let a = busy("http_flame", http_hot_b, stop.clone());
    while !threadprof::live_threads()
        .iter()
        .any(|t| t.tag == "http_flame")
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    let r = get(addr, "/debug/pprof/flamegraph?seconds=1&tag=http_flame");
    stop.store(true, Ordering::Relaxed);
    black_box(a.join().unwrap());
    assert_eq!(r.status, 200);
    let svg = String::from_utf8_lossy(&r.body);
    assert!(
        svg.starts_with("<?xml") && svg.contains("http_hot_b"),
        "{}",
        &svg[..svg.len().min(300)]
    );
}

#[test]
fn go_tool_pprof_reads_the_endpoint() {
    let addr = server();
    let _serial = windows_lock();
    if std::process::Command::new("go")
        .arg("version")
        .output()
        .is_err()
    {
        println!("SKIPPED: `go` is not installed; .ci/run installs it (Debian package golang-go)");
        return;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let a = busy("http_go", http_hot_a, stop.clone());
    while !threadprof::live_threads()
        .iter()
        .any(|t| t.tag == "http_go")
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    let home = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("go")
        .args([
            "tool",
            "pprof",
            "-top",
            "-cum",
            "-tagfocus=tag=http_go",
            "-seconds",
            "2",
        ])
        .arg(format!("http://{addr}/debug/pprof/profile"))
        .env("HOME", home.path())
        .env("PPROF_TMPDIR", home.path())
        .output()
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    black_box(a.join().unwrap());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Debug builds leave the flat time in iterator internals, so check the hot function's cum:
    // the busy thread spends nearly all its time under it.
    let row = text
        .lines()
        .find(|l| l.ends_with("http::http_hot_a"))
        .unwrap_or_else(|| panic!("{text}"));
    let cum_pct: f64 = row
        .split_whitespace()
        .nth(4)
        .and_then(|c| c.trim_end_matches('%').parse().ok())
        .unwrap();
    assert!(cum_pct > 80.0, "{row}\n{text}");
    assert!(
        !text.contains("http_hot_b"),
        "tagfocus keeps other threads out: {text}"
    );
    // An error's reason reaches the user (X-Go-Pprof), not only its status.
    let out = std::process::Command::new("go")
        .args(["tool", "pprof", "-top"])
        .arg(format!("http://{addr}/debug/fgprof"))
        .env("HOME", home.path())
        .env("PPROF_TMPDIR", home.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("404 Not Found - wall-clock sampling is off"),
        "{stderr}"
    );
}

// ---- child processes: token, bind failure

#[test]
fn child_token() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let _p = threadprof::Profiler::builder()
        .http_addr("127.0.0.1:0")
        .http_token("s3cret")
        .output_dir(std::env::temp_dir().join("threadprof-http-token-test"))
        .start()
        .unwrap();
    let addr = threadprof::http_local_addr().unwrap();
    let path = "/debug/pprof/";
    let none = get(addr, path);
    let with = |value: &str| {
        request(
            addr,
            &format!("GET {path} HTTP/1.1\r\nauthorization: {value}\r\n\r\n"),
        )
        .status
    };
    let wrong = with("Bearer nope");
    let right = with("Bearer s3cret");
    let lower = with("bearer s3cret");
    let upper = with("BEARER s3cret");
    let basic = with("Basic s3cret");
    println!(
        "TOKEN none={} wrong={wrong} right={right} lower={lower} upper={upper} basic={basic}",
        none.status
    );
    println!(
        "CHALLENGE {:?} {:?}",
        none.header("WWW-Authenticate"),
        none.header("X-Go-Pprof")
    );
    std::process::exit(0);
}

#[test]
fn child_bind_failure() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let _p = threadprof::Profiler::builder()
        .http_addr(addr.to_string())
        .output_dir(std::env::var("THREADPROF_DIR").unwrap())
        .start()
        .unwrap();
    println!("BOUND_TO {addr}");
    threadprof::run("still_sampled", || {
        burn_for(Duration::from_millis(200), http_hot_b)
    });
    std::process::exit(0);
}

fn run_child(test: &str, dir: &std::path::Path) -> (String, String) {
    run_child_with(test, dir, &[])
}

fn run_child_with(test: &str, dir: &std::path::Path, env: &[(&str, &str)]) -> (String, String) {
    let mut command = std::process::Command::new(std::env::current_exe().unwrap());
    command
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD, "1");
    for var in threadprof_runtime::config::ENV_VARS {
        command.env_remove(var);
    }
    command.env("THREADPROF_DIR", dir);
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_token_is_required_when_set() {
    let dir = tempfile::tempdir().unwrap();
    let (stdout, _) = run_child("child_token", dir.path());
    assert!(
        stdout.contains("TOKEN none=401 wrong=401 right=200 lower=200 upper=200 basic=401"),
        "{stdout}"
    );
    assert_eq!(
        printed(&stdout, "CHALLENGE"),
        r#"Some("Bearer realm=\"threadprof\"") Some("1")"#
    );
}

#[test]
fn a_bind_failure_is_logged_and_sampling_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (stdout, stderr) = run_child("child_bind_failure", dir.path());
    // libtest's "test name ... " progress text may share the line.
    let addr = stdout
        .lines()
        .find_map(|l| l.split("BOUND_TO ").nth(1))
        .expect("child printed its address");
    assert!(
        stderr.contains(&format!("cannot serve profiles over HTTP on {addr}")),
        "{stderr}"
    );
    let p = read_profile(&dir.path().join("still_sampled.pb.gz"));
    assert!(cpu_of(&p) > 0.0);
}

/// What the child of the configuration tests printed after `tag`, e.g. `SERVED`.
fn printed<'a>(stdout: &'a str, tag: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|l| l.split(&format!("{tag} ")).nth(1))
        .unwrap_or_else(|| panic!("child printed no {tag}: {stdout}"))
}

/// Starts the profiler as `THREADPROF_HTTP_TEST_MODE` says, prints whether a server started and
/// the token in force, and the status of a request to it on 127.0.0.1 when one did.
#[test]
fn child_http_config() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let mode = std::env::var("THREADPROF_HTTP_TEST_MODE").unwrap();
    let b = threadprof::Profiler::builder().output_dir(std::env::var("THREADPROF_DIR").unwrap());
    let b = match mode.as_str() {
        "builder-empty" => b.http_addr("127.0.0.1:0").http_token(""),
        "code-token" => b.http_addr("127.0.0.1:0").http_token("s3cret"),
        "addr-only" => b.http_addr("127.0.0.1:0"),
        "open" => b.http_addr("0.0.0.0:0"),
        "open-builder-opt-in" => b.http_addr("0.0.0.0:0").http_allow_unauthenticated(),
        "open-token" => b.http_addr("0.0.0.0:0").http_token("s3cret"),
        other => panic!("unknown mode {other}"),
    };
    let p = b.start().unwrap();
    let served = threadprof::http_local_addr();
    println!("SERVED {}", served.is_some());
    println!("TOKEN {:?}", p.config().http_token);
    if let Some(a) = served {
        let local = SocketAddr::from(([127, 0, 0, 1], a.port()));
        println!("STATUS {}", get(local, "/debug/pprof/").status);
    }
    std::process::exit(0);
}

fn config_child(mode: &str, env: &[(&str, &str)]) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut all = vec![("THREADPROF_HTTP_TEST_MODE", mode)];
    all.extend_from_slice(env);
    run_child_with("child_http_config", dir.path(), &all)
}

fn errors_in(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.contains("threadprof: error"))
        .collect()
}

#[test]
fn an_empty_token_is_a_configuration_error_never_open_access() {
    // `.http_token("")`: one error, no server.
    let (out, err) = config_child("builder-empty", &[]);
    assert_eq!(printed(&out, "SERVED"), "false", "{out}");
    let errors = errors_in(&err);
    assert_eq!(errors.len(), 1, "{err}");
    assert!(errors[0].contains("http_token() is empty"), "{err}");
    // `THREADPROF_HTTP_TOKEN=` and no token in code: the same.
    let (out, err) = config_child("addr-only", &[("THREADPROF_HTTP_TOKEN", "")]);
    assert_eq!(printed(&out, "SERVED"), "false", "{out}");
    let errors = errors_in(&err);
    assert_eq!(errors.len(), 1, "{err}");
    assert!(
        errors[0].contains("THREADPROF_HTTP_TOKEN is empty"),
        "{err}"
    );
    // An empty variable beside a token set in code does not erase it: served, with that token
    // required, and one warning.
    let (out, err) = config_child("code-token", &[("THREADPROF_HTTP_TOKEN", "")]);
    assert_eq!(printed(&out, "SERVED"), "true", "{out}");
    assert_eq!(printed(&out, "TOKEN"), "Some(\"s3cret\")", "{out}");
    assert_eq!(printed(&out, "STATUS"), "401", "{out}");
    assert!(errors_in(&err).is_empty(), "{err}");
    assert_eq!(
        err.matches("THREADPROF_HTTP_TOKEN is set but empty")
            .count(),
        1,
        "{err}"
    );
    // A real token in the environment replaces the one in code.
    let (out, err) = config_child("code-token", &[("THREADPROF_HTTP_TOKEN", "other")]);
    assert_eq!(printed(&out, "SERVED"), "true", "{out}");
    assert_eq!(printed(&out, "STATUS"), "401", "{out}");
    assert!(errors_in(&err).is_empty(), "{err}");
}

#[test]
fn a_non_loopback_address_needs_a_token_or_an_opt_in() {
    let (out, err) = config_child("open", &[]);
    assert_eq!(printed(&out, "SERVED"), "false", "{out}");
    let errors = errors_in(&err);
    assert_eq!(errors.len(), 1, "{err}");
    assert!(
        errors[0].contains("0.0.0.0:0") && errors[0].contains("not a loopback address"),
        "{err}"
    );
    for (mode, env) in [
        (
            "open",
            &[("THREADPROF_HTTP_ALLOW_UNAUTHENTICATED", "1")][..],
        ),
        ("open-builder-opt-in", &[][..]),
    ] {
        let (out, err) = config_child(mode, env);
        assert_eq!(printed(&out, "SERVED"), "true", "{mode}: {out}");
        assert_eq!(printed(&out, "STATUS"), "200", "{mode}: {out}");
        assert!(errors_in(&err).is_empty(), "{mode}: {err}");
    }
    // With a token it starts, and the token is required.
    let (out, err) = config_child("open-token", &[]);
    assert_eq!(printed(&out, "STATUS"), "401", "{out}");
    assert!(errors_in(&err).is_empty(), "{err}");
}

/// A registered thread that sleeps in short naps until `stop` is set.
fn napper(tag: &str, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    threadprof::spawn(tag, move || {
        let mut naps = 0;
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
            naps += 1;
        }
        naps
    })
}

fn types_of(p: &Profile) -> String {
    p.sample_type
        .iter()
        .map(|t| format!("{}/{}", p.string(t.r#type), p.string(t.unit)))
        .collect::<Vec<_>>()
        .join(",")
}

/// Sum of sample type `ty` over the samples of tag `tag` (and `state`, if given), in seconds
/// for time types.
fn total(p: &Profile, ty: &str, tag: &str, state: Option<&str>) -> f64 {
    let i = p.sample_type_index(ty).unwrap();
    let sum: i64 = p
        .sample
        .iter()
        .filter(|s| p.label_str(s, "tag") == Some(tag))
        .filter(|s| state.is_none_or(|st| p.label_str(s, "state") == Some(st)))
        .map(|s| s.value[i])
        .sum();
    if ty == "samples" {
        sum as f64
    } else {
        sum as f64 / 1e9
    }
}

#[test]
fn child_cpu_and_wall_apart() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let _p = threadprof::Profiler::builder()
        .http_addr("127.0.0.1:0")
        .frequency(199)
        .wall_frequency(99)
        .output_dir(std::env::var("THREADPROF_DIR").unwrap())
        .start()
        .unwrap();
    let addr = threadprof::http_local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let busy_thread = busy("apart_busy", http_hot_a, stop.clone());
    let sleeper = napper("apart_nap", stop.clone());
    while threadprof::live_threads().len() < 2 {
        std::thread::sleep(Duration::from_millis(5));
    }
    // Symbolize once first: in a debug build that takes a while on the dump thread, and would
    // lengthen the second window that closes.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(get(addr, "/profiles/_merged.pb.gz").status, 200);
    let (cpu, wall) = std::thread::scope(|s| {
        let cpu = s.spawn(|| get(addr, "/debug/pprof/profile?seconds=2"));
        let wall = s.spawn(|| get(addr, "/debug/fgprof?seconds=2"));
        (cpu.join().unwrap(), wall.join().unwrap())
    });
    let go = std::process::Command::new("go")
        .arg("version")
        .output()
        .is_ok();
    let mut go_read = Vec::new();
    if go {
        let home = tempfile::tempdir().unwrap();
        for path in ["/debug/pprof/profile", "/debug/fgprof"] {
            let out = std::process::Command::new("go")
                .args(["tool", "pprof", "-top", "-seconds", "1"])
                .arg(format!("http://{addr}{path}"))
                .env("HOME", home.path())
                .env("PPROF_TMPDIR", home.path())
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{path}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            // The CPU profile's top rows are the busy loop's, the wall one's the naps'.
            let wanted = if path.contains("fgprof") {
                "sleep"
            } else {
                "http_hot_a"
            };
            assert!(text.contains(wanted), "{path}: {text}");
            go_read.push(path);
        }
    }
    stop.store(true, Ordering::Relaxed);
    black_box((busy_thread.join().unwrap(), sleeper.join().unwrap()));
    assert_eq!((cpu.status, wall.status), (200, 200));
    let cpu = decode_gz(&cpu.body).unwrap();
    let wall = decode_gz(&wall.body).unwrap();
    let states = |p: &Profile| {
        p.sample
            .iter()
            .filter(|s| p.label_str(s, "state").is_some())
            .count()
    };
    let cpu_period = cpu.period as f64 / 1e9;
    println!("CPU_TYPES {}", types_of(&cpu));
    println!("CPU_STATES {}", states(&cpu));
    println!(
        "CPU_COUNT_X_PERIOD_OVER_CPU {:.3}",
        total(&cpu, "samples", "apart_busy", None) * cpu_period
            / total(&cpu, "cpu", "apart_busy", None)
    );
    println!("CPU_OF_NAPPER {:.3}", total(&cpu, "cpu", "apart_nap", None));
    println!("WALL_TYPES {}", types_of(&wall));
    println!(
        "WALL_PERIOD {} {}",
        wall.period_type.map_or("", |t| wall.string(t.r#type)),
        wall.period
    );
    println!(
        "WALL_NAP {:.2} {:.2} {:.2}",
        total(&wall, "wall", "apart_nap", Some("waiting")),
        total(&wall, "wall", "apart_busy", None),
        total(&wall, "wall", "apart_busy", Some("running"))
    );
    println!(
        "GO_READ {}",
        if go {
            go_read.join(",")
        } else {
            "SKIPPED".into()
        }
    );
    std::process::exit(0);
}

#[test]
fn cpu_and_wall_windows_are_served_apart() {
    let dir = tempfile::tempdir().unwrap();
    let (stdout, _) = run_child("child_cpu_and_wall_apart", dir.path());
    println!("{stdout}");
    // The CPU window is Go's CPU profile: no wall column, no wall sample, and its
    // samples/count are CPU periods only.
    assert_eq!(
        printed(&stdout, "CPU_TYPES"),
        "samples/count,cpu/nanoseconds"
    );
    assert_eq!(printed(&stdout, "CPU_STATES"), "0");
    assert_eq!(printed(&stdout, "CPU_COUNT_X_PERIOD_OVER_CPU"), "1.000");
    let napper_cpu: f64 = printed(&stdout, "CPU_OF_NAPPER").parse().unwrap();
    assert!(napper_cpu < 0.1, "{stdout}");
    // The wall window has the wall column only, state labels, and about 2 s per thread (the
    // window closes when the dump thread gets to it, after the CPU window's profile is built).
    assert_eq!(
        printed(&stdout, "WALL_TYPES"),
        "samples/count,wall/nanoseconds"
    );
    assert_eq!(
        printed(&stdout, "WALL_PERIOD"),
        format!("wall {}", 1_000_000_000 / 99)
    );
    let nap: Vec<f64> = printed(&stdout, "WALL_NAP")
        .split(' ')
        .map(|v| v.parse().unwrap())
        .collect();
    assert!(
        (1.5..3.0).contains(&nap[0]),
        "waiting wall of the napper: {stdout}"
    );
    assert!(
        (1.5..3.0).contains(&nap[1]),
        "wall of the busy thread: {stdout}"
    );
    // Mostly running; a busy thread that the machine's other work keeps off the CPU for
    // more than half a period at a time is labelled waiting (README, wall-clock mode), which on
    // a loaded 2-core CI machine took 0.9 of 2 s in one run, and 1.56 of 2.01 s in another
    // (a parallel build running).
    assert!(
        nap[2] > 0.1 * nap[1],
        "running wall of the busy thread: {stdout}"
    );
    let go = printed(&stdout, "GO_READ");
    if go == "SKIPPED" {
        println!("SKIPPED the go tool pprof part: `go` is not installed");
    } else {
        assert_eq!(go, "/debug/pprof/profile,/debug/fgprof");
    }
}

#[inline(never)]
fn http_span_work(n: u64) -> u64 {
    (0..n).fold(9u64, |a, i| a.rotate_left(11) ^ i.wrapping_mul(7))
}

/// Span ids go into HTTP windows (what a scraper ingests) and never into the cumulative
/// profiles: they are unbounded.
#[cfg(feature = "tracing")]
#[test]
fn span_ids_are_in_windows_and_not_in_cumulative_profiles() {
    use tracing_subscriber::prelude::*;
    let addr = server();
    let _serial = windows_lock();
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let stop = stop.clone();
        threadprof::spawn("http_spans", move || {
            let subscriber = tracing_subscriber::registry().with(
                threadprof::tracing::layer()
                    .with_fields(["route"])
                    .with_span_ids(true),
            );
            tracing::subscriber::with_default(subscriber, || {
                let mut acc = 0;
                let mut requests = 0u64;
                let mut tracing_ids = std::collections::BTreeSet::new();
                while !stop.load(Ordering::Relaxed) {
                    // A new root span per "request", a child span inside it.
                    let root = tracing::info_span!("request", route = "/spans");
                    tracing_ids.insert(format!("{:016x}", root.id().unwrap().into_u64()));
                    let _r = root.enter();
                    let _c = tracing::info_span!("parse").entered();
                    acc ^= black_box(http_span_work(200_000));
                    requests += 1;
                }
                (acc, requests, tracing_ids)
            })
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    let window = get(addr, "/debug/pprof/profile?seconds=1&tag=http_spans");
    stop.store(true, Ordering::Relaxed);
    let (_, requests, tracing_ids) = worker.join().unwrap();
    assert_eq!(window.status, 200);
    let window = decode_gz(&window.body).unwrap();
    let spans: Vec<&str> = window
        .sample
        .iter()
        .filter(|s| {
            window
                .stack_names(s)
                .iter()
                .any(|n| n.contains("http_span_work"))
        })
        .map(|s| window.label_str(s, "span_id").unwrap_or(""))
        .collect();
    assert!(!spans.is_empty());
    for id in &spans {
        assert_eq!(id.len(), 16, "16 hex digits: {id:?}");
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()), "{id:?}");
    }
    // The layer's own ids, not tracing's (slab slots, reused once a span closes).
    assert!(
        spans.iter().all(|id| !tracing_ids.contains(*id)),
        "span ids are tracing's own: {:?}",
        &spans[..spans.len().min(5)]
    );
    // One id per root span: several requests in the window, several distinct ids (about one
    // sample per request at 199 Hz).
    let distinct: std::collections::BTreeSet<&str> = spans.iter().copied().collect();
    assert!(requests > 5, "{requests} requests");
    assert!(
        distinct.len() >= 3.min(spans.len()) && distinct.len() > 1,
        "{} distinct span ids over {} samples",
        distinct.len(),
        spans.len()
    );
    // Innermost span name, field of the outer span.
    let s = window
        .sample
        .iter()
        .find(|s| {
            window
                .stack_names(s)
                .iter()
                .any(|n| n.contains("http_span_work"))
        })
        .unwrap();
    assert_eq!(window.label_str(s, "span_name"), Some("parse"));
    assert_eq!(window.label_str(s, "route"), Some("/spans"));
    let cumulative = decode_gz(&get(addr, "/profiles/http_spans.pb.gz").body).unwrap();
    assert!(cumulative
        .sample
        .iter()
        .any(|s| cumulative.label_str(s, "span_name") == Some("parse")));
    assert!(cumulative
        .sample
        .iter()
        .all(|s| cumulative.label_str(s, "span_id").is_none()));
}
