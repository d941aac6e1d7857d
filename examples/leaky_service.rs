//! A service with a leak, found with heap profiles.
//!
//! ```sh
//! cargo run --release --features enabled,heap --example leaky_service
//! threadprof diff profiles/before/_merged.heap.pb.gz profiles/_merged.heap.pb.gz --type inuse_space
//! ```
//!
//! Two tagged threads allocate for 5 seconds: `sessions` remembers every session in a map it
//! never trims (`remember_session`, the leak), `pages` renders pages into a buffer it clears
//! (`render_page`, steady). After 2 s the heap profiles are flushed and copied to
//! `profiles/before/`; at the end they are written again. Between the two, the live bytes grew
//! under `remember_session` only.

use std::collections::HashMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: threadprof::Allocator = threadprof::Allocator::system();

/// The leak: every session is kept, with its 1 KiB of state, and never evicted.
#[inline(never)]
fn remember_session(sessions: &mut HashMap<u64, Vec<u8>>, id: u64) {
    sessions.insert(id, vec![id as u8; 1024]);
}

/// Steady: pages are rendered into a buffer that is cleared every 256 pages.
#[inline(never)]
fn render_page(buffer: &mut Vec<String>, id: u64) {
    if buffer.len() >= 256 {
        buffer.clear();
    }
    buffer.push(format!(
        "<html><body>page {id}: {}</body></html>",
        "x".repeat(900)
    ));
}

/// Copies the heap profiles written so far into `dir/before/`.
fn keep_first_dump(dir: &Path) -> std::io::Result<usize> {
    let before = dir.join("before");
    std::fs::create_dir_all(&before)?;
    let mut copied = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.to_string_lossy().ends_with(".heap.pb.gz") {
            if let Some(name) = path.file_name() {
                std::fs::copy(&path, before.join(name))?;
                copied += 1;
            }
        }
    }
    Ok(copied)
}

fn main() {
    let dir = PathBuf::from(std::env::var("THREADPROF_DIR").unwrap_or_else(|_| "profiles".into()));
    let _profiler = threadprof::Profiler::builder()
        .output_dir(&dir)
        .dump_interval(Duration::from_secs(1))
        .start()
        .expect("threadprof");
    let stop = Arc::new(AtomicBool::new(false));

    let s = stop.clone();
    let sessions = threadprof::spawn("sessions", move || {
        let mut sessions = HashMap::new();
        let mut id = 0;
        while !s.load(Ordering::Relaxed) {
            remember_session(&mut sessions, id);
            id += 1;
            std::thread::sleep(Duration::from_micros(200));
        }
        sessions
    });
    let s = stop.clone();
    let pages = threadprof::spawn("pages", move || {
        let mut buffer = Vec::new();
        let mut id = 0;
        while !s.load(Ordering::Relaxed) {
            render_page(&mut buffer, id);
            id += 1;
            std::thread::sleep(Duration::from_micros(100));
        }
        black_box(buffer.len());
        id
    });

    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let first = if threadprof::flush() {
        keep_first_dump(&dir).unwrap_or(0)
    } else {
        0
    };
    std::thread::sleep(Duration::from_secs(5).saturating_sub(started.elapsed()));
    stop.store(true, Ordering::Relaxed);
    let kept = sessions.join().unwrap();
    let rendered = pages.join().unwrap();
    // The final dump, while the leaked map is still alive (dropping the handle would do it
    // at the end of `main`, after `kept` is gone).
    let written = threadprof::flush();
    threadprof::shutdown();
    println!("sessions kept: {}, pages rendered: {rendered}", kept.len());
    if first == 0 || !written {
        println!("no heap profiles were written: build with `--features enabled,heap` to profile");
        return;
    }
    let before = dir.join("before").join(threadprof::MERGED_HEAP_FILE);
    let after = dir.join(threadprof::MERGED_HEAP_FILE);
    println!("heap profiles after 2 s: {}", before.display());
    println!("heap profiles after 5 s: {}", after.display());
    println!(
        "what grew: threadprof diff {} {} --type inuse_space",
        before.display(),
        after.display()
    );
    println!(
        "       or: go tool pprof -sample_index=inuse_space -top -base {} {}",
        before.display(),
        after.display()
    );
}
