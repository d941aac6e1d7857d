//! Running the `threadprof` binary and reading its tables, for the test files beside this one.

use std::process::Command;

/// Runs `threadprof ARGS`: whether it succeeded, its stdout and its stderr.
pub fn cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_threadprof"))
        .args(args)
        .output()
        .expect("run threadprof");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A row of a `top` table: its five number columns and the function name (which may hold
/// spaces).
pub fn top_row(line: &str) -> ([&str; 5], &str) {
    let mut rest = line;
    let mut cols = [""; 5];
    for col in &mut cols {
        rest = rest.trim_start();
        let end = rest
            .find(' ')
            .unwrap_or_else(|| panic!("short row: {line}"));
        (*col, rest) = rest.split_at(end);
    }
    (cols, rest.trim_start())
}
