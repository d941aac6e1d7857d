//! Warnings and errors that must never be silent.
//!
//! Everything goes through the `log` facade. When the application installed no logger (or
//! one that drops warnings from this crate), the message is also written to stderr, once per
//! distinct problem, so that a misconfiguration is always visible.

use std::collections::HashSet;
use std::sync::Mutex;

use log::Level;

static SHOWN_ON_STDERR: Mutex<Option<HashSet<String>>> = Mutex::new(None);

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
