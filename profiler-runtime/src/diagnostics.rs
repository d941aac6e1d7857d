//! Warnings and errors that must never be silent.
//!
//! Everything goes through the `log` facade. When the application installed no logger (or
//! one that drops warnings from this crate), the message is also written to stderr, once per
//! distinct problem, so that a misconfiguration is always visible.

use std::cell::Cell;
use std::collections::HashSet;
use std::sync::Mutex;

use log::Level;

static SHOWN_ON_STDERR: Mutex<Option<HashSet<String>>> = Mutex::new(None);

thread_local! {
    /// Set while this thread is inside the logger on the runtime's behalf. The logger may run
    /// while a runtime lock is held (registry, start), and a logger that itself calls into
    /// threadprof (a task, a `#[profiled]` function, `enter`) would lock it again: the entry
    /// points check [`reporting`] and stay inert instead.
    static REPORTING: Cell<bool> = const { Cell::new(false) };
}

/// Whether this thread is inside the logger on the runtime's behalf (see `REPORTING`).
#[inline]
pub(crate) fn reporting() -> bool {
    REPORTING.try_with(Cell::get).unwrap_or(false)
}

/// Runs `f` (which logs) with [`reporting`] true on this thread, also if it unwinds.
fn reporting_while<T>(f: impl FnOnce() -> T) -> T {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            let _ = REPORTING.try_with(|r| r.set(self.0));
        }
    }
    let _reset = Reset(REPORTING.try_with(|r| r.replace(true)).unwrap_or(false));
    f()
}

/// Logs a debug message (see `REPORTING`).
pub(crate) fn debug(args: std::fmt::Arguments<'_>) {
    reporting_while(|| log::debug!("{args}"));
}

fn logger_takes(level: Level) -> bool {
    level <= log::max_level()
        && log::logger().enabled(
            &log::Metadata::builder()
                .level(level)
                .target(module_path!())
                .build(),
        )
}

/// Logs `message` at `level`; if no logger would show it, prints it to stderr the first time
/// `key` is seen.
pub(crate) fn report(level: Level, key: &str, message: &str) {
    reporting_while(|| report_now(level, key, message));
}

fn report_now(level: Level, key: &str, message: &str) {
    log::log!(level, "{message}");
    if logger_takes(level) {
        return;
    }
    let mut shown = SHOWN_ON_STDERR.lock().unwrap_or_else(|e| e.into_inner());
    if shown
        .get_or_insert_with(HashSet::new)
        .insert(key.to_owned())
    {
        eprintln!("threadprof: {}: {message}", level.as_str().to_lowercase());
    }
}

/// Logs a warning (see [`report`]).
pub(crate) fn warn(key: &str, message: &str) {
    report(Level::Warn, key, message);
}

/// Logs an error (see [`report`]).
pub(crate) fn error(key: &str, message: &str) {
    report(Level::Error, key, message);
}
